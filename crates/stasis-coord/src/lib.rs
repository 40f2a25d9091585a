//! The coordinator: one per computation. Every process of the computation
//! connects to it (its agent says `HELLO`); it drives each checkpoint,
//! commits the generation when every process has written its image, keeps
//! the interval timer, and answers clients (`stasis command`).
//!
//! It is a library so that `stasis launch` and `stasis restart` can run it
//! inside their own process today, and a standalone `stasis coordinator`
//! can run the same loop tomorrow. The protocol is in docs/protocol.md.
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
//! Threads: one accepts connections, one per connection reads it, and one
//! (the driver) runs the checkpoints and the timer. They share one mutex
//! and a condition variable (`state.rs`).

mod conn;
mod driver;
mod random;
mod socket;
mod state;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use stasis_image::CheckpointDir;

use crate::socket::SocketFile;
use crate::state::{Shared, State};

pub use conn::KILL;

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
}

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
    dir: CheckpointDir,
    shared: Arc<Shared>,
    adopted: Vec<UnixStream>,
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
        let state = State::new(computation_id, cfg.interval_s, last_generation);
        let shared = Shared::new(state, cfg.checkpoint_timeout, cfg.keep, dir.path.clone());
        Ok(Coordinator { listener, socket, dir, shared: Arc::new(shared), adopted: Vec::new() })
    }

    /// Takes on a connection made by `stasis restart`: the restored agent
    /// at its other end will greet us with HELLO.
    pub fn adopt_agent(&mut self, stream: UnixStream) {
        self.adopted.push(stream);
    }

    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    pub fn computation_id(&self) -> u64 {
        self.shared.lock().computation_id
    }

    /// Starts the coordinator's threads.
    pub fn spawn(self) -> io::Result<CoordHandle> {
        let Coordinator { listener, socket, dir, shared, adopted } = self;
        let mut handle =
            CoordHandle { shared: shared.clone(), listener: Arc::new(listener), socket, acceptor: None, driver: None };
        let driver_shared = shared.clone();
        handle.driver = Some(
            std::thread::Builder::new().name("stasis-coord".into()).spawn(move || driver::run(driver_shared, dir))?,
        );
        for stream in adopted {
            conn::start(&shared, stream);
        }
        let listener = handle.listener.clone();
        handle.acceptor = Some(
            std::thread::Builder::new().name("stasis-coord-accept".into()).spawn(move || accept(&shared, &listener))?,
        );
        Ok(handle)
    }
}

fn accept(shared: &Arc<Shared>, listener: &UnixListener) {
    loop {
        let accepted = listener.accept();
        if shared.lock().shutdown {
            return;
        }
        match accepted {
            Ok((stream, _)) => conn::start(shared, stream),
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

/// A running coordinator. Dropping it stops it, like [`CoordHandle::shutdown`].
pub struct CoordHandle {
    shared: Arc<Shared>,
    socket: SocketFile,
    listener: Arc<UnixListener>,
    acceptor: Option<JoinHandle<()>>,
    driver: Option<JoinHandle<()>>,
}

impl CoordHandle {
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    pub fn computation_id(&self) -> u64 {
        self.shared.lock().computation_id
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
        // SAFETY: shutdown(2) on a descriptor the listener owns and keeps
        // open; it wakes the acceptor's accept() with EINVAL.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // No connection can be registered any more. Their readers see the
        // end of the stream and close them; a client waiting for a
        // checkpoint is still answered (by the driver, below).
        for stream in self.shared.lock().conns.values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
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
