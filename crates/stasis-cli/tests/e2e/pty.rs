//! A pseudo-terminal pair opened inside the computation (as mpirun, script
//! and expect open theirs) comes back as a pair: the master where the
//! master was, the slave where the slave was and as the controlling
//! terminal of the session that had it.

use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart;

/// pty.c: the parent reads the master, its child (a session leader whose
/// controlling terminal is the slave) writes a line per step, checking its
/// session (TIOCGSID), foreground group, window size and output settings.
/// Two checkpoint, kill, restart cycles: the output is the uninterrupted
/// run's, and when the child exits the parent sees the end of the master
/// (EIO) and exits 0.
#[test]
fn a_pseudo_terminal_pair_of_the_program_survives_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("pty", &Program::c("pty", &["60"]), 2, 2);
}
