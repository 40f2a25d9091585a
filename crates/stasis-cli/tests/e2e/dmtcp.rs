//! The DMTCP command names end to end, as our users' scripts call them:
//! the how-to's two sbatch scripts, a coordinator shared by two programs,
//! clients that do not know the computation's secret, and a coordinator
//! that is gone (or was never there).
//!
//! Every coordinator started by hand here listens on a port the kernel
//! picks (`-p 0`, `--port-file`); the scripts name none, so each job gets
//! its checkpoint directory's own. Unix sockets go under the sandbox
//! (`DMTCP_TMPDIR`), so tests run in parallel.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::support::*;

const POLL: Duration = Duration::from_millis(20);

/// Variables of the test's own environment that would steer the DMTCP
/// commands elsewhere than the test says.
const STEERING: [&str; 17] = [
    "DMTCP_COORD_HOST",
    "DMTCP_HOST",
    "DMTCP_COORD_PORT",
    "DMTCP_PORT",
    "DMTCP_TMPDIR",
    "DMTCP_CHECKPOINT_DIR",
    "DMTCP_CHECKPOINT_INTERVAL",
    "DMTCP_RESTART_DIR",
    "DMTCP_RESTART_PAUSE",
    "DMTCP_QUIET",
    "DMTCP_UNIQUE_CKPT_PLUGIN",
    "STASIS_COORD_ADDR",
    "STASIS_COORD_SOCKET",
    "STASIS_COORD_HOST",
    "STASIS_COORD_PORT",
    "STASIS_COORD_SECRET",
    "STASIS_TMPDIR",
];

/// `name` (dmtcp_launch, ...) run in the sandbox, with the coordinators'
/// sockets under the sandbox and nothing inherited that names another.
pub(crate) fn dmtcp(sb: &Sandbox, name: &str) -> Command {
    let mut cmd = Command::new(dmtcp_bin(name));
    for var in STEERING {
        cmd.env_remove(var);
    }
    cmd.env("DMTCP_TMPDIR", sb.path()).current_dir(sb.path());
    cmd
}

/// Runs a command to completion, its stdout and stderr kept.
fn run_to_end(sb: &Sandbox, base: &str, cmd: Command, timeout: Duration) -> Outcome {
    let mut p = Proc::spawn(sb, &sb.label(base), cmd, Out::Pipe);
    let status = p.wait_exit(sb, timeout);
    Outcome { label: p.label.clone(), pid: p.pid(), status, stdout: p.stdout_text(), stderr: p.stderr_text() }
}

/// `dmtcp_command ARGS...`, to completion.
fn command<S: AsRef<OsStr>>(sb: &Sandbox, args: &[S]) -> Outcome {
    let mut cmd = dmtcp(sb, "dmtcp_command");
    cmd.args(args);
    run_to_end(sb, "dmtcp_command", cmd, COMMAND_TIMEOUT)
}

#[track_caller]
fn expect_success(sb: &Sandbox, what: &str, out: &Outcome) {
    sb.check(out.status.success(), || {
        format!("{what} ({}) failed with {}; stdout:\n{}stderr:\n{}", out.label, out.status, out.stdout, out.stderr)
    });
}

fn wait_for(sb: &Sandbox, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            sb.fail(format!("timed out after {timeout:?} waiting for {what}"));
        }
        sleep(POLL);
    }
}

/// `dmtcp_coordinator --port PORT --port-file F --ckptdir CK --exit-on-last`
/// (stdin is /dev/null: no console); returns it and the port it listens on.
fn coordinator(sb: &Sandbox, port: u16, ck: &Path) -> (Proc, u16) {
    let port_file = sb.join(format!("{}.port", sb.label("coordinator")));
    let mut cmd = dmtcp(sb, "dmtcp_coordinator");
    cmd.args(["--port", &port.to_string(), "--port-file"])
        .arg(&port_file)
        .arg("--ckptdir")
        .arg(ck)
        .arg("--exit-on-last");
    let mut coord = Proc::spawn(sb, &sb.label("dmtcp_coordinator"), cmd, Out::Pipe);
    let deadline = Instant::now() + QUICK_TIMEOUT;
    loop {
        let text = fs::read_to_string(&port_file).unwrap_or_default();
        if let Some(p) = text.strip_suffix('\n').and_then(|t| t.trim().parse::<u16>().ok()) {
            sb.check(p != 0 && (port == 0 || p == port), || format!("{} wrote port {p}", coord.label));
            return (coord, p);
        }
        if let Some(st) = coord.poll_exit() {
            sb.fail(format!("{} exited ({st}) before writing its port file", coord.label));
        }
        if Instant::now() > deadline {
            sb.fail(format!("{} wrote no port to {} in {QUICK_TIMEOUT:?}", coord.label, port_file.display()));
        }
        sleep(POLL);
    }
}

/// `dmtcp_launch --join-coordinator -p PORT PROGRAM`, run in `cwd`.
fn join(sb: &Sandbox, port: u16, prog: &Program, cwd: &Path, out: Out) -> Proc {
    let mut cmd = dmtcp(sb, "dmtcp_launch");
    cmd.args(["--join-coordinator", "-p", &port.to_string()]).args(&prog.argv).current_dir(cwd);
    Proc::spawn(sb, &sb.label("dmtcp_launch"), cmd, out)
}

/// `dmtcp_command -p PORT --bcheckpoint`, which must succeed, while `app`
/// runs; returns where in `app`'s output the checkpoint lies (as
/// support's `checkpoint` does for `stasis command`).
fn bcheckpoint(sb: &Sandbox, port: u16, app: &mut Proc) -> Window {
    app.drain();
    let lo = app.line_count();
    let mut cmd = dmtcp(sb, "dmtcp_command");
    cmd.args(["-p", &port.to_string(), "--bcheckpoint"]);
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
    sb.check(c.stdout_text().contains("checkpoint committed"), || {
        format!("{} says {:?}, not that the checkpoint is committed", c.label, c.stdout_text())
    });
    app.drain();
    Window { lo, hi: app.line_count() }
}

/// The command line of a process, for messages.
fn cmdline(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string()
}

/// Waits until no process names the sandbox but those of `except` (the
/// reference runs): what a job left must go by itself (a coordinator
/// started in the background exits with the computation's last process).
fn expect_nothing_left(sb: &Sandbox, what: &str, except: &[i32]) {
    let left = || -> Vec<i32> { processes_naming(sb.path()).into_iter().filter(|p| !except.contains(p)).collect() };
    let deadline = Instant::now() + QUICK_TIMEOUT;
    while !left().is_empty() {
        if Instant::now() > deadline {
            let list: Vec<String> = left().into_iter().map(|p| format!("{p}: {}", cmdline(p))).collect();
            sb.fail(format!("{what}: processes still running after {QUICK_TIMEOUT:?}:\n{}", list.join("\n")));
        }
        sleep(POLL);
    }
}

/// The generation numbers in `ck`, committed or not (`gen-N`, `.gen-N.partial`).
fn generation_numbers(ck: &Path) -> Vec<u64> {
    fs::read_dir(ck)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("gen-").or_else(|| name.strip_prefix(".gen-")?.strip_suffix(".partial"))?;
            n.parse().ok()
        })
        .collect()
}

fn newest_number(ck: &Path) -> u64 {
    committed_generations(ck).last().map_or(0, |(n, _)| *n)
}

/// The files of `dir` named `ckpt_<prefix>*.dmtcp`, as the shell's glob
/// `ckpt_<prefix>*.dmtcp` finds them.
fn dmtcp_images(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("ckpt_{prefix}")) && name.ends_with(".dmtcp")
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

pub(crate) fn copy_piece(p: &Piece) -> Piece {
    Piece::new(&p.label, p.lines.clone(), p.checkpoints.clone())
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    matches!((fs::read(a), fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// SIGKILLs process group `pgid` and nothing else.
fn kill_group(pgid: i32) {
    // SAFETY: kill takes plain integers; a negative pid names the group.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Waits until a file holds at least `n` lines, or `app` exited.
fn wait_file_lines(sb: &Sandbox, app: &mut Proc, file: &Path, n: usize) {
    wait_for(sb, &format!("{n} lines in {}", file.display()), LINES_TIMEOUT, || {
        file_lines(file).len() >= n || app.poll_exit().is_some()
    });
    let status = app.poll_exit();
    sb.check(file_lines(file).len() >= n, || {
        format!("{} exited ({status:?}) before printing {n} lines to {}", app.label, file.display())
    });
}

// ---------------------------------------------------------------------------
// The how-to's batch scripts

const SUBMIT_SCRIPT: &str = r#"#!/bin/bash
#SBATCH --account=<MY_PIRG>
#SBATCH --name=test_submit
#SBATCH --partition=compute
#SBATCH --time=0-00:10:00 ### 10 minutes
#SBATCH -o %x-%j.out
#SBATCH -e %x-%j.err

module purge
module load dmtcp

#checkpointing once every minute
export CKPT_INTERVAL=1

#location to store ckpt files
export CKPT_DIR=@CKPT_DIR@/

#make the ckpt dir if it does not exist
if [ -d "$CKPT_DIR" ]; then
    mkdir -p $CKPT_DIR
fi

#running w/ regular checkpoint freq 1/min
dmtcp_launch -i $CKPT_INTERVAL --ckptdir $CKPT_DIR ./your_program @ARGS@
"#;

const RESTART_SCRIPT: &str = r#"#!/bin/bash
#SBATCH --account=<MY_PIRG>
#SBATCH --name=test_restart
#SBATCH --partition=compute
#SBATCH --time=0-00:10:00 ### 10 minutes
#SBATCH -o %x-%j.out
#SBATCH -e %x-%j.err

module purge
module load dmtcp

#location to find the stored ckpt files
export CKPT_DIR=@CKPT_DIR@/

#Resume checkpoint from file
dmtcp_restart $CKPT_DIR/ckpt_your_program_*.dmtcp
"#;

/// What a batch job's environment has: the stasis binaries first on PATH,
/// `module` a function that does nothing (as `export -f` passes it), and
/// nothing that names a coordinator: each job gets its checkpoint
/// directory's own (its socket under the sandbox).
fn job_env(sb: &Sandbox, cmd: &mut Command) {
    for var in STEERING {
        cmd.env_remove(var);
    }
    let mut path = bin_dir().as_os_str().to_owned();
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    cmd.env("PATH", path).env("BASH_FUNC_module%%", "() {  :\n}").env("DMTCP_TMPDIR", sb.path());
}

fn bash_script(sb: &Sandbox, script: &Path, cwd: &Path, base: &str) -> Proc {
    let mut cmd = Command::new("bash");
    cmd.arg(script).current_dir(cwd);
    job_env(sb, &mut cmd);
    Proc::spawn(sb, &sb.label(base), cmd, Out::Pipe)
}

#[test]
fn sbatch_scripts_from_the_howto() {
    let sb = Sandbox::new("dmtcp-sbatch");
    // Long enough for a few interval checkpoints before the kill.
    let args = ["200", "50"];
    let job = sb.mkdir("job");
    let exe = job.join("your_program");
    fs::copy(compiled("single"), &exe).unwrap_or_else(|e| sb.fail(format!("copy single: {e}")));
    let prog = Program::c("single", &args).at(&exe);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ref_pid = reference.pid();

    // As on a cluster: the user's scratch directory, but no dmtcp_ckpts in
    // it, and the script's inverted test does not make it.
    let ck = sb.join("scratch/mypirg/me/dmtcp_ckpts");
    let fill = |text: &str| text.replace("@CKPT_DIR@", &ck.to_string_lossy()).replace("@ARGS@", &args.join(" "));
    let submit_sh = job.join("submit.sbatch");
    let restart_sh = job.join("restart.sbatch");
    fs::write(&submit_sh, fill(SUBMIT_SCRIPT)).unwrap();
    fs::write(&restart_sh, fill(RESTART_SCRIPT)).unwrap();

    let mut submit = bash_script(&sb, &submit_sh, &job, "submit");
    sb.check(!ck.exists(), || "the checkpoint directory exists before the job made it".into());

    // A first committed generation, published for DMTCP's users.
    wait_for(&sb, "a committed generation and its ckpt_your_program_*.dmtcp", LINES_TIMEOUT, || {
        submit.drain();
        (!committed_generations(&ck).is_empty() && !dmtcp_images(&ck, "your_program_").is_empty())
            || submit.poll_exit().is_some()
    });
    sb.check(submit.poll_exit().is_none(), || format!("{} ended before its first checkpoint", submit.label));
    // From here on, a generation numbered above every one begun so far is
    // begun later, so it lies after `lo` lines. (Two listings: one may miss
    // a generation being renamed from partial to committed.)
    submit.drain();
    let lo = submit.line_count();
    let begun =
        generation_numbers(&ck).into_iter().chain(generation_numbers(&ck)).max().expect("a committed generation");
    wait_for(&sb, &format!("an interval checkpoint after generation {begun}"), LINES_TIMEOUT, || {
        submit.drain();
        newest_number(&ck) > begun || submit.poll_exit().is_some()
    });
    submit.drain();
    submit.wait_lines(&sb, submit.line_count() + 2);

    // The job is killed as a batch system kills a job step: the process
    // group of the script, at once.
    kill_group(submit.pid());
    let status = submit.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.signal() == Some(libc::SIGKILL), || format!("{} ended with {status}, not SIGKILL", submit.label));
    let launched = Piece::new(&submit.label, submit.lines(), vec![Window { lo, hi: submit.line_count() }]);
    // The coordinator launch started in the background goes with the
    // computation's last process.
    expect_nothing_left(&sb, "after the job was killed", &[ref_pid]);
    let reference = finish_reference(&sb, reference);

    // ckpt_your_program_*.dmtcp is the newest generation's image.
    let newest = newest_generation(&sb, &ck);
    let images = images_in(&sb, &newest);
    let links = dmtcp_images(&ck, "your_program_");
    sb.check(links.len() == 1 && images.len() == 1, || format!("images {images:?}, ckpt files {links:?}"));
    sb.check(same_bytes(&links[0], &images[0]), || {
        format!("{} is not the image of the newest generation {}", links[0].display(), newest.display())
    });
    let generation_before = newest_number(&ck);

    // The restart script, as the how-to has it.
    require_user_namespaces();
    let mut restart = bash_script(&sb, &restart_sh, &job, "restart-sbatch");
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", restart.label));
    expect_nothing_left(&sb, "after the restart job", &[]);
    verify_history(&sb, &reference, &[copy_piece(&launched), Piece::new(&restart.label, restart.lines(), vec![])]);
    // The restarted program went on checkpointing at the interval it had;
    // the next restart starts from its newest checkpoint, or, if it took
    // none, where it began itself.
    let took_one = newest_number(&ck) > generation_before;
    let restarted = Piece::new(
        &restart.label,
        restart.lines(),
        vec![Window { lo: 0, hi: if took_one { restart.line_count() } else { 0 } }],
    );

    // dmtcp_restart_script.sh names no absolute path: it restarts from a
    // copy of the directory, from anywhere, once the original is gone.
    let script = ck.join("dmtcp_restart_script.sh");
    let text = fs::read_to_string(&script).unwrap_or_else(|e| sb.fail(format!("read {}: {e}", script.display())));
    sb.check(!text.contains(&*sb.path().to_string_lossy()), || {
        format!("{} names the sandbox:\n{text}", script.display())
    });
    let copy = sb.join("elsewhere/ckpt-copy");
    copy_tree(&ck, &copy).unwrap_or_else(|e| sb.fail(format!("copy {}: {e}", ck.display())));

    for (base, script, cwd) in [
        ("restart-script", script.clone(), sb.mkdir("cwd-1")),
        ("restart-script-copy", copy.join("dmtcp_restart_script.sh"), sb.mkdir("elsewhere/cwd-2")),
    ] {
        if base == "restart-script-copy" {
            // The original goes away: only the copy is left.
            fs::rename(&ck, sb.join("scratch/mypirg/me/moved-away")).unwrap();
        }
        let mut cmd = Command::new(&script);
        cmd.current_dir(&cwd);
        job_env(&sb, &mut cmd);
        let mut again = Proc::spawn(&sb, &sb.label(base), cmd, Out::Pipe);
        let status = again.wait_exit(&sb, RUN_TIMEOUT);
        sb.check(status.success(), || format!("{} ({}) exited with {status}", again.label, script.display()));
        expect_nothing_left(&sb, &format!("after {}", again.label), &[]);
        verify_history(
            &sb,
            &reference,
            &[copy_piece(&launched), copy_piece(&restarted), Piece::new(&again.label, again.lines(), vec![])],
        );
    }
}

// ---------------------------------------------------------------------------
// One coordinator, two programs

#[test]
fn two_programs_one_coordinator() {
    let sb = Sandbox::new("dmtcp-two");
    let bin = sb.mkdir("bin");
    let progs: Vec<Program> = [("single", ["100", "50"]), ("threads", ["100", "50"])]
        .iter()
        .map(|(name, args)| {
            let exe = bin.join(name);
            fs::copy(compiled(name), &exe).unwrap_or_else(|e| sb.fail(format!("copy {name}: {e}")));
            Program::c(name, args).at(&exe)
        })
        .collect();
    let references: Vec<Proc> =
        progs.iter().map(|p| start_reference(&sb, p, &sb.mkdir(format!("ref-{}", p.name)))).collect();

    let ck = sb.join("ck");
    let (mut coord, port) = coordinator(&sb, 0, &ck);
    // Each program's stdout is a file of its own, from outside the
    // computation: the restart leaves it as the first run left it and gives
    // both programs its own stdout (docs/architecture.md, *A restart*).
    let outs: Vec<PathBuf> = progs.iter().map(|p| sb.join(format!("{}.out.txt", p.name))).collect();
    let mut apps: Vec<Proc> = progs
        .iter()
        .zip(&outs)
        .map(|(p, out)| join(&sb, port, p, &sb.mkdir(format!("run-{}", p.name)), Out::File(out.clone())))
        .collect();
    for (app, out) in apps.iter_mut().zip(&outs) {
        wait_file_lines(&sb, app, out, 3);
    }
    // Both joined (an agent greets its coordinator from a thread of its
    // own, so a line printed does not prove it: ask until it counts both).
    wait_for(&sb, "the coordinator to count both processes", QUICK_TIMEOUT, || {
        command(&sb, &["-p", &port.to_string(), "-s"]).stdout.contains("NUM_PEERS=2")
    });
    let ckpt = command(&sb, &["-p", &port.to_string(), "--bcheckpoint"]);
    expect_success(&sb, "dmtcp_command --bcheckpoint", &ckpt);
    sb.check(ckpt.stdout.contains("(2 processes)"), || format!("the checkpoint says {:?}", ckpt.stdout));

    let generation = newest_generation(&sb, &ck);
    let images = images_in(&sb, &generation);
    sb.check(images.len() == 2, || format!("{} holds {images:?}, not two images", generation.display()));
    for p in &progs {
        let found = dmtcp_images(&ck, &format!("{}_", p.name));
        sb.check(found.len() == 1, || format!("ckpt_{}_*.dmtcp in {}: {found:?}", p.name, ck.display()));
    }

    for (app, out) in apps.iter_mut().zip(&outs) {
        let n = file_lines(out).len();
        wait_file_lines(&sb, app, out, n + 2);
    }
    for app in &mut apps {
        app.kill();
    }
    let first_run: Vec<Vec<String>> = outs.iter().map(|o| file_lines(o)).collect();
    // --exit-on-last: the coordinator goes with the last process.
    let status = coord.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", coord.label));
    let references: Vec<Vec<String>> = references.into_iter().map(|r| finish_reference(&sb, r)).collect();

    // Both together, from their ckpt_*.dmtcp, under a new coordinator.
    require_user_namespaces();
    let (mut coord, port) = coordinator(&sb, 0, &ck);
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.args(["--join-coordinator", "-p", &port.to_string()]).args(dmtcp_images(&ck, ""));
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", restart.label));
    let status = coord.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", coord.label));
    let restarted = restart.lines();
    for (((p, out), reference), before) in progs.iter().zip(&outs).zip(&references).zip(&first_run) {
        let got = file_lines(out);
        sb.check(&got == before, || {
            format!(
                "{} was changed by the restart ({} lines before, {} after): it is the launch's stdout, \
                 which the restart must leave alone",
                out.display(),
                before.len(),
                got.len()
            )
        });
        let last = reference.last().cloned().unwrap_or_default();
        sb.check(restarted.contains(&last), || {
            format!("{}'s final line {last:?} is not in {}'s stdout:\n{}", p.name, restart.label, restarted.join("\n"))
        });
    }
    expect_nothing_left(&sb, "after the restart", &[]);
}

// ---------------------------------------------------------------------------
// Clients without the secret

/// Reads one line from a raw connection (bounded by its read timeout).
fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    line
}

#[test]
fn unauthenticated_clients_are_refused() {
    let sb = Sandbox::new("dmtcp-unauth");
    let prog = Program::c("single", &["150", "50"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let (mut coord, port) = coordinator(&sb, 0, &ck);
    let mut app = join(&sb, port, &prog, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let p = port.to_string();
    // The coordinator's socket is found under the sandbox; a client that
    // looks for it elsewhere must come over TCP, where the secret is asked.
    let nowhere = sb.join("nowhere");
    let tcp = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["-h".into(), "127.0.0.1".into(), "-p".into(), p.clone(), "--tmpdir".into()];
        v.push(nowhere.to_string_lossy().into_owned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let wrong = "5a".repeat(32);
    for action in ["--bcheckpoint", "-k", "-q", "-s"] {
        let mut cmd = dmtcp(&sb, "dmtcp_command");
        cmd.args(tcp(&[action])).env("STASIS_COORD_SECRET", &wrong);
        let out = run_to_end(&sb, "dmtcp_command", cmd, QUICK_TIMEOUT);
        let what = format!("dmtcp_command {action} with a wrong STASIS_COORD_SECRET");
        expect_clean_error(&sb, &what, &out);
        sb.check(out.stderr.contains("refused") && out.stderr.contains("wrong secret"), || {
            format!("{what}: the message does not say the secret is wrong: {}", out.stderr)
        });
    }
    // A secret file, but another computation's.
    let other = sb.mkdir("other-ck");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(other.join(".stasis-coord-secret"))
            .unwrap();
        writeln!(f, "{}", "c3".repeat(32)).unwrap();
    }
    let out = command(&sb, &tcp(&["--ckptdir", &other.to_string_lossy(), "-k"]));
    expect_clean_error(&sb, "dmtcp_command -k with another computation's secret file", &out);
    sb.check(out.stderr.contains("wrong secret"), || format!("another secret file: {}", out.stderr));
    // No secret at all.
    let out = command(&sb, &tcp(&["-k"]));
    expect_clean_error(&sb, "dmtcp_command -k without a secret", &out);
    sb.check(out.stderr.contains("secret"), || format!("without a secret: {}", out.stderr));

    // Raw connections that skip or fail the challenge.
    for (case, first) in [
        ("a COMMAND without authenticating", "COMMAND what=kill\n".to_string()),
        ("a checkpoint request without authenticating", "COMMAND what=checkpoint\n".to_string()),
        ("an agent's HELLO without authenticating", "HELLO pid=4242 name=intruder restored=0\n".to_string()),
        ("a wrong proof", format!("AUTH proof={}\n", "00".repeat(32))),
        ("a proof that is not hex", "AUTH proof=secret\n".to_string()),
    ] {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| sb.fail(format!("{case}: connect: {e}")));
        stream.set_read_timeout(Some(QUICK_TIMEOUT)).unwrap();
        let mut w = stream.try_clone().unwrap();
        w.write_all(first.as_bytes()).unwrap();
        let mut r = BufReader::new(stream);
        let challenge = read_line(&mut r);
        sb.check(challenge.starts_with("CHALLENGE nonce="), || {
            format!("{case}: the coordinator said {challenge:?} first")
        });
        let answer = read_line(&mut r);
        sb.check(answer.starts_with("ERROR reason="), || format!("{case}: the coordinator answered {answer:?}"));
        let wanted = if first.starts_with("AUTH") { "wrong%20secret" } else { "authentication%20required" };
        sb.check(answer.contains(wanted), || format!("{case}: the refusal {answer:?} does not say {wanted:?}"));
        let rest = read_line(&mut r);
        sb.check(rest.is_empty(), || format!("{case}: after the refusal the coordinator said {rest:?}"));
    }

    // The computation is untouched: running, one process, no generation.
    sb.check(app.poll_exit().is_none(), || format!("{} ended after the refused clients", app.label));
    app.drain();
    let n = app.line_count();
    app.wait_lines(&sb, n + 2);
    let status = command(&sb, &["-p", &p, "-s"]);
    expect_success(&sb, "dmtcp_command -s", &status);
    sb.check(status.stdout.contains("NUM_PEERS=1\n"), || {
        format!("status after the refused clients:\n{}", status.stdout)
    });
    sb.check(generation_numbers(&ck).is_empty(), || {
        format!("the refused clients left generations {:?}", generation_numbers(&ck))
    });
    // The right secret over the same way is let in.
    let ok = command(&sb, &tcp(&["--ckptdir", &ck.to_string_lossy(), "-s"]));
    expect_success(&sb, "dmtcp_command -s over TCP with the right secret file", &ok);
    sb.check(ok.stdout.contains("NUM_PEERS=1\n"), || format!("status over TCP:\n{}", ok.stdout));

    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", app.label));
    let reference = finish_reference(&sb, reference);
    sb.check(app.lines() == reference, || "the program's output differs from the reference".into());
    let status = coord.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", coord.label));
}

// ---------------------------------------------------------------------------
// No coordinator

/// A TCP port nobody listens on (as far as one can tell).
fn unused_port() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind a TCP port");
    l.local_addr().expect("a bound address").port()
}

#[test]
fn wrong_port_and_dead_coordinator() {
    let sb = Sandbox::new("dmtcp-dead-coord");
    let unused = unused_port().to_string();
    for action in ["-s", "--bcheckpoint", "-k"] {
        let out = command(&sb, &["-p", &unused, action]);
        let what = format!("dmtcp_command -p {unused} {action} (nothing listens)");
        expect_clean_error(&sb, &what, &out);
        sb.check(out.stderr.contains(&unused) && out.stderr.contains("no coordinator"), || {
            format!("{what}: the message does not say no coordinator is at the port: {}", out.stderr)
        });
    }

    let prog = Program::c("single", &["200", "50"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let (mut coord, port) = coordinator(&sb, 0, &ck);
    let p = port.to_string();
    let mut app = join(&sb, port, &prog, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);

    // The coordinator dies; the program runs on.
    coord.kill();
    app.drain();
    let n = app.line_count();
    app.wait_lines(&sb, n + 3);
    let out = command(&sb, &["-p", &p, "-s"]);
    expect_clean_error(&sb, "dmtcp_command -s to a killed coordinator", &out);

    // A new coordinator on the same port and directory: the agent finds it.
    let (mut coord, again) = coordinator(&sb, port, &ck);
    sb.check(again == port, || format!("the new coordinator listens on {again}, not {port}"));
    wait_for(&sb, "the program to join the new coordinator", LINES_TIMEOUT, || {
        command(&sb, &["-p", &p, "-s"]).stdout.contains("NUM_PEERS=1\n") || app.poll_exit().is_some()
    });
    sb.check(app.poll_exit().is_none(), || format!("{} ended before joining the new coordinator", app.label));
    let window = bcheckpoint(&sb, port, &mut app);
    app.wait_lines(&sb, window.hi + 2);
    app.kill();
    let status = coord.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", coord.label));
    let reference = finish_reference(&sb, reference);

    require_user_namespaces();
    let mut cmd = dmtcp(&sb, "dmtcp_restart");
    cmd.args(["-p", "0"]).args(dmtcp_images(&ck, ""));
    let mut restart = Proc::spawn(&sb, &sb.label("dmtcp_restart"), cmd, Out::Pipe);
    let status = restart.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", restart.label));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&restart.label, restart.lines(), vec![])],
    );
    expect_nothing_left(&sb, "after the restart", &[]);
}
