//! DMTCP's launch and restart options end to end: `--ckptdir` given to a
//! coordinator that has no process yet (launch and restart), the restart
//! that pauses for a debugger (`--debug-restart-pause`,
//! `DMTCP_RESTART_PAUSE`), and `--tmpdir` in the program's environment.
//!
//! Coordinators started by hand listen on a port the kernel picks; every
//! Unix socket goes under the sandbox (`DMTCP_TMPDIR`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::dmtcp::{copy_piece, dmtcp};
use crate::support::*;
use crate::wait_until;

const POLL: Duration = Duration::from_millis(20);

/// `dmtcp_command ARGS...` to its end: (success, stdout).
fn command(sb: &Sandbox, args: &[&str]) -> (bool, String) {
    let mut cmd = dmtcp(sb, "dmtcp_command");
    cmd.args(args);
    let mut c = Proc::spawn(sb, &sb.label("dmtcp_command"), cmd, Out::Pipe);
    let status = c.wait_exit(sb, COMMAND_TIMEOUT);
    (status.success(), c.stdout_text())
}

/// `dmtcp_command ARGS... --bcheckpoint`, which must succeed, while `app`
/// runs; returns where in `app`'s output the checkpoint lies.
fn bcheckpoint(sb: &Sandbox, args: &[&str], app: &mut Proc) -> Window {
    app.drain();
    let lo = app.line_count();
    let mut cmd = dmtcp(sb, "dmtcp_command");
    cmd.args(args).arg("--bcheckpoint");
    let mut c = Proc::spawn(sb, &sb.label("dmtcp_command"), cmd, Out::Pipe);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while c.poll_exit().is_none() {
        app.drain();
        if Instant::now() > deadline {
            sb.fail(format!("{} (checkpoint of {}) did not return within {COMMAND_TIMEOUT:?}", c.label, app.label));
        }
        sleep(POLL);
    }
    let status = c.wait_exit(sb, QUICK_TIMEOUT);
    sb.check(status.success(), || {
        format!("{} (checkpoint of {}) failed with {status}; stderr:\n{}", c.label, app.label, c.stderr_text())
    });
    app.drain();
    Window { lo, hi: app.line_count() }
}

/// `dmtcp_coordinator -p 0 --port-file F --ckptdir CK --exit-on-last`;
/// returns it and its port.
fn coordinator(sb: &Sandbox, ck: &Path) -> (Proc, u16) {
    let port_file = sb.join(format!("{}.port", sb.label("coordinator")));
    let mut cmd = dmtcp(sb, "dmtcp_coordinator");
    cmd.args(["-p", "0", "--port-file"]).arg(&port_file).arg("--ckptdir").arg(ck).arg("--exit-on-last");
    let mut coord = Proc::spawn(sb, &sb.label("dmtcp_coordinator"), cmd, Out::Pipe);
    let mut port = None;
    wait_until(sb, "the coordinator's port file", QUICK_TIMEOUT, || {
        port = fs::read_to_string(&port_file).ok().and_then(|t| t.trim().parse::<u16>().ok());
        port.is_some() || coord.poll_exit().is_some()
    });
    match port {
        Some(p) => (coord, p),
        None => sb.fail(format!("{} exited before writing its port", coord.label)),
    }
}

/// The `ckpt_*.dmtcp` files at the top of `dir`.
fn dmtcp_images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("ckpt_") && name.ends_with(".dmtcp")
        })
        .collect();
    v.sort();
    v
}

/// The first bytes of a file.
fn head(path: &Path, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let got = fs::File::open(path).and_then(|mut f| f.read(&mut buf)).unwrap_or(0);
    buf.truncate(got);
    buf
}

/// A coordinator started by hand on one directory; a launch that joins it
/// with `--ckptdir` of its own, and later a restart with yet another: each
/// time the coordinator has no process, and the checkpoints go where the
/// joining command says (DMTCP's `--ckptdir`), the first one after a move
/// a full one. The output runs on as the uninterrupted run's does.
#[test]
fn ckptdir_given_to_an_idle_coordinator() {
    let sb = Sandbox::new("dmtcp-ckptdir-join");
    let prog = Program::c("single", &["150", "40"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (hand, launched_ck, restarted_ck) = (sb.join("by-hand"), sb.join("launch-ck"), sb.join("restart-ck"));
    let (mut coord, port) = coordinator(&sb, &hand);
    let p = port.to_string();

    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--join-coordinator", "-p", &p, "--ckptdir"]).arg(&launched_ck).args(&prog.argv);
    cmd.current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    wait_until(&sb, "the coordinator to count the process", QUICK_TIMEOUT, || {
        command(&sb, &["-p", &p, "-s"]).1.contains("NUM_PEERS=1")
    });
    // A computation's directory never changes under its processes.
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--join-coordinator", "-p", &p, "--ckptdir"]).arg(sb.join("elsewhere")).arg("/bin/true");
    let mut other = Proc::spawn(&sb, &sb.label("dmtcp_launch-elsewhere"), cmd, Out::Pipe);
    let status = other.wait_exit(&sb, QUICK_TIMEOUT);
    let said = other.stderr_text();
    sb.check(!status.success() && said.contains("not into") && said.lines().count() == 1, || {
        format!("{} (another --ckptdir while a process runs) exited with {status}: {said:?}", other.label)
    });
    let window = bcheckpoint(&sb, &["-p", &p], &mut app);
    sb.check(committed_generations(&hand).is_empty(), || {
        format!("{} has a generation: the checkpoint did not go where launch said", hand.display())
    });
    let images = dmtcp_images(&launched_ck);
    sb.check(images.len() == 1, || format!("ckpt_*.dmtcp in {}: {images:?}", launched_ck.display()));
    // DMTCP's signature, then ours (docs/image-format.md).
    let start = head(&images[0], 32);
    sb.check(start.starts_with(b"DMTCP_CHECKPOINT_IMAGE_STASIS"), || {
        format!("{} starts with {:?}", images[0].display(), String::from_utf8_lossy(&start))
    });
    app.wait_lines(&sb, window.hi + 2);
    app.kill();
    let launched = Piece::new(&app.label, app.lines(), vec![window]);
    // --exit-on-last: a new one for the restart, again on `hand`.
    let status = coord.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", coord.label));
    let reference = finish_reference(&sb, reference);

    require_user_namespaces();
    let (mut coord, port) = coordinator(&sb, &hand);
    let p = port.to_string();
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.args(["--join-coordinator", "-p", &p, "--ckptdir"]).arg(&restarted_ck).args(&images);
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    restart.wait_lines(&sb, 2);
    wait_until(&sb, "the coordinator to count the restarted process", QUICK_TIMEOUT, || {
        command(&sb, &["-p", &p, "-s"]).1.contains("NUM_PEERS=1")
    });
    let window = bcheckpoint(&sb, &["-p", &p], &mut restart);
    sb.check(committed_generations(&hand).is_empty(), || format!("{} has a generation", hand.display()));
    let generations = committed_generations(&restarted_ck);
    sb.check(generations.len() == 1 && dmtcp_images(&restarted_ck).len() == 1, || {
        format!("{} holds {generations:?} and {:?}", restarted_ck.display(), dmtcp_images(&restarted_ck))
    });
    // Full: the generation it would build on is in the launch's directory.
    let manifest = fs::read_to_string(generations[0].1.join("MANIFEST")).unwrap_or_default();
    sb.check(!manifest.lines().any(|l| l.starts_with("needs ")), || {
        format!("the first checkpoint into {} refers to other generations:\n{manifest}", restarted_ck.display())
    });
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", restart.label));
    let status = coord.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", coord.label));
    verify_history(&sb, &reference, &[launched, Piece::new(&restart.label, restart.lines(), vec![window])]);
}

/// `--debug-restart-pause N` (and DMTCP_RESTART_PAUSE): restart checks
/// everything, then waits, with no process restored nor joined, until
/// SIGCONT; then the program goes on from its checkpoint.
#[test]
fn debug_restart_pause_waits_for_sigcont() {
    let sb = Sandbox::new("dmtcp-restart-pause");
    let prog = Program::c("single", &["120", "40"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.arg("--ckptdir").arg(&ck).args(&prog.argv).current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    let ckdir = ck.to_string_lossy().into_owned();
    let window = bcheckpoint(&sb, &["--ckptdir", &ckdir], &mut app);
    app.wait_lines(&sb, window.hi + 2);
    app.kill();
    let launched = Piece::new(&app.label, app.lines(), vec![window]);
    let reference = finish_reference(&sb, reference);
    // The coordinator launch started goes with its computation.
    wait_until(&sb, "the launch's coordinator to go", QUICK_TIMEOUT, || !command(&sb, &["--ckptdir", &ckdir, "-s"]).0);

    require_user_namespaces();
    for (how, flag, var) in [("flag", Some("1"), None), ("variable", None, Some("3"))] {
        let mut cmd = dmtcp(&sb, "dmtcp_restart");
        if let Some(level) = flag {
            cmd.args(["--debug-restart-pause", level]);
        }
        if let Some(level) = var {
            cmd.env("DMTCP_RESTART_PAUSE", level);
        }
        cmd.arg(&ck);
        let mut restart = Proc::spawn(&sb, &sb.label(&format!("dmtcp_restart-pause-{how}")), cmd, Out::Pipe);
        wait_until(&sb, "restart to say it pauses", QUICK_TIMEOUT, || {
            restart.drain();
            restart.stderr_text().contains("restart paused before restoring") || restart.poll_exit().is_some()
        });
        sb.check(restart.poll_exit().is_none(), || format!("{} exited instead of pausing", restart.label));
        // Paused: its coordinator answers, with no process, and the
        // program prints nothing.
        let (answered, status) = command(&sb, &["--ckptdir", &ckdir, "-s"]);
        sb.check(answered && status.contains("NUM_PEERS=0"), || format!("while paused, the status is {status:?}"));
        restart.drain();
        sb.check(restart.line_count() == 0, || format!("{} printed {:?} while paused", restart.label, restart.lines()));
        if how == "variable" {
            // SIGCONT, and the restart goes on.
            // SAFETY: kill takes plain integers: restart's own pid.
            unsafe { libc::kill(restart.pid(), libc::SIGCONT) };
            let status = restart.wait_exit(&sb, RUN_TIMEOUT);
            sb.check(status.success(), || format!("{} exited with {status}", restart.label));
            verify_history(
                &sb,
                &reference,
                &[copy_piece(&launched), Piece::new(&restart.label, restart.lines(), vec![])],
            );
        } else {
            // SIGTERM while paused ends it, with the coordinator it
            // started, and leaves the checkpoint as it was.
            // SAFETY: kill takes plain integers: restart's own pid.
            unsafe { libc::kill(restart.pid(), libc::SIGTERM) };
            let status = restart.wait_exit(&sb, QUICK_TIMEOUT);
            sb.check(status.code() == Some(128 + libc::SIGTERM), || {
                format!("{} exited with {status} on SIGTERM while paused", restart.label)
            });
            wait_until(&sb, "the paused restart's coordinator to go", QUICK_TIMEOUT, || {
                !command(&sb, &["--ckptdir", &ckdir, "-s"]).0
            });
        }
    }
}

/// `--tmpdir DIR` (and DMTCP_TMPDIR) reaches the program as STASIS_TMPDIR,
/// absolute, for dmtcp_get_tmpdir and the program's own use.
#[test]
fn tmpdir_reaches_the_program() {
    let sb = Sandbox::new("dmtcp-tmpdir");
    let run = sb.mkdir("run");
    fs::create_dir_all(run.join("tmp")).unwrap_or_else(|e| sb.fail(format!("mkdir: {e}")));
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--ckptdir", "ck", "--tmpdir", "tmp", "/bin/sh", "-c", "echo \"tmpdir=$STASIS_TMPDIR\""]);
    cmd.current_dir(&run);
    let mut launch = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    let status = launch.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", launch.label, launch.stderr_text()));
    let want = format!("tmpdir={}", run.join("tmp").display());
    sb.check(launch.lines() == [want.clone()], || format!("the program printed {:?}, not {want:?}", launch.lines()));
}

/// `--enable-unique-checkpoint-filenames`: each checkpoint's `.dmtcp`
/// names in `ckpt_<computation>_<generation>/`, none at the top, gone with
/// their generation (`--keep`); a restart from one of those directories
/// goes on from that checkpoint and checkpoints into the directory above.
#[test]
fn unique_checkpoint_filenames() {
    let sb = Sandbox::new("dmtcp-unique");
    let prog = Program::c("single", &["150", "40"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let ckdir = ck.to_string_lossy().into_owned();
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--enable-unique-checkpoint-filenames", "--keep", "1", "--ckptdir", &ckdir]).args(&prog.argv);
    cmd.current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    let unique_dirs = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&ck)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ckpt_")))
            .collect();
        v.sort();
        v
    };
    bcheckpoint(&sb, &["--ckptdir", &ckdir], &mut app);
    let first = unique_dirs();
    sb.check(first.len() == 1 && dmtcp_images(&first[0]).len() == 1 && dmtcp_images(&ck).is_empty(), || {
        format!("after one checkpoint: {first:?}, names at the top {:?}", dmtcp_images(&ck))
    });
    let window = bcheckpoint(&sb, &["--ckptdir", &ckdir], &mut app);
    let second = unique_dirs();
    // One directory of names per generation kept (--keep 1, and what the
    // kept one refers to), and none of a generation pruned.
    let numbers: Vec<u64> = committed_generations(&ck).iter().map(|(n, _)| *n).collect();
    let named: Vec<u64> =
        second.iter().filter_map(|d| d.to_string_lossy().rsplit_once('_').and_then(|(_, n)| n.parse().ok())).collect();
    sb.check(named == numbers && numbers.last() == Some(&2) && dmtcp_images(&ck).is_empty(), || {
        format!("generations {numbers:?}, directories of names {second:?}")
    });
    let newest = second.last().cloned().unwrap_or_default();
    app.wait_lines(&sb, window.hi + 2);
    app.kill();
    let launched = Piece::new(&app.label, app.lines(), vec![window]);
    let reference = finish_reference(&sb, reference);

    require_user_namespaces();
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.args(dmtcp_images(&newest));
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    restart.wait_lines(&sb, 2);
    // Its checkpoints go where the generation is, not into `newest`.
    let window = bcheckpoint(&sb, &["--ckptdir", &ckdir], &mut restart);
    sb.check(committed_generations(&ck).last().is_some_and(|(n, _)| *n == 3), || {
        format!("generations of {}: {:?}", ck.display(), committed_generations(&ck))
    });
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", restart.label));
    verify_history(&sb, &reference, &[launched, Piece::new(&restart.label, restart.lines(), vec![window])]);
}

/// `--modify-env`: a restart applies `dmtcp_env.txt` of the checkpoint
/// directory (NAME=value sets, NAME alone removes) before the program runs
/// again: every line it prints after the restart shows the new values, and
/// every line before the checkpoint the old ones. Without the file nothing
/// changes.
#[test]
fn modify_env_changes_the_environment_at_restart() {
    let sb = Sandbox::new("dmtcp-modify-env");
    let prog = Program::c("envwatch", &["120", "40"]);
    let ck = sb.join("ck");
    let ckdir = ck.to_string_lossy().into_owned();
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--modify-env", "--ckptdir", &ckdir]).args(&prog.argv);
    cmd.env("WATCHED", "before").env("GONE", "here").current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    let window = bcheckpoint(&sb, &["--ckptdir", &ckdir], &mut app);
    app.kill();
    let before = app.lines();
    sb.check(before.iter().all(|l| l.ends_with("WATCHED=before GONE=here")), || {
        format!("before the checkpoint: {before:?}")
    });
    fs::write(ck.join("dmtcp_env.txt"), "# where the restart runs\nWATCHED=after\nGONE\n")
        .unwrap_or_else(|e| sb.fail(format!("write dmtcp_env.txt: {e}")));

    require_user_namespaces();
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.args(dmtcp_images(&ck)).env("WATCHED", "restart's own").env_remove("GONE");
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", restart.label, restart.stderr_text()));
    let after = restart.lines();
    let steps: Vec<&String> = after.iter().filter(|l| l.starts_with("step ")).collect();
    sb.check(
        !steps.is_empty()
            && steps.iter().all(|l| l.ends_with("WATCHED=after GONE=unset"))
            && after.last().is_some_and(|l| l == "final 120"),
        || format!("after the restart (checkpoint after lines {window:?}): {after:?}"),
    );
}

/// `dmtcp_restart --tmpdir`: the restarted program's temporary directory
/// is restart's from before its first step after the restart on (what
/// dmtcp_get_tmpdir answers, and STASIS_TMPDIR for what it execs), and the
/// launch's before the checkpoint.
#[test]
fn restart_tmpdir_reaches_the_restarted_program() {
    let sb = Sandbox::new("dmtcp-restart-tmpdir");
    let (first, second) = (sb.mkdir("tmp-launch"), sb.mkdir("tmp-restart"));
    let prog = Program::c("envwatch", &["120", "40", "STASIS_TMPDIR"]);
    let ck = sb.join("ck");
    let ckdir = ck.to_string_lossy().into_owned();
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--ckptdir", &ckdir, "--tmpdir"]).arg(&first).args(&prog.argv);
    cmd.current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    bcheckpoint(&sb, &["--ckptdir", &ckdir, "--tmpdir", &first.to_string_lossy()], &mut app);
    app.kill();
    let want_before = format!("STASIS_TMPDIR={}", first.display());
    let before = app.lines();
    sb.check(before.iter().all(|l| l.ends_with(&want_before)), || format!("before the checkpoint: {before:?}"));

    require_user_namespaces();
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.arg("--tmpdir").arg(&second).args(dmtcp_images(&ck));
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", restart.label, restart.stderr_text()));
    let want_after = format!("STASIS_TMPDIR={}", second.display());
    let after = restart.lines();
    let steps: Vec<&String> = after.iter().filter(|l| l.starts_with("step ")).collect();
    sb.check(!steps.is_empty() && steps.iter().all(|l| l.ends_with(&want_after)), || {
        format!("after the restart: {after:?}")
    });
}

/// `DMTCP_LOG_FILE`: launch makes the file, and the agent's messages go
/// there as well as to the program's stderr. Here the message is the one
/// `--modify-env` gives for a `dmtcp_env.txt` line that names no variable
/// (the environment is then left as it was).
#[test]
fn the_agents_messages_also_go_to_the_log_file() {
    let sb = Sandbox::new("dmtcp-log-file");
    let prog = Program::c("envwatch", &["120", "40"]);
    let (ck, log) = (sb.join("ck"), sb.join("agent.log"));
    let ckdir = ck.to_string_lossy().into_owned();
    let mut cmd = dmtcp(&sb, "dmtcp_launch");
    cmd.args(["--modify-env", "--ckptdir", &ckdir]).args(&prog.argv);
    cmd.env("WATCHED", "before").env("DMTCP_LOG_FILE", &log).current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("dmtcp_launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    sb.check(log.is_file(), || format!("{} was not made", log.display()));
    bcheckpoint(&sb, &["--ckptdir", &ckdir], &mut app);
    app.kill();
    fs::write(ck.join("dmtcp_env.txt"), "=nameless\n").unwrap_or_else(|e| sb.fail(format!("write: {e}")));

    require_user_namespaces();
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.args(dmtcp_images(&ck));
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", restart.label, restart.stderr_text()));
    let logged = fs::read_to_string(&log).unwrap_or_default();
    let said = |text: &str| text.lines().any(|l| l.contains("stasis agent[") && l.contains("names no variable"));
    sb.check(said(&logged) && said(&restart.stderr_text()), || {
        format!("the log file holds {logged:?}; restart's stderr {:?}", restart.stderr_text())
    });
    sb.check(restart.lines().iter().filter(|l| l.starts_with("step ")).all(|l| l.contains("WATCHED=before")), || {
        format!("the environment changed: {:?}", restart.lines())
    });
}
