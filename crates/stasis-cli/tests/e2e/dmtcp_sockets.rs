//! Sockets in the states DMTCP's autotest found them in (client-server,
//! epoll1, stale-fd): bytes in flight on a loopback TCP connection, sent
//! and not yet acknowledged or held back by Nagle, and Unix stream and
//! seqpacket sockets whose peer was closed with bytes unread
//! (tests/programs/inflight.c). Run through the process-tree driver of
//! `tree.rs` and compared with an uninterrupted run.

use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart;

#[test]
fn bytes_in_flight_on_tcp_and_on_unix_sockets_whose_peer_closed_survive_checkpoint_kill_restart() {
    // The parent and its TCP echo child ("gone" exited before the first step).
    tree_checkpoint_kill_restart("inflight", &Program::c("inflight", &[]), 2, 1);
}

#[test]
fn bytes_in_flight_survive_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("inflight-cycles", &Program::c("inflight", &["60", "50"]), 2, 2);
}
