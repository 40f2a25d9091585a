//! End-to-end tests of the `stasis` binary: real programs (tests/programs)
//! launched, checkpointed, killed and restarted.
//!
//! How runs are compared, how processes are cleaned up and which environment
//! variables matter: see the documentation of the `support` module. These
//! tests need `cc`, `make`, `/usr/bin/python3`, `unshare` (util-linux) and, for every
//! test that restarts, unprivileged user namespaces; without them they fail
//! with a message that says so, they do not skip.

mod support;

// The coordinator and the DMTCP command line (in this binary, so that
// .ci/run runs them as an unprivileged user too).
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/dmtcp.rs"]
mod dmtcp;
// dmtcp_command -kc in one step; a restart beside its running original.
#[path = "e2e/dmtcp_command.rs"]
mod dmtcp_command;
#[path = "e2e/dmtcp_options.rs"]
mod dmtcp_options;
// The coordinator a computation gets when it names none.
#[path = "e2e/default_coordinator.rs"]
mod default_coordinator;
// Many threads stopped at once, threads coming and going during the stop.
#[path = "e2e/pause.rs"]
mod pause;
// Process trees: fork, exec, process groups, sessions, zombies, pipes.
#[path = "e2e/tree.rs"]
mod tree;
// Between processes: shared memory, Unix and TCP sockets.
#[path = "e2e/ipc.rs"]
mod ipc;
// Sockets as DMTCP's autotest left them: bytes in flight, a peer closed.
#[path = "e2e/dmtcp_sockets.rs"]
mod dmtcp_sockets;
// System V message queues and semaphores, POSIX message queues.
#[path = "e2e/ipc_objects.rs"]
mod ipc_objects;
// Everyday process trees: a Python multiprocessing pool, make -j2.
#[path = "e2e/apps.rs"]
mod apps;
// Interactive programs in a terminal: bash driven through tmux.
#[path = "e2e/terminal.rs"]
mod terminal;
// inotify watches, named pipes and UDP (kernel objects made again from
// what the agent recorded).
#[path = "e2e/kernel.rs"]
mod kernel;
// Files open for writing (SQLite, logs, files rewritten in place), and open
// files whose path is gone.
#[path = "e2e/files.rs"]
mod files;
// DMTCP's memory and file cases: MAP_NORESERVE and PROT_NONE reservations,
// --checkpoint-open-files and --allow-file-overwrite.
#[path = "e2e/dmtcp_files.rs"]
mod dmtcp_files;
// Another user on the node against a computation: refused directories,
// impostor coordinators, floods, the default port (run as root, two users).
#[path = "e2e/security.rs"]
mod security;
// Real programs that once broke: DONTFORK memory and Node.js, the agent's
// descriptor taken with dup2, quit, compression carried over, a pipe made
// by another user.
#[path = "e2e/programs.rs"]
mod programs;
// TCP servers restarted at once after their kill, socket options, Open MPI.
#[path = "e2e/net.rs"]
mod net;
// stdin, stdout and stderr from outside the computation come back as
// restart's own; failed restores say which process, where and why.
#[path = "e2e/stdio.rs"]
mod stdio;
// The checkpoint signal and the program: no EINTR from a checkpoint, and
// the program's own signals on the checkpoint signal's number.
#[path = "e2e/signals.rs"]
mod signals;
// Pseudo-terminal pairs the program opened itself.
#[path = "e2e/pty.rs"]
mod pty;
// Batch jobs: stasis job outside SLURM, the exit status of a computation
// stopped on request (a real SLURM: tests/slurm.rs).
#[path = "e2e/batch.rs"]
mod batch;
// Restart that maps memory from the image and verifies it in the background.
#[path = "e2e/lazy_restart.rs"]
mod lazy_restart;
// Incremental checkpoints: only what changed, references to earlier
// generations, prune and --full-every.
#[path = "e2e/incremental.rs"]
mod incremental;
// The image writer: parallel workers, one copy, zstd chunks.
#[path = "e2e/speed_writer.rs"]
mod speed_writer;
// The application API (include/stasis.h, DMTCP's names, python/stasis.py)
// and DMTCP plugins.
#[path = "e2e/api.rs"]
mod api;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::*;

/// Launches `prog`, checkpoints it once it has printed a few lines, lets it
/// print a few more, kills it with its launcher, restarts it from the
/// checkpoint directory and checks the history against an uninterrupted
/// reference run. Returns the sandbox and the working directories of the
/// checkpointed run and of the reference run.
fn checkpoint_kill_restart(test: &str, prog: &Program) -> (Sandbox, PathBuf, PathBuf) {
    let sb = Sandbox::new(test);
    let ref_dir = sb.mkdir("ref");
    let reference = start_reference(&sb, prog, &ref_dir);

    let run_dir = sb.mkdir("run");
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch(&sb, prog, &sock, &ck, &run_dir, Out::Pipe);
    app.wait_lines(&sb, 3);
    let window = checkpoint(&sb, &sock, &mut app);
    carry_on(&sb, &mut app, window, 3);
    app.kill();
    let reference = finish_reference(&sb, reference);

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&re.label, re.lines(), vec![])],
    );
    drop(re);
    drop(app);
    (sb, run_dir, ref_dir)
}

/// After a checkpoint, waits for `more` new lines (or the program's end) and
/// checks that the program carried on: it printed a line after the
/// checkpoint command returned, or it ran to its end.
fn carry_on(sb: &Sandbox, app: &mut Proc, window: Window, more: usize) {
    let mut finished = false;
    if let Some(status) = app.wait_lines_or_exit(sb, window.hi + more) {
        sb.check(status.success(), || format!("{} failed after the checkpoint: {status}", app.label));
        finished = app.lines().last().is_some_and(|l| l.starts_with("final "));
    }
    sb.check(app.line_count() > window.hi || finished, || {
        format!("{} printed nothing after the checkpoint (window {window:?})", app.label)
    });
}

fn wait_until(sb: &Sandbox, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            sb.fail(format!("timed out after {timeout:?} waiting for {what}"));
        }
        sleep(Duration::from_millis(20));
    }
}

fn same_file(sb: &Sandbox, a: &Path, b: &Path) {
    let (x, y) = (fs::read(a), fs::read(b));
    sb.check(matches!((&x, &y), (Ok(x), Ok(y)) if x == y), || {
        format!(
            "{} and {} differ ({:?} vs {:?} bytes)",
            a.display(),
            b.display(),
            x.map(|v| v.len()),
            y.map(|v| v.len())
        )
    });
}

// ---------------------------------------------------------------------------
// One checkpoint, kill, restart, per program

#[test]
fn single_threaded_program_survives_checkpoint_kill_restart() {
    checkpoint_kill_restart("single", &Program::c("single", &[]));
}

#[test]
fn threads_mutexes_and_tids_survive_checkpoint_kill_restart() {
    checkpoint_kill_restart("threads", &Program::c("threads", &[]));
}

#[test]
fn two_hundred_threads_survive_checkpoint_kill_restart() {
    checkpoint_kill_restart("crowd", &Program::c("crowd", &["80"]));
}

#[test]
fn eventfd_signalfd_timerfd_epoll_and_own_pipe_survive_checkpoint_kill_restart() {
    checkpoint_kill_restart("kobjects", &Program::c("kobjects", &[]));
}

/// A launched shell that works a moment and then execs the program (as
/// wrapper scripts and version-manager shims do): the coordinator started
/// in the background must not take the moment between the two agents'
/// connections for the end of the computation.
#[test]
fn a_program_reached_through_exec_is_checkpointed() {
    let single = Program::c("single", &["60", "80"]);
    let mut argv: Vec<std::ffi::OsString> =
        ["/bin/sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec \"$0\" \"$@\""]
            .iter()
            .map(Into::into)
            .collect();
    argv.extend(single.argv.iter().cloned());
    checkpoint_kill_restart("exec", &Program { name: "sh-exec-single".into(), argv });
}

/// A connection to a server outside the computation cannot be saved: after
/// the restart the program sees end of file (not a vanished descriptor),
/// carries on without it, and the restart's log names the descriptor.
#[test]
fn a_connection_outside_the_computation_comes_back_disconnected() {
    let sb = Sandbox::new("remote");
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| sb.fail(format!("bind: {e}")));
    let port = server.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for conn in server.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = conn;
                let _ = std::io::copy(&mut c.try_clone().unwrap(), &mut c);
            });
        }
    });
    let prog = Program::c("remote", &["40", "-1", &port]);
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let window = checkpoint(&sb, &sock, &mut app);
    carry_on(&sb, &mut app, window, 2);
    app.kill();
    let before = app.lines();
    sb.check(before.iter().all(|l| l.ends_with(" echo ok")), || {
        format!("the launched run lost its server: {before:?}")
    });

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    let after = re.lines();
    let first = after.first().cloned().unwrap_or_default();
    let step: usize = first.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    // Its next send meets EPIPE, or its read end of file: either is an
    // error a program handles, as when a server goes away.
    let handled = ["EOF", "Broken pipe", "Connection reset by peer"].iter().any(|why| first.ends_with(why));
    sb.check(first.contains(" connection lost: ") && handled && (window.lo..=window.hi + 1).contains(&step), || {
        format!(
            "the restarted run should first lose its connection at step {}..={}: {after:?}",
            window.lo,
            window.hi + 1
        )
    });
    sb.check(after[1..after.len() - 1].iter().all(|l| l.ends_with(" offline")), || format!("{after:?}"));
    sb.check(after.last().is_some_and(|l| l.starts_with("final ")), || format!("no final line: {after:?}"));
    let log = re.stderr_text();
    sb.check(log.contains("was connected outside the computation; it comes back disconnected"), || {
        format!("the restart's log does not say which descriptor was disconnected:\n{log}")
    });
}

#[test]
fn signals_and_timers_survive_checkpoint_kill_restart() {
    checkpoint_kill_restart("signals", &Program::c("signals", &[]));
}

#[test]
fn open_files_and_shared_mappings_survive_checkpoint_kill_restart() {
    let (sb, run, reference) = checkpoint_kill_restart("files", &Program::c("files", &[]));
    // The program checked them itself; the files on disk must agree too.
    for name in ["log.txt", "counters.bin", "input.dat"] {
        same_file(&sb, &run.join(name), &reference.join(name));
    }
}

#[test]
fn python_generator_survives_checkpoint_kill_restart() {
    checkpoint_kill_restart("gen.py", &Program::python("gen.py", &[]));
}

#[test]
fn stdout_to_a_regular_file_is_left_and_the_restart_gets_the_output() {
    // The program's stdout is a file from outside the computation: the
    // restart leaves it as the first run left it (never cut back to the
    // checkpoint) and gives the program restart's own stdout, which
    // continues from the checkpoint. More in e2e/stdio.rs.
    let sb = Sandbox::new("stdout-file");
    let prog = Program::c("single", &[]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let out = sb.join("out.txt");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::File(out.clone()));
    wait_until(&sb, "3 lines in out.txt", LINES_TIMEOUT, || file_lines(&out).len() >= 3 || app.poll_exit().is_some());
    sb.check(file_lines(&out).len() >= 3, || format!("{} exited before printing 3 lines", app.label));
    let lo = file_lines(&out).len();
    checkpoint(&sb, &sock, &mut app);
    let hi = file_lines(&out).len();
    wait_until(&sb, "more lines in out.txt", LINES_TIMEOUT, || {
        file_lines(&out).len() >= hi + 3 || app.poll_exit().is_some()
    });
    sb.check(file_lines(&out).len() > hi, || format!("{} printed nothing after the checkpoint", app.label));
    app.kill();
    let first_run = file_lines(&out);
    let reference = finish_reference(&sb, reference);

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    let got = file_lines(&out);
    sb.check(got == first_run, || {
        format!(
            "out.txt was changed by the restart:\n{}\nthe first run left:\n{}",
            got.join("\n"),
            first_run.join("\n")
        )
    });
    verify_history(
        &sb,
        &reference,
        &[Piece::new("out.txt", first_run, vec![Window { lo, hi }]), Piece::new(&re.label, re.lines(), vec![])],
    );
}

// ---------------------------------------------------------------------------
// Several generations

#[test]
fn three_checkpoint_kill_restart_cycles() {
    let sb = Sandbox::new("cycles");
    // Longer and steadier than the default, to leave room for three cycles.
    let prog = Program::c("single", &["120", "50"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let mut sock = sb.socket();
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    let mut pieces = Vec::new();
    for _ in 0..3 {
        app.wait_lines(&sb, 2);
        let window = checkpoint(&sb, &sock, &mut app);
        carry_on(&sb, &mut app, window, 2);
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
    sb.check(app.lines().last() == reference.last(), || "the final result differs".into());
}

#[test]
fn stale_partial_generation_is_ignored() {
    let sb = Sandbox::new("partial");
    let prog = Program::c("single", &[]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let first = checkpoint(&sb, &sock, &mut app);
    carry_on(&sb, &mut app, first, 2);
    let second = checkpoint(&sb, &sock, &mut app);
    carry_on(&sb, &mut app, second, 2);
    app.kill();
    sb.check(committed_generations(&ck).len() >= 2, || "two checkpoints left fewer than two generations".into());

    // What a checkpoint killed half-way leaves: an uncommitted, newer-numbered
    // generation holding garbage.
    let partial = sb.mkdir("ck/.gen-000009.partial");
    fs::write(partial.join("MANIFEST"), b"generation 9, garbage\n\xff\xfe").unwrap();
    fs::write(partial.join("single.img"), pseudo_random(20_000, 9)).unwrap();

    let reference = finish_reference(&sb, reference);
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    // Only the second checkpoint, the newest committed one, fits.
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![second]), Piece::new(&re.label, re.lines(), vec![])],
    );
}

#[test]
fn kill_during_checkpoint_keeps_a_restartable_generation() {
    let sb = Sandbox::new("kill-mid-checkpoint");
    let prog = Program::c("single", &[]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let first = checkpoint(&sb, &sock, &mut app);
    carry_on(&sb, &mut app, first, 2);

    // Start a second checkpoint and kill everything as soon as it shows.
    app.drain();
    let lo = app.line_count();
    let mut command = start_checkpoint(&sb, &sock);
    let partial_exists = || {
        fs::read_dir(&ck).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !partial_exists() && command.poll_exit().is_none() && Instant::now() < deadline {
        sleep(Duration::from_millis(1));
    }
    app.kill();
    command.kill();
    // Whichever generation is the newest committed one, the restart must
    // carry on from it.
    let second = Window { lo, hi: app.line_count() };

    let reference = finish_reference(&sb, reference);
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", re.label));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![first, second]), Piece::new(&re.label, re.lines(), vec![])],
    );
}

// ---------------------------------------------------------------------------
// Images

/// Launches single.c (from a private copy of its executable), checkpoints it
/// once and kills it. Returns the running program's maps and pid as they were
/// right after the checkpoint, and the checkpoint directory.
fn one_checkpoint(sb: &Sandbox) -> (Program, Vec<(u64, u64, String)>, i32, PathBuf) {
    let exe = sb.join("single-copy");
    fs::copy(compiled("single"), &exe).unwrap_or_else(|e| sb.fail(format!("copy single: {e}")));
    let prog = Program::c("single", &[]).at(&exe);
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(sb, 3);
    checkpoint(sb, &sock, &mut app);
    let pid = find_descendant(app.pid(), &exe)
        .unwrap_or_else(|| sb.fail(format!("no process running {} under {}", exe.display(), app.label)));
    let maps = maps(pid);
    app.kill();
    (prog, maps, pid, ck)
}

#[test]
fn images_are_private_and_generations_committed() {
    let sb = Sandbox::new("image-mode");
    let (_, _, _, ck) = one_checkpoint(&sb);
    let gens = committed_generations(&ck);
    sb.check(gens.iter().map(|(n, _)| *n).collect::<Vec<_>>() == [1], || {
        format!("generations after one checkpoint: {gens:?}")
    });
    sb.check(gens[0].1.file_name().is_some_and(|n| n == "gen-000001"), || {
        format!("generation directory {:?}", gens[0].1)
    });
    for image in images_in(&sb, &gens[0].1) {
        let m = mode(&image);
        sb.check(m == 0o600, || format!("{} has mode {m:o}, not 600", image.display()));
    }
    let leftovers: Vec<_> = fs::read_dir(&ck)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    sb.check(leftovers.is_empty(), || format!("a committed checkpoint left {leftovers:?}"));
}

#[test]
fn inspect_lists_regions_and_threads() {
    let sb = Sandbox::new("inspect");
    let (prog, maps, pid, ck) = one_checkpoint(&sb);
    let generation = newest_generation(&sb, &ck);
    let images = images_in(&sb, &generation);
    sb.check(images.len() == 1, || format!("one process, but images {images:?}"));
    let out = run_stasis(&sb, "inspect", &[Path::new("inspect"), &images[0]], QUICK_TIMEOUT);
    sb.check(out.status.success(), || format!("stasis inspect failed: {}\n{}", out.status, out.stderr));
    let text = out.stdout.to_lowercase();
    sb.check(text.contains("thread"), || format!("no threads listed:\n{}", out.stdout));
    let words: Vec<&str> = text.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    sb.check(words.contains(&pid.to_string().as_str()), || {
        format!("pid {pid} (the thread's tid) not shown:\n{}", out.stdout)
    });
    let exe = prog.exe().to_string_lossy().into_owned();
    for wanted in ["[stack]", exe.as_str()] {
        let Some((start, _, _)) = maps.iter().find(|(_, _, name)| name == wanted) else {
            sb.fail(format!("no {wanted} in the program's maps: {maps:?}"))
        };
        sb.check(text.contains(&format!("{start:x}")), || {
            format!("the region {wanted} at {start:#x} is not listed:\n{}", out.stdout)
        });
    }
}

/// Deterministic noise.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs `stasis restart` on `target` and `stasis inspect` on `image` (if
/// any), expecting each to refuse cleanly and to leave no process behind.
fn expect_refused(sb: &Sandbox, case: &str, targets: &[&Path], image: Option<&Path>, exe: Option<&Path>) {
    let mut outcomes = Vec::new();
    for target in targets {
        let sock = sb.socket();
        let args = [Path::new("restart"), Path::new("--coord-socket"), &sock, target];
        outcomes.push((
            format!("{case}: stasis restart {}", target.display()),
            run_stasis(sb, "restart", &args, QUICK_TIMEOUT),
        ));
    }
    if let Some(image) = image {
        let args = [Path::new("inspect"), image];
        outcomes.push((
            format!("{case}: stasis inspect {}", image.display()),
            run_stasis(sb, "inspect", &args, QUICK_TIMEOUT),
        ));
    }
    for (what, out) in &outcomes {
        expect_clean_error(sb, what, out);
        // Give a helper that is on its way out a moment to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(out.pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        sb.check(!group_alive(out.pid), || format!("{what} left processes behind in its process group"));
    }
    if let Some(exe) = exe {
        let left = running(exe);
        sb.check(left.is_empty(), || {
            format!("{case}: processes {left:?} run {} after a refused restart", exe.display())
        });
    }
}

/// Live processes whose executable or command line names `exe`.
fn running(exe: &Path) -> Vec<i32> {
    let needle = exe.as_os_str().as_encoded_bytes();
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            let _: i32 = pid.parse().ok()?;
            (pid != me).then_some(pid)
        })
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
            if !matches!(state.as_deref(), Some(s) if s != "Z" && s != "X") {
                return false;
            }
            let by_exe = fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe);
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            by_exe || cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// A way to damage an image's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn damaged_images_are_refused_cleanly() {
    let sb = Sandbox::new("damaged");
    let (prog, _, _, ck) = one_checkpoint(&sb);
    let exe = prog.exe().to_path_buf();
    wait_until(&sb, "the killed program to be gone", Duration::from_secs(10), || running(&exe).is_empty());

    let generation = newest_generation(&sb, &ck);
    let images = images_in(&sb, &generation);
    sb.check(images.len() == 1, || format!("one process, but images {images:?}"));
    let image_name = images[0].file_name().unwrap().to_owned();
    let gen_name = generation.file_name().unwrap().to_owned();
    let good = fs::read(&images[0]).unwrap();
    // The layout (stasis-image's docs): a header in the first page, the
    // payload's chunks from 4096 on, each starting on a page boundary, and
    // the metadata last. So the first byte of any page past the header is
    // checksummed data (chunk or metadata), never padding.
    let len = good.len();
    sb.check(len > 3 * 4096, || format!("a {len}-byte image is too small"));
    let middle_page = len / 2 / 4096 * 4096;
    let flip = |at: usize| {
        move |b: &mut Vec<u8>| {
            b[at] ^= 0x5a;
        }
    };
    let cut = |len: usize| move |b: &mut Vec<u8>| b.truncate(len);
    let cases: Vec<(&str, Damage)> = vec![
        ("magic flipped", Box::new(flip(0))),
        ("header zeroed", Box::new(|b: &mut Vec<u8>| b[..64].fill(0))),
        ("first payload byte flipped", Box::new(flip(4096))),
        ("a middle page's first byte flipped", Box::new(flip(middle_page))),
        ("last byte (metadata) flipped", Box::new(flip(len - 1))),
        ("last byte cut", Box::new(cut(len - 1))),
        ("cut in the middle", Box::new(cut(middle_page + 100))),
        ("cut after the header", Box::new(cut(4096))),
        ("cut inside the header", Box::new(cut(40))),
        ("empty", Box::new(cut(0))),
        ("random bytes", Box::new(|b: &mut Vec<u8>| *b = pseudo_random(65536, 1))),
        (
            "magic then random bytes",
            Box::new(|b: &mut Vec<u8>| {
                *b = [b"STASISIM".as_slice(), &pseudo_random(8184, 2)].concat();
            }),
        ),
    ];

    for (i, (case, damage)) in cases.iter().enumerate() {
        let case_ck = sb.join(format!("cases/{i}/ck"));
        copy_tree(&ck, &case_ck).unwrap();
        let image = case_ck.join(&gen_name).join(&image_name);
        let mut bytes = good.clone();
        damage(&mut bytes);
        fs::write(&image, &bytes).unwrap();
        expect_refused(&sb, case, &[&case_ck, &image], Some(&image), Some(&exe));
    }

    // Damage to the generation rather than to the image.
    let case_ck = sb.join("cases/manifest/ck");
    copy_tree(&ck, &case_ck).unwrap();
    fs::write(case_ck.join(&gen_name).join("MANIFEST"), pseudo_random(300, 3)).unwrap();
    expect_refused(&sb, "garbage MANIFEST", &[&case_ck], None, Some(&exe));

    // A damaged newest generation above an intact one: refused, naming
    // both, unless asked for the fallback.
    let case_ck = sb.join("cases/damaged-newest/ck");
    copy_tree(&ck, &case_ck).unwrap();
    let newer = case_ck.join(gen_name.to_string_lossy().replace("000001", "000002"));
    copy_tree(&case_ck.join(&gen_name), &newer).unwrap();
    fs::write(newer.join("MANIFEST"), pseudo_random(300, 4)).unwrap();
    expect_refused(&sb, "damaged newest MANIFEST", &[&case_ck], None, Some(&exe));
    let sock = sb.socket();
    let args = [Path::new("restart"), Path::new("--coord-socket"), &sock, &case_ck];
    let out = run_stasis(&sb, "restart", &args, QUICK_TIMEOUT);
    sb.check(
        out.stderr.contains("gen-000002 is damaged (MANIFEST: ")
            && out
                .stderr
                .contains("the newest intact checkpoint is gen-000001: restart with --generation 1 or --fallback"),
        || format!("restart of a damaged newest generation said: {}", out.stderr),
    );

    let case_ck = sb.join("cases/no-image/ck");
    copy_tree(&ck, &case_ck).unwrap();
    fs::remove_file(case_ck.join(&gen_name).join(&image_name)).unwrap();
    expect_refused(&sb, "image missing", &[&case_ck], None, Some(&exe));

    // The untouched checkpoint still inspects.
    let out = run_stasis(&sb, "inspect", &[Path::new("inspect"), &images[0]], QUICK_TIMEOUT);
    sb.check(out.status.success(), || format!("inspect of the good image failed: {}", out.stderr));
}

/// Where the build-id of an ELF file lies: the descriptor of its
/// NT_GNU_BUILD_ID note (little-endian, as on x86-64), and its length.
fn build_id_at(elf: &[u8]) -> Option<(usize, usize)> {
    let header: Vec<u8> = [3u32.to_le_bytes(), *b"GNU\0"].concat();
    let at = elf.windows(header.len()).position(|w| w == header.as_slice())?;
    let len = u32::from_le_bytes(elf.get(at - 4..at)?.try_into().ok()?) as usize;
    Some((at + header.len(), len))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Puts `bytes` at `path` as an install does (a new file renamed over the
/// old one), with the mtime `mtime`.
fn install(sb: &Sandbox, path: &Path, bytes: &[u8], mtime: std::time::SystemTime) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    fs::write(&tmp, bytes).unwrap_or_else(|e| sb.fail(format!("write {}: {e}", tmp.display())));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::File::options().write(true).open(&tmp).and_then(|f| f.set_modified(mtime)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn replaced_binary_with_same_size_and_mtime_is_refused() {
    let sb = Sandbox::new("replaced-exe");
    let (prog, _, _, ck) = one_checkpoint(&sb);
    let exe = prog.exe().to_path_buf();
    wait_until(&sb, "the killed program to be gone", Duration::from_secs(10), || running(&exe).is_empty());
    let original = fs::read(&exe).unwrap();
    let before = fs::metadata(&exe).unwrap();
    let Some((at, len)) = build_id_at(&original) else { sb.fail(format!("{} has no build-id", exe.display())) };
    let old_id = original[at..at + len].to_vec();

    // inspect shows what restart will compare.
    let images = images_in(&sb, &newest_generation(&sb, &ck));
    let out = run_stasis(&sb, "inspect", &[Path::new("inspect"), &images[0]], QUICK_TIMEOUT);
    sb.check(out.stdout.contains(&format!("build-id {}", hex(&old_id))), || {
        format!("inspect does not show the build-id {}:\n{}", hex(&old_id), out.stdout)
    });

    // Another build of the same size, given the old mtime: the build-id
    // tells them apart where size and mtime cannot.
    let mut other = original.clone();
    for b in &mut other[at..at + len] {
        *b = !*b;
    }
    install(&sb, &exe, &other, before.modified().unwrap());
    let now = fs::metadata(&exe).unwrap();
    sb.check(now.len() == before.len() && now.modified().unwrap() == before.modified().unwrap(), || {
        "the replacement does not have the same size and mtime".into()
    });
    let sock = sb.socket();
    let out =
        run_stasis(&sb, "restart", &[Path::new("restart"), Path::new("--coord-socket"), &sock, &ck], QUICK_TIMEOUT);
    expect_clean_error(&sb, "restart with a replaced binary", &out);
    let wanted = format!(
        "{} changed since the checkpoint (build-id {} then, {} now): restart needs the same file",
        exe.display(),
        hex(&old_id),
        hex(&other[at..at + len])
    );
    sb.check(out.stderr.contains(&wanted), || format!("expected {wanted:?} in:\n{}", out.stderr));

    // The original build back, as a new file (another inode and ctime,
    // today's mtime): the build-id says it is the same, and it runs on.
    install(&sb, &exe, &original, std::time::SystemTime::now());
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", re.label, re.stderr_text()));
    sb.check(re.lines().last().is_some_and(|l| l.starts_with("final ")), || {
        format!("the restarted run did not finish: {:?}", re.lines())
    });
}

#[test]
fn missing_and_foreign_images_are_refused_cleanly() {
    // Needs no checkpoint: only the command line and the image reader.
    let sb = Sandbox::new("foreign");
    let missing = sb.join("no-such-dir");
    expect_refused(&sb, "missing path", &[&missing], Some(&missing.join("x.img")), None);

    let empty_dir = sb.mkdir("empty-ck");
    expect_refused(&sb, "no generation", &[&empty_dir], Some(&empty_dir), None);

    let only_partial = sb.mkdir("partial-ck");
    fs::create_dir(only_partial.join(".gen-000001.partial")).unwrap();
    fs::write(only_partial.join(".gen-000001.partial/MANIFEST"), b"x").unwrap();
    expect_refused(&sb, "only a partial generation", &[&only_partial], None, None);

    let files: [(&str, Vec<u8>); 4] = [
        ("empty.img", Vec::new()),
        ("random.img", pseudo_random(65536, 4)),
        ("magic.img", [b"STASISIM".as_slice(), &pseudo_random(4088, 5)].concat()),
        ("elf.img", fs::read("/bin/true").unwrap()),
    ];
    for (name, bytes) in files {
        let path = sb.join(name);
        fs::write(&path, bytes).unwrap();
        expect_refused(&sb, name, &[&path], Some(&path), None);
    }
}

// ---------------------------------------------------------------------------
// The command line

#[test]
fn relocated_binaries_still_launch() {
    // stasis finds its agent next to itself, wherever it was copied.
    let sb = Sandbox::new("relocated");
    let bin_dir = sb.mkdir("bin");
    let bin = bin_dir.join("stasis");
    let agent = bin_dir.join("libstasis_agent.so");
    fs::copy(stasis(), &bin).unwrap();
    fs::copy(stasis().with_file_name("libstasis_agent.so"), &agent).unwrap();

    let prog = Program::c("single", &[]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch_with(&sb, &bin, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let pid = find_descendant(app.pid(), prog.exe())
        .unwrap_or_else(|| sb.fail(format!("no process running {} under {}", prog.exe().display(), app.label)));
    let agent_text = agent.to_string_lossy().into_owned();
    sb.check(maps(pid).iter().any(|(_, _, name)| *name == agent_text), || {
        format!("the program did not load {agent_text}: {:?}", maps(pid))
    });
    checkpoint(&sb, &sock, &mut app);
    sb.check(!committed_generations(&ck).is_empty(), || "no generation committed".into());
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", app.label));
    let reference = finish_reference(&sb, reference);
    sb.check(app.lines() == reference, || "the launched run's output differs from the reference".into());
}

#[test]
fn launch_exits_with_the_program_status() {
    let sb = Sandbox::new("exit-status");
    let prog = Program { name: "sh".into(), argv: vec!["/bin/sh".into(), "-c".into(), "echo hello; exit 7".into()] };
    let mut app = launch(&sb, &prog, &sb.socket(), &sb.join("ck"), &sb.mkdir("run"), Out::Pipe);
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.code() == Some(7), || format!("{} exited with {status}, not 7", app.label));
    sb.check(app.lines() == ["hello"], || format!("stdout {:?}", app.stdout_text()));
}
// Terminals, exec and signals as DMTCP's test suite exercises them.
#[path = "e2e/dmtcp_terminals.rs"]
mod dmtcp_terminals;
