//! One module per verb. Each takes its plain options struct (see cli.rs)
//! and returns how stasis should exit.

pub mod command;
pub mod coordinator;
pub mod inspect;
pub mod job;
pub mod launch;
pub mod restart;
pub mod start;

use std::io;
use std::process::ExitStatus;

use anyhow::{Context, Result};

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

/// A note for people (an option that does nothing here, a coordinator
/// that checkpoints elsewhere): one line on stderr, unless quiet.
pub fn note(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("stasis: note: {msg}");
    }
}

/// Once the program runs: forward signals to `pids`, wait for the
/// program, and leave as it did.
fn supervise(signals: Blocked, pids: Vec<i32>, wait: impl FnOnce() -> io::Result<ExitStatus>) -> Result<Exit> {
    if let Err(e) = signals.forward_to(pids) {
        eprintln!("stasis: cannot forward signals to the program: {e}");
    }
    let status = wait().context("lost track of the program")?;
    Ok(Exit::Like(status))
}
