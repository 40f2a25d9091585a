//! TCP servers restarted right after their kill (their connections still
//! in TIME_WAIT on the server's port), with the socket options programs
//! set (tests/programs/net.c), and Open MPI's `mpirun -np 2`, whose ranks
//! listen on one port over IPv4 and IPv6 and talk over TCP.

use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart_with;

/// net.c: a server listening on 0.0.0.0:P and [::]:P (IPV6_V6ONLY) and its
/// two clients, options set on every socket and checked by the program
/// every step; each restart comes right after the kill. Two cycles.
#[test]
fn tcp_server_on_ipv4_and_ipv6_with_its_options_survives_two_checkpoint_kill_restart_cycles() {
    // The server and c4, and c6 where the machine has IPv6.
    let live = |_: Option<&str>| 2;
    tree_checkpoint_kill_restart_with("net", &Program::c("net", &["60", "50"]), &live, 2);
}
