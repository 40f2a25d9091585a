//! `stasis launch`: run a program with the agent preloaded and a
//! coordinator in this process; stay its parent, pass signals on, and exit
//! as it does.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use stasis_coord::CoordConfig;

use super::{WithCode, bind_coordinator, supervise};
use crate::coord_socket::{self, CoordOpts};
use crate::exit::Exit;
use crate::{agent_lib, signals};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOpts {
    pub coord: CoordOpts,
    /// Seconds between checkpoints; None: none.
    pub interval_s: Option<u32>,
    /// None: the current directory.
    pub ckpt_dir: Option<PathBuf>,
    pub keep: usize,
    /// The program and its arguments (at least the program).
    pub program: Vec<OsString>,
}

pub fn run(opts: LaunchOpts) -> Result<Exit> {
    let agent = agent_lib::find()?;
    let socket = coord_socket::resolve(&opts.coord)?;
    let ckpt_dir = match opts.ckpt_dir {
        Some(d) => d,
        None => std::env::current_dir().context("cannot tell the current directory")?,
    };
    let mut cfg = CoordConfig::new(socket, ckpt_dir);
    cfg.interval_s = opts.interval_s.unwrap_or(0);
    cfg.keep = opts.keep;
    let coord = bind_coordinator(cfg)?;

    let signals = signals::block().context("cannot block signals")?;
    let (program, args) = opts.program.split_first().context("no program to launch")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload(&agent, std::env::var_os("LD_PRELOAD")))
        .env("STASIS_COORD_SOCKET", coord.socket_path());
    let restore_mask = signals.restorer();
    // SAFETY: the closure only calls sigprocmask, which is async-signal-safe.
    unsafe { cmd.pre_exec(restore_mask) };
    let mut child = cmd.spawn().map_err(|e| {
        // As a shell says it: 127 when there is no such program, else 126.
        let code = if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
        WithCode(code, format!("cannot run {}: {e}", program.to_string_lossy()))
    })?;
    let pid = i32::try_from(child.id()).context("child pid out of range")?;
    supervise(coord, signals, pid, move || child.wait())
}

/// LD_PRELOAD with the agent first, before whatever the caller preloads.
fn preload(agent: &std::path::Path, existing: Option<OsString>) -> OsString {
    let mut v = agent.as_os_str().to_owned();
    if let Some(e) = existing.filter(|e| !e.is_empty()) {
        v.push(":");
        v.push(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn preload_goes_first() {
        let a = Path::new("/opt/stasis/libstasis_agent.so");
        assert_eq!(preload(a, None), "/opt/stasis/libstasis_agent.so");
        assert_eq!(preload(a, Some("".into())), "/opt/stasis/libstasis_agent.so");
        assert_eq!(preload(a, Some("libx.so".into())), "/opt/stasis/libstasis_agent.so:libx.so");
    }
}
