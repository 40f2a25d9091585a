//! The application API: a C program built with include/stasis.h (no
//! library linked) runs alone and under stasis, its hooks fire around a
//! checkpoint it asks for itself and around a restart, and a critical
//! section holds a checkpoint back (tests/programs/api.c); the Python
//! module over it (python/stasis.py, tests/programs/api.py).

use std::process::{Command, Stdio};

use crate::support::*;

/// The header and the Python module, as this build has them (written into
/// the sandbox: the tests may run where the source tree is not).
const HEADER: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../include/stasis.h"));
const PYTHON_MODULE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../python/stasis.py"));

/// tests/programs/api.c built against include/stasis.h, and run with `mode`.
fn api_program(sb: &Sandbox, mode: &str) -> Program {
    let include = sb.mkdir("include");
    std::fs::write(include.join("stasis.h"), HEADER).unwrap_or_else(|e| sb.fail(e));
    let exe = sb.join("api");
    if !exe.is_file() {
        cc(
            sb,
            &[
                &"-O1",
                &"-g",
                &"-pthread",
                &"-I",
                &include.as_path(),
                &"-o",
                &exe.as_path(),
                &programs_dir().join("api.c").as_path(),
            ],
        );
    }
    Program { name: "api".into(), argv: vec![exe.into_os_string(), mode.into()] }
}

/// tests/programs/api.py with python/stasis.py beside it in the sandbox.
fn python_program(sb: &Sandbox, args: &[&str]) -> Program {
    let dir = sb.mkdir("python");
    std::fs::write(dir.join("stasis.py"), PYTHON_MODULE).unwrap_or_else(|e| sb.fail(e));
    let mut all = vec![dir.to_str().unwrap_or_else(|| sb.fail("sandbox path is not UTF-8"))];
    all.extend(args);
    Program::python("api.py", &all)
}

fn cc(sb: &Sandbox, args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let out = Command::new("cc")
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| sb.fail(format!("cannot run cc: {e} (install gcc)")));
    sb.check(out.status.success(), || format!("cc failed:\n{}", String::from_utf8_lossy(&out.stderr)));
}

/// Waits until `app` printed a line starting with `prefix`; returns its index.
fn wait_for_line(sb: &Sandbox, app: &mut Proc, prefix: &str) -> usize {
    let mut found = None;
    crate::wait_until(sb, &format!("a line starting {prefix:?} from {}", app.label), RUN_TIMEOUT, || {
        app.drain();
        found = app.lines().iter().position(|l| l.starts_with(prefix));
        found.is_some() || app.poll_exit().is_some()
    });
    found.unwrap_or_else(|| {
        sb.fail(format!("{} exited without printing {prefix:?}; it printed {:?}", app.label, app.lines()))
    })
}

fn index_of(sb: &Sandbox, lines: &[String], line: &str) -> usize {
    lines.iter().position(|l| l == line).unwrap_or_else(|| sb.fail(format!("no line {line:?} in {lines:?}")))
}

/// The output of a program run alone, to its end.
fn run_alone(sb: &Sandbox, mut cmd: std::process::Command) -> Vec<String> {
    let out = cmd.stdin(Stdio::null()).current_dir(sb.path()).output().unwrap_or_else(|e| sb.fail(e));
    sb.check(out.status.success(), || format!("the program alone exited with {}", out.status));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn c_api_program_runs_alone_and_every_function_says_not_present() {
    let sb = Sandbox::new("api-alone");
    let lines = run_alone(&sb, api_program(&sb, "alone").command());
    // 3 is STASIS_NOT_PRESENT (DMTCP's DMTCP_NOT_PRESENT).
    let want = ["enabled 0 dmtcp 0", "checkpoint 3 generation 0", "disable 3 enable 3", "hook 3"];
    sb.check(lines == want, || format!("alone, the program printed {lines:?}, not {want:?}"));
}

#[test]
fn c_api_checkpoint_from_the_program_fires_hooks_and_returns_after_restart() {
    let sb = Sandbox::new("api-self");
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &api_program(&sb, "self"), &sock, &ck, &run_dir, Out::Pipe);
    let at = wait_for_line(&sb, &mut app, "checkpoint returned ");
    let lines = app.lines();
    sb.check(lines[at].starts_with("checkpoint returned 1 generation ") && !lines[at].ends_with(" 0"), || {
        format!("stasis_checkpoint() under stasis: {:?} (want 1, STASIS_AFTER_CHECKPOINT, and a generation)", lines[at])
    });
    let (enabled, pre, resume) = (
        index_of(&sb, &lines, "enabled 1 dmtcp 1"),
        index_of(&sb, &lines, "hook precheckpoint"),
        index_of(&sb, &lines, "hook resume"),
    );
    sb.check(enabled < pre && pre < resume && resume < at, || format!("hooks out of order: {lines:?}"));
    sb.check(committed_generations(&ck).len() == 1, || format!("want one generation in {}", ck.display()));
    wait_for_line(&sb, &mut app, "tick 1 ");
    app.kill_computation(&sb, &run_dir);

    // The image was taken inside stasis_checkpoint(): the restarted process
    // returns from it, saying so.
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let at = wait_for_line(&sb, &mut re, "checkpoint returned ");
    wait_for_line(&sb, &mut re, "hook restart");
    wait_for_line(&sb, &mut re, "tick 1 ");
    let lines = re.lines();
    sb.check(lines[at].starts_with("checkpoint returned 2 generation ") && !lines[at].ends_with(" 0"), || {
        format!("after the restart: {:?} (want 2, STASIS_AFTER_RESTART)", lines[at])
    });
    sb.check(!lines.iter().any(|l| l == "hook resume" || l == "hook precheckpoint"), || {
        format!("a restart fired checkpoint hooks: {lines:?}")
    });
    re.kill_computation(&sb, &run_dir);
}

#[test]
fn c_api_critical_section_holds_a_checkpoint_back_until_it_ends() {
    let sb = Sandbox::new("api-critical");
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &api_program(&sb, "critical"), &sock, &ck, &run_dir, Out::Pipe);
    wait_for_line(&sb, &mut app, "in critical section");
    // The program leaves its section only once the coordinator shows this
    // checkpoint waiting for it; the checkpoint must happen after that.
    let window = checkpoint(&sb, &sock, &mut app);
    wait_for_line(&sb, &mut app, "hook resume");
    let lines = app.lines();
    let (left, enable, pre, resume) = (
        index_of(&sb, &lines, "checkpoint waiting; leaving critical section"),
        index_of(&sb, &lines, "enable 1"),
        index_of(&sb, &lines, "hook precheckpoint"),
        index_of(&sb, &lines, "hook resume"),
    );
    // "enable 1" is printed once enable returned: the checkpoint may be
    // under way by then.
    sb.check(left < enable && left < pre && pre < resume, || {
        format!("the checkpoint did not wait for the critical section: {lines:?} (checkpoint window {window:?})")
    });
    sb.check(committed_generations(&ck).len() == 1, || format!("want one generation in {}", ck.display()));
    app.kill_computation(&sb, &run_dir);
}

#[test]
fn python_api_alone_under_stasis_and_after_restart() {
    let sb = Sandbox::new("api-python");
    let prog = python_program(&sb, &["tick"]);
    let alone = run_alone(&sb, python_program(&sb, &[]).command());
    let want = ["enabled False", "in critical section", "checkpoint None generation 0"];
    sb.check(alone == want, || format!("alone, api.py printed {alone:?}, not {want:?}"));

    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &run_dir, Out::Pipe);
    let at = wait_for_line(&sb, &mut app, "checkpoint ");
    let lines = app.lines();
    sb.check(lines[..at] == ["enabled True", "in critical section"], || format!("api.py under stasis: {lines:?}"));
    sb.check(lines[at].starts_with("checkpoint checkpoint generation ") && !lines[at].ends_with(" 0"), || {
        format!("stasis.checkpoint() under stasis: {:?}", lines[at])
    });
    wait_for_line(&sb, &mut app, "tick 1");
    app.kill_computation(&sb, &run_dir);

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let at = wait_for_line(&sb, &mut re, "checkpoint ");
    wait_for_line(&sb, &mut re, "tick 1");
    let lines = re.lines();
    sb.check(lines[at].starts_with("checkpoint restart generation "), || {
        format!("stasis.checkpoint() after the restart: {:?}", lines[at])
    });
    re.kill_computation(&sb, &run_dir);
}

#[test]
fn dmtcp_plugin_is_loaded_initialized_and_called_around_checkpoint_and_restart() {
    let sb = Sandbox::new("api-plugin");
    let plugin = sb.join("libtest_plugin.so");
    cc(&sb, &[&"-shared", &"-fPIC", &"-O1", &"-o", &plugin.as_path(), &programs_dir().join("plugin.c").as_path()]);
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut cmd = Command::new(dmtcp_bin("dmtcp_launch"));
    cmd.arg("--ckptdir")
        .arg(&ck)
        .arg("--coord-socket")
        .arg(&sock)
        .arg("--with-plugin")
        .arg(&plugin)
        .args(&api_program(&sb, "self").argv)
        .current_dir(&run_dir);
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    wait_for_line(&sb, &mut app, "checkpoint returned 1 ");
    let lines = app.lines();
    let order = [
        "plugin init after its constructor",
        "enabled 1 dmtcp 1",
        "plugin presuspend",
        "plugin precheckpoint, write wrapped",
        "hook precheckpoint",
        "plugin resume",
        "hook resume",
    ];
    let at: Vec<usize> = order.iter().map(|l| index_of(&sb, &lines, l)).collect();
    sb.check(at.windows(2).all(|w| w[0] < w[1]), || format!("plugin events out of order: {lines:?}"));
    app.kill_computation(&sb, &run_dir);

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    wait_for_line(&sb, &mut re, "plugin restart");
    wait_for_line(&sb, &mut re, "checkpoint returned 2 ");
    wait_for_line(&sb, &mut re, "tick 1 ");
    re.kill_computation(&sb, &run_dir);
}

#[test]
fn dmtcp_nocheckpoint_runs_commands_outside_a_computation_checkpointed_and_restarted() {
    // Called by its name, as DMTCP's programs call it: a link to stasis.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let link = dir.path().join("dmtcp_nocheckpoint");
    std::os::unix::fs::symlink(stasis(), &link).unwrap_or_else(|e| panic!("symlink: {e}"));
    let link = link.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8")).to_string();
    crate::checkpoint_kill_restart("nocheckpoint", &Program::bash("nocheckpoint.sh", &[&link]));
}
