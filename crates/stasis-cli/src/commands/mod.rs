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

/// The exit status of launch, restart and job when the computation was
/// stopped on request, not finished: killed through its coordinator
/// (`stasis command --kill`, `--kcheckpoint`, `quit`), or checkpointed and
/// stopped by `stasis job` (sysexits' EX_TEMPFAIL: try again later). Not 0,
/// which says the program finished, nor 137, which says something killed
/// it (docs/slurm.md).
pub const STOPPED: i32 = 75;

/// A program that died of SIGKILL because its coordinator was told to
/// kill it: [`STOPPED`] rather than 137. The coordinator says so in its
/// status; one told to quit may be gone already, and then, if it was
/// started here, it ended cleanly just after.
fn stopped_on_request(exit: Exit, found: &mut start::Found) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    let Exit::Like(status) = &exit else { return exit };
    if status.signal() != Some(libc::SIGKILL) {
        return exit;
    }
    let killed = match proto_status(found) {
        Some(m) => m.get("killed") == Some("1"),
        None => found.started.as_mut().is_some_and(|s| s.quits_within(std::time::Duration::from_secs(2))),
    };
    if killed { Exit::Code(STOPPED) } else { exit }
}

fn proto_status(found: &start::Found) -> Option<stasis_proto::Message> {
    found.ask(&stasis_proto::Message::new(stasis_proto::COMMAND).with("what", "status")).ok()
}

/// Once the program runs: forward signals to `pids` (SIGUSR2 to
/// `on_usr2` instead, if given), wait for the program, and leave as it did.
fn supervise(
    signals: Blocked,
    pids: Vec<i32>,
    on_usr2: Option<Box<dyn Fn() + Send>>,
    wait: impl FnOnce() -> io::Result<ExitStatus>,
) -> Result<Exit> {
    if let Err(e) = signals.forward_to(pids, on_usr2) {
        eprintln!("stasis: cannot forward signals to the program: {e}");
    }
    let status = wait().context("lost track of the program")?;
    Ok(Exit::Like(status))
}
