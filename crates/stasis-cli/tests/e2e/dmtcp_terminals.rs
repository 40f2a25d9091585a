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
