//! Terminals, exec and signals as DMTCP's test suite exercises them, with
//! programs of our own (issue 12).

use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart;

/// ownenv.c: two children exec'd with an environment of their own (one
/// with an empty LD_PRELOAD, one after clearenv, with none): the agent and
/// its variables are put back at exec, so both stay in the computation (3
/// images per checkpoint) and come back with their own environment as they
/// saw it. Two checkpoint, kill, restart cycles.
#[test]
fn children_exec_d_with_an_environment_of_their_own_stay_in_the_computation() {
    tree_checkpoint_kill_restart("ownenv", &Program::c("ownenv", &["40"]), 3, 2);
}

/// timerthread.c: a periodic SIGEV_THREAD timer (as vim arms one), deleted
/// and made again halfway. libc's helper thread for such timers blocks
/// every signal, ours included; the agent runs them itself, so checkpoints
/// stop the process, and after a restart the timer goes on ticking with
/// its value, on a thread of its own, with libc's mask. Two cycles.
#[test]
fn a_timer_that_notifies_by_starting_a_thread_survives_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("timerthread", &Program::c("timerthread", &["40"]), 1, 2);
}

/// ptyname.c: the program keeps its pair's path (`ptsname`, once) and its
/// child, a session leader whose controlling terminal the slave is, opens
/// that path again every step: a restart gives the pair its number back
/// (although a lower one is free), so the path still leads to the same
/// terminal, the session's, with its settings; the parent reads the master
/// without blocking. Two cycles.
#[test]
fn a_pseudo_terminal_pair_keeps_its_number_across_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("ptyname", &Program::c("ptyname", &["40"]), 2, 2);
}

/// timersig.c: two periodic POSIX timers on SIGRTMIN (as DMTCP's timer1
/// has them), whose signals are blocked, hence pending, at nearly every
/// checkpoint: they come back with their siginfo (SI_TIMER, the value
/// pointing at the timer's record, its id), not as a bare SIGRTMIN without
/// a value (on which timer1's handler dereferences a null pointer). Two
/// cycles.
#[test]
fn pending_timer_signals_keep_their_value_across_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("timersig", &Program::c("timersig", &["40"]), 1, 2);
}

/// attrmask.c: a thread started with every signal blocked by its
/// attributes (`pthread_attr_setsigmask_np`) reads its mask back whole,
/// the checkpoint signal's number included, while checkpoints still stop
/// it (its real mask leaves that signal open). Two cycles.
#[test]
fn a_thread_whose_attributes_block_every_signal_reads_its_mask_back_and_is_checkpointed() {
    tree_checkpoint_kill_restart("attrmask", &Program::c("attrmask", &["40"]), 1, 2);
}
