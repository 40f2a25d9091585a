//! Message queues and semaphores between the processes of a computation
//! (tests/programs/ipcq.c): System V message queues and semaphore sets and
//! POSIX message queues, with messages in flight and an mq_notify
//! registration, checkpointed, killed and restarted. The restart makes
//! them again in an IPC namespace of its own, with their ids, names and
//! contents; the program's output must match an uninterrupted run.

use std::process::Command;

use crate::support::*;

/// Runs ipcq through `cycles` checkpoint, kill and restart cycles.
fn ipcq_cycles(test: &str, prog: &Program, cycles: usize) {
    let sb = Sandbox::new(test);
    let reference = start_reference(&sb, prog, &sb.mkdir("ref"));
    let run_dir = sb.mkdir("run");
    let ck = sb.join("ck");
    let mut sock = sb.socket();
    let mut app = launch(&sb, prog, &sock, &ck, &run_dir, Out::Pipe);
    let mut pieces = Vec::new();
    for _ in 0..cycles {
        app.wait_lines(&sb, 3);
        let window = checkpoint(&sb, &sock, &mut app);
        crate::carry_on(&sb, &mut app, window, 3);
        app.kill_computation(&sb, &run_dir);
        pieces.push(Piece::new(&app.label, app.lines(), vec![window]));
        sock = sb.socket();
        app = restart(&sb, &sock, &ck, Out::Pipe);
    }
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    // The killed run's objects live on outside the restart's namespace:
    // the program removes those of its directory's name.
    let cleaned = Command::new(prog.exe()).arg("clean").current_dir(&run_dir).status();
    sb.check(status.success(), || format!("{} exited with {status}: {}", app.label, app.stderr_text()));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
    // "unlinked 1": the named queue was there, by its name, to be removed.
    sb.check(app.lines().last().is_some_and(|l| l.ends_with("removed 1 unlinked 1")), || {
        format!("the restored run did not find its objects at the end: {:?}", app.lines().last())
    });
    sb.check(cleaned.is_ok_and(|s| s.success()), || "ipcq clean failed".into());
}

#[test]
fn sysv_and_posix_message_queues_and_semaphores_survive_checkpoint_kill_restart() {
    ipcq_cycles("ipcq", &Program::c("ipcq", &["60", "60"]), 1);
}

/// A checkpoint of the restored objects, in the restart's own IPC
/// namespace (their ids and names there), and a restart of that restart.
#[test]
fn message_queues_and_semaphores_survive_two_checkpoint_kill_restart_cycles() {
    ipcq_cycles("ipcq-cycles", &Program::c("ipcq", &["90", "50"]), 2);
}
