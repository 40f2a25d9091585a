//! The DMTCP command names: `dmtcp_launch`, `dmtcp_restart`,
//! `dmtcp_command` and `dmtcp_coordinator`, with DMTCP's options and
//! environment variables, parsed into the same option structs as the
//! `stasis` verbs (cli.rs). docs/dmtcp-compatibility.md has the table of
//! what each option does here.
//!
//! Nothing is silent: an option Stasis cannot honour is refused with a
//! message that says why, one that makes no difference here is accepted
//! with a note (unless quiet), and an option nobody knows is a usage error.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Parser};

use crate::cli::{self, EnvNames, NotRun, Parsed, Verb, cwd, env_number, first_env};
use crate::commands::command::{self, Action, CommandOpts};
use crate::commands::coordinator::CoordinatorOpts;
use crate::commands::launch::{LaunchOpts, SaveFiles};
use crate::commands::restart::RestartOpts;
use crate::commands::start::Mode;
use stasis_image::savedfiles;

/// Which DMTCP command stasis was called as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Launch,
    Restart,
    Command,
    Coordinator,
}

impl Name {
    /// The name the binary was called by (its file name), if a DMTCP one.
    pub fn from_program(argv0: &std::ffi::OsStr) -> Option<Name> {
        let base = std::path::Path::new(argv0).file_name()?.to_str()?;
        match base {
            "dmtcp_launch" => Some(Name::Launch),
            "dmtcp_restart" => Some(Name::Restart),
            "dmtcp_command" => Some(Name::Command),
            "dmtcp_coordinator" => Some(Name::Coordinator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Name::Launch => "dmtcp_launch",
            Name::Restart => "dmtcp_restart",
            Name::Command => "dmtcp_command",
            Name::Coordinator => "dmtcp_coordinator",
        }
    }
}

/// DMTCP's variables first, then stasis's.
pub const DMTCP_ENV: EnvNames = EnvNames {
    host: &["DMTCP_COORD_HOST", "DMTCP_HOST", "STASIS_COORD_HOST"],
    port: &["DMTCP_COORD_PORT", "DMTCP_PORT", "STASIS_COORD_PORT"],
    tmpdir: &["DMTCP_TMPDIR", "STASIS_TMPDIR"],
};
const INTERVAL_ENV: &[&str] = &["DMTCP_CHECKPOINT_INTERVAL"];
const CKPT_DIR_ENV: &[&str] = &["DMTCP_CHECKPOINT_DIR"];
const RESTART_DIR_ENV: &[&str] = &["DMTCP_RESTART_DIR"];
const SIGNAL_ENV: &[&str] = &["DMTCP_SIGCKPT"];
const GZIP_ENV: &[&str] = &["DMTCP_GZIP"];
const QUIET_ENV: &[&str] = &["DMTCP_QUIET"];
const COORD_LOG_ENV: &[&str] = &["DMTCP_COORD_LOG_FILENAME"];
const UNIQUE_ENV: &[&str] = &["DMTCP_UNIQUE_CKPT_PLUGIN"];
const STRICT_ENV: &[&str] = &["DMTCP_DISABLE_STRICT_CHECKING"];
const PAUSE_ENV: &[&str] = &["DMTCP_RESTART_PAUSE", "MTCP_RESTART_PAUSE"];

/// What `--version` prints after the name: the DMTCP release whose
/// command line these names answer to, then stasis's own version.
const VERSION: &str = concat!("(DMTCP) 5.0 compatible: stasis ", env!("CARGO_PKG_VERSION"));

/// Refusals: the options DMTCP has that Stasis cannot honour.
fn refuse(option: &str, why: &str) -> NotRun {
    NotRun::Usage(format!("{option} is not supported: {why}"))
}

const NO_COORDINATOR: &str =
    "every stasis computation has a coordinator (dmtcp_launch starts one in the background when none runs)";
/// DMTCP's variables of --checkpoint-open-files and --allow-file-overwrite
/// (on when set, as under DMTCP; `0` is off).
const OPEN_FILES_ENV: &[&str] = &["DMTCP_CKPT_OPEN_FILES"];
const OVERWRITE_ENV: &[&str] = &["DMTCP_ALLOW_OVERWRITE_WITH_CKPTED_FILES", "DMTCP_ALLOW_FILE_OVERWRITE"];
const MODIFY_ENV_RESTART: &str =
    "it is an option of dmtcp_launch: a computation launched with it reads dmtcp_env.txt at every restart";
const MPI: &str = "stasis does not checkpoint MPI programs yet";
const INFINIBAND: &str = "stasis cannot checkpoint InfiniBand connections";
const PLUGINS: &str = "stasis has no DMTCP plugins of its own to turn off";
const PLUGIN_ENV: &[&str] = &["DMTCP_PLUGIN"];
const EVENT_PLUGIN: &str = "the agent itself keeps epoll, eventfd, signalfd and inotify across checkpoints; \
     there is no event plugin to turn off";
const PATHVIRT: &str = "stasis does not translate the program's paths yet; restart it where its files are";
const NO_STRICT: &str = "stasis always checks what a restart needs";

#[derive(Parser, Debug)]
#[command(
    name = "dmtcp_launch",
    version = VERSION,
    about = "Run a program checkpointable (Stasis, answering to DMTCP's command line)",
    override_usage = "dmtcp_launch [OPTIONS] PROGRAM [ARGS]...",
    disable_help_flag = true,
    color = clap::ColorChoice::Never,
    group(ArgGroup::new("mode").multiple(false))
)]
struct LaunchArgs {
    /// The coordinator's host (DMTCP_COORD_HOST)
    #[arg(short = 'h', long = "coord-host", value_name = "HOST")]
    host: Option<String>,
    /// The coordinator's port (DMTCP_COORD_PORT; 0: a free one). Naming none: the checkpoint directory's own coordinator, on a Unix socket
    #[arg(short = 'p', long = "coord-port", value_name = "PORT")]
    port: Option<u16>,
    /// Write the coordinator's port to FILE
    #[arg(long = "port-file", value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Join a running coordinator (with none named: the checkpoint directory's, else port 7779's socket); fail if none answers
    #[arg(short = 'j', long = "join-coordinator", alias = "join", group = "mode")]
    join: bool,
    /// Start a new coordinator; fail if one answers already
    #[arg(long = "new-coordinator", alias = "new", group = "mode")]
    new: bool,
    /// Join the coordinator named, or start one in the background (the default); with none named, start one of the computation's own
    #[arg(long = "any-coordinator", group = "mode")]
    any: bool,
    /// Not supported: stasis always has a coordinator
    #[arg(long = "no-coordinator", group = "mode")]
    no_coordinator: bool,
    /// Checkpoint every SECONDS (DMTCP_CHECKPOINT_INTERVAL; 0: only on request)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Where a coordinator started in the background writes its messages
    #[arg(long = "coord-logfile", value_name = "FILE")]
    coord_logfile: Option<PathBuf>,
    /// Compress images (the default; DMTCP_GZIP=0 turns it off): stasis compresses with zstd, not gzip
    #[arg(long)]
    gzip: bool,
    /// Do not compress images
    #[arg(long = "no-gzip")]
    no_gzip: bool,
    /// Where checkpoints go (DMTCP_CHECKPOINT_DIR; default: the current directory)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Where the coordinator's socket directory goes (DMTCP_TMPDIR; default /tmp)
    #[arg(long = "tmpdir", value_name = "DIR")]
    tmpdir: Option<PathBuf>,
    /// The signal that stops the program's threads (DMTCP_SIGCKPT; default 62)
    #[arg(long = "ckpt-signal", value_name = "SIGNUM", value_parser = cli::ckpt_signal)]
    ckpt_signal: Option<i32>,
    /// Also save your own files open read-only (DMTCP_CKPT_OPEN_FILES)
    #[arg(long = "checkpoint-open-files", alias = "ckpt-open-files")]
    checkpoint_open_files: bool,
    /// At restart, replace a saved file that differs (DMTCP_ALLOW_OVERWRITE_WITH_CKPTED_FILES)
    #[arg(long = "allow-file-overwrite")]
    allow_file_overwrite: bool,
    /// At restart, set and remove the variables dmtcp_env.txt in the checkpoint directory lists
    #[arg(long = "modify-env")]
    modify_env: bool,
    /// Not supported yet
    #[arg(long)]
    pathvirt: bool,
    /// Put each checkpoint's `.dmtcp` names in a directory of their own, ckpt_<computation>_<generation>/ (DMTCP_UNIQUE_CKPT_PLUGIN=1)
    #[arg(long = "enable-unique-checkpoint-filenames", overrides_with = "no_unique")]
    unique: bool,
    /// The `.dmtcp` names at the top of the checkpoint directory (the default)
    #[arg(long = "disable-unique-checkpoint-filenames", overrides_with = "unique")]
    no_unique: bool,
    /// Not supported yet
    #[arg(long)]
    mpi: bool,
    /// Not supported
    #[arg(long = "ib", alias = "infiniband")]
    infiniband: bool,
    /// DMTCP plugins (colon-separated libraries) to load into the program (DMTCP_PLUGIN)
    #[arg(long = "with-plugin", value_name = "PLUGINS")]
    with_plugin: Option<String>,
    /// Ignored: stasis has no event plugin (DMTCP_EVENT_PLUGIN=0 likewise)
    #[arg(long = "disable-event-plugin")]
    disable_event_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-all-plugins")]
    disable_all_plugins: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-alloc-plugin")]
    disable_alloc_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-dl-plugin")]
    disable_dl_plugin: bool,
    /// Ignored: stasis has no plugins (the rest of DMTCP's built-in plugin switches)
    #[arg(long = "disable-ssh-plugin")]
    disable_ssh_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-file-plugin")]
    disable_file_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-pty-plugin")]
    disable_pty_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-socket-plugin")]
    disable_socket_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-svipc-plugin")]
    disable_svipc_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-timer-plugin")]
    disable_timer_plugin: bool,
    /// Ignored: stasis has no plugins
    #[arg(long = "disable-pid-plugin")]
    disable_pid_plugin: bool,
    /// Ignored: stasis finds its agent next to its own binary
    #[arg(long = "prefix", value_name = "PATH")]
    prefix: Option<PathBuf>,
    /// How many committed generations to keep (stasis)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// The coordinator's Unix socket, instead of the one its port names (stasis)
    #[arg(long = "coord-socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print no notes (DMTCP_QUIET)
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count)]
    quiet: u8,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// The program to run, and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

#[derive(Parser, Debug)]
#[command(
    name = "dmtcp_restart",
    version = VERSION,
    about = "Restart a checkpointed computation (Stasis, answering to DMTCP's command line)",
    override_usage = "dmtcp_restart [OPTIONS] [ckpt_*.dmtcp ... | DIR]",
    disable_help_flag = true,
    color = clap::ColorChoice::Never,
    group(ArgGroup::new("mode").multiple(false))
)]
struct RestartArgs {
    /// The coordinator's host (DMTCP_COORD_HOST)
    #[arg(short = 'h', long = "coord-host", value_name = "HOST")]
    host: Option<String>,
    /// The coordinator's port (DMTCP_COORD_PORT; 0: a free one). Naming none: the checkpoint directory's own coordinator, on a Unix socket
    #[arg(short = 'p', long = "coord-port", value_name = "PORT")]
    port: Option<u16>,
    /// Write the coordinator's port to FILE
    #[arg(long = "port-file", value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Join a running coordinator (with none named: the checkpoint directory's, else port 7779's socket); fail if none answers
    #[arg(short = 'j', long = "join-coordinator", alias = "join", group = "mode")]
    join: bool,
    /// Start a new coordinator; fail if one answers already
    #[arg(long = "new-coordinator", alias = "new", group = "mode")]
    new: bool,
    /// Join the coordinator named, or start one in the background (the default); with none named, start one of the computation's own
    #[arg(long = "any-coordinator", group = "mode")]
    any: bool,
    /// Checkpoint every SECONDS (DMTCP_CHECKPOINT_INTERVAL; default: the interval the checkpoint had)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Images named without a directory are in DIR; with no image, restart DIR (DMTCP_RESTART_DIR)
    #[arg(long = "restartdir", value_name = "DIR")]
    restart_dir: Option<PathBuf>,
    /// Where later checkpoints go (DMTCP_CHECKPOINT_DIR; default: where the images are)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Restart generation N of the checkpoint directory (gen-NNNNNN), not its newest (a stasis extension)
    #[arg(long = "generation", value_name = "N", conflicts_with = "fallback")]
    generation: Option<u64>,
    /// If the newest generation is damaged, restart the newest intact one (a stasis extension)
    #[arg(long)]
    fallback: bool,
    /// Where the coordinator's socket directory goes (DMTCP_TMPDIR; default /tmp)
    #[arg(long = "tmpdir", value_name = "DIR")]
    tmpdir: Option<PathBuf>,
    /// Where a coordinator started in the background writes its messages
    #[arg(long = "coord-logfile", value_name = "FILE")]
    coord_logfile: Option<PathBuf>,
    /// Ignored: stasis always checks images, mapped files and the kernel
    #[arg(long = "no-strict-checking")]
    no_strict_checking: bool,
    /// Stop before restoring, for a debugger, until sent SIGCONT (DMTCP_RESTART_PAUSE; 1 to 7, all the same here)
    #[arg(long = "debug-restart-pause", value_name = "N", value_parser = cli::restart_pause)]
    debug_restart_pause: Option<u8>,
    /// Not supported
    #[arg(long = "modify-env")]
    modify_env: bool,
    /// Not supported yet
    #[arg(long)]
    mpi: bool,
    /// How many committed generations to keep (stasis)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// The coordinator's Unix socket, instead of the one its port names (stasis)
    #[arg(long = "coord-socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print no notes (DMTCP_QUIET)
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count)]
    quiet: u8,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Images (ckpt_*.dmtcp), or a checkpoint directory
    #[arg(value_name = "IMAGE|DIR")]
    targets: Vec<PathBuf>,
}

#[derive(Parser, Debug)]
#[command(
    name = "dmtcp_coordinator",
    version = VERSION,
    about = "Run a computation's coordinator (Stasis, answering to DMTCP's command line)",
    disable_help_flag = true,
    color = clap::ColorChoice::Never
)]
struct CoordinatorArgs {
    /// Also listen on this TCP port (DMTCP_COORD_PORT; 0: any free one); default: no TCP, the Unix socket of port 7779
    #[arg(short = 'p', long = "coord-port", visible_alias = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Write the TCP port to FILE once listening
    #[arg(long = "port-file", value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Where generations, the secret and dmtcp_restart_script.sh go (DMTCP_CHECKPOINT_DIR)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Where the coordinator's socket directory goes (DMTCP_TMPDIR; default /tmp)
    #[arg(long = "tmpdir", value_name = "DIR")]
    tmpdir: Option<PathBuf>,
    /// Exit when the last process of the computation is gone
    #[arg(long = "exit-on-last")]
    exit_on_last: bool,
    /// Kill the computation and exit after the first checkpoint
    #[arg(long = "exit-after-ckpt")]
    exit_after_ckpt: bool,
    /// Run in the background, without a console
    #[arg(long)]
    daemon: bool,
    /// Write messages to FILE instead of stderr
    #[arg(long = "coord-logfile", value_name = "FILE")]
    coord_logfile: Option<PathBuf>,
    /// Checkpoint every SECONDS (DMTCP_CHECKPOINT_INTERVAL; 0: only on request)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Exit after SECONDS without any process
    #[arg(long = "timeout", value_name = "SECONDS")]
    timeout: Option<u32>,
    /// The same as --timeout, under DMTCP's other name for it (-1 or 0: never; DMTCP's default of 8 hours is not stasis's)
    #[arg(long = "stale-timeout", value_name = "SECONDS", allow_negative_numbers = true)]
    stale_timeout: Option<i64>,
    /// Listen on TCP at this address (default: DMTCP_COORD_HOST's address, else 127.0.0.1; stasis)
    #[arg(long = "listen", value_name = "ADDRESS")]
    listen: Option<IpAddr>,
    /// How many committed generations to keep (stasis)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Listen on this Unix socket (then on TCP only if -p is given; stasis)
    #[arg(long = "coord-socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print no notes (DMTCP_QUIET)
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count)]
    quiet: u8,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

fn env_quiet(env: cli::Env) -> bool {
    first_env(env, QUIET_ENV).is_some_and(|(_, v)| v != "0")
}

fn env_path(env: cli::Env, names: &[&'static str]) -> Option<PathBuf> {
    first_env(env, names).map(|(_, v)| v.into())
}

/// Whether images are compressed: as DMTCP, yes unless --no-gzip or
/// DMTCP_GZIP=0 says otherwise (a flag wins over the variable). Stasis
/// compresses with zstd at level 1, in parallel, which keeps up with a disk where gzip would not.
fn compress(flag: bool, no_flag: bool, env: cli::Env) -> bool {
    if flag || no_flag {
        return flag;
    }
    first_env(env, GZIP_ENV).is_none_or(|(_, v)| v != "0")
}

/// Whether each checkpoint's `.dmtcp` names go in a directory of their
/// own: a flag wins over DMTCP_UNIQUE_CKPT_PLUGIN (on unless "0").
fn unique(flag: bool, no_flag: bool, env: cli::Env) -> bool {
    if flag || no_flag {
        return flag;
    }
    first_env(env, UNIQUE_ENV).is_some_and(|(_, v)| v != "0")
}

fn mode(join: bool, new: bool) -> Mode {
    if join {
        Mode::Join
    } else if new {
        Mode::New
    } else {
        Mode::Any
    }
}

/// Parses the command line of `name`.
pub fn parse(name: Name, args: impl IntoIterator<Item = OsString>, env: cli::Env) -> Result<Parsed, NotRun> {
    let err = |e| cli::not_run(e, name.as_str());
    let mut notes = Vec::new();
    let verb = match name {
        Name::Launch => {
            let a = LaunchArgs::try_parse_from(args).map_err(err)?;
            for (set, option, why) in [
                (a.no_coordinator, "--no-coordinator", NO_COORDINATOR),
                (a.pathvirt, "--pathvirt", PATHVIRT),
                (a.mpi, "--mpi", MPI),
                (a.infiniband, "--ib", INFINIBAND),
            ] {
                if set {
                    return Err(refuse(option, why));
                }
            }
            let compress = compress(a.gzip, a.no_gzip, env);
            let unique_ckpt = unique(a.unique, a.no_unique, env);
            for (set, option) in [
                (a.disable_all_plugins, "--disable-all-plugins"),
                (a.disable_alloc_plugin, "--disable-alloc-plugin"),
                (a.disable_dl_plugin, "--disable-dl-plugin"),
                (a.disable_ssh_plugin, "--disable-ssh-plugin"),
                (a.disable_file_plugin, "--disable-file-plugin"),
                (a.disable_pty_plugin, "--disable-pty-plugin"),
                (a.disable_socket_plugin, "--disable-socket-plugin"),
                (a.disable_svipc_plugin, "--disable-svipc-plugin"),
                (a.disable_timer_plugin, "--disable-timer-plugin"),
                (a.disable_pid_plugin, "--disable-pid-plugin"),
            ] {
                if set {
                    notes.push(format!("{option} is ignored: {PLUGINS}"));
                }
            }
            if a.disable_event_plugin {
                notes.push(format!("--disable-event-plugin is ignored: {EVENT_PLUGIN}"));
            }
            // DMTCP_PLUGIN's first, as DMTCP preloads them.
            let plugins: Vec<PathBuf> = first_env(env, PLUGIN_ENV)
                .map(|(_, v)| v)
                .into_iter()
                .chain(a.with_plugin)
                .flat_map(|list| list.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect::<Vec<_>>())
                .collect();
            if a.prefix.is_some() {
                notes.push("--prefix is ignored: stasis finds its agent next to its own binary".into());
            }
            let ckpt_signal = match a.ckpt_signal {
                Some(s) => Some(s),
                None => match first_env(env, SIGNAL_ENV) {
                    None => None,
                    Some((n, v)) => Some(cli::ckpt_signal(&v).map_err(|e| NotRun::Usage(format!("{n}: {e}")))?),
                },
            };
            Verb::Launch(LaunchOpts {
                mode: mode(a.join, a.new),
                coord: cli::coord_opts(a.socket, a.host, a.port, a.tmpdir, env, &DMTCP_ENV, true)?,
                interval_s: match a.interval {
                    Some(i) => Some(i),
                    None => env_number(env, INTERVAL_ENV, "a number of seconds")?,
                },
                ckpt_dir: a.ckpt_dir.or_else(|| env_path(env, CKPT_DIR_ENV)),
                keep: a.keep as usize,
                compress,
                // DMTCP has no such option: the default.
                full_every: None,
                port_file: a.port_file,
                coord_logfile: a.coord_logfile,
                ckpt_signal,
                // STASIS_SAVE_FILES_LIMIT and STASIS_NO_SAVE_FILE reach the agent as they are.
                save_files: SaveFiles {
                    open_files: a.checkpoint_open_files
                        || first_env(env, OPEN_FILES_ENV).is_some_and(|(_, v)| savedfiles::is_on(Some(&v))),
                    allow_overwrite: a.allow_file_overwrite
                        || first_env(env, OVERWRITE_ENV).is_some_and(|(_, v)| savedfiles::is_on(Some(&v))),
                    ..Default::default()
                },
                quiet: a.quiet > 0 || env_quiet(env),
                usr2_checkpoints: true,
                plugins,
                unique_ckpt,
                modify_env: a.modify_env,
                program: a.program,
            })
        }
        Name::Restart => {
            let a = RestartArgs::try_parse_from(args).map_err(err)?;
            for (set, option, why) in [(a.modify_env, "--modify-env", MODIFY_ENV_RESTART), (a.mpi, "--mpi", MPI)] {
                if set {
                    return Err(refuse(option, why));
                }
            }
            if a.no_strict_checking {
                notes.push(format!("--no-strict-checking is ignored: {NO_STRICT}"));
            } else if let Some((n, _)) = first_env(env, STRICT_ENV) {
                notes.push(format!("{n} is ignored: {NO_STRICT}"));
            }
            let pause = match a.debug_restart_pause {
                Some(p) => Some(p),
                None => match first_env(env, PAUSE_ENV) {
                    None => None,
                    Some((n, v)) => Some(cli::restart_pause(&v).map_err(|e| NotRun::Usage(format!("{n}: {e}")))?),
                },
            };
            let restart_dir = a.restart_dir.or_else(|| env_path(env, RESTART_DIR_ENV));
            if a.targets.is_empty() && restart_dir.is_none() {
                return Err(NotRun::Usage(
                    "dmtcp_restart needs images (ckpt_*.dmtcp) or a checkpoint directory (see dmtcp_restart --help)"
                        .into(),
                ));
            }
            Verb::Restart(RestartOpts {
                mode: mode(a.join, a.new),
                coord: cli::coord_opts(a.socket, a.host, a.port, a.tmpdir, env, &DMTCP_ENV, true)?,
                interval_s: match a.interval {
                    Some(i) => Some(i),
                    None => env_number(env, INTERVAL_ENV, "a number of seconds")?,
                },
                ckpt_dir: a.ckpt_dir.or_else(|| env_path(env, CKPT_DIR_ENV)),
                keep: a.keep as usize,
                compress: compress(false, false, env),
                full_every: None,
                port_file: a.port_file,
                coord_logfile: a.coord_logfile,
                restart_dir,
                generation: a.generation,
                fallback: a.fallback,
                quiet: a.quiet > 0 || env_quiet(env),
                usr2_checkpoints: true,
                verify_first: cli::verify_first_env(env),
                pause,
                unique_ckpt: unique(false, false, env),
                targets: a.targets,
            })
        }
        Name::Command => command(args, env)?,
        Name::Coordinator => {
            let a = CoordinatorArgs::try_parse_from(args).map_err(err)?;
            Verb::Coordinator(CoordinatorOpts {
                coord: cli::coord_opts(a.socket, None, a.port, a.tmpdir, env, &DMTCP_ENV, false)?,
                listen: a.listen,
                ckpt_dir: a.ckpt_dir.or_else(|| env_path(env, CKPT_DIR_ENV)),
                interval_s: match a.interval {
                    Some(i) => i,
                    None => env_number(env, INTERVAL_ENV, "a number of seconds")?.unwrap_or(0),
                },
                keep: a.keep as usize,
                full_every: stasis_coord::DEFAULT_FULL_EVERY,
                compress: compress(false, false, env),
                exit_on_last: a.exit_on_last,
                exit_after_ckpt: a.exit_after_ckpt,
                idle_timeout: a
                    .timeout
                    .or_else(|| a.stale_timeout.filter(|&t| t > 0).map(|t| t.try_into().unwrap_or(u32::MAX))),
                daemon: a.daemon,
                port_file: a.port_file,
                coord_logfile: a.coord_logfile.or_else(|| env_path(env, COORD_LOG_ENV)),
                quiet: a.quiet > 0 || env_quiet(env),
                ready_fd: None,
            })
        }
    };
    Ok(Parsed { verb, notes })
}

const COMMAND_HELP: &str = "\
Send a command to a computation's coordinator (Stasis, answering to DMTCP's command line)

Usage: dmtcp_command [OPTIONS] COMMAND

Options:
  -h, --coord-host HOST  The coordinator's host (DMTCP_COORD_HOST; default: localhost)
  -p, --coord-port PORT  The coordinator's port (DMTCP_COORD_PORT; -pPORT too)
      --ckptdir DIR      The computation's checkpoint directory: its coordinator, unless one is named,
                         and where its secret is (DMTCP_CHECKPOINT_DIR; stasis)
      --coord-socket PATH
                         The coordinator's Unix socket, instead of the one its port names (stasis)
      --tmpdir DIR       Where the coordinator's socket directory is (DMTCP_TMPDIR; default /tmp)
      --json             The answer as one JSON object, in DMTCP's schema
      --help             Print help (-h, h and ? too, alone)
  -V, --version          Print version

Commands (one; any number of leading dashes, as DMTCP reads them):
  -s, --status           Report the computation's state
  -l, --list             List the computation's processes (also t)
  -c, --checkpoint       Start a checkpoint and return once it has begun
  -bc, --bcheckpoint     Checkpoint and return once the checkpoint is committed
  -kc, --kcheckpoint     Checkpoint, commit, then kill the computation, which does not run in between
                         (also ck, K, Kc)
  -i, --interval SECONDS Checkpoint every SECONDS from now on (0: only on request; -i5 and i5 too)
  -k, --kill             Kill every process of the computation
  -q, --quit             Kill every process of the computation and end the coordinator
";

/// A dmtcp_command word that names a command (after its leading dashes),
/// as DMTCP reads them; `None` for help, which is no request.
fn command_named(word: &str) -> Option<Option<Action>> {
    Some(Some(match word {
        "s" | "status" => Action::Status,
        "l" | "t" | "list" => Action::List,
        "c" | "checkpoint" => Action::StartCheckpoint,
        "bc" | "bcheckpoint" => Action::BlockingCheckpoint,
        "kc" | "ck" | "K" | "Kc" | "kcheckpoint" => Action::CheckpointThenKill,
        "k" | "kill" => Action::Kill,
        "q" | "quit" => Action::Quit,
        "h" | "help" | "?" => return Some(None),
        _ => return None,
    }))
}

/// dmtcp_command's command line, read as DMTCP reads it: options and one
/// command, the command with any number of leading dashes (`-bc`, `bc`,
/// `--bc`), `-i5`/`i5`, `-p7779`; `-h` alone is help, `-h HOST` the host.
/// With `--json`, help, version and a line that cannot be read answer in
/// DMTCP's JSON schema on stdout.
fn command(args: impl IntoIterator<Item = OsString>, env: cli::Env) -> Result<Verb, NotRun> {
    let words: Vec<String> = args.into_iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let (mut host, mut port, mut ckpt_dir, mut socket, mut tmpdir) = (None, None, None, None, None);
    let mut json = false;
    let mut actions = Vec::new();
    let mut bad: Option<String> = None;
    let mut help = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let last = i + 1 == words.len();
        let value = words.get(i + 1).cloned();
        i += 1;
        match w {
            "--help" | "-h" if last => help = true,
            "--version" | "-V" if last => {
                let text = format!("dmtcp_command {VERSION}\n");
                return Err(NotRun::Asked(if json { command::dmtcp_json::version(text.trim_end()) } else { text }));
            }
            "--json" => json = true,
            "-h" | "--coord-host" | "--host" => {
                host = value;
                i += 1;
            }
            "-p" | "--coord-port" | "--port" => {
                port = value;
                i += 1;
            }
            "--ckptdir" | "--coord-socket" | "--tmpdir" if !last => {
                let v = value.map(PathBuf::from);
                match w {
                    "--ckptdir" => ckpt_dir = v,
                    "--coord-socket" => socket = v,
                    _ => tmpdir = v,
                }
                i += 1;
            }
            w if w.len() > 2 && w.starts_with("-p") && w.as_bytes()[2].is_ascii_digit() => port = Some(w[2..].into()),
            _ => {
                let cmd = w.trim_start_matches('-');
                if let Some(n) = cmd
                    .strip_prefix(['i'])
                    .filter(|n| n.is_empty() || n.as_bytes()[0].is_ascii_digit())
                    .or_else(|| cmd.strip_prefix("interval").filter(|n| n.is_empty()))
                {
                    let n = if n.is_empty() {
                        i += 1;
                        value
                    } else {
                        Some(n.to_string())
                    };
                    match n.as_deref().map(str::parse::<u32>) {
                        Some(Ok(s)) => actions.push(Action::Interval(s)),
                        _ => bad = bad.or_else(|| Some(format!("{w} needs a whole number of seconds"))),
                    }
                    continue;
                }
                match command_named(cmd) {
                    Some(Some(a)) => actions.push(a),
                    Some(None) => help = true,
                    None => bad = bad.or_else(|| Some(format!("unknown command or option {w:?}"))),
                }
            }
        }
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                bad = bad.or_else(|| Some(format!("{p:?} is not a port number")));
                None
            }
        },
    };
    if bad.is_none() && actions.len() > 1 {
        bad = Some("give one command at a time".into());
    }
    if bad.is_none() && actions.is_empty() && !help {
        // DMTCP's --json alone answers as help does.
        if json {
            help = true;
        } else {
            bad = Some("no command given".into());
        }
    }
    let ckpt_env = env_path(env, CKPT_DIR_ENV);
    let secret_dirs = ckpt_dir.iter().cloned().chain(ckpt_env.clone()).chain(cwd()).collect();
    let coord = cli::command_coord_opts(socket, host, port, tmpdir, ckpt_dir, ckpt_env, env, &DMTCP_ENV);
    if help {
        if !json {
            return Err(NotRun::Asked(COMMAND_HELP.into()));
        }
        let c = coord.unwrap_or_default();
        return Err(NotRun::Asked(command::dmtcp_json::help(
            c.host.as_deref().unwrap_or("localhost"),
            c.port.unwrap_or(7779),
        )));
    }
    let (coord, action) = match (bad, json) {
        (None, _) => (coord?, actions[0]),
        (Some(why), false) => return Err(NotRun::Usage(format!("{why} (see dmtcp_command --help)"))),
        // Answered in JSON, exit status 2, as DMTCP does.
        (Some(_), true) => (coord.unwrap_or_default(), Action::Invalid),
    };
    Ok(Verb::Command(CommandOpts { coord, action, json, secret_dirs, dmtcp: true }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_coord::client::Addr;

    fn parse_env(name: Name, args: &[&str], vars: &[(&str, &str)]) -> Result<Parsed, NotRun> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let argv = std::iter::once(name.as_str()).chain(args.iter().copied()).map(OsString::from);
        parse(name, argv, &env)
    }

    fn launch(args: &[&str], vars: &[(&str, &str)]) -> (LaunchOpts, Vec<String>) {
        match parse_env(Name::Launch, args, vars) {
            Ok(Parsed { verb: Verb::Launch(o), notes }) => (o, notes),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn restart(args: &[&str], vars: &[(&str, &str)]) -> (RestartOpts, Vec<String>) {
        match parse_env(Name::Restart, args, vars) {
            Ok(Parsed { verb: Verb::Restart(o), notes }) => (o, notes),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn command(args: &[&str], vars: &[(&str, &str)]) -> CommandOpts {
        match parse_env(Name::Command, args, vars) {
            Ok(Parsed { verb: Verb::Command(o), .. }) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn coordinator(args: &[&str], vars: &[(&str, &str)]) -> CoordinatorOpts {
        match parse_env(Name::Coordinator, args, vars) {
            Ok(Parsed { verb: Verb::Coordinator(o), .. }) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// A usage error, one line, that contains every one of `want`.
    #[track_caller]
    fn refused(name: Name, args: &[&str], want: &[&str]) {
        match parse_env(name, args, &[]) {
            Err(NotRun::Usage(m)) => {
                assert!(!m.contains('\n'), "{m}");
                for w in want {
                    assert!(m.contains(w), "{args:?}: {w:?} not in {m:?}");
                }
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn names_by_the_file_name_called() {
        assert_eq!(Name::from_program("dmtcp_launch".as_ref()), Some(Name::Launch));
        assert_eq!(Name::from_program("/opt/bin/dmtcp_restart".as_ref()), Some(Name::Restart));
        assert_eq!(Name::from_program("./dmtcp_command".as_ref()), Some(Name::Command));
        assert_eq!(Name::from_program("dmtcp_coordinator".as_ref()), Some(Name::Coordinator));
        assert_eq!(Name::from_program("stasis".as_ref()), None);
        assert_eq!(Name::from_program("dmtcp_launch.sh".as_ref()), None);
    }

    #[test]
    fn launch_as_the_howto_writes_it() {
        let (o, notes) = launch(&["-i", "60", "--ckptdir", "/scratch/ck/", "./your_program", "-x"], &[]);
        assert_eq!((o.interval_s, o.mode, o.keep), (Some(60), Mode::Any, 2));
        // Nothing names a coordinator: the checkpoint directory gets its own.
        assert!(!o.coord.named());
        assert_eq!(o.ckpt_dir, Some(PathBuf::from("/scratch/ck/")));
        assert_eq!(o.program, ["./your_program", "-x"]);
        assert!(notes.is_empty(), "{notes:?}");
        let (o, _) = launch(&["--join-coordinator", "./p"], &[]);
        assert_eq!(o.mode, Mode::Join);
        let (o, _) = launch(&["-j", "-h", "node4", "-p", "7780", "--port-file", "pf", "./p"], &[]);
        assert_eq!((o.mode, o.coord.host.as_deref(), o.coord.port), (Mode::Join, Some("node4"), Some(7780)));
        assert_eq!(o.port_file, Some(PathBuf::from("pf")));
        let (o, _) = launch(&["--new-coordinator", "--coord-port", "0", "./p"], &[]);
        assert_eq!((o.mode, o.coord.port), (Mode::New, Some(0)));
        // Plugins: DMTCP_PLUGIN's first, then --with-plugin's, colon-separated.
        let (o, notes) = launch(
            &["--with-plugin", "/p/b.so:/p/c.so", "--disable-event-plugin", "./p"],
            &[("DMTCP_PLUGIN", "/p/a.so")],
        );
        let want: Vec<PathBuf> = ["/p/a.so", "/p/b.so", "/p/c.so"].iter().map(PathBuf::from).collect();
        assert_eq!(o.plugins, want);
        assert!(notes.iter().any(|n| n.contains("--disable-event-plugin is ignored")), "{notes:?}");
        assert!(launch(&["./p"], &[]).0.plugins.is_empty());
        let (o, _) = launch(&["--tmpdir", "/t", "--ckpt-signal", "12", "-q", "--no-gzip", "./p"], &[]);
        assert_eq!((o.coord.tmpdir, o.ckpt_signal, o.quiet), (Some(PathBuf::from("/t")), Some(12), true));
        let (o, _) = launch(&["--coord-host", "n", "--interval", "5", "--coord-logfile", "log", "./p"], &[]);
        assert_eq!((o.coord.host.as_deref(), o.interval_s), (Some("n"), Some(5)));
        assert_eq!(o.coord_logfile, Some(PathBuf::from("log")));
    }

    #[test]
    fn launch_reads_dmtcp_variables() {
        let vars = [
            ("DMTCP_COORD_HOST", "node9"),
            ("DMTCP_COORD_PORT", "7001"),
            ("DMTCP_CHECKPOINT_INTERVAL", "30"),
            ("DMTCP_CHECKPOINT_DIR", "/ck"),
            ("DMTCP_TMPDIR", "/t"),
            ("DMTCP_SIGCKPT", "10"),
            ("DMTCP_QUIET", "1"),
        ];
        let (o, _) = launch(&["./p"], &vars);
        assert_eq!((o.coord.host.as_deref(), o.coord.port), (Some("node9"), Some(7001)));
        assert_eq!((o.interval_s, o.ckpt_dir), (Some(30), Some(PathBuf::from("/ck"))));
        assert_eq!((o.coord.tmpdir, o.ckpt_signal, o.quiet), (Some(PathBuf::from("/t")), Some(10), true));
        // Flags beat variables; DMTCP's variables beat stasis's.
        let (o, _) = launch(&["-i", "5", "-p", "8", "./p"], &vars);
        assert_eq!((o.interval_s, o.coord.port), (Some(5), Some(8)));
        let (o, _) = launch(&["./p"], &[("DMTCP_PORT", "7002"), ("STASIS_COORD_PORT", "7003")]);
        assert_eq!(o.coord.port, Some(7002));
        // The address a launched program was given beats host and port variables.
        let (o, _) = launch(&["./p"], &[("STASIS_COORD_ADDR", "unix:/s.sock"), ("DMTCP_COORD_PORT", "7001")]);
        assert_eq!(o.coord.addr, Some(Addr::Unix("/s.sock".into())));
        for (k, v) in [("DMTCP_CHECKPOINT_INTERVAL", "often"), ("DMTCP_COORD_PORT", "x"), ("DMTCP_SIGCKPT", "9")] {
            match parse_env(Name::Launch, &["./p"], &[(k, v)]) {
                Err(NotRun::Usage(m)) => assert!(m.contains(k), "{m}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }

    #[test]
    fn checkpoint_open_files_and_allow_file_overwrite_by_option_or_variable() {
        let files = |args: &[&str], env: &[(&str, &str)]| {
            let (o, _) = launch(args, env);
            (o.save_files.open_files, o.save_files.allow_overwrite)
        };
        assert_eq!(files(&["./p"], &[]), (false, false));
        assert_eq!(files(&["--checkpoint-open-files", "./p"], &[]), (true, false));
        assert_eq!(files(&["--ckpt-open-files", "--allow-file-overwrite", "./p"], &[]), (true, true));
        assert_eq!(files(&["./p"], &[("DMTCP_CKPT_OPEN_FILES", "1")]), (true, false));
        assert_eq!(files(&["./p"], &[("DMTCP_CKPT_OPEN_FILES", "0")]), (false, false));
        assert_eq!(files(&["./p"], &[("DMTCP_ALLOW_OVERWRITE_WITH_CKPTED_FILES", "1")]), (false, true));
        assert_eq!(files(&["./p"], &[("DMTCP_ALLOW_FILE_OVERWRITE", "1")]), (false, true));
    }

    #[test]
    fn launch_refuses_what_it_cannot_do_and_notes_what_it_ignores() {
        refused(Name::Launch, &["--no-coordinator", "./p"], &["--no-coordinator", "not supported"]);
        match parse_env(Name::Launch, &["--modify-env", "./p"], &[]) {
            Ok(Parsed { verb: Verb::Launch(o), .. }) => assert!(o.modify_env),
            other => panic!("{other:?}"),
        }
        refused(Name::Launch, &["--mpi", "./p"], &["--mpi"]);
        refused(Name::Launch, &["--ib", "./p"], &["--ib"]);
        refused(Name::Launch, &["--pathvirt", "./p"], &["--pathvirt", "not supported", "paths"]);
        // The last of the two flags counts, and a flag beats the variable.
        let unique = |args: &[&str], vars: &[(&str, &str)]| match parse_env(Name::Launch, args, vars) {
            Ok(Parsed { verb: Verb::Launch(o), .. }) => Ok(o.unique_ckpt),
            Err(NotRun::Usage(m)) => Err(m),
            other => panic!("{other:?}"),
        };
        assert_eq!(unique(&["--disable-unique-checkpoint-filenames", "./p"], &[]), Ok(false));
        assert_eq!(
            unique(&["--disable-unique-checkpoint-filenames", "./p"], &[("DMTCP_UNIQUE_CKPT_PLUGIN", "1")]),
            Ok(false)
        );
        assert_eq!(
            unique(&["--enable-unique-checkpoint-filenames", "--disable-unique-checkpoint-filenames", "./p"], &[]),
            Ok(false)
        );
        assert_eq!(unique(&["./p"], &[("DMTCP_UNIQUE_CKPT_PLUGIN", "0")]), Ok(false));
        assert_eq!(unique(&["./p"], &[("DMTCP_UNIQUE_CKPT_PLUGIN", "1")]), Ok(true));
        assert_eq!(unique(&["--enable-unique-checkpoint-filenames", "./p"], &[]), Ok(true));
        assert!(restart(&["x.dmtcp"], &[("DMTCP_UNIQUE_CKPT_PLUGIN", "1")]).0.unique_ckpt);
        assert!(!restart(&["x.dmtcp"], &[]).0.unique_ckpt);
        refused(Name::Launch, &["-j", "--new-coordinator", "./p"], &["dmtcp_launch --help"]);
        refused(Name::Launch, &["--frobnicate", "./p"], &["--frobnicate", "dmtcp_launch --help"]);
        refused(Name::Launch, &[], &["dmtcp_launch --help"]);
        // Compressed by default, as with DMTCP; a flag wins over DMTCP_GZIP.
        for (args, vars, want) in [
            (&["./p"][..], &[][..], true),
            (&["--gzip", "./p"], &[], true),
            (&["--no-gzip", "./p"], &[], false),
            (&["./p"], &[("DMTCP_GZIP", "0")], false),
            (&["./p"], &[("DMTCP_GZIP", "1")], true),
            (&["--gzip", "./p"], &[("DMTCP_GZIP", "0")], true),
        ] {
            let (o, notes) = launch(args, vars);
            assert_eq!(o.compress, want, "{args:?} {vars:?}");
            assert!(notes.is_empty(), "{notes:?}");
        }
        assert!(!restart(&["x.dmtcp"], &[("DMTCP_GZIP", "0")]).0.compress);
        assert!(coordinator(&[], &[]).compress);
        let (_, notes) = launch(&["--disable-dl-plugin", "--prefix", "/x", "./p"], &[]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(matches!(parse_env(Name::Launch, &["--help"], &[]), Err(NotRun::Asked(t)) if t.contains("--ckptdir")));
        assert!(matches!(parse_env(Name::Launch, &["--version"], &[]), Err(NotRun::Asked(t)) if t.contains("stasis")));
    }

    #[test]
    fn restart_as_the_howto_writes_it() {
        let (o, notes) = restart(&["/ck/ckpt_a_1.dmtcp", "/ck/ckpt_b_2.dmtcp"], &[]);
        assert_eq!(o.targets.len(), 2);
        assert_eq!((o.mode, o.interval_s, o.ckpt_dir), (Mode::Any, None, None));
        assert!(notes.is_empty());
        let (o, _) = restart(&["--join-coordinator", "ckpt_a.dmtcp"], &[]);
        assert_eq!(o.mode, Mode::Join);
        let (o, _) = restart(&["-h", "n1", "-p", "7781", "-i", "20", "--restartdir", "/ck", "--new"], &[]);
        assert_eq!((o.coord.host.as_deref(), o.coord.port, o.interval_s), (Some("n1"), Some(7781), Some(20)));
        assert_eq!((o.restart_dir, o.mode), (Some(PathBuf::from("/ck")), Mode::New));
        let (o, _) = restart(&[], &[("DMTCP_RESTART_DIR", "/r"), ("DMTCP_CHECKPOINT_DIR", "/c")]);
        assert_eq!((o.restart_dir, o.ckpt_dir), (Some(PathBuf::from("/r")), Some(PathBuf::from("/c"))));
        let (o, _) = restart(&["--generation", "3", "/ck"], &[]);
        assert_eq!((o.generation, o.fallback), (Some(3), false));
        let (o, _) = restart(&["--fallback", "--restartdir", "/ck"], &[]);
        assert_eq!((o.generation, o.fallback), (None, true));
        refused(Name::Restart, &["--fallback", "--generation", "3", "/ck"], &["--generation"]);
        let (_, notes) = restart(&["--no-strict-checking", "x.dmtcp"], &[]);
        assert!(notes[0].contains("--no-strict-checking is ignored"), "{notes:?}");
        let (_, notes) = restart(&["x.dmtcp"], &[("DMTCP_DISABLE_STRICT_CHECKING", "1")]);
        assert!(notes[0].contains("DMTCP_DISABLE_STRICT_CHECKING is ignored"), "{notes:?}");
        // A pause before restoring: the flag, else the variable; 1 to 7.
        assert_eq!(restart(&["--debug-restart-pause", "2", "x.dmtcp"], &[]).0.pause, Some(2));
        assert_eq!(restart(&["x.dmtcp"], &[("DMTCP_RESTART_PAUSE", "1")]).0.pause, Some(1));
        assert_eq!(
            restart(&["--debug-restart-pause", "3", "x.dmtcp"], &[("DMTCP_RESTART_PAUSE", "1")]).0.pause,
            Some(3)
        );
        assert_eq!(restart(&["x.dmtcp"], &[]).0.pause, None);
        refused(Name::Restart, &["--debug-restart-pause", "8", "x.dmtcp"], &["restart pause level"]);
        match parse_env(Name::Restart, &["x.dmtcp"], &[("DMTCP_RESTART_PAUSE", "yes")]) {
            Err(NotRun::Usage(m)) => assert!(m.contains("DMTCP_RESTART_PAUSE"), "{m}"),
            other => panic!("{other:?}"),
        }
        refused(Name::Restart, &[], &["needs images"]);
        refused(Name::Restart, &["--modify-env", "x.dmtcp"], &["--modify-env", "dmtcp_launch"]);
        refused(Name::Restart, &["--mpi", "x.dmtcp"], &["--mpi"]);
        refused(Name::Restart, &["--gzip", "x.dmtcp"], &["--gzip", "dmtcp_restart --help"]);
    }

    #[test]
    fn command_takes_dmtcp_spellings() {
        let action = |args: &[&str]| command(args, &[]).action;
        assert_eq!(action(&["-s"]), Action::Status);
        assert_eq!(action(&["--status"]), Action::Status);
        assert_eq!(action(&["s"]), Action::Status);
        assert_eq!(action(&["-l"]), Action::List);
        assert_eq!(action(&["-c"]), Action::StartCheckpoint);
        assert_eq!(action(&["c"]), Action::StartCheckpoint);
        assert_eq!(action(&["-bc"]), Action::BlockingCheckpoint);
        assert_eq!(action(&["--bcheckpoint"]), Action::BlockingCheckpoint);
        assert_eq!(action(&["-kc"]), Action::CheckpointThenKill);
        assert_eq!(action(&["-i", "60"]), Action::Interval(60));
        assert_eq!(action(&["i", "60"]), Action::Interval(60));
        assert_eq!(action(&["--interval", "0"]), Action::Interval(0));
        assert_eq!(action(&["-k"]), Action::Kill);
        assert_eq!(action(&["-q"]), Action::Quit);
        assert_eq!(action(&["--quit"]), Action::Quit);
        // Any number of leading dashes, as DMTCP reads them.
        assert_eq!(action(&["-bcheckpoint"]), Action::BlockingCheckpoint);
        assert_eq!(action(&["--bc"]), Action::BlockingCheckpoint);
        assert_eq!(action(&["-status"]), Action::Status);
        assert_eq!(action(&["-interval", "5"]), Action::Interval(5));
        let o = command(&["--host", "n3", "--port", "7001", "-kcheckpoint"], &[]);
        assert_eq!(
            (o.coord.host.as_deref(), o.coord.port, o.action),
            (Some("n3"), Some(7001), Action::CheckpointThenKill)
        );
        // A host named like a command is still a host.
        let o = command(&["-h", "c", "-p", "7000", "s"], &[]);
        assert_eq!((o.coord.host.as_deref(), o.coord.port, o.action), (Some("c"), Some(7000), Action::Status));
        assert!(o.dmtcp);
        let o = command(&["-s"], &[("DMTCP_COORD_HOST", "n2"), ("DMTCP_CHECKPOINT_DIR", "/ck")]);
        assert_eq!(o.coord.host.as_deref(), Some("n2"));
        assert_eq!((o.secret_dirs.first(), o.coord.ckpt_dir), (Some(&PathBuf::from("/ck")), None));
        // The checkpoint directory names the coordinator: --ckptdir before
        // the launched program's address, DMTCP_CHECKPOINT_DIR after it.
        let inside = [("STASIS_COORD_ADDR", "unix:/s.sock"), ("DMTCP_CHECKPOINT_DIR", "/env-ck")];
        let o = command(&["--ckptdir", "/ck", "-c"], &inside);
        assert_eq!((o.coord.addr, o.coord.ckpt_dir), (None, Some(PathBuf::from("/ck"))));
        let o = command(&["-c"], &inside);
        assert_eq!((o.coord.addr, o.coord.ckpt_dir), (Some(Addr::Unix("/s.sock".into())), None));
        let o = command(&["-c"], &[("DMTCP_CHECKPOINT_DIR", "/env-ck")]);
        assert_eq!(o.coord.ckpt_dir, Some(PathBuf::from("/env-ck")));
        refused(Name::Command, &[], &["dmtcp_command --help"]);
        refused(Name::Command, &["-s", "-k"], &["dmtcp_command --help"]);
        refused(Name::Command, &["x"], &["dmtcp_command --help"]);
    }

    #[test]
    fn command_takes_dmtcp_compact_and_help_spellings() {
        let action = |args: &[&str]| command(args, &[]).action;
        assert_eq!(action(&["-i7"]), Action::Interval(7));
        assert_eq!(action(&["i9"]), Action::Interval(9));
        assert_eq!(action(&["t"]), Action::List);
        for kc in ["-kc", "-ck", "-K", "Kc", "--kcheckpoint"] {
            assert_eq!(action(&[kc]), Action::CheckpointThenKill, "{kc}");
        }
        let o = command(&["-p0", "s"], &[]);
        assert_eq!((o.coord.port, o.action), (Some(0), Action::Status));
        // Help: -h alone, h, ?; with --json, DMTCP's JSON on stdout.
        for h in [&["-h"][..], &["h"], &["?"], &["--help"]] {
            assert!(matches!(parse_env(Name::Command, h, &[]), Err(NotRun::Asked(t)) if t.contains("--kcheckpoint")));
            let with_json: Vec<&str> = std::iter::once("--json").chain(h.iter().copied()).collect();
            match parse_env(Name::Command, &with_json, &[]) {
                Err(NotRun::Asked(t)) => assert!(t.contains("\"command\":\"DMT_HELP\""), "{t}"),
                other => panic!("{h:?}: {other:?}"),
            }
        }
        assert!(matches!(parse_env(Name::Command, &["--json"], &[]), Err(NotRun::Asked(t)) if t.contains("DMT_HELP")));
        match parse_env(Name::Command, &["--json", "--version"], &[]) {
            Err(NotRun::Asked(t)) => assert!(t.contains("\"DMT_VERSION\"") && t.contains("(DMTCP) 5.0"), "{t}"),
            other => panic!("{other:?}"),
        }
        // A line that cannot be read: a usage error, or with --json an
        // answer that says so (exit status 2).
        refused(Name::Command, &["--interval"], &["--interval", "dmtcp_command --help"]);
        refused(Name::Command, &["-p", "x", "s"], &["port", "dmtcp_command --help"]);
        for bad in [&["--json", "--not-a-command"][..], &["--json", "--interval"], &["--json", "-s", "-k"]] {
            let o = command(bad, &[]);
            assert_eq!((o.action, o.json), (Action::Invalid, true), "{bad:?}");
        }
    }

    #[test]
    fn coordinator_options() {
        let o = coordinator(
            &["--coord-port", "0", "--port-file", "pf", "--exit-on-last", "--daemon", "--coord-logfile", "log"],
            &[],
        );
        assert_eq!((o.coord.port, o.exit_on_last, o.daemon), (Some(0), true, true));
        assert_eq!((o.port_file, o.coord_logfile), (Some(PathBuf::from("pf")), Some(PathBuf::from("log"))));
        let o = coordinator(&["-p", "7790", "-i", "30", "--ckptdir", "ck", "--exit-after-ckpt", "--timeout", "9"], &[]);
        assert_eq!((o.coord.port, o.interval_s, o.exit_after_ckpt, o.idle_timeout), (Some(7790), 30, true, Some(9)));
        let o = coordinator(&["--port", "7791", "-q"], &[]);
        assert_eq!((o.coord.port, o.quiet), (Some(7791), true));
        let o = coordinator(
            &[],
            &[("DMTCP_COORD_PORT", "7100"), ("DMTCP_CHECKPOINT_INTERVAL", "15"), ("DMTCP_CHECKPOINT_DIR", "/c")],
        );
        assert_eq!((o.coord.port, o.interval_s, o.ckpt_dir), (Some(7100), 15, Some(PathBuf::from("/c"))));
        refused(Name::Coordinator, &["--bogus"], &["dmtcp_coordinator --help"]);
    }
}
