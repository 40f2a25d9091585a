//! The `stasis` command line, parsed into the plain option structs that
//! the commands take. Parsing stays here, apart from the doing, so that
//! DMTCP's command names and flags (dmtcp.rs) parse into the same structs.
//!
//! `launch`, `restart`, `command` and `coordinator` take `--help` but not
//! `-h`: as in DMTCP, `-h` names the coordinator's host.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};
use stasis_coord::client::Addr;

use crate::commands::command::{Action, CommandOpts};
use crate::commands::coordinator::CoordinatorOpts;
use crate::commands::inspect::InspectOpts;
use crate::commands::job::JobOpts;
use crate::commands::launch::{LaunchOpts, SaveFiles};
use crate::commands::restart::RestartOpts;
use crate::commands::start::Mode;
use crate::coord_socket::CoordOpts;

/// What to do, with its options.
#[derive(Debug)]
pub enum Verb {
    Launch(LaunchOpts),
    Restart(RestartOpts),
    Command(CommandOpts),
    Coordinator(CoordinatorOpts),
    Inspect(InspectOpts),
    Job(JobOpts),
}

/// A parsed command line: the verb, and notes about options that are
/// accepted but do nothing (printed unless the verb is quiet).
#[derive(Debug)]
pub struct Parsed {
    pub verb: Verb,
    pub notes: Vec<String>,
}

impl Parsed {
    pub fn quiet(&self) -> bool {
        match &self.verb {
            Verb::Launch(o) => o.quiet,
            Verb::Restart(o) => o.quiet,
            Verb::Coordinator(o) => o.quiet,
            Verb::Job(o) => o.quiet,
            Verb::Command(_) | Verb::Inspect(_) => false,
        }
    }
}

/// Why the command line is not a command.
#[derive(Debug)]
pub enum NotRun {
    /// Help or version text was asked for: print it on stdout, exit 0.
    Asked(String),
    /// A usage error, in one line.
    Usage(String),
}

/// The environment, as the parsers see it (a function, so tests can give one).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment; empty values count as unset.
pub fn real_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The first of `names` set in the environment, with its name.
/// STASIS_VERIFY_FIRST=1: restart verifies every chunk before the program
/// runs (as `--verify-first`), for either command name.
pub fn verify_first_env(env: Env) -> bool {
    env("STASIS_VERIFY_FIRST").is_some_and(|v| v.trim() == "1")
}

pub fn first_env(env: Env, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|&n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v.trim().to_string())))
}

/// A number from the environment, or a usage error naming the variable.
pub fn env_number<T: std::str::FromStr>(env: Env, names: &[&'static str], what: &str) -> Result<Option<T>, NotRun> {
    match first_env(env, names) {
        None => Ok(None),
        Some((name, v)) => v.parse().map(Some).map_err(|_| NotRun::Usage(format!("{name}={v} is not {what}"))),
    }
}

/// The environment variables each personality reads for one setting.
pub struct EnvNames {
    pub host: &'static [&'static str],
    pub port: &'static [&'static str],
    pub tmpdir: &'static [&'static str],
}

pub const STASIS_ENV: EnvNames =
    EnvNames { host: &["STASIS_COORD_HOST"], port: &["STASIS_COORD_PORT"], tmpdir: &["STASIS_TMPDIR"] };

/// Merges the coordinator flags with the environment (coord_socket.rs
/// has the rule). `exact_from_env`: whether the address a launched program
/// was given (`STASIS_COORD_ADDR`) counts; not for a coordinator.
pub fn coord_opts(
    socket: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    tmpdir: Option<PathBuf>,
    env: Env,
    names: &EnvNames,
    exact_from_env: bool,
) -> Result<CoordOpts, NotRun> {
    let mut addr = socket.map(Addr::Unix);
    if addr.is_none() && host.is_none() && port.is_none() && exact_from_env {
        if let Some(a) = env("STASIS_COORD_ADDR").filter(|v| !v.is_empty()) {
            addr =
                Some(Addr::parse(&a).ok_or_else(|| {
                    NotRun::Usage(format!("STASIS_COORD_ADDR={a} is not unix:PATH or tcp:HOST:PORT"))
                })?);
        } else if let Some(s) = env("STASIS_COORD_SOCKET").filter(|v| !v.is_empty()) {
            addr = Some(Addr::Unix(s.into()));
        }
    }
    let host = host.or_else(|| first_env(env, names.host).map(|(_, v)| v));
    let port = match port {
        Some(p) => Some(p),
        None => env_number(env, names.port, "a port number")?,
    };
    let tmpdir = tmpdir.or_else(|| first_env(env, names.tmpdir).map(|(_, v)| v.into()));
    Ok(CoordOpts { addr, host, port, tmpdir, ckpt_dir: None })
}

/// The coordinator for `stasis command` (coord_socket.rs has the order):
/// flags naming it, else `--ckptdir` (`ckpt_flag`: that directory's
/// coordinator, whatever the environment says), else the environment,
/// else `ckpt_env` (dmtcp_command's `DMTCP_CHECKPOINT_DIR`).
#[allow(clippy::too_many_arguments)]
pub fn command_coord_opts(
    socket: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    tmpdir: Option<PathBuf>,
    ckpt_flag: Option<PathBuf>,
    ckpt_env: Option<PathBuf>,
    env: Env,
    names: &EnvNames,
) -> Result<CoordOpts, NotRun> {
    let flags_name_it = socket.is_some() || host.is_some() || port.is_some();
    if !flags_name_it && let Some(dir) = ckpt_flag {
        let tmpdir = tmpdir.or_else(|| first_env(env, names.tmpdir).map(|(_, v)| v.into()));
        return Ok(CoordOpts { tmpdir, ckpt_dir: Some(dir), ..Default::default() });
    }
    let mut opts = coord_opts(socket, host, port, tmpdir, env, names, true)?;
    if !opts.named() {
        opts.ckpt_dir = ckpt_env;
    }
    Ok(opts)
}

/// A size for `--save-files-limit`.
pub fn save_files_limit(s: &str) -> Result<u64, String> {
    stasis_image::savedfiles::parse_size(s).ok_or_else(|| format!("{s:?} is not a size (bytes, or with K, M, G, T)"))
}

/// A signal number for the agent's checkpoint signal.
pub fn ckpt_signal(s: &str) -> Result<i32, String> {
    let n: i32 = s.trim().parse().map_err(|_| format!("{s:?} is not a signal number"))?;
    if !(1..=64).contains(&n) || n == libc::SIGKILL || n == libc::SIGSTOP {
        return Err(format!("{n} cannot be the checkpoint signal (1 to 64, not SIGKILL or SIGSTOP)"));
    }
    Ok(n)
}

/// `--debug-restart-pause N` (DMTCP_RESTART_PAUSE): DMTCP's levels, 1 to 7.
pub fn restart_pause(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n @ 1..=7) => Ok(n),
        _ => Err(format!("{s:?} is not a restart pause level (1 to 7)")),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint and restart unmodified Linux programs",
    color = clap::ColorChoice::Never
)]
struct Cli {
    #[command(subcommand)]
    verb: VerbArgs,
}

#[derive(Subcommand, Debug)]
enum VerbArgs {
    /// Run a program under stasis, checkpointable
    #[command(disable_help_flag = true, override_usage = "stasis launch [OPTIONS] [--] PROGRAM [ARGS]...")]
    Launch(LaunchArgs),
    /// Bring a checkpointed computation back
    #[command(disable_help_flag = true)]
    Restart(RestartArgs),
    /// Ask a running computation's coordinator to checkpoint, report, change the interval, kill or quit
    #[command(disable_help_flag = true)]
    Command(CommandArgs),
    /// Run a coordinator: every process of a computation connects to it
    #[command(disable_help_flag = true)]
    Coordinator(CoordinatorArgs),
    /// Show what an image holds
    Inspect(InspectArgs),
    /// A batch job's one line: launch, or resume from the job's checkpoint; checkpoint and stop before the job ends (docs/slurm.md)
    #[command(override_usage = "stasis job [OPTIONS] [--] PROGRAM [ARGS]...")]
    Job(JobArgs),
}

/// How to reach the coordinator.
#[derive(Args, Debug)]
struct CoordArgs {
    /// The coordinator's host (default: this one, or STASIS_COORD_HOST)
    #[arg(short = 'h', long = "coord-host", value_name = "HOST")]
    host: Option<String>,
    /// The coordinator's port (or STASIS_COORD_PORT; 0: a free one, for a new coordinator). Naming none: the checkpoint directory's own coordinator, on a Unix socket
    #[arg(short = 'p', long = "coord-port", value_name = "PORT")]
    port: Option<u16>,
    /// The coordinator's Unix socket, instead of the one its port names
    #[arg(long = "coord-socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Where the per-user directory of coordinator sockets goes (default /tmp, or STASIS_TMPDIR)
    #[arg(long = "tmpdir", value_name = "DIR")]
    tmpdir: Option<PathBuf>,
}

impl CoordArgs {
    fn opts(self, env: Env) -> Result<CoordOpts, NotRun> {
        coord_opts(self.socket, self.host, self.port, self.tmpdir, env, &STASIS_ENV, true)
    }
}

/// Whether to join a running coordinator or start one.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("mode").multiple(false)))]
struct ModeArgs {
    /// Join a running coordinator (with none named: the checkpoint directory's, else port 7779's socket); fail if none answers
    #[arg(short = 'j', long = "join-coordinator", group = "mode")]
    join: bool,
    /// Start a coordinator; fail if one answers there already
    #[arg(long = "new-coordinator", group = "mode")]
    new: bool,
    /// Join the coordinator named, or start one in the background (the default); with none named, start one of the computation's own, refusing when another computation checkpoints into the directory
    #[arg(long = "any-coordinator", group = "mode")]
    any: bool,
}

impl ModeArgs {
    fn mode(&self) -> Mode {
        if self.join {
            Mode::Join
        } else if self.new {
            Mode::New
        } else {
            Mode::Any
        }
    }
}

#[derive(Args, Debug)]
struct LaunchArgs {
    /// Checkpoint every SECONDS (counted from the end of the last checkpoint; 0: only on request)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Where generations are written (created if missing; default: the current directory)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// How many committed generations to keep
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Compress images with zstd (about half the size for typical memory; faster checkpoints on a slow disk)
    #[arg(long)]
    compress: bool,
    /// A full checkpoint every N generations, the others only what changed (bounds how many generations a restart reads; 1: always full; default 8)
    #[arg(long = "full-every", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    full_every: Option<u32>,
    #[command(flatten)]
    coord: CoordArgs,
    #[command(flatten)]
    mode: ModeArgs,
    /// Write the coordinator's TCP port to FILE
    #[arg(long = "port-file", value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Where a coordinator started in the background writes its messages (default: stderr)
    #[arg(long = "coord-logfile", value_name = "FILE")]
    coord_logfile: Option<PathBuf>,
    /// The signal the agent stops threads with (default: 62, a real-time signal)
    #[arg(long = "ckpt-signal", value_name = "SIGNUM", value_parser = ckpt_signal)]
    ckpt_signal: Option<i32>,
    /// Bytes of files open for writing each process saves per checkpoint (K, M, G suffixes; default 1G)
    #[arg(long = "save-files-limit", value_name = "SIZE", value_parser = save_files_limit)]
    save_files_limit: Option<u64>,
    /// Never save the contents of files matching GLOB (`*` and `?`; repeatable): restart leaves them as they are
    #[arg(long = "no-save-file", value_name = "GLOB")]
    no_save_file: Vec<String>,
    /// Also save the contents of your own files the program has open read-only (restart makes them again if missing)
    #[arg(long = "checkpoint-open-files", alias = "ckpt-open-files")]
    checkpoint_open_files: bool,
    /// At restart, replace a file --checkpoint-open-files saved that differs now (the one found is kept as PATH-DATE.bk)
    #[arg(long = "allow-file-overwrite")]
    allow_file_overwrite: bool,
    /// At restart, set and remove the variables dmtcp_env.txt in the checkpoint directory lists (NAME=value, NAME)
    #[arg(long = "modify-env")]
    modify_env: bool,
    /// Print no notes, only errors
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// The program to run, and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

#[derive(Args, Debug)]
struct RestartArgs {
    /// Checkpoint every SECONDS (default: the interval the checkpoint was taken with)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Where later generations go (default: the checkpoint directory restarted from)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// How many committed generations to keep
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Compress images with zstd (about half the size for typical memory; faster checkpoints on a slow disk)
    #[arg(long)]
    compress: bool,
    /// A full checkpoint every N generations, the others only what changed (bounds how many generations a restart reads; 1: always full; default 8)
    #[arg(long = "full-every", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    full_every: Option<u32>,
    #[command(flatten)]
    coord: CoordArgs,
    #[command(flatten)]
    mode: ModeArgs,
    /// Write the coordinator's TCP port to FILE
    #[arg(long = "port-file", value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Where a coordinator started in the background writes its messages (default: stderr)
    #[arg(long = "coord-logfile", value_name = "FILE")]
    coord_logfile: Option<PathBuf>,
    /// Images named without a directory are in DIR; with no image, restart DIR
    #[arg(long = "restartdir", value_name = "DIR")]
    restart_dir: Option<PathBuf>,
    /// Restart generation N of the checkpoint directory (gen-NNNNNN), not its newest
    #[arg(long = "generation", value_name = "N", conflicts_with = "fallback")]
    generation: Option<u64>,
    /// If the newest generation is damaged, restart the newest intact one (and say so)
    #[arg(long)]
    fallback: bool,
    /// Verify every chunk's checksum before the program runs (or STASIS_VERIFY_FIRST=1); default: in the background, while it runs
    #[arg(long = "verify-first")]
    verify_first: bool,
    /// Stop before restoring, for a debugger, until sent SIGCONT (N: 1 to 7, DMTCP's levels, all the same here)
    #[arg(long = "debug-restart-pause", value_name = "N", value_parser = restart_pause)]
    debug_restart_pause: Option<u8>,
    /// Print no notes, only errors
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Checkpoint directories (their newest committed generation), generation directories, or images
    #[arg(value_name = "DIR|IMAGE")]
    targets: Vec<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").required(true).multiple(false)))]
struct CommandArgs {
    #[command(flatten)]
    coord: CoordArgs,
    /// The computation's checkpoint directory: its coordinator (unless one is named), and where its secret is (for TCP)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Checkpoint now; wait until the generation is committed
    #[arg(short = 'c', long, group = "action")]
    checkpoint: bool,
    /// Checkpoint now and wait until the generation is committed
    #[arg(long, group = "action")]
    bcheckpoint: bool,
    /// Checkpoint now, wait until the generation is committed, then kill the computation
    #[arg(long, group = "action")]
    kcheckpoint: bool,
    /// Report the computation's state
    #[arg(short = 's', long, group = "action")]
    status: bool,
    /// List the computation's processes
    #[arg(short = 'l', long, group = "action")]
    list: bool,
    /// Checkpoint every SECONDS from now on (0: only on request)
    #[arg(short = 'i', long, value_name = "SECONDS", group = "action")]
    interval: Option<u32>,
    /// Kill every process of the computation
    #[arg(short = 'k', long, group = "action")]
    kill: bool,
    /// Kill every process of the computation and end its coordinator
    #[arg(short = 'q', long, group = "action")]
    quit: bool,
    /// Print the answer as one JSON object
    #[arg(long)]
    json: bool,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args, Debug)]
struct CoordinatorArgs {
    /// Also listen on this TCP port (or STASIS_COORD_PORT; 0: any free one); default: no TCP, the Unix socket of port 7779
    #[arg(short = 'p', long = "coord-port", visible_alias = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Listen on this Unix socket (then on TCP only if -p is given)
    #[arg(long = "coord-socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Where the per-user directory of coordinator sockets goes (default /tmp, or STASIS_TMPDIR)
    #[arg(long = "tmpdir", value_name = "DIR")]
    tmpdir: Option<PathBuf>,
    /// Listen on TCP at this address (default: STASIS_COORD_HOST's address, else 127.0.0.1)
    #[arg(long = "listen", value_name = "ADDRESS")]
    listen: Option<IpAddr>,
    /// Where generations, the secret and the restart script go (default: the current directory)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Checkpoint every SECONDS (0: only on request)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// How many committed generations to keep
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Compress images with zstd (about half the size for typical memory; faster checkpoints on a slow disk)
    #[arg(long)]
    compress: bool,
    /// A full checkpoint every N generations, the others only what changed (bounds how many generations a restart reads; 1: always full; default 8)
    #[arg(long = "full-every", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    full_every: Option<u32>,
    /// Exit when the last process of the computation is gone
    #[arg(long = "exit-on-last")]
    exit_on_last: bool,
    /// Kill the computation and exit after the first checkpoint
    #[arg(long = "exit-after-ckpt")]
    exit_after_ckpt: bool,
    /// Exit after SECONDS without any process
    #[arg(long = "timeout", value_name = "SECONDS")]
    timeout: Option<u32>,
    /// Run in the background, without a console
    #[arg(long)]
    daemon: bool,
    /// Write the TCP port to FILE once listening
    #[arg(long = "port-file", value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Write messages to FILE instead of stderr
    #[arg(long = "coord-logfile", value_name = "FILE")]
    coord_logfile: Option<PathBuf>,
    /// Print no notes, only errors
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Once listening, write "OK port=... socket=..." to this descriptor and close it (for launch)
    #[arg(long = "ready-fd", value_name = "FD", hide = true)]
    ready_fd: Option<i32>,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args, Debug)]
struct JobArgs {
    /// The job's checkpoint directory (default under SLURM: $SLURM_SUBMIT_DIR/stasis-ckpt/$SLURM_JOB_NAME, with _TASK for an array task; required outside SLURM)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Also checkpoint every SECONDS (default: none when launching; the checkpoint's when resuming)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// How many committed generations to keep
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Compress images with zstd
    #[arg(long)]
    compress: bool,
    /// Another signal that checkpoints and stops (besides SIGTERM, USR1 and USR2; a name or a number; repeatable)
    #[arg(long = "checkpoint-signal", value_name = "SIG", value_parser = crate::commands::job::parse_signal)]
    checkpoint_signal: Vec<i32>,
    /// After a checkpoint on a warning (USR1, USR2, the end near), requeue the job with scontrol (default: when the job was submitted requeueable)
    #[arg(long, overrides_with = "no_requeue")]
    requeue: bool,
    /// Never requeue the job; exit 75 after the checkpoint
    #[arg(long = "no-requeue", overrides_with = "requeue")]
    no_requeue: bool,
    /// Under SLURM, checkpoint and stop this long before the job's time limit (0: only on signals)
    #[arg(long = "before-end", value_name = "SECONDS", default_value_t = 60)]
    before_end: u32,
    /// Print no notes from launch and restart (the status lines stay)
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// The program to run, and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Read the whole payload and check every checksum (the default)
    #[arg(long, overrides_with = "no_verify")]
    verify: bool,
    /// Only read the header and the metadata (quick, for large images)
    #[arg(long, overrides_with = "verify")]
    no_verify: bool,
    /// The image file
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
}

/// The current directory, where the secret of a computation checkpointed
/// here would be.
pub fn cwd() -> Option<PathBuf> {
    std::env::current_dir().ok()
}

/// Parses `stasis VERB ...`.
pub fn parse(args: impl IntoIterator<Item = OsString>, env: Env) -> Result<Parsed, NotRun> {
    let cli = Cli::try_parse_from(args).map_err(|e| not_run(e, "stasis"))?;
    let verb = match cli.verb {
        VerbArgs::Launch(a) => Verb::Launch(LaunchOpts {
            mode: a.mode.mode(),
            coord: a.coord.opts(env)?,
            interval_s: a.interval,
            ckpt_dir: a.ckpt_dir,
            keep: a.keep as usize,
            compress: a.compress,
            full_every: a.full_every,
            port_file: a.port_file,
            coord_logfile: a.coord_logfile,
            ckpt_signal: a.ckpt_signal,
            save_files: SaveFiles {
                limit: a.save_files_limit,
                excluded: a.no_save_file,
                open_files: a.checkpoint_open_files,
                allow_overwrite: a.allow_file_overwrite,
            },
            quiet: a.quiet,
            usr2_checkpoints: false,
            plugins: Vec::new(),
            unique_ckpt: false,
            modify_env: a.modify_env,
            program: a.program,
        }),
        VerbArgs::Restart(a) => {
            if a.targets.is_empty() && a.restart_dir.is_none() {
                return Err(NotRun::Usage(
                    "restart needs a checkpoint directory or images (see stasis restart --help)".into(),
                ));
            }
            Verb::Restart(RestartOpts {
                mode: a.mode.mode(),
                coord: a.coord.opts(env)?,
                interval_s: a.interval,
                ckpt_dir: a.ckpt_dir,
                keep: a.keep as usize,
                compress: a.compress,
                full_every: a.full_every,
                port_file: a.port_file,
                coord_logfile: a.coord_logfile,
                restart_dir: a.restart_dir,
                generation: a.generation,
                fallback: a.fallback,
                quiet: a.quiet,
                usr2_checkpoints: false,
                verify_first: a.verify_first || verify_first_env(env),
                pause: a.debug_restart_pause,
                unique_ckpt: false,
                targets: a.targets,
            })
        }
        VerbArgs::Command(a) => {
            let action = if a.checkpoint {
                Action::Checkpoint
            } else if a.bcheckpoint {
                Action::BlockingCheckpoint
            } else if a.kcheckpoint {
                Action::CheckpointThenKill
            } else if a.status {
                Action::Status
            } else if a.list {
                Action::List
            } else if a.kill {
                Action::Kill
            } else if a.quit {
                Action::Quit
            } else if let Some(s) = a.interval {
                Action::Interval(s)
            } else {
                unreachable!("clap requires one action")
            };
            let secret_dirs = a.ckpt_dir.iter().cloned().chain(cwd()).collect();
            let c = a.coord;
            let coord = command_coord_opts(c.socket, c.host, c.port, c.tmpdir, a.ckpt_dir, None, env, &STASIS_ENV)?;
            Verb::Command(CommandOpts { coord, action, json: a.json, secret_dirs, dmtcp: false })
        }
        VerbArgs::Coordinator(a) => {
            let coord = coord_opts(a.socket, None, a.port, a.tmpdir, env, &STASIS_ENV, false)?;
            Verb::Coordinator(CoordinatorOpts {
                coord,
                listen: a.listen,
                ckpt_dir: a.ckpt_dir,
                interval_s: a.interval.unwrap_or(0),
                keep: a.keep as usize,
                compress: a.compress,
                full_every: a.full_every.unwrap_or(stasis_coord::DEFAULT_FULL_EVERY),
                exit_on_last: a.exit_on_last,
                exit_after_ckpt: a.exit_after_ckpt,
                idle_timeout: a.timeout,
                daemon: a.daemon,
                port_file: a.port_file,
                coord_logfile: a.coord_logfile,
                quiet: a.quiet,
                ready_fd: a.ready_fd,
            })
        }
        VerbArgs::Inspect(a) => Verb::Inspect(InspectOpts { image: a.image, verify: a.verify || !a.no_verify }),
        VerbArgs::Job(a) => Verb::Job(JobOpts {
            ckpt_dir: a.ckpt_dir,
            interval_s: a.interval,
            keep: a.keep as usize,
            compress: a.compress,
            checkpoint_signals: a.checkpoint_signal,
            requeue: if a.requeue {
                Some(true)
            } else if a.no_requeue {
                Some(false)
            } else {
                None
            },
            before_end_s: a.before_end,
            quiet: a.quiet,
            program: a.program,
        }),
    };
    Ok(Parsed { verb, notes: Vec::new() })
}

/// A clap error as [`NotRun`]: help and version for stdout, else the
/// first paragraph of the message, on one line, with where to look.
pub fn not_run(e: clap::Error, name: &str) -> NotRun {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => NotRun::Asked(text),
        _ => {
            // The message is the first paragraph; usage and tips follow.
            let first: Vec<&str> =
                text.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            NotRun::Usage(format!("{first} (see {name} --help)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_env(args: &[&str], vars: &[(&str, &str)]) -> Result<Verb, NotRun> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        parse(std::iter::once("stasis").chain(args.iter().copied()).map(OsString::from), &env).map(|p| p.verb)
    }

    fn parse_str(args: &[&str]) -> Result<Verb, NotRun> {
        parse_env(args, &[])
    }

    #[test]
    fn launch_takes_the_program_and_its_flags() {
        let Ok(Verb::Launch(o)) = parse_str(&["launch", "-i", "60", "--ckptdir", "ck", "./prog", "-i", "--help"])
        else {
            panic!()
        };
        assert_eq!(o.interval_s, Some(60));
        assert_eq!(o.ckpt_dir, Some(PathBuf::from("ck")));
        assert_eq!((o.keep, o.mode, o.quiet), (2, Mode::Any, false));
        assert_eq!(o.program, ["./prog", "-i", "--help"]);
        // No coordinator named: the checkpoint directory's own.
        assert!(!o.coord.named());
        let Ok(Verb::Launch(o)) = parse_str(&["launch", "--keep", "5", "-p", "9000", "--", "-weird", "x"]) else {
            panic!()
        };
        assert_eq!((o.keep, o.coord.port), (5, Some(9000)));
        assert_eq!(o.program, ["-weird", "x"]);
        let Ok(Verb::Launch(o)) =
            parse_str(&["launch", "-j", "-h", "node3", "--ckpt-signal", "12", "-q", "--port-file", "pf", "prog"])
        else {
            panic!()
        };
        assert_eq!(
            (o.mode, o.coord.host.as_deref(), o.ckpt_signal, o.quiet),
            (Mode::Join, Some("node3"), Some(12), true)
        );
        assert_eq!(o.port_file, Some(PathBuf::from("pf")));
        let Ok(Verb::Launch(o)) = parse_str(&["launch", "--new-coordinator", "prog"]) else { panic!() };
        assert_eq!(o.mode, Mode::New);
        assert_eq!(o.save_files, SaveFiles::default());
    }

    #[test]
    fn save_files_flags() {
        let Ok(Verb::Launch(o)) = parse_str(&[
            "launch",
            "--save-files-limit",
            "2G",
            "--no-save-file",
            "*.log",
            "--no-save-file",
            "/x/*",
            "p",
        ]) else {
            panic!()
        };
        assert_eq!(
            o.save_files,
            SaveFiles { limit: Some(2 << 30), excluded: vec!["*.log".into(), "/x/*".into()], ..Default::default() }
        );
        assert!(parse_str(&["launch", "--save-files-limit", "lots", "p"]).is_err());
    }

    #[test]
    fn the_environment_names_the_coordinator_after_the_flags() {
        let coord = |args: &[&str], vars: &[(&str, &str)]| match parse_env(args, vars) {
            Ok(Verb::Command(o)) => o.coord,
            other => panic!("{args:?}: {other:?}"),
        };
        let c = coord(&["command", "-s"], &[("STASIS_COORD_ADDR", "tcp:n1:7000"), ("STASIS_COORD_PORT", "9")]);
        assert_eq!(c.addr, Some(Addr::Tcp { host: "n1".into(), port: 7000 }));
        let c = coord(&["command", "-s", "-p", "8"], &[("STASIS_COORD_ADDR", "tcp:n1:7000")]);
        assert_eq!((c.addr, c.port), (None, Some(8)));
        let c = coord(&["command", "-s"], &[("STASIS_COORD_SOCKET", "/s.sock"), ("STASIS_TMPDIR", "/t")]);
        assert_eq!((c.addr, c.tmpdir), (Some(Addr::Unix("/s.sock".into())), Some(PathBuf::from("/t"))));
        let c = coord(&["command", "-s"], &[("STASIS_COORD_HOST", "n2"), ("STASIS_COORD_PORT", "7001")]);
        assert_eq!((c.host.as_deref(), c.port), (Some("n2"), Some(7001)));
        // DMTCP's variables are for the DMTCP names only.
        assert_eq!(coord(&["command", "-s"], &[("DMTCP_COORD_PORT", "7001")]).port, None);
        for (k, v) in [("STASIS_COORD_PORT", "lots"), ("STASIS_COORD_ADDR", "/x.sock")] {
            match parse_env(&["command", "-s"], &[(k, v)]) {
                Err(NotRun::Usage(m)) => assert!(m.contains(k) && m.contains(v), "{m}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
        // A coordinator does not listen where a launched program was told to connect.
        let Ok(Verb::Coordinator(o)) = parse_env(&["coordinator"], &[("STASIS_COORD_ADDR", "unix:/x.sock")]) else {
            panic!()
        };
        assert_eq!(o.coord.addr, None);
    }

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &["launch"][..],
            &["launch", "-h", "host"],
            &["launch", "--keep", "0", "prog"],
            &["launch", "-j", "--new-coordinator", "prog"],
            &["launch", "--ckpt-signal", "9", "prog"],
            &["command"],
            &["command", "-c", "-s"],
            &["command", "-i", "soon"],
            &["restart"],
            &["coordinator", "-p", "port"],
            &["nonsense"],
        ] {
            match parse_str(args) {
                Err(NotRun::Usage(m)) => assert!(!m.contains('\n') && !m.starts_with("error"), "{args:?}: {m}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn help_is_long_only_for_the_dmtcp_like_verbs() {
        for verb in ["launch", "restart", "command", "coordinator"] {
            assert!(matches!(parse_str(&[verb, "--help"]), Err(NotRun::Asked(_))), "{verb}");
        }
        assert!(matches!(parse_str(&["inspect", "-h"]), Err(NotRun::Asked(_))));
        assert!(matches!(parse_str(&["--version"]), Err(NotRun::Asked(_))));
    }

    #[test]
    fn command_actions() {
        let action = |args: &[&str]| match parse_str(args) {
            Ok(Verb::Command(o)) => (o.action, o.json),
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(action(&["command", "-c"]), (Action::Checkpoint, false));
        assert_eq!(action(&["command", "--bcheckpoint", "--json"]), (Action::BlockingCheckpoint, true));
        assert_eq!(action(&["command", "--kcheckpoint"]), (Action::CheckpointThenKill, false));
        assert_eq!(action(&["command", "-s"]), (Action::Status, false));
        assert_eq!(action(&["command", "-l"]), (Action::List, false));
        assert_eq!(action(&["command", "--interval", "30"]), (Action::Interval(30), false));
        assert_eq!(action(&["command", "-k", "--coord-socket", "/s"]), (Action::Kill, false));
        assert_eq!(action(&["command", "-q"]), (Action::Quit, false));
        let Ok(Verb::Command(o)) = parse_str(&["command", "-s", "--ckptdir", "/ck"]) else { panic!() };
        assert_eq!(o.secret_dirs.first(), Some(&PathBuf::from("/ck")));
    }

    #[test]
    fn command_finds_the_checkpoint_directorys_coordinator() {
        let coord = |args: &[&str], vars: &[(&str, &str)]| match parse_env(args, vars) {
            Ok(Verb::Command(o)) => o.coord,
            other => panic!("{args:?}: {other:?}"),
        };
        // --ckptdir selects the directory's coordinator, before the environment.
        let c = coord(&["command", "-s", "--ckptdir", "/ck"], &[("STASIS_COORD_ADDR", "unix:/s.sock")]);
        assert_eq!((c.addr, c.ckpt_dir), (None, Some(PathBuf::from("/ck"))));
        let c = coord(&["command", "-s", "--ckptdir", "/ck"], &[("STASIS_TMPDIR", "/t")]);
        assert_eq!(c.tmpdir, Some(PathBuf::from("/t")));
        // A flag naming the coordinator wins; --ckptdir is then where the secret is.
        let c = coord(&["command", "-s", "--ckptdir", "/ck", "-p", "7000"], &[]);
        assert_eq!((c.port, c.ckpt_dir), (Some(7000), None));
        // Nothing at all: nothing named (the current directory, then port 7779's socket).
        let c = coord(&["command", "-s"], &[]);
        assert!(!c.named() && c.ckpt_dir.is_none());
    }

    #[test]
    fn coordinator_options() {
        let Ok(Verb::Coordinator(o)) = parse_str(&[
            "coordinator",
            "-p",
            "0",
            "--port-file",
            "pf",
            "--ckptdir",
            "ck",
            "-i",
            "30",
            "--exit-on-last",
            "--daemon",
            "--listen",
            "127.0.0.1",
        ]) else {
            panic!()
        };
        assert_eq!((o.coord.port, o.interval_s, o.exit_on_last, o.daemon), (Some(0), 30, true, true));
        assert_eq!((o.port_file, o.ckpt_dir), (Some(PathBuf::from("pf")), Some(PathBuf::from("ck"))));
        assert_eq!(o.listen, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn job_options() {
        let Ok(Verb::Job(o)) = parse_str(&["job", "--", "./prog", "-i", "3"]) else { panic!() };
        assert_eq!((o.ckpt_dir, o.interval_s, o.requeue, o.before_end_s, o.keep), (None, None, None, 60, 2));
        assert_eq!(o.program, ["./prog", "-i", "3"]);
        let Ok(Verb::Job(o)) = parse_str(&[
            "job",
            "--ckptdir",
            "/ck",
            "-i",
            "30",
            "--checkpoint-signal",
            "URG",
            "--no-requeue",
            "--before-end",
            "0",
            "prog",
        ]) else {
            panic!()
        };
        assert_eq!((o.ckpt_dir, o.interval_s), (Some(PathBuf::from("/ck")), Some(30)));
        assert_eq!((o.checkpoint_signals, o.requeue, o.before_end_s), (vec![libc::SIGURG], Some(false), 0));
        let Ok(Verb::Job(o)) = parse_str(&["job", "--requeue", "prog"]) else { panic!() };
        assert_eq!(o.requeue, Some(true));
        assert!(parse_str(&["job"]).is_err());
        assert!(parse_str(&["job", "--checkpoint-signal", "KILL", "prog"]).is_err());
    }

    #[test]
    fn inspect_verifies_unless_told_not_to() {
        let verify = |args: &[&str]| match parse_str(args) {
            Ok(Verb::Inspect(o)) => o.verify,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(verify(&["inspect", "x.img"]));
        assert!(verify(&["inspect", "--verify", "x.img"]));
        assert!(!verify(&["inspect", "--no-verify", "x.img"]));
        assert!(verify(&["inspect", "--no-verify", "--verify", "x.img"]));
    }

    #[test]
    fn restart_targets() {
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "--coord-socket", "/s.sock", "ck"]) else { panic!() };
        assert_eq!(o.targets, [PathBuf::from("ck")]);
        assert_eq!(o.coord.addr, Some(Addr::Unix("/s.sock".into())));
        assert_eq!(o.interval_s, None);
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "-j", "a.dmtcp", "b.dmtcp"]) else { panic!() };
        assert_eq!((o.targets.len(), o.mode), (2, Mode::Join));
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "--restartdir", "/ck"]) else { panic!() };
        assert_eq!((o.targets.len(), o.restart_dir), (0, Some(PathBuf::from("/ck"))));
        assert_eq!((o.generation, o.fallback), (None, false));
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "--generation", "4", "ck"]) else { panic!() };
        assert_eq!((o.generation, o.fallback), (Some(4), false));
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "--fallback", "ck"]) else { panic!() };
        assert_eq!((o.generation, o.fallback), (None, true));
        assert!(parse_str(&["restart", "--fallback", "--generation", "4", "ck"]).is_err());
        assert!(parse_str(&["restart", "--generation", "x", "ck"]).is_err());
    }

    #[test]
    fn restart_verifies_in_the_background_unless_told() {
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "ck"]) else { panic!() };
        assert!(!o.verify_first);
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "--verify-first", "ck"]) else { panic!() };
        assert!(o.verify_first);
        let Ok(Verb::Restart(o)) = parse_env(&["restart", "ck"], &[("STASIS_VERIFY_FIRST", "1")]) else { panic!() };
        assert!(o.verify_first);
        let Ok(Verb::Restart(o)) = parse_env(&["restart", "ck"], &[("STASIS_VERIFY_FIRST", "0")]) else { panic!() };
        assert!(!o.verify_first);
    }
}
