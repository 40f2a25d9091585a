//! Batch jobs on a real SLURM: `stasis job` and the how-to's DMTCP
//! scripts, submitted with sbatch as an unprivileged user, cancelled,
//! requeued and preempted, each checked to end with exactly the output of
//! an uninterrupted run.
//!
//! Needs a running SLURM: `.ci/slurm up` (which .ci/run does) starts a
//! one-node cluster and its `SLURM_CONF`, which these tests read (else
//! /run/stasis-slurm/slurm.conf). Run as root, jobs are submitted as
//! `STASIS_SLURM_USER` (else the first of `STASIS_E2E_USERS`, else
//! `stasis-ci`) through runuser; run as anyone else, as that user. Where no
//! SLURM answers, every test says "not run: ..." and passes.
//!
//! The program under test counts, one step every 0.2 s, appending each
//! step to a file it opened itself, and ends with a `final` line: a
//! checkpoint puts back that file as it was, so whatever the
//! interruptions, the file ends up as an uninterrupted run's would.
//! A requeued job may start again 10 s after it stopped (the cluster's
//! cred_expire), so each test takes from 20 s to about two minutes; they
//! run side by side.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

const PROGRAM: &str = r#"
import sys, time
steps, out = int(sys.argv[1]), sys.argv[2]
f = open(out, "a", buffering=1)
total = 0
for i in range(steps):
    total += i * i
    f.write("step %d\n" % i)
    print("step", i, flush=True)
    time.sleep(0.2)
f.write("final %d\n" % total)
print("final", total, flush=True)
"#;

/// How long a job may take to get where a test waits for it.
const WAIT: Duration = Duration::from_secs(300);

struct Cluster {
    conf: PathBuf,
    /// Who submits: Some(user) through runuser (we are root), None: we.
    user: Option<String>,
    /// Another user on the node (root only: the second of
    /// `STASIS_E2E_USERS`, else `stasis-ci2`), if it exists.
    other: Option<String>,
    /// Binaries and the program, readable by the user.
    stage: PathBuf,
}

fn cluster() -> Option<&'static Cluster> {
    static C: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match C.get_or_init(set_up) {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("not run: {why}");
            None
        }
    }
}

fn set_up() -> Result<Cluster, String> {
    let conf = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/stasis-slurm/slurm.conf"));
    if !conf.is_file() {
        return Err(format!("no SLURM configuration at {} (start one with .ci/slurm up)", conf.display()));
    }
    let sinfo = Command::new("sinfo")
        .env("SLURM_CONF", &conf)
        .args(["-h", "-o", "%t"])
        .output()
        .map_err(|e| format!("sinfo missing ({e}): SLURM is not installed"))?;
    let states = String::from_utf8_lossy(&sinfo.stdout).into_owned();
    let up = ["idle", "mix", "alloc"].iter().any(|s| states.lines().any(|l| l.trim() == *s));
    if !sinfo.status.success() || !up {
        return Err(format!(
            "SLURM has no node up (sinfo: {} {})",
            states.trim(),
            String::from_utf8_lossy(&sinfo.stderr).trim()
        ));
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let user = root.then(|| {
        std::env::var("STASIS_SLURM_USER").ok().unwrap_or_else(|| {
            std::env::var("STASIS_E2E_USERS")
                .ok()
                .and_then(|u| u.split(',').next().map(str::to_string))
                .unwrap_or_else(|| "stasis-ci".into())
        })
    });
    let stage = std::env::temp_dir().join(format!("stasis-slurm-{}", std::process::id()));
    let bin = stage.join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let built = PathBuf::from(env!("CARGO_BIN_EXE_stasis"));
    let dir = built.parent().unwrap();
    for name in ["stasis", "libstasis_agent.so", "dmtcp_launch", "dmtcp_restart", "dmtcp_command", "dmtcp_coordinator"]
    {
        fs::copy(dir.join(name), bin.join(name))
            .map_err(|e| format!("{}: {e} (build the workspace first)", dir.join(name).display()))?;
    }
    fs::write(stage.join("count.py"), PROGRAM).map_err(|e| e.to_string())?;
    let other = root
        .then(|| {
            std::env::var("STASIS_E2E_USERS")
                .ok()
                .and_then(|u| u.split(',').nth(1).map(str::to_string))
                .unwrap_or_else(|| "stasis-ci2".into())
        })
        .filter(|u| Command::new("id").arg("-u").arg(u).output().is_ok_and(|o| o.status.success()));
    let c = Cluster { conf, user, other, stage };
    c.give(&c.stage);
    Ok(c)
}

impl Cluster {
    /// Makes `path` (recursively) the submitting user's.
    fn give(&self, path: &Path) {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
        if let Some(u) = &self.user {
            let ok = Command::new("chown").args(["-R", u]).arg(path).status().is_ok_and(|s| s.success());
            assert!(ok, "cannot chown {} to {u}", path.display());
        }
    }

    /// A SLURM command, as the submitting user.
    fn command(&self, program: &str) -> Command {
        let mut c = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", program]);
                c
            }
            None => Command::new(program),
        };
        c.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A fresh directory for one test, the user's.
    fn workdir(&self, test: &str) -> PathBuf {
        let d = self.stage.join(test);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        self.give(&d);
        d
    }

    fn bin(&self, name: &str) -> String {
        self.stage.join("bin").join(name).display().to_string()
    }

    /// The counting program's command line.
    fn count(&self, steps: u32) -> String {
        format!("/usr/bin/python3 -u {} {steps} progress.txt", self.stage.join("count.py").display())
    }

    /// Writes `script` into `dir` and submits it there; returns the job id.
    fn submit(&self, dir: &Path, name: &str, sbatch_args: &[&str], script: &str) -> Job<'_> {
        let file = dir.join(format!("{name}.sh"));
        fs::write(&file, format!("#!/bin/bash\n{script}\n")).unwrap();
        self.give(&file);
        let mut args: Vec<String> = vec![
            "--parsable".into(),
            format!("--job-name={name}"),
            format!("--chdir={}", dir.display()),
            "-o".into(),
            "%x-%j.out".into(),
            "-e".into(),
            "%x-%j.err".into(),
            "--open-mode=append".into(),
        ];
        args.extend(sbatch_args.iter().map(|s| s.to_string()));
        args.push(file.display().to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut sbatch = match &self.user {
            Some(u) if dir.ends_with("as-other") => {
                let mut c = Command::new("runuser");
                c.args(["-u", self.other.as_deref().unwrap_or(u), "--", "sbatch"]);
                c.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
                c
            }
            _ => self.command("sbatch"),
        };
        let out = sbatch.args(&argv).current_dir(dir).output().expect("sbatch");
        assert!(out.status.success(), "sbatch {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string();
        Job { c: self, id, name: name.into(), dir: dir.to_path_buf() }
    }
}

struct Job<'a> {
    c: &'a Cluster,
    id: String,
    name: String,
    dir: PathBuf,
}

impl Job<'_> {
    /// `scontrol show job`'s fields; None once SLURM forgot the job.
    fn fields(&self) -> Option<Vec<(String, String)>> {
        let out = self.c.command("scontrol").args(["show", "job", "-o", &self.id]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(
            text.split_whitespace()
                .filter_map(|f| f.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
        )
    }

    fn field(&self, key: &str) -> Option<String> {
        self.fields()?.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn state(&self) -> String {
        self.field("JobState").unwrap_or_else(|| "GONE".into())
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut(&Job) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            if Instant::now() > deadline {
                panic!("job {} ({}): timed out waiting for {what}\n{}", self.id, self.name, self.report());
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// Waits for the job to end for good; returns its state and exit code.
    fn wait_end(&self) -> (String, String) {
        let done = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "GONE"];
        self.wait_for("its end", |j| done.contains(&j.state().as_str()));
        (self.state(), self.field("ExitCode").unwrap_or_default())
    }

    fn progress(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("progress.txt")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn wait_steps(&self, n: usize) {
        self.wait_for(&format!("{n} steps in progress.txt"), |j| {
            let ended = ["COMPLETED", "FAILED", "CANCELLED", "GONE"].contains(&j.state().as_str());
            assert!(!ended, "job {} ended before {n} steps:\n{}", j.id, j.report());
            j.progress().len() >= n
        });
    }

    fn err(&self) -> String {
        fs::read_to_string(self.dir.join(format!("{}-{}.err", self.name, self.id))).unwrap_or_default()
    }

    fn report(&self) -> String {
        let out = fs::read_to_string(self.dir.join(format!("{}-{}.out", self.name, self.id))).unwrap_or_default();
        let tail: Vec<&str> = out.lines().rev().take(5).collect();
        format!(
            "state {}; stderr:\n{}\nstdout (last lines): {tail:?}\nprogress: {} lines",
            self.state(),
            self.err(),
            self.progress().len()
        )
    }

    fn scancel(&self, args: &[&str]) {
        let mut a = args.to_vec();
        a.push(&self.id);
        self.c.run("scancel", &a);
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("job {} ({}): {}", self.id, self.name, self.report());
        }
        let _ = self.c.command("scancel").arg(&self.id).output();
    }
}

/// What an uninterrupted run of `count(steps)` leaves in progress.txt.
fn reference(steps: u32) -> Vec<String> {
    let mut v: Vec<String> = (0..steps).map(|i| format!("step {i}")).collect();
    let total: u64 = (0..u64::from(steps)).map(|i| i * i).sum();
    v.push(format!("final {total}"));
    v
}

fn assert_progress(job: &Job, steps: u32) {
    let got = job.progress();
    assert!(got == reference(steps), "progress.txt is not an uninterrupted run's: {got:?}\n{}", job.report());
}

/// The job's log (stasis-job.log in its checkpoint directory) says
/// `wanted`, now or within 20 s (SLURM may tell a job cancelled before
/// stasis job has written its last line).
fn assert_log(job: &Job, ckpt: &str, wanted: &str) {
    let log = job.dir.join("stasis-ckpt").join(ckpt).join("stasis-job.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(wanted) {
            return;
        }
        if Instant::now() > deadline {
            panic!("job {}'s log lacks {wanted:?}:\n{text}\n{}", job.id, job.report());
        }
        sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------

/// scancel: SIGTERM to every process of the job; `stasis job` checkpoints,
/// stops, and the same script submitted again resumes and completes.
#[test]
fn job_cancelled_then_resubmitted_resumes_and_completes() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("cancel");
    let script = format!("{} job -- {}", c.bin("stasis"), c.count(100));
    let first = c.submit(&dir, "cancel", &[], &script);
    first.wait_steps(10);
    first.scancel(&[]);
    let (state, _) = first.wait_end();
    assert!(state == "CANCELLED" || state == "GONE", "{state}");
    assert_log(&first, "cancel", "SIGTERM received: checkpointing");
    assert_log(&first, "cancel", "committed in");
    assert_log(&first, "cancel", "stopped after the checkpoint: exit status 75");
    let stopped_at = first.progress().len();
    assert!(stopped_at < 101, "the first job ran to its end before scancel:\n{}", first.report());

    let second = c.submit(&dir, "cancel", &[], &script);
    let (state, code) = second.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", second.report());
    assert_log(&second, "cancel", "resuming generation");
    assert_log(&second, "cancel", "completion recorded");
    assert_progress(&second, 100);
    // Each job's own output files: the resumed program prints into the
    // second job's, and the first job's keep SLURM's line about the cancel.
    let out = |j: &Job| fs::read_to_string(dir.join(format!("{}-{}.out", j.name, j.id))).unwrap_or_default();
    assert!(out(&second).contains("final "), "the second job's stdout lacks the final line:\n{}", out(&second));
    assert!(!out(&first).contains("final "), "the first job's stdout has the final line:\n{}", out(&first));
    assert!(first.err().contains("CANCELLED AT"), "the first job's stderr lost SLURM's line:\n{}", first.err());

    // A third submission of a completed job starts afresh; a requeue of the
    // second would not have run it again (the record names job second).
    let record = fs::read_to_string(dir.join("stasis-ckpt/cancel/stasis-job.done")).unwrap();
    assert_eq!(record, format!("exit 0 job {}\n", second.id));
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// scontrol requeue: the job is stopped (SIGTERM), requeued by SLURM,
/// and resumes with SLURM_RESTART_COUNT 1.
#[test]
fn job_requeued_resumes_and_completes() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("requeue");
    let script = format!("{} job -- {}", c.bin("stasis"), c.count(100));
    let job = c.submit(&dir, "requeue", &["--requeue"], &script);
    job.wait_steps(10);
    c.run("scontrol", &["requeue", &job.id]);
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    assert_log(&job, "requeue", "SIGTERM received: checkpointing");
    assert_log(&job, "requeue", &format!("[job {}, restart 1]: resuming generation", job.id));
    assert_progress(&job, 100);
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// `--signal=B:USR1@...` sends USR1 to the batch shell only (here sent at
/// once with `scancel -b -s USR1`, as SLURM does at that time): the script
/// `exec`s stasis job, which checkpoints, requeues the job itself (it was
/// submitted --requeue) and resumes when it starts again.
#[test]
fn job_usr1_to_the_batch_shell_checkpoints_requeues_and_resumes() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("usr1");
    let script = format!("exec {} job -- {}", c.bin("stasis"), c.count(100));
    let job = c.submit(&dir, "usr1", &["--requeue", "--signal=B:USR1@5"], &script);
    job.wait_steps(10);
    job.scancel(&["-b", "-s", "USR1"]);
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    assert_log(&job, "usr1", "SIGUSR1 received: checkpointing");
    assert_log(&job, "usr1", &format!("job {} requeued", job.id));
    assert_log(&job, "usr1", "restart 1]: resuming generation");
    assert_progress(&job, 100);
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// A job of the low partition preempted by one of the high partition
/// (PreemptMode=REQUEUE): checkpointed on SIGTERM, requeued by SLURM,
/// resumed once the preemptor is gone.
#[test]
fn job_preempted_by_a_higher_priority_partition_resumes() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("preempt");
    let script = format!("{} job -- {}", c.bin("stasis"), c.count(100));
    // Either job alone fits the node's 16000 MB; both do not.
    let job = c.submit(&dir, "victim", &["--requeue", "--partition=low", "--mem=9000"], &script);
    job.wait_steps(10);
    let preemptor = c.submit(&dir, "preemptor", &["--partition=high", "--mem=9000"], "sleep 3");
    let (state, _) = preemptor.wait_end();
    assert_eq!(state, "COMPLETED", "{}", preemptor.report());
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    assert_log(&job, "victim", "SIGTERM received: checkpointing");
    assert_log(&job, "victim", "restart 1]: resuming generation");
    assert_progress(&job, 100);
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// No --signal: stasis job asks SLURM for the time left and checkpoints
/// `--before-end` seconds before the limit, requeues itself, and resumes.
#[test]
fn job_checkpoints_before_its_time_limit_and_resumes() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("timelimit");
    // A minute's limit, the checkpoint 45 s before: about 15 s per run.
    let script = format!("{} job --before-end 45 -- {}", c.bin("stasis"), c.count(120));
    let job = c.submit(&dir, "timelimit", &["--requeue", "--time=1"], &script);
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    assert_log(&job, "timelimit", "the job ends in 45 s or less: checkpointing");
    assert_log(&job, "timelimit", "restart 1]: resuming generation");
    assert_progress(&job, 120);
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// The one-line script as docs/slurm.md gives it: `--time` with
/// `--signal=B:USR1@30`, stasis job `exec`ed. slurmctld looks every 30 s
/// and sends USR1 once the job has less than 30 + 30 s left: with a
/// minute's limit, within the first 30 s of each run. So the program's
/// 40 s of work cannot end before the first USR1; each run checkpoints,
/// requeues the job and stops, the next resumes, until the work is done.
#[test]
fn job_time_limit_with_signal_b_usr1_runs_to_completion_over_requeues() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("signal");
    let script = format!("exec {} job --before-end 0 -- {}", c.bin("stasis"), c.count(200));
    let job = c.submit(&dir, "signal", &["--requeue", "--time=1", "--signal=B:USR1@30"], &script);
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    assert_log(&job, "signal", "restart 0]: SIGUSR1 received: checkpointing");
    assert_log(&job, "signal", &format!("job {} requeued", job.id));
    assert_log(&job, "signal", "restart 1]: resuming generation");
    assert_progress(&job, 200);
    let _ = fs::remove_dir_all(&dir);
}

/// Two jobs of one user at once, each with its own directory and
/// coordinator; both cancelled and resubmitted, each resumes its own.
#[test]
fn two_jobs_of_one_user_at_once_keep_apart() {
    let Some(c) = cluster() else { return };
    let dirs = [c.workdir("two-a"), c.workdir("two-b")];
    let steps = [90, 110];
    let scripts: Vec<String> =
        steps.iter().map(|&n| format!("{} job -i 1 -- {}", c.bin("stasis"), c.count(n))).collect();
    let jobs: Vec<Job> = (0..2).map(|i| c.submit(&dirs[i], "pair", &[], &scripts[i])).collect();
    for j in &jobs {
        j.wait_steps(10);
    }
    for j in &jobs {
        j.scancel(&[]);
    }
    for j in &jobs {
        j.wait_end();
        assert_log(j, "pair", "stopped after the checkpoint");
    }
    let again: Vec<Job> = (0..2).map(|i| c.submit(&dirs[i], "pair", &[], &scripts[i])).collect();
    for (i, j) in again.iter().enumerate() {
        let (state, code) = j.wait_end();
        assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", j.report());
        assert_progress(j, steps[i]);
    }
}

/// `srun -n 2 stasis job`: task 0 coordinates, both tasks checkpoint and
/// stop at scancel, and the job submitted again resumes each task's own
/// process.
#[test]
fn srun_two_tasks_of_stasis_job_stop_and_resume() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("srun-job");
    let script = format!(
        "srun -n 2 bash -c 'exec {} job -- /usr/bin/python3 -u {} 100 progress-$SLURM_PROCID.txt'",
        c.bin("stasis"),
        c.stage.join("count.py").display()
    );
    let progress = |rank: u32| -> Vec<String> {
        fs::read_to_string(dir.join(format!("progress-{rank}.txt")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let first = c.submit(&dir, "srunjob", &["-n", "2"], &script);
    first.wait_for("10 steps of both tasks", |_| progress(0).len() >= 10 && progress(1).len() >= 10);
    first.scancel(&[]);
    first.wait_end();
    assert_log(&first, "srunjob", "stopped after the checkpoint");
    let second = c.submit(&dir, "srunjob", &["-n", "2"], &script);
    let (state, code) = second.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", second.report());
    assert_log(&second, "srunjob", "resuming generation");
    for rank in 0..2 {
        assert!(progress(rank) == reference(100), "task {rank}: {:?}\n{}", progress(rank), second.report());
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Two jobs of one user naming the same port (`DMTCP_COORD_PORT=7779`,
/// as scripts written for DMTCP do): the second never joins the first
/// one's coordinator; it is refused, saying whose it is, and the first runs
/// on unharmed.
#[test]
fn a_second_job_never_joins_the_first_jobs_coordinator_on_a_named_port() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("port");
    let launch = |ck: &str| {
        format!("export DMTCP_COORD_PORT=7779\n{} -i 1 --ckptdir {ck} {}", c.bin("dmtcp_launch"), c.count(60))
    };
    let first = c.submit(&dir, "port-first", &[], &launch("ck-first"));
    first.wait_steps(5);
    let second = c.submit(&dir, "port-second", &[], &launch("ck-second"));
    let (state, _) = second.wait_end();
    let err = second.err();
    assert!(
        state == "FAILED" && err.contains(&format!("belongs to SLURM job {}, not to this job {}", first.id, second.id)),
        "the second job: {state}\n{err}"
    );
    let (state, code) = first.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", first.report());
    assert_progress(&first, 60);
    let _ = fs::remove_dir_all(&dir);
}

/// `--signal=USR2@60` (what the how-to's users add) sends SIGUSR2 to the
/// job's processes but the batch shell, here at once with `scancel --full
/// -s USR2` (which signals the shell too, so the script traps it):
/// dmtcp_launch takes it as a checkpoint request, as DMTCP does, and the
/// program, which ignores it, runs on to its end.
#[test]
fn dmtcp_launch_checkpoints_on_slurms_usr2() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("usr2");
    let script = format!("trap 'true' USR2\n{} --ckptdir ck {}", c.bin("dmtcp_launch"), c.count(100));
    let job = c.submit(&dir, "usr2", &[], &script);
    job.wait_steps(10);
    job.scancel(&["--full", "-s", "USR2"]);
    job.wait_for("a checkpoint on SIGUSR2", |j| j.err().contains("SIGUSR2: checkpoint 1 started"));
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    assert!(dir.join("ck/gen-000001/MANIFEST").exists(), "no generation 1:\n{}", job.report());
    assert_progress(&job, 100);
    let _ = fs::remove_dir_all(&dir);
}

/// The how-to's two scripts, as written there but for `--job-name`
/// (sbatch has no `--name`) and the mkdir guard fixed: dmtcp_launch with
/// an interval, the job cancelled, then dmtcp_restart of the images.
#[test]
fn the_how_to_scripts_with_the_dmtcp_names() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("howto");
    let ck = dir.join("dmtcp_ckpts");
    let submit = format!(
        "export CKPT_INTERVAL=1\nexport CKPT_DIR={}\nmkdir -p $CKPT_DIR\n{} -i $CKPT_INTERVAL --ckptdir $CKPT_DIR {}",
        ck.display(),
        c.bin("dmtcp_launch"),
        c.count(100)
    );
    let first = c.submit(&dir, "test_submit", &["--time=0-00:10:00"], &submit);
    first.wait_steps(15);
    first.scancel(&[]);
    first.wait_end();
    let restart = format!("export CKPT_DIR={}\n{} $CKPT_DIR/ckpt_*.dmtcp", ck.display(), c.bin("dmtcp_restart"));
    let second = c.submit(&dir, "test_restart", &["--time=0-00:10:00"], &restart);
    let (state, code) = second.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", second.report());
    assert_progress(&second, 100);
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// `srun -n 2 dmtcp_launch ...`: task 0 starts the coordinator, task 1
/// joins it (no race for the port), both processes are in its
/// checkpoints, and both run to their end.
#[test]
fn srun_two_tasks_share_one_coordinator() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("srun");
    let script = format!(
        "srun -n 2 bash -c 'exec {} -i 1 --ckptdir ck /usr/bin/python3 -u {} 60 progress-$SLURM_PROCID.txt'",
        c.bin("dmtcp_launch"),
        c.stage.join("count.py").display()
    );
    let job = c.submit(&dir, "srun", &["-n", "2"], &script);
    let two_in_one = || {
        let Ok(entries) = fs::read_dir(dir.join("ck")) else { return false };
        entries.flatten().any(|e| {
            let m = fs::read_to_string(e.path().join("MANIFEST")).unwrap_or_default();
            m.lines().filter(|l| l.starts_with("process ")).count() == 2
        })
    };
    job.wait_for("a checkpoint of both tasks' processes", |_| two_in_one());
    let (state, code) = job.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", job.report());
    for rank in 0..2 {
        let got: Vec<String> = fs::read_to_string(dir.join(format!("progress-{rank}.txt")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            got == reference(60),
            "task {rank}'s progress is not an uninterrupted run's: {got:?}\n{}",
            job.report()
        );
    }
    let err = job.err();
    assert!(!err.contains("cannot listen"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

/// The environment variable `name` of process `pid`, if readable.
fn environ_var(pid: i32, name: &str) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0).find_map(|v| {
        let v = String::from_utf8_lossy(v);
        v.strip_prefix(&prefix).map(str::to_string)
    })
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).replace('\0', " ").contains(needle)
        })
        .collect()
}

/// `srun -n 2 stasis restart DIR` of a checkpoint of two tasks: each task
/// restarts the process of its own rank (its saved SLURM_PROCID is that of
/// the restart that brought it back), and both run to their end.
#[test]
fn srun_two_tasks_restart_each_its_own_process() {
    let Some(c) = cluster() else { return };
    let dir = c.workdir("srun-restart");
    let count = c.stage.join("count.py").display().to_string();
    let script = format!(
        "srun -n 2 bash -c 'exec {} -i 1 --ckptdir ck /usr/bin/python3 -u {count} 150 progress-$SLURM_PROCID.txt'",
        c.bin("dmtcp_launch"),
    );
    let first = c.submit(&dir, "srun-first", &["-n", "2"], &script);
    let two_in_one = || {
        let Ok(entries) = fs::read_dir(dir.join("ck")) else { return false };
        entries.flatten().any(|e| {
            let m = fs::read_to_string(e.path().join("MANIFEST")).unwrap_or_default();
            m.lines().filter(|l| l.starts_with("process ")).count() == 2
        })
    };
    first.wait_for("a checkpoint of both tasks' processes after 10 steps each", |_| {
        two_in_one()
            && (0..2).all(|r| {
                fs::read_to_string(dir.join(format!("progress-{r}.txt"))).unwrap_or_default().lines().count() >= 10
            })
    });
    first.scancel(&[]);
    first.wait_end();

    let restart = format!("srun -n 2 {} restart ck", c.bin("stasis"));
    let second = c.submit(&dir, "srun-restart", &["-n", "2"], &restart);
    // While they run: each restored program's saved rank is its restart's.
    let deadline = Instant::now() + WAIT;
    let mut checked = 0;
    while checked < 2 && Instant::now() < deadline && second.state() != "COMPLETED" {
        checked = 0;
        for pid in processes_with(&format!("{count} 150 progress-")) {
            let saved = environ_var(pid, "SLURM_PROCID");
            let mut up = parent_of(pid);
            while let Some(p) = up {
                let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains("restart") || p <= 1 {
                    break;
                }
                up = parent_of(p);
            }
            let restarter = up.and_then(|p| environ_var(p, "SLURM_PROCID"));
            if saved.is_some() && restarter.is_some() {
                assert_eq!(saved, restarter, "process {pid} of task {saved:?} was restarted by task {restarter:?}");
                checked += 1;
            }
        }
        sleep(Duration::from_millis(200));
    }
    let (state, code) = second.wait_end();
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", second.report());
    for rank in 0..2 {
        let got: Vec<String> = fs::read_to_string(dir.join(format!("progress-{rank}.txt")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            got == reference(150),
            "task {rank}'s progress is not an uninterrupted run's: {got:?}\n{}",
            second.report()
        );
    }
    assert!(checked == 2, "saw {checked} restored processes with their ranks while they ran");
    // Kept when the test fails, for a look.
    let _ = fs::remove_dir_all(&dir);
}

/// Another user's job on the node at the same time, of the same name and
/// the same program: neither sees the other's coordinator or directory,
/// both stop on scancel and resume when submitted again.
#[test]
fn another_users_job_on_the_node_keeps_apart() {
    let Some(c) = cluster() else { return };
    let Some(other) = c.other.clone() else {
        eprintln!("not run: no second user (run as root, with STASIS_E2E_USERS=user,other)");
        return;
    };
    let mine = c.workdir("users");
    // The other user's directory: theirs, under /tmp (not under ours,
    // which stasis would rightly refuse as replaceable by us).
    let theirs = std::env::temp_dir().join(format!("stasis-slurm-other-{}", std::process::id())).join("as-other");
    let _ = fs::remove_dir_all(theirs.parent().unwrap());
    fs::create_dir_all(&theirs).unwrap();
    let ok =
        Command::new("chown").args(["-R", &other]).arg(theirs.parent().unwrap()).status().is_ok_and(|s| s.success());
    assert!(ok, "cannot chown to {other}");
    let script = format!("{} job -i 1 -- {}", c.bin("stasis"), c.count(100));
    let jobs = [c.submit(&mine, "shared-name", &[], &script), c.submit(&theirs, "shared-name", &[], &script)];
    for j in &jobs {
        j.wait_steps(10);
    }
    for j in &jobs {
        // Root cancels the other user's job (the submitting user cannot).
        let _ = Command::new("scancel").env("SLURM_CONF", &c.conf).arg(&j.id).status();
    }
    for j in &jobs {
        j.wait_end();
        assert_log(j, "shared-name", "stopped after the checkpoint");
    }
    let again = [c.submit(&mine, "shared-name", &[], &script), c.submit(&theirs, "shared-name", &[], &script)];
    for j in &again {
        let (state, code) = j.wait_end();
        assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{}", j.report());
        assert_log(j, "shared-name", "resuming generation");
        assert_progress(j, 100);
    }
    let _ = fs::remove_dir_all(theirs.parent().unwrap());
}
