//! Real programs that once broke: memory marked MADV_DONTFORK and
//! MADV_WIPEONFORK (tests/programs/dontfork.c) and Node.js with a
//! worker_thread (tests/programs/worker.js), whose V8 heap is so marked.

use std::ffi::OsString;
use std::path::Path;

use crate::support::*;

const NODE: &str = "/usr/bin/node";

/// Launches `prog` and takes it through `cycles` checkpoint, kill and
/// restart cycles, then lets the last restart finish; the whole history
/// must be the uninterrupted reference run's. Returns the sandbox.
pub fn checkpoint_kill_restart_cycles(test: &str, prog: &Program, cycles: usize) -> Sandbox {
    let sb = Sandbox::new(test);
    let reference = start_reference(&sb, prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let mut sock = sb.socket();
    let mut app = launch(&sb, prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    let mut pieces = Vec::new();
    for _ in 0..cycles {
        app.wait_lines(&sb, 3);
        let window = checkpoint(&sb, &sock, &mut app);
        crate::carry_on(&sb, &mut app, window, 2);
        app.kill();
        pieces.push(Piece::new(&app.label, app.lines(), vec![window]));
        sock = sb.socket();
        app = restart(&sb, &sock, &ck, Out::Pipe);
    }
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", app.label));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
    sb
}

/// Every byte of a DONTFORK and of a WIPEONFORK region comes back, and the
/// regions are marked so again (the program checks smaps itself each step;
/// a lost byte or flag changes its line).
#[test]
fn memory_marked_dontfork_and_wipeonfork_survives_two_cycles() {
    let sb = checkpoint_kill_restart_cycles("dontfork", &Program::c("dontfork", &["60", "60"]), 2);
    drop(sb);
}

/// Node.js 20 with a worker_thread: V8's heap, code and the worker's
/// isolate come back, twice.
#[test]
fn node_with_a_worker_thread_survives_two_cycles() {
    if !Path::new(NODE).is_file() {
        eprintln!("not run: {NODE} missing (apt-get install nodejs)");
        return;
    }
    let script = programs_dir().join("worker.js");
    let argv: Vec<OsString> = vec![NODE.into(), script.into_os_string(), "60".into(), "60".into()];
    let sb = checkpoint_kill_restart_cycles("node", &Program { name: "worker.js".into(), argv }, 2);
    drop(sb);
}

/// `stasis command --quit` on a tree of 32 processes: when it returns,
/// every process of the computation is gone, and so is the coordinator.
#[test]
fn quit_kills_every_process_of_a_32_process_tree() {
    let sb = Sandbox::new("quit");
    for round in 0..3 {
        let run = sb.mkdir(format!("run{round}"));
        let (ck, sock) = (sb.join(format!("ck{round}")), sb.socket());
        let mut app = launch(&sb, &Program::c("fanout", &["32"]), &sock, &ck, &run, Out::Pipe);
        app.wait_lines(&sb, 32);
        crate::wait_until(&sb, "32 processes connected", LINES_TIMEOUT, || connected(&sb, &sock) == 32);
        let sock_arg = sock.as_os_str();
        let out = run_stasis(
            &sb,
            "quit",
            &["command".as_ref(), "--coord-socket".as_ref(), sock_arg, "--quit".as_ref()],
            QUICK_TIMEOUT,
        );
        sb.check(out.status.success() && out.stdout.contains("kill sent to 32 process(es)"), || {
            format!("round {round}: quit answered {}: {}{}", out.status, out.stdout, out.stderr)
        });
        // A process whose connection closed is inside exit(): a zombie in
        // a moment. One that survived runs on for good.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut left = processes_in(&run);
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            left = processes_in(&run);
        }
        sb.check(left.is_empty(), || {
            let list: Vec<String> = left.iter().map(|&p| describe_process(p)).collect();
            format!("round {round}: {} process(es) survived the quit:\n{}", left.len(), list.join("\n"))
        });
        let status = app.wait_exit(&sb, QUICK_TIMEOUT);
        sb.check(!status.success(), || format!("round {round}: the launch of a killed tree exited with {status}"));
    }
}

/// A program that dup2()s onto 900..1023, where the agent keeps its
/// connection, then close_range()s them and dup3()s onto them again: its
/// descriptors are its own, and checkpoints go on working.
#[test]
fn a_program_taking_the_agents_descriptor_numbers_is_still_checkpointed() {
    let sb = checkpoint_kill_restart_cycles("dup2", &Program::c("dup2", &["40", "60"]), 2);
    drop(sb);
}

/// What `stasis inspect` says of each image of a generation: whether its
/// agent was asked to compress, and how many chunks were stored compressed.
fn compression_of(sb: &Sandbox, generation: &Path) -> Vec<(bool, usize)> {
    images_in(sb, generation)
        .iter()
        .map(|image| {
            let out = run_stasis(sb, "inspect", &["inspect".as_ref(), image.as_os_str()], QUICK_TIMEOUT);
            sb.check(out.status.success(), || format!("inspect {}: {}", image.display(), out.stderr));
            let asked = out.stdout.lines().any(|l| l.trim_start().starts_with("agent ") && l.contains(", compressed"));
            let chunks = out
                .stdout
                .split(" chunks compressed")
                .next()
                .and_then(|head| head.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (asked, chunks)
        })
        .collect()
}

/// `stasis launch --compress`, checkpoint, kill, then a plain `stasis
/// restart` and a checkpoint of the restarted program: that generation is
/// compressed too.
#[test]
fn compression_asked_at_launch_is_carried_over_to_restart() {
    let sb = Sandbox::new("compress");
    let prog = Program::c("single", &["60", "60"]);
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut cmd = std::process::Command::new(stasis());
    cmd.arg("launch")
        .arg("--compress")
        .arg("--ckptdir")
        .arg(&ck)
        .arg("--coord-socket")
        .arg(&sock)
        .arg("--")
        .args(&prog.argv)
        .current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    checkpoint(&sb, &sock, &mut app);
    app.kill();
    let first = compression_of(&sb, &newest_generation(&sb, &ck));

    let sock = sb.socket();
    let mut re = restart(&sb, &sock, &ck, Out::Pipe);
    re.wait_lines(&sb, 2);
    checkpoint(&sb, &sock, &mut re);
    re.kill();
    let second = compression_of(&sb, &newest_generation(&sb, &ck));
    for (what, images) in [("launched", &first), ("restarted", &second)] {
        sb.check(!images.is_empty() && images.iter().all(|&(asked, chunks)| asked && chunks > 0), || {
            format!("the {what} program's generation is not compressed (asked, chunks compressed): {images:?}")
        });
    }
}

/// Whether this test process runs as root.
fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The first user of `STASIS_E2E_USERS` (default `stasis-ci`), created
/// (without a home) when missing: its name.
fn test_user() -> String {
    let names = std::env::var("STASIS_E2E_USERS").unwrap_or_else(|_| "stasis-ci,stasis-ci2".into());
    let name = names.split(',').next().unwrap_or("stasis-ci").to_string();
    let known = std::process::Command::new("id").arg("-u").arg(&name).output().is_ok_and(|o| o.status.success());
    if !known {
        let st = std::process::Command::new("useradd").args(["-M", "-s", "/bin/bash", &name]).status();
        assert!(st.is_ok_and(|s| s.success()), "cannot create the test user {name} (useradd)");
    }
    name
}

/// A user's stasis command line, as `runuser -u USER -- env -i ...` runs it
/// from root: the harness's pipe (stdout) is root's. Its stderr goes to a
/// file of the user's (`stasis.log` in `home`): the harness's stderr file
/// is root's, and a file is reopened by its path at restart, which the user
/// may not do.
fn as_user(user: &str, home: &Path, bin: &Path, args: &[&std::ffi::OsStr]) -> std::process::Command {
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("TMPDIR={}", home.display()))
        .arg(format!("PATH={}:/usr/bin:/bin", bin.display()))
        .args(["/bin/sh", "-c", "exec \"$0\" \"$@\" 2>>\"$HOME/stasis.log\""])
        .arg(bin.join("stasis"))
        .args(args)
        .current_dir(home);
    cmd
}

/// `runuser -u USER -- stasis launch ... | cat` as root: the program's
/// stdout is a pipe root made, which the user cannot open again through
/// /proc. Checkpoints are written all the same, and the restart (as the
/// user, its stdout root's pipe again) carries on exactly.
#[test]
fn stdout_a_pipe_of_another_user_is_checkpointed_and_restarted() {
    if !is_root() {
        eprintln!("stdout_a_pipe_of_another_user: not run: playing a user needs root (.ci/run runs it as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let user = test_user();
    let sb = Sandbox::new("foreign-pipe");
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| sb.fail(format!("chmod {}: {e}", p.display())))
    };
    chmod(sb.path(), 0o755);
    let bin = sb.mkdir("bin");
    chmod(&bin, 0o755);
    for name in ["stasis", "libstasis_agent.so"] {
        let to = bin.join(name);
        std::fs::copy(stasis().with_file_name(name), &to).unwrap_or_else(|e| sb.fail(format!("copy {name}: {e}")));
        chmod(&to, 0o755);
    }
    let exe = bin.join("single");
    std::fs::copy(compiled("single"), &exe).unwrap_or_else(|e| sb.fail(format!("copy single: {e}")));
    chmod(&exe, 0o755);
    let home = sb.mkdir("home");
    let out = std::process::Command::new("chown").arg(&user).arg(&home).status();
    sb.check(out.is_ok_and(|s| s.success()), || format!("chown {user} {}", home.display()));
    chmod(&home, 0o700);
    let ck = home.join("ck");
    let prog = Program::c("single", &["60", "60"]).at(&exe);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));

    let os = |s: &str| std::ffi::OsString::from(s);
    let launch_args = [
        os("launch"),
        os("--ckptdir"),
        ck.clone().into_os_string(),
        os("--"),
        exe.clone().into_os_string(),
        os("60"),
        os("60"),
    ];
    let launch_refs: Vec<&std::ffi::OsStr> = launch_args.iter().map(|a| a.as_os_str()).collect();
    let mut app = Proc::spawn(&sb, &sb.label("launch"), as_user(&user, &home, &bin, &launch_refs), Out::Pipe);
    app.wait_lines(&sb, 3);
    // A checkpoint as the user, through the computation's own coordinator.
    app.drain();
    let lo = app.line_count();
    let ck_args = [os("command"), os("--ckptdir"), ck.clone().into_os_string(), os("--checkpoint")];
    let ck_refs: Vec<&std::ffi::OsStr> = ck_args.iter().map(|a| a.as_os_str()).collect();
    let mut command = Proc::spawn(&sb, &sb.label("command"), as_user(&user, &home, &bin, &ck_refs), Out::Pipe);
    let status = command.wait_exit(&sb, COMMAND_TIMEOUT);
    let log = || std::fs::read_to_string(home.join("stasis.log")).unwrap_or_default();
    sb.check(status.success(), || format!("{} failed with {status}; stasis.log:\n{}", command.label, log()));
    app.drain();
    let window = Window { lo, hi: app.line_count() };
    crate::carry_on(&sb, &mut app, window, 2);
    app.kill();
    let reference = finish_reference(&sb, reference);

    let re_args = [os("restart"), ck.clone().into_os_string()];
    let re_refs: Vec<&std::ffi::OsStr> = re_args.iter().map(|a| a.as_os_str()).collect();
    let mut re = Proc::spawn(&sb, &sb.label("restart"), as_user(&user, &home, &bin, &re_refs), Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stasis.log:\n{}", re.label, log()));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&re.label, re.lines(), vec![])],
    );
}
