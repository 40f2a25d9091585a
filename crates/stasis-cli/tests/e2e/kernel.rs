//! Kernel objects restart makes again from what the agent recorded: inotify
//! watches with their numbers (tests/programs/inotify.c), named pipes and
//! UDP sockets between two processes (tests/programs/fifo.c), and Unix
//! datagram and seqpacket sockets with messages in flight
//! (tests/programs/dgram.py).

use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart;

#[test]
fn inotify_watches_keep_their_numbers_across_checkpoint_kill_restart() {
    // Watches 1 and 3 (2 was removed): after the restart, events must
    // still come, with the same watch numbers.
    let (sb, run_dir, _) = crate::checkpoint_kill_restart("inotify", &Program::c("inotify", &[]));
    sb.check(std::fs::read_dir(&run_dir).map(|d| d.count()).unwrap_or(0) == 0, || {
        format!("inotify.c left files behind in {}", run_dir.display())
    });
}

#[test]
fn named_pipes_and_udp_between_processes_survive_checkpoint_kill_restart() {
    tree_checkpoint_kill_restart("fifo", &Program::c("fifo", &[]), 2, 1);
}

#[test]
fn unix_datagram_and_seqpacket_messages_in_flight_survive_checkpoint_kill_restart() {
    tree_checkpoint_kill_restart("dgram.py", &Program::python("dgram.py", &[]), 2, 1);
}
