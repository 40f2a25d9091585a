//! The coordinator: one per computation. Every process of the computation
//! connects to it (its agent says `HELLO`); it drives each checkpoint
//! through its barriers, commits the generation when every process has
//! written its image, keeps the interval timer, and answers clients
//! (`stasis command`). The protocol is in docs/protocol.md.
//!
//! `stasis coordinator` runs it as a process of its own; `stasis launch`
//! and `stasis restart` start one in the background when none answers.
//! The [`client`] module is how everyone else reaches it.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use stasis_coord::{CoordConfig, Coordinator};
//! let cfg = CoordConfig::new("/tmp/stasis-1000/coord-7779.sock".into(), "ckpt".into());
//! let coord = Coordinator::bind(cfg)?; // no thread yet: fork and exec freely
//! let handle = coord.spawn()?;
//! // ... run the program ...
//! handle.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! Threads: one accepts connections on each listening socket, one per
//! connection reads it, and one (the driver) runs the checkpoints and the
//! timer. They share one mutex and a condition variable (`state.rs`).

pub mod client;
mod conn;
mod driver;
pub mod publish;
mod random;
pub mod secret;
mod socket;
mod state;
pub mod stream;

use std::io;
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use stasis_image::CheckpointDir;
use stasis_proto::Message;

use crate::client::Addr;
use crate::secret::Secret;
use crate::socket::SocketFile;
use crate::state::{Shared, State};
use crate::stream::Stream;

pub use conn::{HANDSHAKE_DEADLINE, KILL, MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_PEER};

/// How long a checkpoint may take unless the configuration says otherwise.
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);
/// How many committed generations are kept unless the configuration says otherwise.
pub const DEFAULT_KEEP: usize = 2;

/// What a coordinator needs to know.
#[derive(Debug, Clone)]
pub struct CoordConfig {
    /// Where to listen; its directory is created 0700 if missing.
    pub socket_path: PathBuf,
    /// The checkpoint directory (created if missing).
    pub ckpt_dir: PathBuf,
    /// Seconds between checkpoints, counted from the end of the last one;
    /// 0 for none.
    pub interval_s: u32,
    /// Committed generations to keep (at least 1).
    pub keep: usize,
    /// A checkpoint that has not ended after this long is abandoned.
    pub checkpoint_timeout: Duration,
    /// The computation's id; `None` draws a random one. A restored agent
    /// that reports an id overrides it.
    pub computation_id: Option<u64>,
    /// Ask agents to compress their images (zstd, where it pays): DMTCP's
    /// `--gzip`.
    pub compress: bool,
    /// Every this many generations a full checkpoint (the others write only
    /// what changed since the last committed one): bounds how many
    /// generations a restart reads, and prune keeps. 1: always full.
    pub full_every: u32,
    /// Every checkpoint ends in a kill of the computation, the programs
    /// held stopped from their snapshot on (`--exit-after-ckpt`; also set
    /// by [`CoordHandle::wait_end`] with `after_checkpoint`).
    pub kill_after_checkpoint: bool,
}

/// `--full-every` when none is given.
pub const DEFAULT_FULL_EVERY: u32 = 8;

impl CoordConfig {
    /// A configuration with the defaults: no interval, keep 2, 10 minutes.
    pub fn new(socket_path: PathBuf, ckpt_dir: PathBuf) -> Self {
        CoordConfig {
            socket_path,
            ckpt_dir,
            interval_s: 0,
            keep: DEFAULT_KEEP,
            checkpoint_timeout: DEFAULT_CHECKPOINT_TIMEOUT,
            computation_id: None,
            compress: false,
            full_every: DEFAULT_FULL_EVERY,
            kill_after_checkpoint: false,
        }
    }
}

/// A coordinator bound to its socket, not yet running: no thread exists
/// until [`Coordinator::spawn`], so the caller may still fork.
pub struct Coordinator {
    // Dropped in this order: the socket file goes while the listener still
    // holds its inode (see SocketFile).
    socket: SocketFile,
    listener: UnixListener,
    tcp: Option<TcpListener>,
    dir: CheckpointDir,
    shared: Shared,
    adopted: Vec<Stream>,
}

impl Coordinator {
    /// Opens (or creates) the checkpoint directory and binds the socket.
    ///
    /// Fails if another coordinator listens on the socket, or if the
    /// socket's directory is not private to us. A socket file that nobody
    /// listens on any more is replaced.
    pub fn bind(cfg: CoordConfig) -> io::Result<Coordinator> {
        let dir = CheckpointDir::open_or_create(&cfg.ckpt_dir).map_err(io::Error::other)?;
        let last_generation = dir.latest().map_or(0, |g| g.number);
        let computation_id = match cfg.computation_id {
            Some(id) => id,
            None => random::computation_id()?,
        };
        let (listener, socket) = socket::bind(&cfg.socket_path)?;
        let mut state = State::new(computation_id, cfg.interval_s, last_generation, dir.path.clone());
        state.kill_after_checkpoint = cfg.kill_after_checkpoint;
        let unix_addr = Addr::Unix(std::path::absolute(socket.path()).unwrap_or_else(|_| socket.path().into()));
        let shared = Shared::new(state, &cfg, dir.path.clone(), unix_addr);
        Ok(Coordinator { listener, socket, tcp: None, dir, shared, adopted: Vec::new() })
    }

    /// Also takes connections on `listener` (TCP), each of which must prove
    /// `secret` before anything else.
    pub fn listen_tcp(&mut self, listener: TcpListener, secret: Secret) -> io::Result<()> {
        self.shared.tcp_port = Some(listener.local_addr()?.port());
        self.shared.secret = Some(secret.bytes);
        self.tcp = Some(listener);
        Ok(())
    }

    /// Takes on a connection to an agent made elsewhere (a socket pair):
    /// the agent at its other end will greet us with HELLO.
    pub fn adopt_agent(&mut self, stream: UnixStream) {
        self.adopted.push(Stream::Unix(stream));
    }

    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The checkpoint directory, absolute.
    pub fn ckpt_dir(&self) -> &Path {
        &self.dir.path
    }

    pub fn tcp_port(&self) -> Option<u16> {
        self.shared.tcp_port
    }

    pub fn computation_id(&self) -> u64 {
        self.shared.lock().computation_id
    }

    /// Starts the coordinator's threads.
    pub fn spawn(self) -> io::Result<CoordHandle> {
        let Coordinator { listener, socket, tcp, dir, shared, adopted } = self;
        raise_descriptor_limit();
        let shared = Arc::new(shared);
        let mut handle = CoordHandle {
            shared: shared.clone(),
            listener: Arc::new(listener),
            tcp: tcp.map(Arc::new),
            socket,
            acceptors: Vec::new(),
            driver: None,
        };
        let driver_shared = shared.clone();
        handle.driver = Some(
            std::thread::Builder::new().name("stasis-coord".into()).spawn(move || driver::run(driver_shared, dir))?,
        );
        for stream in adopted {
            conn::start(&shared, stream);
        }
        let (unix_shared, listener) = (shared.clone(), handle.listener.clone());
        handle.acceptors.push(
            std::thread::Builder::new()
                .name("stasis-coord-accept".into())
                .spawn(move || accept(&unix_shared, || listener.accept().map(|(s, _)| Stream::Unix(s))))?,
        );
        if let Some(tcp) = handle.tcp.clone() {
            let tcp_shared = shared.clone();
            handle.acceptors.push(std::thread::Builder::new().name("stasis-coord-tcp".into()).spawn(move || {
                accept(&tcp_shared, || {
                    tcp.accept().map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Stream::Tcp(s)
                    })
                })
            })?);
        }
        Ok(handle)
    }
}

/// Raises the soft limit on open descriptors to the hard one: every
/// connection costs one, and the owner's must not run short because of
/// strangers' (who are capped besides, conn.rs). Done once the caller can
/// no longer fork a program that would inherit the higher limit (a program
/// using select(2) must stay under 1024).
fn raise_descriptor_limit() {
    // SAFETY: a zeroed rlimit is valid; getrlimit fills it.
    let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `l` is a valid rlimit to read and write.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 && l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: as above; a failure leaves the limit as it was.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) };
    }
}

fn accept(shared: &Arc<Shared>, mut next: impl FnMut() -> io::Result<Stream>) {
    loop {
        let accepted = next();
        if shared.lock().shutdown {
            return;
        }
        match accepted {
            Ok(stream) => conn::start(shared, stream),
            // Out of descriptors or memory: wait a little, the peer retries.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ECONNABORTED and the like concern one peer only.
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {}
            Err(_) => return,
        }
    }
}

/// Why a coordinator's life ended (see [`CoordHandle::wait_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A client asked it to quit (`COMMAND what=quit`).
    Quit,
    /// The last process of the computation is gone.
    LastGone,
    /// No process was connected for the time allowed.
    Idle,
    /// A checkpoint was committed, and the processes were told to die.
    AfterCheckpoint,
    /// [`Control::stop`] was called.
    Stopped,
}

/// How long `EndWhen::last_gone` waits for a process to come back: more
/// than an agent's retry interval (2 s), for a program that calls exec.
pub const LAST_GONE_GRACE: Duration = Duration::from_secs(5);

/// When a coordinator's life should end, besides a client's quit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndWhen {
    /// When the last process of the computation is gone (and none came
    /// back within [`LAST_GONE_GRACE`]).
    pub last_gone: bool,
    /// After the first checkpoint committed (killing the computation).
    pub after_checkpoint: bool,
    /// When no process has been connected for this long.
    pub idle: Option<Duration>,
}

/// A handle on a running coordinator that any thread may keep: it carries
/// out commands as a client would, and can end [`CoordHandle::wait_end`].
#[derive(Clone)]
pub struct Control(Arc<Shared>);

impl Control {
    /// Carries out a client's command (`COMMAND what=...`) as if it came
    /// over a connection, and returns the answer. For the console.
    pub fn command(&self, request: &Message) -> Message {
        conn::command(&self.0, request)
    }

    /// Makes [`CoordHandle::wait_end`] return [`End::Stopped`].
    pub fn stop(&self) {
        self.0.lock().stop = true;
        self.0.changed.notify_all();
    }
}

/// A running coordinator. Dropping it stops it, like [`CoordHandle::shutdown`].
pub struct CoordHandle {
    shared: Arc<Shared>,
    socket: SocketFile,
    listener: Arc<UnixListener>,
    tcp: Option<Arc<TcpListener>>,
    acceptors: Vec<JoinHandle<()>>,
    driver: Option<JoinHandle<()>>,
}

impl CoordHandle {
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    pub fn tcp_port(&self) -> Option<u16> {
        self.shared.tcp_port
    }

    pub fn ckpt_dir(&self) -> &Path {
        &self.shared.ckpt_dir
    }

    pub fn computation_id(&self) -> u64 {
        self.shared.lock().computation_id
    }

    /// Carries out a client's command (`COMMAND what=...`) as if it came
    /// over a connection, and returns the answer.
    pub fn command(&self, request: &Message) -> Message {
        conn::command(&self.shared, request)
    }

    pub fn control(&self) -> Control {
        Control(self.shared.clone())
    }

    /// Waits until a client asks the coordinator to quit, [`Control::stop`]
    /// is called, or what `when` says happens. Connections still being
    /// set up (authenticated but silent yet, as those `stasis restart`
    /// makes for the processes it is restoring) count as processes; TCP
    /// connections that have not proven the secret do not.
    pub fn wait_end(&self, when: EndWhen) -> End {
        let mut st = self.shared.lock();
        st.kill_after_checkpoint |= when.after_checkpoint;
        loop {
            if st.quit {
                return End::Quit;
            }
            if st.stop {
                return End::Stopped;
            }
            if when.after_checkpoint && st.last_checkpoint_unix != 0 && !st.busy {
                drop(st);
                self.command(&Message::new(stasis_proto::COMMAND).with("what", "kill"));
                return End::AfterCheckpoint;
            }
            let none = st.agents.is_empty() && st.pending_conns() == 0 && !st.busy;
            // A process that calls exec drops its connection for a moment
            // (the new program's agent connects again at once): the last
            // process is gone only when none has come back for a while.
            if when.last_gone && st.had_agent && none && st.empty_since.is_some_and(|t| t.elapsed() >= LAST_GONE_GRACE)
            {
                return End::LastGone;
            }
            if let Some(limit) = when.idle
                && none
                && st.empty_since.is_some_and(|t| t.elapsed() >= limit)
            {
                return End::Idle;
            }
            // Connections end without a word to the condition variable
            // when their thread has not noticed yet: look again now and then.
            st = self.shared.wait_timeout(st, Duration::from_millis(200));
        }
    }

    /// Stops the coordinator: a checkpoint in progress is abandoned (its
    /// generation aborted), clients waiting get ERROR, agents' connections
    /// are closed (their programs run on), the socket file is removed.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        {
            let mut st = self.shared.lock();
            if st.shutdown {
                return;
            }
            st.shutdown = true;
            self.shared.changed.notify_all();
        }
        self.socket.remove();
        // SAFETY: shutdown(2) on descriptors the listeners own and keep
        // open; it wakes the acceptors' accept() with EINVAL.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(tcp) = &self.tcp {
            // SAFETY: as above.
            unsafe { libc::shutdown(tcp.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
        // No connection can be registered any more. Their readers see the
        // end of the stream and close them; a client waiting for a
        // checkpoint is still answered (by the driver, below).
        for link in self.shared.lock().conns.values() {
            let _ = link.stream.shutdown(Shutdown::Read);
        }
        if let Some(t) = self.driver.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for CoordHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The coordinator's log: stderr, one line.
pub(crate) fn warn(msg: &str) {
    eprintln!("stasis: coordinator: {msg}");
}
