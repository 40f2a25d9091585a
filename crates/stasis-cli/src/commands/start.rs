//! Finding the computation's coordinator, or starting one in the
//! background, for `launch` and `restart`.
//!
//! With no coordinator named, the computation gets one of its own on its
//! checkpoint directory's socket (coord_socket.rs): one that answers there
//! means another computation checkpoints into the same directory, and is
//! refused unless `--join-coordinator` asks to join it. Named, a
//! coordinator is joined where it answers, except on this node's TCP port
//! when it does not prove to be this computation's (someone else's port is
//! never joined), and one that checkpoints into another directory than an
//! explicit `--ckptdir` is refused.
//!
//! A coordinator started here is `stasis coordinator --exit-on-last`, run
//! from this very binary in a session of its own (so the terminal's ^C
//! and the batch system's signals to the job step reach the program, not
//! it). It says on a pipe when it listens, or why it cannot. When the
//! program ends, launch asks it to quit unless other processes (joined
//! from elsewhere) still use it, and waits for it to be gone, so that the
//! next launch into the same directory starts afresh.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use stasis_coord::client::{self, Addr};
use stasis_coord::secret::Secret;
use stasis_proto::{self as proto, Message};

use super::note;
use crate::coord_socket::{self, CoordOpts, Plan, Target};
use crate::reach::{self, Outcome, Reached};
use crate::slurm;

/// Join a running coordinator, start one, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Join the one that answers, else start one (DMTCP's default).
    Any,
    /// `--join-coordinator`: one must answer.
    Join,
    /// `--new-coordinator`: none may answer.
    New,
}

/// How a coordinator started here is set up.
pub struct Background<'a> {
    /// The checkpoint directory, absolute.
    pub ckpt_dir: &'a Path,
    /// Whether the user gave it (`--ckptdir`): a joined coordinator that
    /// checkpoints elsewhere is then refused rather than noted.
    pub explicit_ckpt_dir: bool,
    pub interval_s: u32,
    pub keep: usize,
    pub compress: bool,
    /// A full checkpoint every this many generations.
    pub full_every: u32,
    pub logfile: Option<&'a Path>,
    pub quiet: bool,
}

/// How long a new coordinator may take to say it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a coordinator told to quit may take to be gone.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// A coordinator started here that no process ever joins (its launcher
/// was killed before the program started) gives up after this long.
const UNUSED_LIMIT_S: u32 = 600;

/// The computation's coordinator.
pub struct Found {
    /// Where its agents (and restart's connections) reach it.
    pub addr: Addr,
    /// The secret, where it is reached over TCP.
    pub secret: Option<Secret>,
    /// Its TCP port, if it listens on one.
    pub port: Option<u16>,
    /// Its checkpoint directory (joined ones only).
    pub ckpt_dir: Option<PathBuf>,
    /// How many processes it had when joined (joined ones only).
    pub processes: Option<u64>,
    /// Set when it was started here.
    pub started: Option<Started>,
}

impl Found {
    /// Sends a command; an ERROR answer is an error.
    pub fn ask(&self, request: &Message) -> Result<Message> {
        let stream = client::connect(&self.addr, self.secret.as_ref())
            .with_context(|| format!("cannot reach the coordinator at {}", self.addr))?;
        let reply =
            client::ask(&stream, request).with_context(|| format!("talking to the coordinator at {}", self.addr))?;
        if reply.verb != proto::OK {
            bail!("the coordinator at {} says: {}", self.addr, reply.get("reason").unwrap_or("no reason given"));
        }
        Ok(reply)
    }

    /// Puts each generation's `.dmtcp` names in a directory of their own
    /// (DMTCP's unique checkpoint filenames), from the next checkpoint on.
    pub fn set_unique_names(&self) -> Result<()> {
        self.ask(&Message::new(proto::COMMAND).with("what", "unique").with("on", 1)).map(drop)
    }

    /// Changes the interval of a coordinator that was joined.
    pub fn set_interval(&self, seconds: u32) -> Result<()> {
        self.ask(&Message::new(proto::COMMAND).with("what", "interval").with("seconds", seconds)).map(drop)
    }

    /// A joined coordinator that checkpoints elsewhere than `asked`
    /// (canonical): refused when the directory was given (two computations
    /// never share a directory by accident), else a note, since
    /// checkpoints go where the coordinator writes them.
    fn check_ckpt_dir(&self, asked: &Path, bg: &Background, via: Via) -> Result<()> {
        let Some(theirs) = self.ckpt_dir.as_ref() else { return Ok(()) };
        if theirs == asked {
            return Ok(());
        }
        let what = format!(
            "the coordinator at {} checkpoints into {}, not into {}",
            self.addr,
            theirs.display(),
            asked.display()
        );
        if !bg.explicit_ckpt_dir {
            note(bg.quiet, &what);
            return Ok(());
        }
        // With no process there yet (a dmtcp_coordinator started by hand,
        // or one whose computation was killed for a restart), this
        // computation's checkpoints go where it says, as with DMTCP.
        if self.processes == Some(0) {
            let moved = Message::new(proto::COMMAND).with("what", "ckptdir").with("dir", asked.display());
            return match self.ask(&moved) {
                Ok(_) => Ok(()),
                Err(e) => Err(e.context(format!("{what}, and cannot be moved"))),
            };
        }
        let fix = match via {
            Via::Port => "choose another port with -p, or leave -p out for a coordinator of this computation's own",
            Via::Named => "name another coordinator, or leave it unnamed for one of this computation's own",
            Via::DefaultPort => {
                "leave --ckptdir out to checkpoint where it does, or leave --join-coordinator out for a coordinator \
                 of this computation's own"
            }
            Via::Own => "choose another --ckptdir",
        };
        bail!("{what}: {fix}")
    }
}

/// How the coordinator joined was found, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Named with a port or host.
    Port,
    /// Named otherwise (`--coord-socket`, the launched program's address).
    Named,
    /// Port 7779's socket, for `--join-coordinator` with nothing named.
    DefaultPort,
    /// The checkpoint directory's own socket.
    Own,
}

/// Finds the computation's coordinator, or starts one, as `mode` and the
/// rule (coord_socket.rs) say. `secret_dirs`: where the secret may be,
/// for a coordinator over TCP.
pub fn find_or_start(opts: &CoordOpts, mode: Mode, bg: &Background, secret_dirs: &[PathBuf]) -> Result<Found> {
    let job = slurm::Job::from_env(&crate::cli::real_env);
    // In a SLURM step of several tasks (srun -n N), task 0 coordinates and
    // the others wait for its coordinator and join it: none races to start
    // one of its own.
    if mode == Mode::Any && job.ntasks > 1 && job.step.is_some() && job.rank > 0 {
        let deadline = Instant::now() + TASK0_TIMEOUT;
        loop {
            match find_or_start_as(opts, Mode::Join, bg, secret_dirs) {
                Ok(found) => return Ok(found),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "task {} of {}: the coordinator of task 0 did not come up within {} s",
                        job.rank,
                        job.ntasks,
                        TASK0_TIMEOUT.as_secs()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    find_or_start_as(opts, mode, bg, secret_dirs)
}

/// How long the other tasks of a step wait for task 0's coordinator.
const TASK0_TIMEOUT: Duration = Duration::from_secs(60);

fn find_or_start_as(opts: &CoordOpts, mode: Mode, bg: &Background, secret_dirs: &[PathBuf]) -> Result<Found> {
    let canonical = coord_socket::canonical_dir(bg.ckpt_dir)?;
    let (found, via) = match coord_socket::plan(opts, &canonical)? {
        Plan::Named(target) => {
            let via = if opts.port.is_some() || opts.host.is_some() { Via::Port } else { Via::Named };
            (named(&target, mode, bg, secret_dirs)?, via)
        }
        Plan::Private { own, join_too } => private(&own, &join_too, mode, bg)?,
    };
    if found.started.is_none() {
        found.check_ckpt_dir(&canonical, bg, via)?;
    }
    Ok(found)
}

/// The message for a checkpoint directory whose coordinator runs already.
fn busy(target: &Target) -> anyhow::Error {
    let dir = target.ckpt_dir.as_deref().unwrap_or(Path::new("?"));
    let socket = target.socket.as_deref().unwrap_or(Path::new("?"));
    anyhow!(
        "another computation already checkpoints into {} (its coordinator is at {}): choose another --ckptdir, or \
         add --join-coordinator to join it",
        dir.display(),
        socket.display()
    )
}

/// Nothing named: the checkpoint directory's own coordinator; port 7779's
/// socket only to join one started by hand.
fn private(own: &Target, join_too: &Target, mode: Mode, bg: &Background) -> Result<(Found, Via)> {
    let nobody = match reach::reach(own, &[])? {
        Ok(reached) if mode == Mode::Join => return Ok((joined(reached)?, Via::Own)),
        Ok(reached) => match going(own, reached)? {
            Some(why) => why,
            None => return Err(busy(own)),
        },
        Err(why) => why,
    };
    if mode == Mode::Join {
        return match reach::reach(join_too, &[])? {
            Ok(reached) => Ok((joined(reached)?, Via::DefaultPort)),
            Err(_) => bail!(
                "{nobody}, nor at {}; --join-coordinator needs a running coordinator (start one with stasis \
                 coordinator, or name it with -p or --coord-socket)",
                join_too.describe()
            ),
        };
    }
    match start(own, bg) {
        Ok(found) => Ok((found, Via::Own)),
        // Another launch into the same directory started its coordinator
        // between our look and our start.
        Err(e) => match reach::reach(own, &[]) {
            Ok(Ok(_)) => Err(busy(own)),
            _ => Err(e),
        },
    }
}

/// How long a coordinator without processes on a checkpoint directory's
/// socket is given to go away (one whose computation was just killed
/// waits 5 s for a process that calls exec to come back).
const GOING_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the coordinator reached on `own` is on its way out: it has no
/// process and goes away within [`GOING_TIMEOUT`] (`Some`: nothing answers
/// any more, and why). One that has or gains a process is busy.
fn going(own: &Target, reached: Reached) -> Result<Option<String>> {
    let deadline = Instant::now() + GOING_TIMEOUT;
    let mut reached = reached;
    loop {
        let status = client::ask(&reached.stream, &Message::new(proto::COMMAND).with("what", "status"));
        if status.is_ok_and(|m| m.get_parsed::<u64>("processes") != Some(0)) || Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
        match reach::reach(own, &[])? {
            Ok(r) => reached = r,
            Err(why) => return Ok(Some(why)),
        }
    }
}

/// A coordinator named by the user (or the launched program's address).
fn named(target: &Target, mode: Mode, bg: &Background, secret_dirs: &[PathBuf]) -> Result<Found> {
    let nobody = if mode == Mode::New && target.socket.is_none() && target.tcp.is_none() {
        String::new() // port 0: nothing to look for
    } else {
        match reach::try_reach(target, secret_dirs)? {
            Outcome::Reached(reached) if mode == Mode::New => bail!(
                "a coordinator is already listening at {} (--new-coordinator starts a fresh one: choose another \
                 port with -p, or join this one)",
                reached.addr
            ),
            Outcome::Reached(reached) => return joined(reached),
            // On this node, a port that someone else's coordinator (or
            // another program) holds is never joined.
            Outcome::Foreign { host, port, err } if target.local => bail!(
                "TCP port {port} ({host}:{port}) is taken by something that is not this computation's coordinator \
                 ({err}): choose another port with -p, or leave -p out for a coordinator of this computation's own"
            ),
            Outcome::Foreign { host, port, err } => return Err(reach::foreign(&host, port, err, secret_dirs)),
            Outcome::Nobody(why) => why,
        }
    };
    if mode == Mode::Join {
        bail!("{nobody}; --join-coordinator needs a running coordinator (start one with stasis coordinator)");
    }
    if !target.local {
        let (host, _) = target.tcp.clone().unwrap_or_default();
        bail!(
            "{nobody}; a coordinator cannot be started on {host} from here: run stasis coordinator \
             (or dmtcp_coordinator) there first"
        );
    }
    start(target, bg)
}

fn joined(reached: Reached) -> Result<Found> {
    let status = client::ask(&reached.stream, &Message::new(proto::COMMAND).with("what", "status"))
        .with_context(|| format!("talking to the coordinator at {}", reached.addr))?;
    let ours = slurm::Job::from_env(&crate::cli::real_env).identity();
    if let Err(why) = same_job(status.get("job"), ours.as_deref()) {
        bail!(
            "the coordinator at {} {why}: another job's coordinator is never joined (leave out -p and \
             DMTCP_COORD_PORT/STASIS_COORD_PORT for a coordinator of this job's own)",
            reached.addr
        );
    }
    Ok(Found {
        addr: reached.addr,
        secret: reached.secret,
        port: status.get_parsed("port"),
        ckpt_dir: status.get("ckptdir").map(PathBuf::from),
        processes: status.get_parsed("processes"),
        started: None,
    })
}

/// Whether a coordinator of SLURM job `theirs` (`JOB` or `JOB.STEP`) is
/// one this process (of job `ours`) may join: the same job, and the same
/// step when both run in one. A coordinator outside SLURM (started by
/// hand), or a process outside SLURM, is not refused for it.
fn same_job(theirs: Option<&str>, ours: Option<&str>) -> std::result::Result<(), String> {
    let (Some(theirs), Some(ours)) = (theirs, ours) else { return Ok(()) };
    let split = |s: &str| match s.split_once('.') {
        Some((j, st)) => (j.to_string(), Some(st.to_string())),
        None => (s.to_string(), None),
    };
    let ((tj, ts), (oj, os)) = (split(theirs), split(ours));
    if tj != oj {
        return Err(format!("belongs to SLURM job {tj}, not to this job {oj}"));
    }
    if let (Some(ts), Some(os)) = (ts, os)
        && ts != os
    {
        return Err(format!("belongs to step {ts} of job {tj}, not to this step {os}"));
    }
    Ok(())
}

fn pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the coordinator's first line, waiting at most `timeout`.
fn read_ready(mut pipe: File, timeout: Duration) -> io::Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the coordinator did not say it listens in time"));
        }
        let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor we own.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match pipe.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Starts `stasis coordinator` in the background for `target`.
fn start(target: &Target, bg: &Background) -> Result<Found> {
    let exe = std::env::current_exe().context("cannot tell where the stasis binary is")?;
    let (ready_r, ready_w) = pipe().context("cannot create a pipe for the coordinator")?;
    let mut cmd = Command::new(&exe);
    // Called "stasis", whichever binary this is (dmtcp_launch...).
    cmd.arg0("stasis")
        .arg("coordinator")
        .arg("--exit-on-last")
        .args(["--timeout", &UNUSED_LIMIT_S.to_string()])
        .args(["--ready-fd", "3"])
        .arg("--ckptdir")
        .arg(bg.ckpt_dir)
        .args(["--interval", &bg.interval_s.to_string()])
        .args(["--keep", &bg.keep.to_string()])
        .args(["--full-every", &bg.full_every.to_string()]);
    if let Some(s) = &target.socket {
        cmd.arg("--coord-socket").arg(s);
    }
    // TCP only when asked, on the address asked (never every interface).
    if let Some((host, port)) = &target.listen {
        let ip = coord_socket::bind_ip(host)?;
        cmd.args(["--coord-port", &port.to_string()]).arg("--listen").arg(ip.to_string());
    }
    if let Some(t) = &target.tmpdir {
        cmd.arg("--tmpdir").arg(t);
    }
    if bg.quiet {
        cmd.arg("--quiet");
    }
    if bg.compress {
        cmd.arg("--compress");
    }
    // Named too, not only its stderr: a log file of its own gets the
    // coordinator's last line even when quiet (commands/coordinator.rs).
    if let Some(f) = bg.logfile {
        cmd.arg("--coord-logfile").arg(f);
    }
    let stderr = match bg.logfile {
        Some(f) => Stdio::from(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .with_context(|| format!("cannot open the coordinator's log file {}", f.display()))?,
        ),
        None => Stdio::inherit(),
    };
    // Its own agent, if this process has one preloaded, must stay asleep.
    cmd.env_remove("STASIS_COORD_ADDR").env_remove("STASIS_COORD_SOCKET");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    let fd = ready_w.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on plain integers.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The pipe's write end becomes descriptor 3, open across exec.
            let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start a coordinator ({})", exe.display()))?;
    drop(ready_w);
    let line = match read_ready(ready_r, READY_TIMEOUT) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("cannot start a coordinator");
        }
    };
    let reply = line.as_deref().and_then(|l| Message::decode(l).ok());
    match reply {
        Some(m) if m.verb == proto::OK => {
            let socket = PathBuf::from(m.get("socket").unwrap_or_default());
            let port = m.get_parsed("port");
            if !bg.quiet && !target.exact_socket() {
                eprintln!("stasis: this computation's coordinator: {}", where_started(target, bg, &socket, port));
            }
            let started = Started { child: Some(child), socket: socket.clone() };
            Ok(Found {
                addr: Addr::Unix(socket),
                secret: None,
                port,
                ckpt_dir: None,
                processes: None,
                started: Some(started),
            })
        }
        Some(m) => {
            let _ = child.wait();
            bail!("cannot start a coordinator: {}", m.get("reason").unwrap_or("no reason given"))
        }
        None => {
            let status = child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
            bail!("cannot start a coordinator: it ended at once ({status})")
        }
    }
}

/// Where a coordinator started here is, and how to command it.
fn where_started(target: &Target, bg: &Background, socket: &Path, port: Option<u16>) -> String {
    let mut how = String::from("stasis command");
    if let Some(t) = &target.tmpdir {
        how.push_str(&format!(" --tmpdir {}", t.display()));
    }
    let mut at = socket.display().to_string();
    match (&target.listen, port) {
        (Some((host, _)), Some(p)) => {
            at.push_str(&format!(" and TCP {host}:{p}"));
            if host != "127.0.0.1" {
                how.push_str(&format!(" -h {host}"));
            }
            how.push_str(&format!(" -p {p}"));
        }
        _ if target.ckpt_dir.is_some() => how.push_str(&format!(" --ckptdir {}", bg.ckpt_dir.display())),
        _ => how.push_str(&format!(" --coord-socket {}", socket.display())),
    }
    format!("{at} ({how} ...)")
}

/// A coordinator started here. Dropping it asks it to quit unless other
/// processes use it, and waits (a bounded time) for it to be gone.
pub struct Started {
    child: Option<Child>,
    socket: PathBuf,
}

impl Started {
    /// Whether this coordinator ends with status 0 within `timeout`: it
    /// was told to quit (which kills the computation first).
    pub fn quits_within(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else { return false };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => return false,
            }
        }
    }

    fn finish(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let quit = client::connect(&Addr::Unix(self.socket.clone()), None).ok().and_then(|s| {
            let request = Message::new(proto::COMMAND).with("what", "quit").with("if_idle", 1);
            client::ask(&s, &request).ok()
        });
        let quitting = match quit {
            Some(reply) => reply.get("quit") == Some("1"),
            // Gone already, or it never answers: nothing more to ask.
            None => true,
        };
        if !quitting {
            return; // it exits when the last of the others is gone
        }
        let deadline = Instant::now() + QUIT_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_jobs_coordinator_is_refused() {
        assert!(same_job(None, Some("12")).is_ok());
        assert!(same_job(Some("12.0"), None).is_ok());
        assert!(same_job(Some("12"), Some("12.0")).is_ok());
        assert!(same_job(Some("12.1"), Some("12.1")).is_ok());
        assert_eq!(same_job(Some("12"), Some("13")), Err("belongs to SLURM job 12, not to this job 13".into()));
        assert!(same_job(Some("12.0"), Some("12.1")).unwrap_err().contains("step 0"));
    }
}
