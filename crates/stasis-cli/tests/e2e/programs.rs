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

/// How many processes the coordinator at `sock` has connected (its status).
fn connected(sb: &Sandbox, sock: &Path) -> usize {
    let sock = sock.as_os_str();
    let out = run_stasis(
        sb,
        "status",
        &["command".as_ref(), "--coord-socket".as_ref(), sock, "--status".as_ref()],
        QUICK_TIMEOUT,
    );
    out.stdout.lines().find_map(|l| l.strip_prefix("processes:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
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
