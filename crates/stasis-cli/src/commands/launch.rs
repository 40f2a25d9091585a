//! `stasis launch` (and `dmtcp_launch`): run a program with the agent
//! preloaded, joined to the computation's coordinator (found, or started
//! in the background); stay its parent, pass signals on, and exit as it
//! does, so that a batch script's step ends when the program does.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use stasis_coord::client::Addr;
use stasis_coord::secret::SECRET_ENV;

use super::start::{self, Background, Found, Mode};
use super::{WithCode, note};
use crate::coord_socket::CoordOpts;
use crate::exit::Exit;
use crate::{agent_lib, signals};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOpts {
    pub coord: CoordOpts,
    pub mode: Mode,
    /// Seconds between checkpoints; None: none (or, joining, unchanged).
    pub interval_s: Option<u32>,
    /// None: the current directory.
    pub ckpt_dir: Option<PathBuf>,
    pub keep: usize,
    /// Compress images with zstd (a coordinator started here, or this one).
    pub compress: bool,
    /// `--full-every` of a coordinator started here (None: the default).
    pub full_every: Option<u32>,
    /// Where to write the coordinator's TCP port.
    pub port_file: Option<PathBuf>,
    /// Where a coordinator started in the background logs.
    pub coord_logfile: Option<PathBuf>,
    /// The agent's checkpoint signal; None: its default.
    pub ckpt_signal: Option<i32>,
    /// Which files open for writing the agent saves (docs/files.md).
    pub save_files: SaveFiles,
    pub quiet: bool,
    /// SIGUSR2 asks for a checkpoint (as under DMTCP, whose checkpoint
    /// signal it is) rather than being passed on; the program starts with
    /// it ignored, so that SLURM's `--signal=USR2`, sent to every process
    /// of the job, does not kill it. The DMTCP names only.
    pub usr2_checkpoints: bool,
    /// DMTCP plugins to preload after the agent (`--with-plugin`,
    /// DMTCP_PLUGIN; stasis-agent/src/plugins.rs, docs/api.md).
    pub plugins: Vec<PathBuf>,
    /// Each checkpoint's `.dmtcp` names in a directory of their own
    /// (DMTCP's unique checkpoint filenames).
    pub unique_ckpt: bool,
    /// `--modify-env`: at restart the agent applies `dmtcp_env.txt` of the
    /// checkpoint directory (stasis-agent/src/modify_env.rs).
    pub modify_env: bool,
    /// The program and its arguments (at least the program).
    pub program: Vec<OsString>,
}

/// `--save-files-limit`, `--no-save-file`, `--checkpoint-open-files` and
/// `--allow-file-overwrite`, handed to the agent in its environment (which
/// the agent reads once: a restart keeps them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveFiles {
    pub limit: Option<u64>,
    pub excluded: Vec<String>,
    /// The user's own files open read-only are saved too.
    pub open_files: bool,
    /// A restart replaces a file saved read-only that differs.
    pub allow_overwrite: bool,
}

impl SaveFiles {
    fn set_env(&self, cmd: &mut std::process::Command) {
        use stasis_image::savedfiles::{EXCLUDE_VAR, LIMIT_VAR, OPEN_FILES_VAR, OVERWRITE_VAR};
        if let Some(limit) = self.limit {
            cmd.env(LIMIT_VAR, limit.to_string());
        }
        if !self.excluded.is_empty() {
            // Added to what the environment already excludes.
            let mut all: Vec<String> = std::env::var(EXCLUDE_VAR).ok().into_iter().collect();
            all.extend(self.excluded.iter().cloned());
            cmd.env(EXCLUDE_VAR, all.join(":"));
        }
        if self.open_files {
            cmd.env(OPEN_FILES_VAR, "1");
        }
        if self.allow_overwrite {
            cmd.env(OVERWRITE_VAR, "1");
        }
    }
}

/// The program's temporary directory (`--tmpdir`), in its environment.
pub const TMPDIR_ENV: &str = "STASIS_TMPDIR";

/// The checkpoint directory asked for (or the current one), absolute.
pub(crate) fn ckpt_dir_or_cwd(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir().context("cannot tell the current directory")?,
    };
    std::path::absolute(&dir).with_context(|| format!("cannot make {} absolute", dir.display()))
}

/// Writes the coordinator's TCP port to `file` (DMTCP's --port-file).
pub(crate) fn write_port_file(file: &Path, found: &Found, quiet: bool) -> Result<()> {
    match found.port {
        Some(port) => std::fs::write(file, format!("{port}\n"))
            .with_context(|| format!("cannot write the port file {}", file.display())),
        None => {
            note(quiet, &format!("the coordinator listens on no TCP port; {} is not written", file.display()));
            Ok(())
        }
    }
}

pub fn run(opts: LaunchOpts) -> Result<Exit> {
    let agent = agent_lib::find()?;
    let ckpt_dir = ckpt_dir_or_cwd(opts.ckpt_dir.as_deref())?;
    let bg = Background {
        ckpt_dir: &ckpt_dir,
        explicit_ckpt_dir: opts.ckpt_dir.is_some(),
        interval_s: opts.interval_s.unwrap_or(0),
        keep: opts.keep,
        compress: opts.compress,
        full_every: opts.full_every.unwrap_or(stasis_coord::DEFAULT_FULL_EVERY),
        logfile: opts.coord_logfile.as_deref(),
        quiet: opts.quiet,
    };
    let mut found = start::find_or_start(&opts.coord, opts.mode, &bg, std::slice::from_ref(&ckpt_dir))?;
    if found.started.is_none()
        && let Some(i) = opts.interval_s
    {
        found.set_interval(i)?;
    }
    if opts.unique_ckpt {
        found.set_unique_names()?;
    }
    if let Some(f) = &opts.port_file {
        write_port_file(f, &found, opts.quiet)?;
    }

    let plugins = plugin_paths(&opts.plugins)?;
    let signals = signals::block().context("cannot block signals")?;
    let (program, args) = opts.program.split_first().context("no program to launch")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload(&agent, &plugins, std::env::var_os("LD_PRELOAD")))
        .env("STASIS_COORD_ADDR", found.addr.to_string())
        // A launch from inside another computation records its own stdio,
        // not the outer computation's (`stasis-agent/src/stdio.rs`).
        .env_remove("STASIS_OUTSIDE_STDIO");
    match &found.addr {
        Addr::Unix(path) => {
            cmd.env("STASIS_COORD_SOCKET", path);
        }
        Addr::Tcp { .. } => {
            cmd.env_remove("STASIS_COORD_SOCKET");
            if let Some(s) = &found.secret {
                cmd.env(SECRET_ENV, s.hex());
            }
        }
    }
    // What the application API answers (stasis-agent/src/api.rs), and
    // where --modify-env finds dmtcp_env.txt.
    cmd.env("STASIS_CKPT_DIR", &ckpt_dir);
    // A log file (STASIS_LOG_FILE, DMTCP's DMTCP_LOG_FILE): made now, and
    // named absolute to the agent, which appends its messages there too.
    if let Some(f) =
        ["STASIS_LOG_FILE", "DMTCP_LOG_FILE"].iter().find_map(|n| std::env::var_os(n).filter(|v| !v.is_empty()))
    {
        let f = std::path::absolute(&f).with_context(|| format!("cannot make the log file {f:?} absolute"))?;
        std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().create(true).append(true), 0o600)
            .open(&f)
            .with_context(|| format!("cannot open the log file {}", f.display()))?;
        cmd.env("STASIS_LOG_FILE", &f);
    }
    if opts.modify_env {
        cmd.env("STASIS_MODIFY_ENV", "1");
    } else {
        cmd.env_remove("STASIS_MODIFY_ENV");
    }
    // What dmtcp_nocheckpoint gives back (`nocheckpoint.rs`).
    if let Some(p) = std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
        cmd.env(crate::nocheckpoint::USER_PRELOAD, p);
    }
    if let Some(sig) = opts.ckpt_signal {
        cmd.env("STASIS_CKPT_SIGNAL", sig.to_string());
    }
    // `--tmpdir`: the program's temporary directory too (dmtcp_get_tmpdir
    // answers it), absolute since the program may change directories.
    if let Some(t) = &opts.coord.tmpdir {
        let t = std::path::absolute(t).with_context(|| format!("cannot make {} absolute", t.display()))?;
        cmd.env(TMPDIR_ENV, t);
    }
    opts.save_files.set_env(&mut cmd);
    let restore_mask = signals.restorer();
    // SAFETY: the closure only calls sigprocmask, which is async-signal-safe.
    unsafe { cmd.pre_exec(restore_mask) };
    if opts.usr2_checkpoints {
        // SAFETY: only signal(), async-signal-safe, on plain numbers.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGUSR2, libc::SIG_IGN);
                Ok(())
            })
        };
    }
    let mut child = cmd.spawn().map_err(|e| {
        // As a shell says it: 127 when there is no such program, else 126.
        let code = if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
        WithCode(code, format!("cannot run {}: {e}", program.to_string_lossy()))
    })?;
    let pid = i32::try_from(child.id()).context("child pid out of range")?;
    let on_usr2 = opts.usr2_checkpoints.then(|| checkpoint_request(&found));
    let exit = super::supervise(signals, vec![pid], on_usr2, move || child.wait())
        .map(|e| super::stopped_on_request(e, &mut found));
    // The coordinator started here goes unless others still use it.
    drop(found);
    exit
}

/// What SIGUSR2 does under the DMTCP names: start a checkpoint (and not
/// wait for it), as `dmtcp_command --checkpoint` would.
pub(super) fn checkpoint_request(found: &Found) -> Box<dyn Fn() + Send> {
    let (addr, secret) = (found.addr.clone(), found.secret.clone());
    Box::new(move || {
        let request = crate::commands::command::Action::StartCheckpoint.request();
        let asked = stasis_coord::client::connect(&addr, secret.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|s| stasis_coord::client::ask(&s, &request).map_err(|e| e.to_string()));
        match asked {
            Ok(m) if m.verb == stasis_proto::OK => {
                eprintln!("stasis: SIGUSR2: checkpoint {} started", m.get("generation").unwrap_or("?"))
            }
            Ok(m) => eprintln!("stasis: SIGUSR2: no checkpoint: {}", m.get("reason").unwrap_or("no reason given")),
            Err(e) => eprintln!("stasis: SIGUSR2: no checkpoint: cannot reach the coordinator at {addr}: {e}"),
        }
    })
}

/// The plugins' absolute paths; one that is not there is an error.
fn plugin_paths(plugins: &[PathBuf]) -> Result<Vec<PathBuf>> {
    plugins
        .iter()
        .map(|p| std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("plugin {}: {e}", p.display())))
        .collect()
}

/// LD_PRELOAD with the agent first, then the DMTCP plugins (after the
/// agent, so that their constructors have run when the agent's calls
/// them), before whatever the caller preloads.
fn preload(agent: &Path, plugins: &[PathBuf], existing: Option<OsString>) -> OsString {
    let mut v = agent.as_os_str().to_owned();
    for p in plugins {
        v.push(":");
        v.push(p);
    }
    if let Some(e) = existing.filter(|e| !e.is_empty()) {
        v.push(":");
        v.push(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_goes_first() {
        let a = Path::new("/opt/stasis/libstasis_agent.so");
        assert_eq!(preload(a, &[], None), "/opt/stasis/libstasis_agent.so");
        assert_eq!(preload(a, &[], Some("".into())), "/opt/stasis/libstasis_agent.so");
        assert_eq!(preload(a, &[], Some("libx.so".into())), "/opt/stasis/libstasis_agent.so:libx.so");
        let plugins = [PathBuf::from("/p/one.so"), PathBuf::from("/p/two.so")];
        assert_eq!(
            preload(a, &plugins, Some("libx.so".into())),
            "/opt/stasis/libstasis_agent.so:/p/one.so:/p/two.so:libx.so"
        );
    }
}
