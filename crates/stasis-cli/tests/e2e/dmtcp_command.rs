//! dmtcp_command's requests that are one step in the coordinator, and a
//! restart that would run a second copy of a running computation.
//!
//! - `-kc` (checkpoint, then kill): the program must not run between its
//!   snapshot and its end. The restarted run must go on from exactly the
//!   last line the killed one printed: a line printed after the snapshot
//!   would be printed twice.
//! - A restart into a coordinator whose computation still runs is refused,
//!   with one line on stderr, and the computation runs on alone.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// `dmtcp_command --coord-socket SOCK ARGS...`, to completion.
fn dmtcp_command(sb: &Sandbox, sock: &Path, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(dmtcp_bin("dmtcp_command"));
    for var in ["DMTCP_COORD_HOST", "DMTCP_COORD_PORT", "DMTCP_CHECKPOINT_DIR", "STASIS_COORD_ADDR"] {
        cmd.env_remove(var);
    }
    cmd.arg("--coord-socket").arg(sock).args(args).current_dir(sb.path());
    let mut p = Proc::spawn(sb, &sb.label("dmtcp_command"), cmd, Out::Pipe);
    let status = p.wait_exit(sb, COMMAND_TIMEOUT);
    Outcome { label: p.label.clone(), pid: p.pid(), status, stdout: p.stdout_text(), stderr: p.stderr_text() }
}

#[track_caller]
fn expect_success(sb: &Sandbox, what: &str, out: &Outcome) {
    sb.check(out.status.success(), || {
        format!("{what} ({}) failed with {}; stdout:\n{}stderr:\n{}", out.label, out.status, out.stdout, out.stderr)
    });
}

/// A program that prints a line every few milliseconds: were it resumed
/// between its snapshot and the kill, it would print lines the restart
/// prints again.
fn printer() -> Program {
    Program::c("single", &["3000", "3"])
}

#[test]
fn kcheckpoint_kills_without_resuming_the_program() {
    let sb = Sandbox::new("kcheckpoint");
    let prog = printer();
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 20);
    // The program may print before its agent has connected.
    crate::wait_until(&sb, "the program connected", LINES_TIMEOUT, || connected(&sb, &sock) == 1);

    let out = dmtcp_command(&sb, &sock, &["-kc"]);
    expect_success(&sb, "dmtcp_command -kc", &out);
    sb.check(out.stdout.contains("checkpoint committed") && out.stdout.contains("kill sent"), || {
        format!("{} says {:?}, not that it committed and killed", out.label, out.stdout)
    });
    let status = app.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(!status.success(), || format!("{} exited with {status} after -kc, not killed", app.label));
    // The checkpoint lies after the very last line the killed run printed.
    let printed = app.lines().len();
    let killed = Piece::new(&app.label, app.lines(), vec![Window { lo: printed, hi: printed }]);

    let restart_sock = sb.socket();
    let mut again = restart(&sb, &restart_sock, &ck, Out::Pipe);
    let status = again.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", again.label));
    let restarted = Piece::new(&again.label, again.lines(), vec![]);
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &[killed, restarted]);
}

#[test]
fn restart_while_the_computation_runs_is_refused() {
    let sb = Sandbox::new("restart_while_running");
    let prog = printer();
    let ck = sb.join("ck");
    let sock = sb.socket();
    let run = sb.mkdir("run");
    let mut app = launch(&sb, &prog, &sock, &ck, &run, Out::Pipe);
    app.wait_lines(&sb, 3);
    crate::wait_until(&sb, "the program connected", LINES_TIMEOUT, || connected(&sb, &sock) == 1);
    checkpoint(&sb, &sock, &mut app);

    // Into the same coordinator, the original still connected.
    let target = newest_generation(&sb, &ck);
    let args = [OsStr::new("restart"), OsStr::new("--coord-socket"), sock.as_os_str(), target.as_os_str()];
    let refused = run_stasis(&sb, "restart", &args, QUICK_TIMEOUT);
    expect_clean_error(&sb, "a restart while the computation runs", &refused);
    sb.check(refused.stderr.contains("still running"), || {
        format!("{}: the refusal does not say the computation still runs: {}", refused.label, refused.stderr)
    });
    // The original runs on, alone.
    sb.check(connected(&sb, &sock) == 1, || {
        format!("{} processes connected, not the original alone", connected(&sb, &sock))
    });
    let before = app.line_count();
    app.wait_lines(&sb, before + 3);
    app.kill_computation(&sb, &run);
}
