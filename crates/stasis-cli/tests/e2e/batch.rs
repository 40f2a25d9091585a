//! `stasis job` outside SLURM (with `--ckptdir`): SIGTERM to every
//! process of the job, as a batch system sends it, checkpoints and stops
//! (exit 75); the next run resumes and records completion; the run after
//! that does not run the program again. And the exit status of a
//! computation killed on request. (On a real SLURM: tests/slurm.rs.)

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use super::support::*;
use super::wait_until;

const COUNT: &str = r#"
import sys, time
steps, out = int(sys.argv[1]), sys.argv[2]
f = open(out, "a", buffering=1)
total = 0
for i in range(steps):
    total += i * i
    f.write("step %d\n" % i)
    time.sleep(0.1)
f.write("final %d\n" % total)
"#;

fn job(sb: &Sandbox, ck: &Path, cwd: &Path, program: &[&str]) -> Proc {
    let mut cmd = Command::new(stasis());
    cmd.arg("job").arg("--ckptdir").arg(ck).arg("--").args(program).current_dir(cwd);
    Proc::spawn(sb, &sb.label("job"), cmd, Out::Null)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn job_stops_on_sigterm_resumes_and_records_completion() {
    let sb = Sandbox::new("job");
    let run = sb.mkdir("run");
    fs::write(run.join("count.py"), COUNT).unwrap();
    let ck = sb.join("ck");
    let program = ["/usr/bin/python3", "count.py", "80", "progress.txt"];
    let progress = run.join("progress.txt");

    let mut first = job(&sb, &ck, &run, &program);
    wait_until(&sb, "8 steps", LINES_TIMEOUT, || lines(&progress).len() >= 8 || first.poll_exit().is_some());
    // As SLURM does at scancel, preemption or the time limit: SIGTERM to
    // every process of the job at once.
    // SAFETY: kill only takes numbers; the group is the job's own.
    unsafe { libc::kill(-first.pid(), libc::SIGTERM) };
    let status = first.wait_exit(&sb, RUN_TIMEOUT);
    let err = first.stderr_text();
    sb.check(status.code() == Some(75), || format!("{} exited with {status}, not 75:\n{err}", first.label));
    sb.check(err.contains("SIGTERM received: checkpointing") && err.contains("generation 1 committed"), || {
        format!("{} did not checkpoint on SIGTERM:\n{err}", first.label)
    });
    let stopped_at = lines(&progress).len();
    sb.check(stopped_at < 81, || format!("the program ran to its end before SIGTERM ({stopped_at} lines)"));

    let mut second = job(&sb, &ck, &run, &program);
    let status = second.wait_exit(&sb, RUN_TIMEOUT);
    let err = second.stderr_text();
    sb.check(status.success(), || format!("{} exited with {status}:\n{err}", second.label));
    sb.check(err.contains("resuming generation 1") && err.contains("completion recorded"), || {
        format!("{} did not resume and record completion:\n{err}", second.label)
    });
    let mut want: Vec<String> = (0..80).map(|i| format!("step {i}")).collect();
    want.push(format!("final {}", (0..80u64).map(|i| i * i).sum::<u64>()));
    let got = lines(&progress);
    sb.check(got == want, || format!("progress.txt is not an uninterrupted run's: {got:?}"));
    let log = fs::read_to_string(ck.join("stasis-job.log")).unwrap_or_default();
    sb.check(log.contains("SIGTERM received") && log.contains("resuming generation 1"), || {
        format!("stasis-job.log lacks the story:\n{log}")
    });

    // Completed: run again, it says so and exits as the program did.
    let mut third = job(&sb, &ck, &run, &program);
    let status = third.wait_exit(&sb, QUICK_TIMEOUT);
    let err = third.stderr_text();
    sb.check(status.success() && err.contains("already completed with exit status 0"), || {
        format!("{} exited with {status}:\n{err}", third.label)
    });
    sb.check(lines(&progress) == want, || "the completed program ran again".into());
}

#[test]
fn job_records_the_programs_exit_status() {
    let sb = Sandbox::new("job-status");
    let ck = sb.join("ck");
    for round in 0..2 {
        let mut j = job(&sb, &ck, sb.path(), &["/bin/sh", "-c", "exit 3"]);
        let status = j.wait_exit(&sb, RUN_TIMEOUT);
        sb.check(status.code() == Some(3), || format!("round {round}: {} exited with {status}", j.label));
    }
    let record = fs::read_to_string(ck.join("stasis-job.done")).unwrap_or_default();
    sb.check(record == "exit 3 job -\n", || format!("stasis-job.done: {record:?}"));
    // Outside SLURM, --ckptdir is needed.
    let out = run_stasis(&sb, "job-nodir", &["job", "--", "/bin/true"], QUICK_TIMEOUT);
    sb.check(out.status.code() == Some(1) && out.stderr.contains("needs --ckptdir"), || {
        format!("job without --ckptdir: {} {}", out.status, out.stderr)
    });
}

/// `stasis command --kill`: the computation was stopped on request, and
/// launch says so with 75, not with the 137 of a program killed by
/// something else.
#[test]
fn launch_killed_on_request_exits_75() {
    let sb = Sandbox::new("killed-75");
    let prog = Program { name: "sleep".into(), argv: vec!["/bin/sleep".into(), "60".into()] };
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, sb.path(), Out::Null);
    let args = [Path::new("command"), Path::new("--coord-socket"), &sock, Path::new("-s")];
    wait_until(&sb, "the program to connect", LINES_TIMEOUT, || {
        run_stasis(&sb, "status", &args, QUICK_TIMEOUT).stdout.contains("processes:       1")
    });
    let out = run_stasis(
        &sb,
        "kill",
        &[Path::new("command"), Path::new("--coord-socket"), &sock, Path::new("-k")],
        QUICK_TIMEOUT,
    );
    sb.check(out.status.success(), || format!("kill: {}", out.stderr));
    let status = app.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(status.code() == Some(75), || {
        format!("{} exited with {status} (signal {:?}), not 75", app.label, status.signal())
    });
}

/// SLURM's variables for task `rank` of a step of two (no SLURM needed:
/// stasis reads only these).
fn task_env(cmd: &mut Command, job: &str, rank: u32) {
    cmd.env("SLURM_JOB_ID", job)
        .env("SLURM_STEP_ID", "0")
        .env("SLURM_NTASKS", "2")
        .env("SLURM_PROCID", rank.to_string());
}

fn environ_var(pid: i32, name: &str) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0).find_map(|v| String::from_utf8_lossy(v).strip_prefix(&prefix).map(str::to_string))
}

/// Two tasks of one step, as `srun -n 2 stasis launch` starts them, task 1
/// first: task 0 starts the coordinator, task 1 waits for it and joins
/// (one checkpoint holds both); then `srun -n 2 stasis restart`: each task
/// brings back the process whose saved SLURM_PROCID is its own.
#[test]
fn tasks_of_one_step_share_task_zeros_coordinator_and_restart_their_own() {
    let sb = Sandbox::new("tasks");
    let run = sb.mkdir("run");
    fs::write(run.join("count.py"), COUNT).unwrap();
    let ck = sb.join("ck");
    let job_id = format!("{}", 900_000 + std::process::id());
    let start = |rank: u32, verb: &str| {
        let mut cmd = Command::new(stasis());
        cmd.arg(verb);
        if verb == "launch" {
            let out = format!("progress-{rank}.txt");
            cmd.arg("--ckptdir").arg(&ck).args(["--", "/usr/bin/python3", "count.py", "150", &out]);
        } else {
            cmd.arg(&ck);
        }
        cmd.current_dir(&run);
        task_env(&mut cmd, &job_id, rank);
        Proc::spawn(&sb, &sb.label(&format!("{verb}-task{rank}")), cmd, Out::Null)
    };
    let mut tasks = vec![start(1, "launch")];
    std::thread::sleep(std::time::Duration::from_millis(500));
    tasks.push(start(0, "launch"));
    let progress = |rank: u32| lines(&run.join(format!("progress-{rank}.txt")));
    wait_until(&sb, "both tasks' programs to count", LINES_TIMEOUT, || {
        progress(0).len() >= 5 && progress(1).len() >= 5
    });
    let out = run_stasis(
        &sb,
        "checkpoint",
        &[Path::new("command"), Path::new("--ckptdir"), &ck, Path::new("-c")],
        COMMAND_TIMEOUT,
    );
    sb.check(out.status.success() && out.stdout.contains("(2 processes)"), || {
        format!("one checkpoint of both tasks: {}{}", out.stdout, out.stderr)
    });
    for t in &mut tasks {
        t.kill();
    }
    wait_until(&sb, "the killed programs to be gone", QUICK_TIMEOUT, || processes_in(&run).is_empty());

    let mut restarts = vec![start(1, "restart"), start(0, "restart")];
    // While they run: each restored program's saved rank is its restart's.
    let mut checked = std::collections::HashSet::new();
    wait_until(&sb, "both restored programs", LINES_TIMEOUT, || {
        for r in &restarts {
            let rank = environ_var(r.pid(), "SLURM_PROCID");
            for pid in descendants(r.pid()) {
                if let Some(saved) = environ_var(pid, "SLURM_PROCID")
                    && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(8).any(|w| w == b"count.py"))
                {
                    sb.check(Some(&saved) == rank.as_ref(), || {
                        format!("the process of task {saved} came back under the restart of task {rank:?}")
                    });
                    checked.insert(saved);
                }
            }
        }
        checked.len() == 2
    });
    for r in &mut restarts {
        let status = r.wait_exit(&sb, RUN_TIMEOUT);
        sb.check(status.success(), || format!("{} exited with {status}:\n{}", r.label, r.stderr_text()));
    }
    let mut want: Vec<String> = (0..150).map(|i| format!("step {i}")).collect();
    want.push(format!("final {}", (0..150u64).map(|i| i * i).sum::<u64>()));
    for rank in 0..2 {
        let got = progress(rank);
        sb.check(got == want, || format!("task {rank}'s progress is not an uninterrupted run's: {got:?}"));
    }
}

/// A coordinator started in another SLURM job is never joined, even when
/// named; one of the same job is.
#[test]
fn a_coordinator_of_another_job_is_never_joined() {
    let sb = Sandbox::new("other-job");
    let sock = sb.socket();
    let mut cmd = Command::new(stasis());
    cmd.arg("coordinator")
        .arg("--coord-socket")
        .arg(&sock)
        .arg("--ckptdir")
        .arg(sb.join("ck"))
        .env("SLURM_JOB_ID", "500");
    let _coordinator = Proc::spawn(&sb, &sb.label("coordinator"), cmd, Out::Null);
    wait_until(&sb, "the coordinator's socket", QUICK_TIMEOUT, || sock.exists());
    let launch_in = |job: &str| {
        let mut cmd = Command::new(stasis());
        cmd.arg("launch")
            .arg("--coord-socket")
            .arg(&sock)
            .arg("--ckptdir")
            .arg(sb.join("ck"))
            .args(["--", "/bin/true"])
            .env("SLURM_JOB_ID", job)
            .current_dir(sb.path());
        let mut p = Proc::spawn(&sb, &sb.label(&format!("launch-job{job}")), cmd, Out::Null);
        let status = p.wait_exit(&sb, QUICK_TIMEOUT);
        (status, p.stderr_text())
    };
    let (status, err) = launch_in("501");
    sb.check(status.code() == Some(1) && err.contains("belongs to SLURM job 500, not to this job 501"), || {
        format!("a launch of job 501: {status}\n{err}")
    });
    let (status, err) = launch_in("500");
    sb.check(status.success(), || format!("a launch of job 500: {status}\n{err}"));
}
