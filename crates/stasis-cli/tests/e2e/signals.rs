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
    app.wait_lines(&sb, 3);
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
        sb.check(!log.contains("eintr:") && !log.contains("ownsig:"), || {
            format!("{} reported from inside the program:\n{log}", p.label)
        });
    }
}

#[test]
fn a_checkpoint_never_shows_as_eintr_in_blocking_calls() {
    // 20 calls per step, each waiting 15 ms; four checkpoints on command,
    // then the same again after a restart.
    checkpoints_kill_restart("eintr", &Program::c("eintr", &["30", "15"]), &[], 4, 3, false);
}

#[test]
fn a_checkpoint_on_an_interval_never_shows_as_eintr() {
    checkpoints_kill_restart("eintr-interval", &Program::c("eintr", &["30", "15"]), &["--interval", "1"], 2, 1, true);
}

#[test]
fn a_program_keeps_signal_62_as_its_own() {
    checkpoints_kill_restart("ownsig-62", &Program::c("ownsig", &["62", "30"]), &[], 3, 2, false);
}

#[test]
fn a_program_keeps_sigusr2_as_its_own_under_ckpt_signal_12() {
    checkpoints_kill_restart("ownsig-12", &Program::c("ownsig", &["12", "30"]), &["--ckpt-signal", "12"], 3, 2, false);
}
