//! What the coordinator knows, shared by its threads under one mutex.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use stasis_proto::{self as proto, Message};

use crate::client::Addr;
use crate::conn::Gate;
use crate::stream::Stream;

/// The state and the condition variable that announces every change of it:
/// an agent's answer, a new request, a new interval, shutdown.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) changed: Condvar,
    pub(crate) checkpoint_timeout: Duration,
    pub(crate) keep: usize,
    /// Agents compress their images.
    pub(crate) compress: bool,
    /// A full checkpoint every this many generations (`CoordConfig`).
    pub(crate) full_every: u32,
    pub(crate) ckpt_dir: PathBuf,
    /// Where agents on this node reach us (told to them after HELLO).
    pub(crate) unix_addr: Addr,
    /// The secret TCP peers must prove, if we listen on TCP.
    pub(crate) secret: Option<Vec<u8>>,
    /// The TCP port we listen on, if any (for status).
    pub(crate) tcp_port: Option<u16>,
    /// Connection threads, joined at shutdown.
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    /// TCP peers still authenticating: kept apart from the state's lock,
    /// so that strangers never wait on it nor make the owner wait.
    gate: Mutex<Gate>,
}

impl Shared {
    pub(crate) fn new(state: State, cfg: &crate::CoordConfig, ckpt_dir: PathBuf, unix_addr: Addr) -> Self {
        Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            checkpoint_timeout: cfg.checkpoint_timeout,
            keep: cfg.keep,
            compress: cfg.compress,
            full_every: cfg.full_every.max(1),
            ckpt_dir,
            unix_addr,
            secret: None,
            tcp_port: None,
            threads: Mutex::new(Vec::new()),
            gate: Mutex::new(Gate::default()),
        }
    }

    /// Locks the state. A thread that panicked while holding the lock left
    /// it consistent enough to go on: every update is a few assignments.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn wait_timeout<'a>(&self, guard: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        self.changed.wait_timeout(guard, d).unwrap_or_else(PoisonError::into_inner).0
    }
}

/// An open connection, and the lock that keeps two threads' lines from
/// interleaving on it (the driver's SUSPEND, a client's KILL, the
/// connection's own COORDINATOR).
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    write_lock: Mutex<()>,
}

impl Conn {
    pub(crate) fn new(stream: Stream) -> Self {
        Conn { stream, write_lock: Mutex::new(()) }
    }

    /// Writes one whole line, or fails (and then the connection is done
    /// for: half a line may have gone out).
    pub(crate) fn send(&self, m: &Message) -> io::Result<()> {
        self.writer().send(m)
    }

    /// Holds the connection for lines sent one after the other, none of
    /// another thread's in between. Taken under the state lock, it fixes
    /// the order of what is decided there (a newcomer's SUSPEND before
    /// any RESUME the driver may send it next) without writing under it.
    pub(crate) fn writer(&self) -> Writer<'_> {
        Writer { conn: self, _guard: self.write_lock.lock().unwrap_or_else(PoisonError::into_inner) }
    }
}

/// The right to write to a connection (see [`Conn::writer`]).
pub(crate) struct Writer<'a> {
    conn: &'a Conn,
    _guard: MutexGuard<'a, ()>,
}

impl Writer<'_> {
    /// As [`Conn::send`].
    pub(crate) fn send(&self, m: &Message) -> io::Result<()> {
        let r = (&self.conn.stream).write_all(m.encode().as_bytes());
        if r.is_err() {
            let _ = self.conn.stream.shutdown(std::net::Shutdown::Both);
        }
        r
    }
}

/// A client waiting for a checkpoint, and for which moment.
pub(crate) struct Waiter {
    pub(crate) tx: Sender<Message>,
    /// True: answer as soon as the checkpoint has begun; false: once it
    /// is committed (or failed).
    pub(crate) started_only: bool,
    /// Kill the computation once the checkpoint is committed, the
    /// programs held stopped from their snapshot on (`then=kill`).
    pub(crate) then_kill: bool,
}

pub(crate) struct State {
    pub(crate) computation_id: u64,
    pub(crate) interval_s: u32,
    /// The interval timer counts from here: the end of the last checkpoint,
    /// the last change of the interval, or the start.
    pub(crate) timer_base: Instant,
    pub(crate) agents: Vec<Agent>,
    /// Every open connection, so that shutdown can close them.
    pub(crate) conns: HashMap<u64, Arc<Conn>>,
    /// Connections whose first line has come: agents and clients. The
    /// others are still authenticating (see `authenticating`), or were
    /// made by `stasis restart` for a process it is still restoring.
    pub(crate) identified: HashSet<u64>,
    /// TCP connections that have not yet proven the secret: strangers
    /// perhaps, who must not keep the coordinator alive (pending_conns).
    pub(crate) authenticating: HashSet<u64>,
    pub(crate) next_conn: u64,
    /// The largest generation any agent said it belongs to.
    pub(crate) reported_generation: u64,
    /// The last generation number handed out, committed or not: numbers
    /// are never reused, so a late answer cannot be taken for a new one's.
    pub(crate) last_attempt: u64,
    /// The last generation committed (or found in the directory at start).
    pub(crate) last_generation: u64,
    /// The last generation committed that references no other (0: none
    /// yet, or not known: a coordinator started on older generations).
    pub(crate) last_full: u64,
    /// When the last checkpoint was committed, seconds since the epoch (0: never).
    pub(crate) last_checkpoint_unix: u64,
    pub(crate) last_error: Option<String>,
    /// True from the moment a checkpoint is taken up until it ends.
    pub(crate) busy: bool,
    pub(crate) round: Option<Round>,
    /// Clients waiting for the next checkpoint to start and end.
    pub(crate) waiters: Vec<Waiter>,
    /// An agent has said HELLO at some point (for exit-on-last).
    pub(crate) had_agent: bool,
    /// A client asked the coordinator to quit.
    pub(crate) quit: bool,
    /// A kill or quit is under way: an agent that says HELLO now (a child
    /// forked a moment ago, a process being restored) is told KILL at once.
    pub(crate) killing: usize,
    /// The computation was killed on request (kill, quit): launch and
    /// restart then exit 75 rather than as killed by SIGKILL.
    pub(crate) killed_on_request: bool,
    /// `--exit-after-ckpt`: every checkpoint ends in a kill, the programs
    /// held stopped from their snapshot on, as for `then=kill`.
    pub(crate) kill_after_checkpoint: bool,
    /// The coordinator's owner asked it to end (a signal).
    pub(crate) stop: bool,
    /// Since when no agent has been connected (None: one is).
    pub(crate) empty_since: Option<Instant>,
    pub(crate) shutdown: bool,
    /// Where checkpoints go now (canonical): `Shared::ckpt_dir` until a
    /// launch or restart that joined with no process here moved it.
    pub(crate) ckpt_dir: PathBuf,
    /// The directory moved to, opened and checked, for the driver to take
    /// up at the next checkpoint.
    pub(crate) move_to: Option<stasis_image::CheckpointDir>,
    /// Each generation's `.dmtcp` names in a directory of their own
    /// (DMTCP's unique checkpoint filenames; `COMMAND what=unique`).
    pub(crate) unique_names: bool,
}

/// A connected agent: one process of the computation.
pub(crate) struct Agent {
    pub(crate) conn: u64,
    pub(crate) pid: i32,
    pub(crate) name: String,
    pub(crate) restored: bool,
    pub(crate) generation: u64,
    pub(crate) link: Arc<Conn>,
    /// The extra fields of its last WRITTEN (bytes=, pause_us=, ...).
    pub(crate) stats: Vec<(String, String)>,
}

/// The checkpoint in progress.
pub(crate) struct Round {
    pub(crate) generation: u64,
    pub(crate) participants: Vec<Participant>,
    /// The round's SUSPEND, for the agents that join it late.
    pub(crate) suspend: Message,
    pub(crate) phase: Phase,
}

/// How far the driver has taken a round. Changed under the state lock in
/// the same moment as the driver picks whom to send the phase's message,
/// so that an agent joins the round exactly when it can still be
/// suspended with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// From the SUSPEND broadcast to the suspend barrier: a process forked
    /// meanwhile must be in the checkpoint, so newcomers join.
    Suspending,
    /// SNAPSHOT sent: newcomers wait for the next checkpoint.
    Snapshotting,
    /// RESUME sent after the snapshots: images are being written.
    Writing,
    /// Given up: RESUME goes (or went) to every participant.
    Abandoned,
}

impl Round {
    /// The pids that participants' children lists name but that no
    /// participant has, each with the participant that names it.
    pub(crate) fn missing_children(&self) -> Vec<(i32, &Participant)> {
        let present: HashSet<i32> = self.participants.iter().map(|p| p.pid).collect();
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for p in &self.participants {
            for &child in &p.children {
                if !present.contains(&child) && seen.insert(child) {
                    missing.push((child, p));
                }
            }
        }
        missing
    }
}

pub(crate) struct Participant {
    pub(crate) conn: u64,
    pub(crate) pid: i32,
    pub(crate) name: String,
    pub(crate) link: Arc<Conn>,
    pub(crate) stage: Stage,
    /// Its live children, as its last SUSPENDED listed them.
    pub(crate) children: Vec<i32>,
}

impl Participant {
    pub(crate) fn new(a: &Agent) -> Self {
        Participant {
            conn: a.conn,
            pid: a.pid,
            name: a.name.clone(),
            link: a.link.clone(),
            stage: Stage::Asked,
            children: Vec::new(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!("process {} ({})", self.pid, self.name)
    }
}

/// Where a participant stands in the checkpoint, in protocol order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stage {
    /// SUSPEND sent, no answer yet.
    Asked,
    Suspended,
    Snapshotted,
    Written {
        image: String,
        stats: Vec<(String, String)>,
    },
    Failed(String),
}

impl Stage {
    /// Written or failed: nothing more will come for this generation.
    pub(crate) fn settled(&self) -> bool {
        matches!(self, Stage::Written { .. } | Stage::Failed(_))
    }
}

impl State {
    pub(crate) fn new(computation_id: u64, interval_s: u32, last_generation: u64, ckpt_dir: PathBuf) -> Self {
        State {
            computation_id,
            interval_s,
            timer_base: Instant::now(),
            agents: Vec::new(),
            conns: HashMap::new(),
            identified: HashSet::new(),
            authenticating: HashSet::new(),
            next_conn: 0,
            reported_generation: 0,
            last_attempt: 0,
            last_generation,
            last_full: 0,
            last_checkpoint_unix: 0,
            last_error: None,
            busy: false,
            round: None,
            waiters: Vec::new(),
            had_agent: false,
            quit: false,
            killing: 0,
            killed_on_request: false,
            kill_after_checkpoint: false,
            stop: false,
            empty_since: Some(Instant::now()),
            shutdown: false,
            ckpt_dir,
            move_to: None,
            unique_names: false,
        }
    }

    /// Records what connection `conn` answered for `generation`, if that is
    /// the checkpoint in progress and the answer is the next step for that
    /// connection; anything else is a late answer to an abandoned
    /// checkpoint, or out of order, and ignored. A failure counts at any
    /// step before the image is written.
    pub(crate) fn record(&mut self, conn: u64, generation: Option<u64>, stage: Stage) {
        let Some(round) = &mut self.round else { return };
        if generation.is_some_and(|g| g != round.generation) {
            return;
        }
        let Some(p) = round.participants.iter_mut().find(|p| p.conn == conn) else { return };
        let next = match (&p.stage, &stage) {
            (Stage::Asked, Stage::Suspended) => true,
            (Stage::Suspended, Stage::Snapshotted) => true,
            (Stage::Snapshotted, Stage::Written { .. }) => true,
            // The image writer says WRITTEN on the process's connection,
            // which may overtake the checkpoint thread's SNAPSHOTTED: the
            // snapshot was taken before anything was written.
            (Stage::Suspended, Stage::Written { .. }) => true,
            (current, Stage::Failed(_)) => !current.settled(),
            _ => false,
        };
        if next {
            p.stage = stage;
        }
    }

    /// A SUSPENDED from connection `conn`, naming the process's children.
    /// A repeat (the answer to CHILDREN) only replaces the list.
    pub(crate) fn suspended(&mut self, conn: u64, generation: Option<u64>, children: Vec<i32>) {
        let Some(round) = &mut self.round else { return };
        if generation.is_some_and(|g| g != round.generation) {
            return;
        }
        let Some(p) = round.participants.iter_mut().find(|p| p.conn == conn) else { return };
        if matches!(p.stage, Stage::Asked | Stage::Suspended) {
            p.stage = Stage::Suspended;
            p.children = children;
        }
    }

    /// Adds the agent on `conn`, which has just said its first HELLO, to the
    /// checkpoint in progress if that is still suspending its processes
    /// (it may be a child forked since), and returns the SUSPEND to send it.
    pub(crate) fn join_round(&mut self, conn: u64) -> Option<Message> {
        let round = self.round.as_mut().filter(|r| r.phase == Phase::Suspending)?;
        let agent = self.agents.iter().find(|a| a.conn == conn)?;
        if round.participants.iter().any(|p| p.conn == conn) {
            return None;
        }
        round.participants.push(Participant::new(agent));
        Some(round.suspend.clone())
    }

    /// The connection of a participant ended (or cannot be written to).
    /// Before SNAPSHOT was sent, its process left the round: it exited
    /// (a process whose last thread was already exiting when it was
    /// stopped ends even after SUSPENDED), or exec'd (the new program
    /// connects again, and may join as a newcomer). A parent that named it
    /// as a child names it no more once asked again. Later, its process is
    /// stopped somewhere in the checkpoint, and the checkpoint fails.
    pub(crate) fn lost(&mut self, conn: u64, why: &str) {
        if let Some(round) = &mut self.round {
            let suspending = round.phase == Phase::Suspending;
            round.participants.retain(|p| {
                p.conn != conn || !(p.stage == Stage::Asked || (suspending && p.stage == Stage::Suspended))
            });
        }
        self.record(conn, None, Stage::Failed(why.to_string()));
    }

    /// Forgets an agent whose connection ended (see [`State::lost`]).
    pub(crate) fn remove_agent(&mut self, conn: u64, why: &str) {
        self.agents.retain(|a| a.conn != conn);
        if self.agents.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(Instant::now());
        }
        self.lost(conn, why);
    }

    /// Agents whose process is still there (whose connection the peer has
    /// not closed, even if we have not read the end of it yet).
    pub(crate) fn live_agents(&self) -> usize {
        self.agents.iter().filter(|a| !a.link.stream.peer_gone()).count()
    }

    /// Connections whose first line has not come and whose peer is still
    /// there: processes being restored, or peers that have authenticated.
    /// (Not those still authenticating: anyone can open those.)
    pub(crate) fn pending_conns(&self) -> usize {
        self.conns
            .iter()
            .filter(|(c, link)| {
                !self.identified.contains(c) && !self.authenticating.contains(c) && !link.stream.peer_gone()
            })
            .count()
    }

    /// The answer to `COMMAND what=status`.
    pub(crate) fn status(&self, shared: &Shared) -> Message {
        let mut m = Message::new(proto::OK)
            .with("processes", self.agents.len())
            .with("state", if self.busy { "checkpointing" } else { "running" })
            .with("interval", self.interval_s)
            .with("generation", self.last_generation)
            .with("last_checkpoint", self.last_checkpoint_unix)
            .with("computation", format!("{:016x}", self.computation_id))
            .with("ckptdir", self.ckpt_dir.display());
        if let Addr::Unix(p) = &shared.unix_addr {
            m = m.with("socket", p.display());
        }
        if let Some(port) = shared.tcp_port {
            m = m.with("port", port);
        }
        if self.killed_on_request {
            m = m.with("killed", 1);
        }
        if let Some(job) = slurm_job() {
            m = m.with("job", job);
        }
        if let Some(e) = &self.last_error {
            m = m.with("last_error", e);
        }
        for (i, a) in self.agents.iter().enumerate() {
            m = m
                .with(&format!("proc.{i}.pid"), a.pid)
                .with(&format!("proc.{i}.name"), &a.name)
                .with(&format!("proc.{i}.restored"), u8::from(a.restored))
                .with(&format!("proc.{i}.generation"), a.generation);
            for (k, v) in &a.stats {
                m = m.with(&format!("proc.{i}.{k}"), v);
            }
        }
        m
    }
}

/// An ERROR reply.
pub(crate) fn error(reason: impl std::fmt::Display) -> Message {
    Message::new(proto::ERROR).with("reason", reason)
}

/// The SLURM job (and step) this coordinator runs in, `JOB` or
/// `JOB.STEP`, from its environment: launch and restart join no
/// coordinator of another job (stasis-cli's start.rs).
fn slurm_job() -> Option<String> {
    let get = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let id = get("SLURM_JOB_ID")?;
    Some(match get("SLURM_STEP_ID") {
        Some(step) => format!("{id}.{step}"),
        None => id,
    })
}
