//! One module per verb. Each takes its plain options struct (see cli.rs)
//! and returns how stasis should exit.

pub mod command;
pub mod inspect;
pub mod launch;
pub mod restart;

use std::io;
use std::process::ExitStatus;

use anyhow::{Context, Result};
use stasis_coord::{CoordConfig, Coordinator};

use crate::exit::Exit;
use crate::signals::Blocked;

/// An error that exits with a code of its own rather than 1.
#[derive(Debug)]
pub struct WithCode(pub i32, pub String);

impl std::fmt::Display for WithCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for WithCode {}

/// Binds the computation's coordinator (no thread yet).
fn bind_coordinator(cfg: CoordConfig) -> Result<Coordinator> {
    let socket = cfg.socket_path.clone();
    Coordinator::bind(cfg).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            " (another computation uses it: choose another with -p PORT or --coord-socket PATH)"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}").context(format!("cannot start the coordinator at {}", socket.display()))
    })
}

/// Once the program runs: start the coordinator's threads and the signal
/// forwarding, wait for the program, stop the coordinator, and leave as the
/// program did. Only now may threads start (restart clones after the
/// coordinator is bound, and must be single-threaded then).
fn supervise(
    coord: Coordinator,
    signals: Blocked,
    pid: i32,
    wait: impl FnOnce() -> io::Result<ExitStatus>,
) -> Result<Exit> {
    let handle = match coord.spawn() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("stasis: cannot start the coordinator: {e}; the program runs without checkpoints");
            None
        }
    };
    if let Err(e) = signals.forward_to(pid) {
        eprintln!("stasis: cannot forward signals to the program: {e}");
    }
    let status = wait().context("lost track of the program")?;
    if let Some(h) = handle {
        h.shutdown();
    }
    Ok(Exit::Like(status))
}
