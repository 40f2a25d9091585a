//! Communication between the processes of one computation: memory they
//! share (tests/programs/shm.c) and stream sockets they talk through
//! (tests/programs/sockets.c). The programs check what they share and print
//! "ok" or what went wrong; the harness runs them through the process-tree
//! driver of `tree.rs` (launch, checkpoint, kill of the whole tree, restart)
//! and compares their output with an uninterrupted reference run.

use crate::support::*;
use crate::tree::{tree_checkpoint_kill_restart, tree_checkpoint_kill_restart_with};

/// The step number of a "step N ..." line.
fn step_of(line: &str) -> Option<usize> {
    line.strip_prefix("step ")?.split(' ').next()?.parse().ok()
}

/// How many processes sockets.c run with `steps` steps runs at least, by the
/// last line it printed: the parent and its four children ("pair",
/// "uclient", "tclient" and "late") until "late" makes its one exchange at
/// step `steps * 2 / 3` and exits; then four; once the steps are over the
/// children end one by one, the parent last.
fn sockets_live(steps: usize) -> impl Fn(Option<&str>) -> usize {
    let late_step = steps * 2 / 3;
    move |last| match last {
        None => 5,
        // The program may be a step further than its last line (and is
        // killed a moment later): "late" is surely there two steps before
        // its own.
        Some(line) => match step_of(line) {
            Some(step) if step + 2 < late_step => 5,
            Some(_) => 4,
            None => 1,
        },
    }
}

#[test]
fn anonymous_posix_and_sysv_shared_memory_and_semaphores_survive_checkpoint_kill_restart() {
    // The parent and its child: every step each reads what the other wrote
    // in all four areas, through process-shared semaphores in one of them.
    tree_checkpoint_kill_restart("shm", &Program::c("shm", &[]), 2, 1);
}

#[test]
fn unix_and_tcp_sockets_between_processes_with_bytes_in_flight_survive_checkpoint_kill_restart() {
    tree_checkpoint_kill_restart_with("sockets", &Program::c("sockets", &[]), &sockets_live(40), 1);
}

/// A checkpoint of the restored sockets (and a restart of a restart); in the
/// last run "late" connects to the twice-restored TCP listener.
#[test]
fn sockets_between_processes_survive_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart_with("sockets-cycles", &Program::c("sockets", &["60", "50"]), &sockets_live(60), 2);
}
