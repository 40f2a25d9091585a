//! The checkpoint signal and the program: a checkpoint never shows as EINTR
//! in a blocking call (tests/programs/eintr.c), and a program that uses the
//! checkpoint signal's number itself keeps it as its own
//! (tests/programs/ownsig.c), with the default signal 62 and with
//! `--ckpt-signal 12` (SIGUSR2). docs/signals.md says what is covered.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use crate::support::*;

/// `stasis launch EXTRA... --ckptdir CK --coord-socket SOCK -- PROGRAM`.
fn launch_with_args(sb: &Sandbox, extra: &[&str], prog: &Program, sock: &Path, ck: &Path, cwd: &Path) -> Proc {
    let mut cmd = Command::new(stasis());
    cmd.arg("launch")
        .args(extra.iter().map(OsStr::new))
        .arg("--ckptdir")
        .arg(ck)
        .arg("--coord-socket")
        .arg(sock)
        .arg("--")
        .args(&prog.argv)
        .current_dir(cwd);
    Proc::spawn(sb, &sb.label("launch"), cmd, Out::Pipe)
}

/// A window that holds any line: with an interval running, the newest
/// generation may be one no command asked for (lines are all distinct, so
/// only the right place fits).
fn anywhere(app: &Proc) -> Window {
    Window { lo: 0, hi: app.line_count() }
}

/// Launches `prog` (with `extra` launch options), checkpoints it
/// `before` times on command while it runs, kills it, restarts it,
/// checkpoints the restarted run `after` times, lets it finish and checks
/// the whole history against an uninterrupted run. `interval`: an interval
/// timer checkpoints too, so the restart may come from any point.
fn checkpoints_kill_restart(test: &str, prog: &Program, extra: &[&str], before: usize, after: usize, interval: bool) {
    let sb = Sandbox::new(test);
    let reference = start_reference(&sb, prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch_with_args(&sb, extra, prog, &sock, &ck, &sb.mkdir("run"));
    // ownsig prints its first lines at once, maybe before its agent has
    // said hello to the coordinator.
    app.wait_lines(&sb, 5);
    let mut windows = Vec::new();
    for _ in 0..before {
        windows.push(checkpoint(&sb, &sock, &mut app));
        sleep(Duration::from_millis(150));
    }
    let seen = app.line_count();
    app.wait_lines(&sb, seen + 2);
    app.kill();
    if interval {
        windows = vec![anywhere(&app)];
    }
    sb.check(app.lines().iter().any(|l| l.starts_with("step ")), || format!("{} printed no step", app.label));

    let sock = sb.socket();
    let mut re = restart(&sb, &sock, &ck, Out::Pipe);
    re.wait_lines(&sb, 2);
    for _ in 0..after {
        if re.poll_exit().is_some() {
            break;
        }
        let _ = checkpoint(&sb, &sock, &mut re);
        sleep(Duration::from_millis(150));
    }
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", re.label, re.stderr_text()));
    let reference = finish_reference(&sb, reference);
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), windows), Piece::new(&re.label, re.lines(), vec![])],
    );
    for p in [&app, &re] {
        let log = p.stderr_text();
        sb.check(!["eintr:", "ownsig:", "pending:"].iter().any(|w| log.contains(w)), || {
            format!("{} reported from inside the program:\n{log}", p.label)
        });
    }
}

#[test]
fn a_checkpoint_never_shows_as_eintr_in_blocking_calls() {
    // 20 calls per step, each waiting 15 ms, checkpointed six times; the
    // whole output must be the reference's.
    let sb = Sandbox::new("eintr");
    let prog = Program::c("eintr", &["30", "15"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch_with_args(&sb, &[], &prog, &sock, &ck, &sb.mkdir("run"));
    app.wait_lines(&sb, 2);
    for _ in 0..6 {
        if app.poll_exit().is_some() {
            break;
        }
        checkpoint(&sb, &sock, &mut app);
        sleep(Duration::from_millis(200));
    }
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", app.label));
    let reference = finish_reference(&sb, reference);
    sb.check(app.lines() == reference, || format!("{} differs from the reference:\n{}", app.label, app.stderr_text()));
}

// Across kill and restart, accept and recv included: their SO_RCVTIMEO
// comes back with the socket (docs/sockets.md), so a call restarted in the
// restored process still times out.

#[test]
fn a_checkpoint_never_shows_as_eintr_across_kill_and_restart() {
    checkpoints_kill_restart("eintr-restart", &Program::c("eintr", &["30", "15"]), &[], 4, 3, false);
}

#[test]
fn a_checkpoint_on_an_interval_never_shows_as_eintr() {
    let prog = Program::c("eintr", &["30", "15"]);
    checkpoints_kill_restart("eintr-interval", &prog, &["--interval", "1"], 2, 1, true);
}

#[test]
fn a_program_keeps_signal_62_as_its_own() {
    checkpoints_kill_restart("ownsig-62", &Program::c("ownsig", &["62", "30"]), &[], 3, 2, false);
}

#[test]
fn a_program_keeps_sigusr2_as_its_own_under_ckpt_signal_12() {
    checkpoints_kill_restart("ownsig-12", &Program::c("ownsig", &["12", "30"]), &["--ckpt-signal", "12"], 3, 2, false);
}

/// Builds tests/programs/atfork_thread.c as a library and as a program
/// linked with it, in the sandbox.
fn build_atfork_thread(sb: &Sandbox) -> Program {
    let src = programs_dir().join("atfork_thread.c");
    let dir = sb.mkdir("bin");
    let cc = |args: &[&OsStr]| {
        let out = Command::new("cc")
            .args(["-O1", "-g", "-pthread", "-I"])
            .arg(programs_dir())
            .args(args)
            .output()
            .unwrap_or_else(|e| sb.fail(format!("cannot run cc: {e} (install gcc)")));
        sb.check(out.status.success(), || format!("cc failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    };
    let lib = dir.join("libatfork_thread.so");
    let exe = dir.join("atfork_thread");
    cc(&[
        OsStr::new("-DLIB"),
        OsStr::new("-shared"),
        OsStr::new("-fPIC"),
        OsStr::new("-o"),
        lib.as_os_str(),
        src.as_os_str(),
    ]);
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    cc(&[
        OsStr::new("-o"),
        exe.as_os_str(),
        src.as_os_str(),
        OsStr::new("-L"),
        dir.as_os_str(),
        OsStr::new("-latfork_thread"),
        OsStr::new(&rpath),
    ]);
    Program { name: "atfork_thread".into(), argv: vec![exe.into_os_string(), "30".into()] }
}

/// DMTCP's pthread_atfork2: a thread started by a library's fork child
/// handler, which runs before the agent's, must not stop checkpoints.
#[test]
fn a_thread_started_in_a_fork_child_handler_does_not_stop_checkpoints() {
    let sb = Sandbox::new("atfork-thread");
    let prog = build_atfork_thread(&sb);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch_with_args(&sb, &[], &prog, &sock, &ck, &sb.mkdir("run"));
    app.wait_lines(&sb, 3);
    let first = checkpoint(&sb, &sock, &mut app);
    let second = checkpoint(&sb, &sock, &mut app);
    let seen = app.line_count();
    app.wait_lines(&sb, seen + 2);
    app.kill();
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    let reference = finish_reference(&sb, reference);
    sb.check(reference.last().is_some_and(|l| l.ends_with("ticker ran")), || format!("reference: {reference:?}"));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![first, second]), Piece::new(&re.label, re.lines(), vec![])],
    );
}

// Signals sent to a process and pending at the checkpoint come back from
// their sender, with their value, in their order (docs/signals.md).
#[test]
fn signals_pending_at_the_checkpoint_keep_their_sender_and_value() {
    checkpoints_kill_restart("pending", &Program::c("pending", &["30", "60"]), &[], 4, 3, false);
}
