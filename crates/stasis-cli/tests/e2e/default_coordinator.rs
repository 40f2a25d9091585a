//! The coordinator a computation gets when it names none: one of its own,
//! on its checkpoint directory's Unix socket, with no TCP port. Two
//! computations of one user get two coordinators and checkpoint into their
//! own directories; a second one into the same directory (a second restart
//! of one checkpoint too) is refused; a coordinator on the default port,
//! 7779, neither captures nor blocks a launch; `stasis command --ckptdir`
//! reaches the right one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::support::*;

const POLL: Duration = Duration::from_millis(20);

/// Variables of the test's own environment that would name a coordinator.
const STEERING: [&str; 11] = [
    "DMTCP_COORD_HOST",
    "DMTCP_HOST",
    "DMTCP_COORD_PORT",
    "DMTCP_PORT",
    "DMTCP_CHECKPOINT_DIR",
    "STASIS_COORD_ADDR",
    "STASIS_COORD_SOCKET",
    "STASIS_COORD_HOST",
    "STASIS_COORD_PORT",
    "STASIS_COORD_SECRET",
    "DMTCP_TMPDIR",
];

/// `bin` (stasis, or a DMTCP name) run in the sandbox, naming no
/// coordinator, with the per-user socket directory under the sandbox.
fn unnamed(sb: &Sandbox, bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for var in STEERING {
        cmd.env_remove(var);
    }
    cmd.env("STASIS_TMPDIR", sb.path()).env("DMTCP_TMPDIR", sb.path()).current_dir(sb.path());
    cmd
}

/// `stasis launch --ckptdir CK -- PROGRAM` in `cwd`, nothing named.
fn launch(sb: &Sandbox, prog: &Program, ck: &Path, cwd: &Path) -> Proc {
    let mut cmd = unnamed(sb, stasis());
    cmd.arg("launch").arg("--ckptdir").arg(ck).arg("--").args(&prog.argv).current_dir(cwd);
    Proc::spawn(sb, &sb.label("launch"), cmd, Out::Pipe)
}

fn run_to_end(sb: &Sandbox, base: &str, cmd: Command, timeout: Duration) -> Outcome {
    let mut p = Proc::spawn(sb, &sb.label(base), cmd, Out::Pipe);
    let status = p.wait_exit(sb, timeout);
    Outcome { label: p.label.clone(), pid: p.pid(), status, stdout: p.stdout_text(), stderr: p.stderr_text() }
}

/// `stasis ARGS...`, nothing named, to the end.
fn stasis_cmd(sb: &Sandbox, args: &[&str], timeout: Duration) -> Outcome {
    let mut cmd = unnamed(sb, stasis());
    cmd.args(args);
    run_to_end(sb, "stasis", cmd, timeout)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The coordinator a launch or restart says it started (its stderr line).
fn said_socket(sb: &Sandbox, p: &Proc) -> PathBuf {
    const SAID: &str = "stasis: this computation's coordinator: ";
    let deadline = Instant::now() + QUICK_TIMEOUT;
    loop {
        let text = fs::read_to_string(&p.stderr_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(SAID)) {
            let rest = &line[SAID.len()..];
            let sock = rest.split(" (").next().unwrap_or(rest);
            return PathBuf::from(sock);
        }
        if Instant::now() > deadline {
            sb.fail(format!("{} did not say where its coordinator is; stderr:\n{text}", p.label));
        }
        sleep(POLL);
    }
}

/// The pid of the coordinator listening on `sock` (it names it on its
/// command line).
fn coordinator_pid(sb: &Sandbox, sock: &Path) -> i32 {
    let found: Vec<i32> = processes_naming(sb.path())
        .into_iter()
        .filter(|&pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.contains(&&b"coordinator"[..]) && args.contains(&sock.as_os_str().as_encoded_bytes())
        })
        .collect();
    sb.check(found.len() == 1, || format!("coordinators on {}: {found:?}", sock.display()));
    found[0]
}

/// `stasis command --ckptdir CK --checkpoint`, which must commit a
/// generation in `ck` (and nowhere else).
fn checkpoint_by_dir(sb: &Sandbox, ck: &Path, app: &mut Proc) {
    app.drain();
    let out = stasis_cmd(sb, &["command", "--ckptdir", s(ck), "--checkpoint"], COMMAND_TIMEOUT);
    let canonical = ck.canonicalize().unwrap_or_else(|e| sb.fail(format!("{}: {e}", ck.display())));
    sb.check(out.status.success(), || format!("{} failed ({}): {}", out.label, out.status, out.stderr));
    let want = format!(" in {}/gen-", canonical.display());
    sb.check(out.stdout.contains(&want) && out.stdout.contains("(1 process)"), || {
        format!("{}: {:?} is not a checkpoint of one process into {}", out.label, out.stdout, ck.display())
    });
    app.drain();
}

#[test]
fn two_computations_of_one_user_get_two_coordinators() {
    let sb = Sandbox::new("default-two");
    let prog = Program::c("single", &["400", "50"]);
    let (ck1, ck2) = (sb.join("ck1"), sb.join("ck2"));
    let (run1, run2) = (sb.mkdir("run-1"), sb.mkdir("run-2"));
    let mut app1 = launch(&sb, &prog, &ck1, &run1);
    let mut app2 = launch(&sb, &prog, &ck2, &run2);
    app1.wait_lines(&sb, 3);
    app2.wait_lines(&sb, 3);

    // Two coordinators, each on its directory's socket, none on TCP.
    let (sock1, sock2) = (said_socket(&sb, &app1), said_socket(&sb, &app2));
    sb.check(sock1 != sock2, || format!("both computations use {}", sock1.display()));
    for sock in [&sock1, &sock2] {
        let pid = coordinator_pid(&sb, sock);
        let tcp = tcp_listening(pid as u32);
        sb.check(tcp.is_empty(), || format!("the coordinator on {} listens on TCP {tcp:?}", sock.display()));
    }

    // A third computation into ck1 is refused, and both run on.
    let mut third = unnamed(&sb, stasis());
    third.arg("launch").arg("--ckptdir").arg(&ck1).arg("--").args(&prog.argv).current_dir(sb.mkdir("run-3"));
    let out = run_to_end(&sb, "launch-refused", third, QUICK_TIMEOUT);
    expect_clean_error(&sb, "a second launch into ck1", &out);
    let want = format!(
        "another computation already checkpoints into {} (its coordinator is at {})",
        ck1.canonicalize().unwrap().display(),
        sock1.display()
    );
    sb.check(out.stderr.contains(&want), || format!("the refusal says {:?}, not {want:?}", out.stderr));

    // Each checkpoints into its own directory.
    checkpoint_by_dir(&sb, &ck1, &mut app1);
    sb.check(committed_generations(&ck1).len() == 1 && committed_generations(&ck2).is_empty(), || {
        format!("after ck1's checkpoint: ck1 {:?}, ck2 {:?}", committed_generations(&ck1), committed_generations(&ck2))
    });
    checkpoint_by_dir(&sb, &ck2, &mut app2);
    checkpoint_by_dir(&sb, &ck2, &mut app2);
    sb.check(committed_generations(&ck1).len() == 1 && committed_generations(&ck2).len() == 2, || {
        format!("ck1 {:?}, ck2 {:?}", committed_generations(&ck1), committed_generations(&ck2))
    });
    for (app, ck) in [(&app1, &ck1), (&app2, &ck2)] {
        let out = stasis_cmd(&sb, &["command", "--ckptdir", s(ck), "-s"], QUICK_TIMEOUT);
        sb.check(out.status.success() && out.stdout.contains("processes:       1\n"), || {
            format!("{} (status of {}'s computation):\n{}{}", out.label, app.label, out.stdout, out.stderr)
        });
    }
    app1.kill_computation(&sb, &run1);
    app2.kill_computation(&sb, &run2);

    // Two restarts of one checkpoint at once: the second is refused.
    require_user_namespaces();
    let mut cmd = unnamed(&sb, stasis());
    cmd.arg("restart").arg(&ck1);
    let mut first = Proc::spawn(&sb, &sb.label("restart"), cmd, Out::Pipe);
    first.wait_lines(&sb, 2);
    let out = stasis_cmd(&sb, &["restart", s(&ck1)], QUICK_TIMEOUT);
    expect_clean_error(&sb, "a second restart of ck1", &out);
    sb.check(out.stderr.contains("another computation already checkpoints into"), || {
        format!("the second restart says {:?}", out.stderr)
    });
    sb.check(first.poll_exit().is_none(), || format!("{} ended when a second restart was refused", first.label));
    checkpoint_by_dir(&sb, &ck1, &mut first);
    first.kill_computation(&sb, &run1);
}

#[test]
fn a_coordinator_on_the_default_port_does_not_capture_a_launch() {
    let _port = default_port_lock();
    let sb = Sandbox::new("default-port-held");
    // Another computation's coordinator (the same user, another secret)
    // on port 7779, its socket where this test's launches would look.
    let other = sb.join("other-ck");
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let sock7779 = sb.join(format!("stasis-{uid}/coord-7779.sock"));
    let mut cmd = unnamed(&sb, stasis());
    cmd.args(["coordinator", "-p", "7779", "--ckptdir", s(&other)]);
    let mut holder = Proc::spawn(&sb, &sb.label("coordinator-7779"), cmd, Out::Pipe);
    let deadline = Instant::now() + QUICK_TIMEOUT;
    while !sock7779.exists() && holder.poll_exit().is_none() {
        sb.check(Instant::now() < deadline, || "the coordinator on 7779 did not start".into());
        sleep(POLL);
    }
    if holder.poll_exit().is_some() {
        // Someone else on this machine holds TCP 7779 already: that is the
        // case too. Take its per-user socket, without TCP.
        let mut cmd = unnamed(&sb, stasis());
        cmd.args(["coordinator", "--ckptdir", s(&other)]);
        holder = Proc::spawn(&sb, &sb.label("coordinator-7779-socket"), cmd, Out::Pipe);
        while !sock7779.exists() {
            sb.check(holder.poll_exit().is_none() && Instant::now() < deadline, || {
                "the coordinator on 7779's socket did not start".into()
            });
            sleep(POLL);
        }
    }

    // The how-to's launch, and stasis's own: each gets its own coordinator.
    let prog = Program::c("single", &["80", "50"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck1, ck2) = (sb.join("ck-stasis"), sb.join("ck-dmtcp"));
    let (run1, run2) = (sb.mkdir("run-stasis"), sb.mkdir("run-dmtcp"));
    let mut app1 = launch(&sb, &prog, &ck1, &run1);
    let mut cmd = unnamed(&sb, &dmtcp_bin("dmtcp_launch"));
    cmd.args(["-i", "60", "--ckptdir", s(&ck2)]).args(&prog.argv).current_dir(&run2);
    let mut app2 = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app1.wait_lines(&sb, 3);
    app2.wait_lines(&sb, 3);
    checkpoint_by_dir(&sb, &ck1, &mut app1);
    // dmtcp_command finds it by its directory too.
    let mut cmd = unnamed(&sb, &dmtcp_bin("dmtcp_command"));
    cmd.args(["--ckptdir", s(&ck2), "-bc"]);
    let out = run_to_end(&sb, "dmtcp_command", cmd, COMMAND_TIMEOUT);
    sb.check(out.status.success() && out.stdout.contains("checkpoint committed"), || {
        format!("{}: {}{}", out.label, out.stdout, out.stderr)
    });

    // The coordinator on 7779 saw nothing of them.
    let out = stasis_cmd(&sb, &["command", "--coord-socket", s(&sock7779), "-s"], QUICK_TIMEOUT);
    sb.check(out.status.success() && out.stdout.contains("processes:       0\n"), || {
        format!("the coordinator on 7779: {}{}", out.stdout, out.stderr)
    });
    sb.check(committed_generations(&other).is_empty(), || "a checkpoint went to the 7779 coordinator's".into());
    for (app, ck) in [(&mut app1, &ck1), (&mut app2, &ck2)] {
        let status = app.wait_exit(&sb, RUN_TIMEOUT);
        sb.check(status.success(), || format!("{} exited with {status}", app.label));
        sb.check(!committed_generations(ck).is_empty(), || format!("no generation in {}", ck.display()));
    }
    let reference = finish_reference(&sb, reference);
    for app in [&app1, &app2] {
        sb.check(app.lines() == reference, || format!("{}'s output differs from the reference", app.label));
    }
    sb.check(holder.poll_exit().is_none(), || "the coordinator on 7779 ended".into());
}

#[test]
fn the_howtos_interactive_workflow_joins_a_coordinator_started_by_hand() {
    let sb = Sandbox::new("default-interactive");
    // Terminal 2: dmtcp_coordinator, no options; it checkpoints into its
    // current directory. (Not the program's: killing the program kills
    // whatever runs there.)
    let (job, term2) = (sb.mkdir("job"), sb.mkdir("terminal-2"));
    let mut cmd = unnamed(&sb, &dmtcp_bin("dmtcp_coordinator"));
    cmd.current_dir(&term2);
    let mut coord = Proc::spawn(&sb, &sb.label("dmtcp_coordinator"), cmd, Out::Pipe);
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let sock = sb.join(format!("stasis-{uid}/coord-7779.sock"));
    let deadline = Instant::now() + QUICK_TIMEOUT;
    while !sock.exists() {
        sb.check(coord.poll_exit().is_none() && Instant::now() < deadline, || {
            format!("{} did not start on {}", coord.label, sock.display())
        });
        sleep(POLL);
    }
    let tcp = tcp_listening(coord.pid() as u32);
    sb.check(tcp.is_empty(), || format!("dmtcp_coordinator with no options listens on TCP {tcp:?}"));

    // Terminal 1: dmtcp_launch --join-coordinator ./your_program.
    let prog = Program::c("single", &["120", "50"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let mut cmd = unnamed(&sb, &dmtcp_bin("dmtcp_launch"));
    cmd.arg("--join-coordinator").args(&prog.argv).current_dir(&job);
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    // Checkpoints go where the coordinator writes them, and launch says so.
    let said = fs::read_to_string(&app.stderr_path).unwrap_or_default();
    sb.check(said.contains(&format!("checkpoints into {}, not into", term2.display())), || {
        format!("{} does not note where checkpoints go: {said:?}", app.label)
    });
    // dmtcp_command with nothing named, from the job's directory: the
    // directory has no coordinator of its own, port 7779's socket has it.
    let command = |args: &[&str]| {
        let mut cmd = unnamed(&sb, &dmtcp_bin("dmtcp_command"));
        cmd.args(args).current_dir(&job);
        run_to_end(&sb, "dmtcp_command", cmd, COMMAND_TIMEOUT)
    };
    let out = command(&["-s"]);
    sb.check(out.status.success() && out.stdout.contains("NUM_PEERS=1\n"), || {
        format!("dmtcp_command -s: {}{}", out.stdout, out.stderr)
    });
    app.drain();
    let lo = app.line_count();
    let out = command(&["-bc"]);
    sb.check(out.status.success(), || format!("dmtcp_command -bc: {}{}", out.stdout, out.stderr));
    app.drain();
    let window = Window { lo, hi: app.line_count() };
    app.kill_computation(&sb, &job);

    // dmtcp_restart --join-coordinator ckpt_*.dmtcp, joined to the same one.
    require_user_namespaces();
    let images: Vec<PathBuf> = fs::read_dir(&term2)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dmtcp"))
        .collect();
    sb.check(images.len() == 1, || format!("ckpt_*.dmtcp in {}: {images:?}", term2.display()));
    let mut cmd = unnamed(&sb, &dmtcp_bin("dmtcp_restart"));
    cmd.arg("--join-coordinator").args(&images).current_dir(&job);
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", restart.label));
    let reference = finish_reference(&sb, reference);
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&restart.label, restart.lines(), vec![])],
    );
    sb.check(coord.poll_exit().is_none(), || "the coordinator started by hand ended".into());
}
