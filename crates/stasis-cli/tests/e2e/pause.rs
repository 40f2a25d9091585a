//! The stop of many threads at once: every thread of a crowded program is
//! stopped, saved and brought back whatever it was doing (sleeping, waiting
//! on a condition variable, blocked in read), while other threads come and
//! go during the stop (tests/programs/throng.c). How long the pause lasts is
//! measured by bench/pause.sh, never asserted here.

use crate::support::*;
use crate::{carry_on, checkpoint_kill_restart};

#[test]
fn three_hundred_threads_in_many_states_survive_checkpoint_kill_restart() {
    checkpoint_kill_restart("throng", &Program::c("throng", &["40"]));
}

/// Several stops in a row while threads are started and joined all along;
/// the restart goes on from the last one.
#[test]
fn threads_coming_and_going_survive_repeated_checkpoints() {
    let sb = Sandbox::new("throng-repeat");
    let prog = Program::c("throng", &["60", "40", "300"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let mut windows = Vec::new();
    for _ in 0..3 {
        let window = checkpoint(&sb, &sock, &mut app);
        carry_on(&sb, &mut app, window, 2);
        windows.push(window);
    }
    app.kill_computation(&sb, &sb.path().join("run"));
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    let reference = finish_reference(&sb, reference);
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), windows), Piece::new(&re.label, re.lines(), vec![])],
    );
}
