//! `stasis job`: the one line of a batch script. Launches the program, or
//! resumes it from the job's checkpoint directory; checkpoints it when the
//! job is about to end (SIGTERM, the signal `--signal` sends, or its time
//! running out) and stops it; records its completion, so that a requeued
//! job that already finished does not run again. docs/slurm.md has the
//! story for users, with every exit status.
//!
//! The program runs under a child `stasis launch` or `stasis restart`, in
//! the checkpoint directory's own coordinator (coord_socket.rs), which this
//! command reaches as `stasis command --ckptdir DIR` would. Every process
//! under it starts with SIGTERM and the checkpoint signals ignored: SLURM
//! sends SIGTERM to every process of the job at once (scancel, preemption,
//! time limit), and the program, its launcher and its coordinator must
//! still be there for the checkpoint that SIGTERM asks for.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use stasis_coord::client;
use stasis_proto::{self as proto, Message};

use super::command::Action;
use crate::cli::real_env;
use crate::coord_socket::{self, CoordOpts};
use crate::exit::Exit;
use crate::slurm::{self, Job};

use super::STOPPED;
/// The completion record, in the checkpoint directory.
pub const DONE_FILE: &str = "stasis-job.done";
/// How long the program may take to be gone once killed.
const GONE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long another task of a step waits for task 0 to checkpoint and stop
/// the computation before it asks itself (SLURM's KillWait is 30 s by
/// default; a checkpoint takes about a second).
const TASK0_GRACE: Duration = Duration::from_secs(8);
/// How long a checkpoint signal may wait for the coordinator to come up
/// (a signal right after the job started).
const REACH_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOpts {
    /// None: derived from the SLURM job (slurm.rs).
    pub ckpt_dir: Option<PathBuf>,
    pub interval_s: Option<u32>,
    pub keep: usize,
    pub compress: bool,
    /// Signals that checkpoint and stop, besides SIGTERM, USR1 and USR2.
    pub checkpoint_signals: Vec<i32>,
    /// After a checkpoint on a warning (a signal other than SIGTERM, or
    /// the end near), requeue the job; None: when SLURM lets it be requeued.
    pub requeue: Option<bool>,
    /// Checkpoint this long before the job's time limit; 0: not.
    pub before_end_s: u32,
    pub quiet: bool,
    pub program: Vec<OsString>,
}

/// The signals `stasis job` takes, whatever it is told.
pub const DEFAULT_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2];

/// Why the job stops before its program ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(i32),
    EndNear,
}

enum Event {
    Ended(io::Result<ExitStatus>),
    Stop(Stop),
}

/// The completion record: the program's exit status, and the job that ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Done {
    status: i32,
    job: String,
}

impl Done {
    fn encode(&self) -> String {
        format!("exit {} job {}\n", self.status, self.job)
    }

    fn decode(text: &str) -> Option<Done> {
        let w: Vec<&str> = text.split_whitespace().collect();
        match w[..] {
            ["exit", s, "job", j, ..] => Some(Done { status: s.parse().ok()?, job: j.to_string() }),
            _ => None,
        }
    }
}

/// Status lines, one per event, on stderr and, with the time, in the
/// checkpoint directory's log, [`LOG_FILE`] (which keeps the job's whole
/// story across requeues, whatever becomes of its output files).
struct Reporter {
    prefix: String,
    log: Option<PathBuf>,
}

/// The job's log, in the checkpoint directory.
pub const LOG_FILE: &str = "stasis-job.log";

impl Reporter {
    fn new(job: &Job) -> Reporter {
        let prefix = match &job.id {
            Some(id) => format!("stasis job [job {id}, restart {}]", job.restart_count),
            None => "stasis job".to_string(),
        };
        Reporter { prefix, log: None }
    }

    fn say(&self, msg: &str) {
        let line = format!("{}: {msg}", self.prefix);
        let _ = writeln!(io::stderr(), "{line}");
        if let Some(log) = &self.log {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let _ = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(format!("{} {line}\n", utc(now)).as_bytes()));
        }
    }
}

pub fn run(opts: JobOpts) -> Result<Exit> {
    let job = Job::from_env(&real_env);
    let mut say = Reporter::new(&job);
    let dir = match (&opts.ckpt_dir, job.default_ckpt_dir()) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => bail!("outside a SLURM job, stasis job needs --ckptdir DIR"),
    };
    let dir = std::path::absolute(&dir).with_context(|| format!("cannot make {} absolute", dir.display()))?;
    stasis_image::CheckpointDir::open_or_create(&dir).map_err(|e| anyhow!(e))?;
    say.log = Some(dir.join(LOG_FILE));
    let job_key = job.id.clone().unwrap_or_else(|| "-".into());

    if let Some(done) = read_done(&dir) {
        if done.job == job_key {
            say.say(&format!(
                "already completed with exit status {}: not run again (remove {} to run it again)",
                done.status,
                dir.join(DONE_FILE).display()
            ));
            return Ok(Exit::Code(done.status));
        }
        say.say(&format!("job {} completed the last run in {}: this job starts afresh", done.job, dir.display()));
        clear(&dir)?;
    }

    // Another job running into this directory (the same name submitted
    // twice): refused before anything is touched or recorded. (Not for the
    // other tasks of a step, which join task 0's computation.)
    let joins_task0 = job.ntasks > 1 && job.step.is_some() && job.rank > 0;
    if !joins_task0
        && let Ok(status) = ask_within(&dir, Action::Status, Duration::ZERO)
        && status.get_parsed::<u64>("processes").unwrap_or(0) > 0
    {
        let whose = status.get("job").map_or_else(String::new, |j| format!(" (SLURM job {j})"));
        bail!(
            "another computation{whose} already checkpoints into {}: give this job another --job-name or --ckptdir",
            dir.display()
        );
    }
    let resume = stasis_image::CheckpointDir::open(&dir).ok().and_then(|d| d.latest().ok());
    let stop_signals = stop_signals(&opts.checkpoint_signals);
    let blocked = block(&stop_signals).context("cannot block signals")?;

    if let Some(generation) = &resume {
        let taken = generation.manifest().map(|m| m.created_unix).unwrap_or(0);
        say.say(&format!("resuming generation {} (taken {}) from {}", generation.number, utc(taken), dir.display()));
    } else {
        say.say(&format!("launching; checkpoints go to {}", dir.display()));
    }
    let mut cmd = child_command(&dir, resume.is_some(), &opts, &stop_signals)?;
    let mut child = cmd.spawn().context("cannot start stasis launch")?;
    let pid = child.id() as i32;

    let (tx, rx) = mpsc::channel();
    watch_signals(blocked, tx.clone());
    let seen = watch_start(&dir);
    let waiter = tx.clone();
    std::thread::spawn(move || {
        let _ = waiter.send(Event::Ended(child.wait()));
    });
    if let Some(id) = job.id.clone()
        && opts.before_end_s > 0
    {
        watch_end(&id, Duration::from_secs(opts.before_end_s.into()), tx, &say);
    }

    match rx.recv().context("lost track of the program")? {
        Event::Ended(status) => {
            let status = status.context("lost track of the program")?;
            if matches!(status.code(), Some(1 | 126 | 127)) && !seen.load(Ordering::Relaxed) {
                // launch or restart could not start it (it said why):
                // nothing ran, nothing to record.
                let code = status.code().unwrap_or(1);
                say.say(&format!("the program did not start (exit status {code}): no completion recorded"));
                return Ok(Exit::Like(status));
            }
            finished(&dir, &job_key, status, &say);
            Ok(Exit::Like(status))
        }
        // The other tasks of a step get SIGTERM too: task 0 checkpoints and
        // stops the whole computation, theirs included. Asking as well
        // would race its kill with a second checkpoint round.
        Event::Stop(why) if joins_task0 => {
            say.say("stopping: task 0 checkpoints and stops the computation");
            if ended_within(&rx, TASK0_GRACE) {
                say.say(&format!("stopped after the checkpoint: exit status {STOPPED}; a later stasis job resumes"));
                return Ok(Exit::Code(STOPPED));
            }
            say.say(&format!("task 0 did not stop the computation within {} s", TASK0_GRACE.as_secs()));
            stop(&dir, &job, &opts, why, pid, &rx, &say)
        }
        Event::Stop(why) => stop(&dir, &job, &opts, why, pid, &rx, &say),
    }
}

/// Whether the program ends (its launch or restart exits) within `limit`.
fn ended_within(rx: &mpsc::Receiver<Event>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Ok(event) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Event::Ended(_) = event {
            return true;
        }
    }
    false
}

/// `stasis launch` of the program, or `stasis restart` of the directory,
/// with SIGTERM and the checkpoint signals ignored (see the module's doc).
fn child_command(dir: &Path, resume: bool, opts: &JobOpts, stop_signals: &[i32]) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("cannot tell where the stasis binary is")?);
    cmd.arg0("stasis");
    if resume {
        // The newest intact generation, as the status line said: a batch
        // job resumes rather than stops on a damaged newest one.
        cmd.args(["restart", "--fallback"]);
    } else {
        cmd.args(["launch", "--ckptdir"]).arg(dir);
    }
    if let Some(i) = opts.interval_s {
        cmd.args(["--interval", &i.to_string()]);
    }
    cmd.args(["--keep", &opts.keep.to_string()]);
    if opts.compress {
        cmd.arg("--compress");
    }
    if opts.quiet {
        cmd.arg("--quiet");
    }
    if resume {
        cmd.arg(dir);
    } else {
        cmd.arg("--").args(&opts.program);
    }
    let ignored = stop_signals.to_vec();
    // SAFETY: between fork and exec, only signal(), which is
    // async-signal-safe, on plain numbers.
    unsafe {
        cmd.pre_exec(move || {
            for &sig in &ignored {
                libc::signal(sig, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// The program ended by itself: its completion is recorded, unless it was
/// killed (SIGKILL: the job ends around it, the node goes down), which a
/// requeue should resume from the last checkpoint.
fn finished(dir: &Path, job_key: &str, status: ExitStatus, say: &Reporter) {
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if code == STOPPED {
        say.say(&format!(
            "the program was stopped on request (exit status {STOPPED}): no completion recorded, a later run resumes"
        ));
        return;
    }
    if status.signal() == Some(libc::SIGKILL) {
        say.say("the program was killed (SIGKILL): no completion recorded, a later run resumes");
        return;
    }
    let done = Done { status: code, job: job_key.to_string() };
    match write_done(dir, &done) {
        Ok(()) => say.say(&format!("the program ended with exit status {code}; completion recorded")),
        Err(e) => say.say(&format!("the program ended with exit status {code}; cannot record completion: {e}")),
    }
}

/// Checkpoint, stop the program, maybe requeue; exit [`STOPPED`].
fn stop(
    dir: &Path,
    job: &Job,
    opts: &JobOpts,
    why: Stop,
    pid: i32,
    rx: &mpsc::Receiver<Event>,
    say: &Reporter,
) -> Result<Exit> {
    let what = match why {
        Stop::Signal(sig) => format!("{} received", signal_name(sig)),
        Stop::EndNear => format!("the job ends in {} s or less", opts.before_end_s),
    };
    say.say(&format!("{what}: checkpointing"));
    match ask(dir, Action::Checkpoint) {
        Ok(reply) => say.say(&format!(
            "generation {} committed in {}; stopping the program",
            reply.get("generation").unwrap_or("?"),
            dir.display()
        )),
        Err(e) => say.say(&format!(
            "no checkpoint taken ({e:#}); stopping the program; a later run resumes from the last checkpoint, if any"
        )),
    }
    let _ = ask(dir, Action::Kill);
    if !ended_within(rx, GONE_TIMEOUT) {
        // SAFETY: kill only takes numbers; the child is not reaped until
        // the waiter thread sees it end, so the pid is still its own.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let warning = why != Stop::Signal(libc::SIGTERM);
    if warning && let Some(id) = &job.id {
        let requeue = opts.requeue.unwrap_or_else(|| slurm::requeueable(id));
        if requeue {
            match slurm::requeue(id) {
                Ok(()) => say.say(&format!("job {id} requeued; it resumes when it starts again")),
                Err(e) => say.say(&format!("cannot requeue: {e}")),
            }
        }
    }
    say.say(&format!("stopped after the checkpoint: exit status {STOPPED}; a later stasis job resumes"));
    Ok(Exit::Code(STOPPED))
}

/// Asks the checkpoint directory's coordinator, waiting for it a while
/// (it may be starting still).
fn ask(dir: &Path, action: Action) -> Result<Message> {
    ask_within(dir, action, REACH_TIMEOUT)
}

/// [`ask`], waiting at most `wait` for the coordinator to answer.
fn ask_within(dir: &Path, action: Action, wait: Duration) -> Result<Message> {
    let canonical = coord_socket::canonical_dir(dir)?;
    let coord = CoordOpts {
        tmpdir: real_env("STASIS_TMPDIR").map(PathBuf::from),
        ckpt_dir: Some(canonical.clone()),
        ..Default::default()
    };
    let targets = coord_socket::command_targets(&coord, Some(&canonical), None)?;
    let target = targets.first().context("no coordinator to reach")?;
    let deadline = Instant::now() + wait;
    let reached = loop {
        match crate::reach::reach(target, &[])? {
            Ok(r) => break r,
            Err(why) if Instant::now() > deadline => bail!("{why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let reply = client::ask(&reached.stream, &action.request())
        .with_context(|| format!("talking to the coordinator at {}", reached.addr))?;
    if reply.verb != proto::OK {
        bail!("{} failed: {}", action.what(), reply.get("reason").unwrap_or("no reason given"));
    }
    Ok(reply)
}

/// SIGTERM, USR1, USR2 and those asked for.
fn stop_signals(extra: &[i32]) -> Vec<i32> {
    let mut all = DEFAULT_SIGNALS.to_vec();
    for &s in extra {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all
}

fn block(signals: &[i32]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the
    // calls only read and write the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

fn watch_signals(set: libc::sigset_t, tx: mpsc::Sender<Event>) {
    let _ = std::thread::Builder::new().name("stasis-job-signals".into()).spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: waits for one of `set`, which every thread keeps blocked.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 && tx.send(Event::Stop(Stop::Signal(sig))).is_err() {
                return;
            }
        }
    });
}

/// Set once the program is seen connected to its coordinator: an exit
/// status 1, 126 or 127 before that is launch's or restart's failure to start it, not
/// the program's end.
fn watch_start(dir: &Path) -> Arc<AtomicBool> {
    let seen = Arc::new(AtomicBool::new(false));
    let (flag, dir) = (seen.clone(), dir.to_path_buf());
    let _ = std::thread::Builder::new().name("stasis-job-start".into()).spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let up = ask_within(&dir, Action::Status, Duration::ZERO)
                .is_ok_and(|m| m.get_parsed::<u64>("processes").unwrap_or(0) > 0);
            if up {
                flag.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    seen
}

/// Under SLURM: a stop when the job has `before` left (`squeue %L`, asked
/// again every minute, since a time limit may change). A job that has less
/// than that left already when it starts relies on SIGTERM instead.
fn watch_end(job_id: &str, before: Duration, tx: mpsc::Sender<Event>, say: &Reporter) {
    let Some(left) = slurm::time_left(job_id) else { return };
    if left <= before {
        say.say(&format!(
            "the job has {} s left, not more than --before-end {} s: it checkpoints on SIGTERM only",
            left.as_secs(),
            before.as_secs()
        ));
        return;
    }
    let id = job_id.to_string();
    let _ = std::thread::Builder::new().name("stasis-job-end".into()).spawn(move || {
        let mut left = left;
        loop {
            if left <= before {
                let _ = tx.send(Event::Stop(Stop::EndNear));
                return;
            }
            std::thread::sleep((left - before).min(Duration::from_secs(60)));
            match slurm::time_left(&id) {
                Some(l) => left = l,
                None => return,
            }
        }
    });
}

fn read_done(dir: &Path) -> Option<Done> {
    Done::decode(&fs::read_to_string(dir.join(DONE_FILE)).ok()?)
}

fn write_done(dir: &Path, done: &Done) -> io::Result<()> {
    let tmp = dir.join(format!(".{DONE_FILE}.tmp"));
    fs::write(&tmp, done.encode())?;
    fs::rename(&tmp, dir.join(DONE_FILE))
}

/// A new job after a completed one: the finished computation's
/// generations and record go, so that a requeue of the new job cannot
/// resume the old one.
fn clear(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let generation = name.starts_with("gen-") || (name.starts_with(".gen-") && name.ends_with(".partial"));
        // Gone already is fine: the other tasks of a step clear it too.
        let gone = |r: io::Result<()>| match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        };
        if generation && entry.file_type()?.is_dir() {
            gone(fs::remove_dir_all(&path))?;
        } else if name == DONE_FILE
            || name == LOG_FILE
            || (name.starts_with("ckpt_") && name.ends_with(".dmtcp"))
            || name == "dmtcp_restart_script.sh"
        {
            gone(fs::remove_file(&path))?;
        }
    }
    Ok(())
}

/// `--checkpoint-signal`: a name (USR1, SIGUSR1) or a number.
pub fn parse_signal(s: &str) -> std::result::Result<i32, String> {
    let t = s.trim();
    let name = t.strip_prefix("SIG").unwrap_or(t).to_ascii_uppercase();
    let n = match name.as_str() {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "ALRM" => libc::SIGALRM,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        _ => name.parse().map_err(|_| format!("{s:?} is not a signal (a name such as USR1, or a number)"))?,
    };
    if !(1..=64).contains(&n) || [libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD].contains(&n) {
        return Err(format!("{s} cannot be a checkpoint signal"));
    }
    Ok(n)
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC` (0: not known).
fn utc(t: u64) -> String {
    if t == 0 { "at an unknown time".into() } else { stasis_image::utc(t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_records_round_trip() {
        let d = Done { status: 3, job: "41".into() };
        assert_eq!(Done::decode(&d.encode()), Some(d));
        assert_eq!(Done::decode("garbage"), None);
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("USR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("SIGUSR2"), Ok(libc::SIGUSR2));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("KILL").is_err() && parse_signal("9").is_err() && parse_signal("x").is_err());
        assert_eq!(stop_signals(&[libc::SIGUSR1, libc::SIGURG]).len(), 4);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "at an unknown time");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn clear_leaves_other_files() {
        let t = tempfile::tempdir().unwrap();
        for d in ["gen-000001", ".gen-000002.partial", "data"] {
            fs::create_dir(t.path().join(d)).unwrap();
        }
        for f in [DONE_FILE, "ckpt_a_1.dmtcp", "notes.txt"] {
            fs::write(t.path().join(f), "x").unwrap();
        }
        clear(t.path()).unwrap();
        let mut left: Vec<String> =
            fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["data", "notes.txt"]);
    }
}
