//! One checkpoint, as the checkpoint thread runs it: stop the other
//! threads, snapshot the process, fork a copy-on-write child that writes
//! the image, resume the program. The same code path continues in a
//! restored process, which is how the agent learns it was restored.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::signals::{self, CT_SLOT, NEXT_SLOT, RESTORE_INFO, RESUME, STOP_REQUESTED, STOP_TARGET, STOPPED};
use stasis_proto::{self as proto, Message};

use crate::{collect, fork_advice, sys, tree, writer};

/// State only the checkpoint thread touches (in its own signal handler
/// included), so it needs no lock.
struct CtCell<T>(UnsafeCell<T>);
// SAFETY: accessed only from the checkpoint thread (see `with`).
unsafe impl<T> Sync for CtCell<T> {}
impl<T> CtCell<T> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: only the checkpoint thread calls this, never reentrantly:
        // its signal handler runs only while it sits in tgkill below.
        f(unsafe { &mut *self.0.get() })
    }
}

pub struct Request {
    pub generation: u64,
    pub computation: u64,
    /// Compress the image's chunks (LZ4) where that pays.
    pub compress: bool,
    pub dir: PathBuf,
    pub agent_fd: i32,
    pub interval_s: u32,
    /// The image writer tells the coordinator WRITTEN (or FAILED) itself
    /// (the phased protocol), rather than this thread.
    pub writer_reports: bool,
    /// What the image may refer to (incremental checkpoints).
    pub base: crate::track::Base,
}

struct InFlight {
    child: i32,
    image: String,
    pause: Duration,
}

static REQUEST: CtCell<Option<Request>> = CtCell(UnsafeCell::new(None));
static IN_FLIGHT: CtCell<Option<Result<InFlight, String>>> = CtCell(UnsafeCell::new(None));
static STARTED: CtCell<Option<Instant>> = CtCell(UnsafeCell::new(None));

pub enum Outcome {
    Written {
        image: String,
        bytes: u64,
        pause: Duration,
    },
    /// This is a restored process, continuing after its checkpoint.
    Restored {
        generation: u64,
    },
}

/// How long threads get to reach the handler before the checkpoint fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn live_tasks() -> Vec<i32> {
    sys::numeric_entries(c"/proc/self/task").unwrap_or_default()
}

/// Stops every thread but this one; they wait in the handler.
///
/// Linear in the number of threads: /proc/self/task is read once per round
/// (a round signals the threads not seen before), and a round ends when
/// all signalled threads have stopped (they wake this thread only then) or
/// when none stopped for a while (one may have exited). Threads started
/// meanwhile show up in the next round's listing; the stop is over when a
/// listing shows nothing new and everything stopped, since stopped threads
/// start none.
fn stop_others(me: i32) -> Result<(), String> {
    NEXT_SLOT.store(0, Ordering::Release);
    crate::eintr::forget_blocked();
    STOPPED.store(0, Ordering::SeqCst);
    STOP_TARGET.store(u32::MAX, Ordering::SeqCst);
    STOP_REQUESTED.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_TIMEOUT;
    // Sorted, for binary search: each thread is signalled once.
    let mut signaled: Vec<i32> = Vec::new();
    loop {
        let mut live = live_tasks();
        live.sort_unstable();
        // A thread that exited after being signalled will never stop.
        signaled.retain(|t| live.binary_search(t).is_ok());
        let fresh: Vec<i32> = live.into_iter().filter(|t| *t != me && signaled.binary_search(t).is_err()).collect();
        if fresh.is_empty() && STOPPED.load(Ordering::SeqCst) as usize >= signaled.len() {
            return Ok(());
        }
        for t in fresh {
            // What it is blocked in, for its handler to restart the call.
            crate::eintr::note_blocked(t);
            if signals::send_ours(t).is_ok() {
                signaled.push(t);
            }
        }
        signaled.sort_unstable();
        crate::timing::mark("signal");
        wait_for_stops(signaled.len(), deadline);
        crate::timing::mark("wait");
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} threads did not stop within {:?} (blocking the checkpoint signal?)",
                signaled.len().saturating_sub(STOPPED.load(Ordering::Acquire) as usize),
                signaled.len(),
                STOP_TIMEOUT
            ));
        }
    }
}

/// How long the stop waits with no thread stopping before it looks at the
/// thread list again.
const STALL: u64 = 20;

/// Waits until `want` threads have stopped, or none stopped for `STALL` ms.
fn wait_for_stops(want: usize, deadline: Instant) {
    // The last thread to stop wakes us (`signals::on_signal`), not each one.
    STOP_TARGET.store(want as u32, Ordering::SeqCst);
    loop {
        let seen = STOPPED.load(Ordering::SeqCst);
        if seen as usize >= want || Instant::now() > deadline {
            return;
        }
        sys::futex_wait(&STOPPED, seen, STALL);
        if STOPPED.load(Ordering::SeqCst) == seen {
            return;
        }
    }
}

fn resume_others() {
    STOP_REQUESTED.store(false, Ordering::Release);
    RESUME.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&RESUME);
}

/// Phase 1: stops every other thread. On error nothing stays stopped.
pub fn suspend() -> Result<(), String> {
    let pid = sys::getpid();
    let me = sys::gettid();
    STARTED.with(|s| *s = Some(Instant::now()));
    crate::timing::start();
    stop_others(me).inspect_err(|_| resume_others())?;
    if !main_thread_stopped(pid) {
        // The main thread vanished while the others stopped: the process is
        // exiting (exit_group kills this thread too, in a moment). Saying
        // SUSPENDED now would leave the checkpoint waiting for a process
        // that is gone; not answering lets it leave the round.
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        resume_others();
        return Err("the main thread has exited; cannot checkpoint".into());
    }
    crate::timing::mark("stop");
    // Before the coordinator's barrier: bytes held back now could reach a
    // peer after it saved its receive queue (docs/sockets.md).
    crate::sockets::flush_tcp();
    Ok(())
}

/// How long a process whose main thread vanished gets to end.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// Whether the thread-group leader is among the threads stopped.
fn main_thread_stopped(pid: i32) -> bool {
    let n = NEXT_SLOT.load(Ordering::Acquire).min(signals::MAX_THREADS);
    signals::SLOTS[..n].iter().any(|s| s.tid.load(Ordering::Acquire) == pid)
}

/// What phase 2 produced.
pub enum Snapshotted {
    /// The writer is running; the program is still stopped.
    Writing(Pending),
    /// This is a restored process, continuing after its checkpoint.
    Restored { generation: u64 },
}

/// An image being written by the snapshot child.
pub struct Pending(InFlight);

impl Pending {
    pub fn pause(&self) -> Duration {
        self.0.pause
    }

    /// Waits for the writer and reports the image; `true` when the writer
    /// told the coordinator itself.
    pub fn finish(self) -> (Result<Outcome, String>, bool) {
        let r = collect_child(self.0);
        writer_gone();
        r
    }

    /// Stops the writer (the generation was abandoned).
    pub fn cancel(self) {
        let _ = sys::kill(self.0.child, libc::SIGKILL);
        let _ = sys::wait_snapshot(self.0.child);
        writer_gone();
    }
}

fn writer_gone() {
    crate::conn_fd::close_writer_pipe();
    tree::WRITER_PID.store(0, Ordering::Release);
}

/// Phase 2, with every thread stopped: snapshot the process and start the
/// writer. Returns once the writer holds everything the program could still
/// change; the caller then resumes the program (phase 3).
pub fn snapshot(req: Request) -> Result<Snapshotted, String> {
    let me = sys::gettid();
    RESTORE_INFO.restored.store(0, Ordering::Release);
    let agent_fd = req.agent_fd;
    REQUEST.with(|r| *r = Some(req));
    IN_FLIGHT.with(|f| *f = None);
    // The snapshot is taken inside our own handler, so that this thread,
    // too, is saved as a signal frame; see `in_handler`.
    let _ = signals::send_ours(me);

    if RESTORE_INFO.restored.load(Ordering::Acquire) != 0 {
        // The writer's arena was never part of the image.
        crate::ALLOC.drop_child_arena(false);
        crate::ALLOC.release_unmaps();
        crate::track::forget();
        // Restart put the connection back where the image saw it.
        let now = tree::CONN_FD.load(Ordering::Acquire);
        finish_restore(if now >= 0 { now } else { agent_fd });
        return Ok(Snapshotted::Restored { generation: RESTORE_INFO.generation.load(Ordering::Acquire) });
    }
    let flight = IN_FLIGHT.with(|f| f.take()).unwrap_or_else(|| Err("checkpoint handler did not run".into()))?;
    Ok(Snapshotted::Writing(Pending(flight)))
}

/// Phase 3 (or an abort after phase 1): lets the program run again.
pub fn resume() {
    resume_others();
    crate::timing::mark("resume");
    crate::timing::report();
}

/// All three phases at once, for a coordinator that does not coordinate
/// with other processes. Never leaves the program stopped.
pub fn checkpoint(req: Request) -> Result<Outcome, String> {
    suspend()?;
    let snap = snapshot(req);
    match snap {
        Ok(Snapshotted::Restored { generation }) => Ok(Outcome::Restored { generation }),
        Ok(Snapshotted::Writing(p)) => {
            resume();
            p.finish().0
        }
        Err(e) => {
            resume();
            Err(e)
        }
    }
}

/// Runs in this thread's handler for its own signal. Whatever the
/// outcome, it returns promptly so the program can be resumed.
pub fn in_handler(uc: *mut c_void) {
    CT_SLOT.fill(uc);
    let result = REQUEST.with(|r| r.take()).ok_or_else(|| "no request".to_string()).and_then(start_writer);
    IN_FLIGHT.with(|f| *f = Some(result));
}

fn start_writer(req: Request) -> Result<InFlight, String> {
    // Neither the writer (which exits) nor a restored process (which
    // resumes in `snapshot`) comes back here: each releases on its own.
    crate::ALLOC.hold_unmaps();
    let flight = fork_writer(req);
    crate::ALLOC.release_unmaps();
    flight
}

fn fork_writer(req: Request) -> Result<InFlight, String> {
    let sig = signals::CKPT_SIGNAL.load(Ordering::Acquire);
    // Where the connection is now, every thread stopped: a program thread
    // may have moved it since the request (`conn_fd`).
    let agent_fd = tree::CONN_FD.load(Ordering::Acquire);
    let agent_fd = if agent_fd >= 0 { agent_fd } else { req.agent_fd };
    crate::timing::mark("to-handler");
    let mut snap = collect::snapshot(agent_fd, sig, req.interval_s, req.compress)?;
    crate::timing::mark("memory");
    snap.meta.generation = req.generation;
    snap.meta.computation_id = req.computation;
    let image = format!("ckpt_{}_{}.img", sanitize(&snap.meta.name), snap.meta.pid);
    let path = req.dir.join(&image);
    // The memory list must describe the process as the fork will copy it:
    // if the agent's own allocations mapped or unmapped memory since it was
    // taken (a new slab, say), take it again.
    let mut tries = 0;
    loop {
        while crate::ALLOC.epoch() != snap.epoch {
            tries += 1;
            if tries > 8 {
                return Err("the agent's memory kept changing while listing it".into());
            }
            collect::refresh_memory(&mut snap)?;
        }
        // Only the pages written since the base generation (`track`); its
        // own allocations may change the memory list again.
        crate::track::select(&mut snap, req.base);
        if crate::ALLOC.epoch() == snap.epoch {
            break;
        }
    }

    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // The read end stays open while the program runs on: out of the way of
    // the descriptor numbers it chooses (the program is stopped now).
    for fd in &mut fds {
        if let Some(high) = sys::dup_high(*fd) {
            sys::close(*fd);
            *fd = high;
        }
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (rd, wr) = unsafe { (File::from(OwnedFd::from_raw_fd(fds[0])), File::from(OwnedFd::from_raw_fd(fds[1]))) };
    if !crate::ALLOC.prepare_child_arena() {
        return Err("cannot map memory for the image writer".into());
    }
    let mut lifted = fork_advice::lift(&snap.meta.regions).inspect_err(|_| crate::ALLOC.drop_child_arena(true))?;
    crate::timing::mark("prepare-fork");
    let forked = sys::snapshot_fork();
    if matches!(forked, Ok(c) if c > 0) {
        crate::track::selected(req.generation);
    }
    if !matches!(forked, Ok(0)) {
        // Before anything else: the program must not run changed.
        let put_back = lifted.restore();
        crate::ALLOC.drop_child_arena(true);
        if let Err(e) = put_back {
            if let Ok(child) = forked {
                let _ = sys::kill(child as i32, libc::SIGKILL);
                let _ = sys::wait_snapshot(child as i32);
            }
            return Err(e);
        }
    }
    match forked {
        Err(e) => Err(format!("fork for the image writer: errno {e}")),
        Ok(0) => {
            drop(rd);
            let job = WriterJob {
                snap,
                path,
                pipe: wr,
                compress: req.compress,
                generation: req.generation,
                image: image.clone(),
                agent_fd,
                report: req.writer_reports,
            };
            // A new stack: the writer must not scribble on the stack it saves.
            sys::run_on_new_stack(WRITER_STACK, writer_main, &job as *const WriterJob as usize)
        }
        Ok(child) => {
            drop(wr);
            crate::timing::mark("fork");
            tree::WRITER_PID.store(child as i32, Ordering::Release);
            // From here on the program may run: its calls that name the
            // pipe's number move the pipe first (`conn_fd`).
            crate::conn_fd::adopt_writer_pipe(std::os::fd::IntoRawFd::into_raw_fd(rd));
            // Hold the program until the child has copied whatever the
            // program could change under it (shared memory and the like).
            let mut byte = [0u8; 1];
            let _ = crate::conn_fd::read_writer_pipe(&mut byte);
            crate::timing::mark("writer-shared");
            let pause = STARTED.with(|s| s.map(|t| t.elapsed())).unwrap_or_default();
            Ok(InFlight { child: child as i32, image, pause })
        }
    }
}

const WRITER_STACK: usize = 8 << 20;

struct WriterJob {
    snap: collect::Snapshot,
    path: PathBuf,
    pipe: File,
    compress: bool,
    /// For telling the coordinator ourselves, should the process end while
    /// its image is being written (see `writer_main`).
    generation: u64,
    image: String,
    agent_fd: i32,
    report: bool,
}

/// The image writer's whole life, in the forked child.
extern "C" fn writer_main(job: usize) -> ! {
    // SAFETY: `job` is the WriterJob on the old stack, which stays mapped
    // (and untouched) in this process; we take it by value, reading only.
    let WriterJob { snap, path, pipe, compress, generation, image, agent_fd, report } =
        unsafe { std::ptr::read(job as *const WriterJob) };
    collect::forget_rseq();
    let mut pipe = pipe;
    let mut pause = Duration::ZERO;
    let result = writer::write_image(snap, &path, compress, &mut || {
        // The program resumes from now on: as the parent measures it.
        pause = STARTED.with(|s| s.map(|t| t.elapsed())).unwrap_or_default();
        let _ = pipe.write_all(b"S");
    });
    let line = match &result {
        Ok(bytes) => format!("SOK {bytes}\n"),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            format!("SERR {}\n", e.replace('\n', " "))
        }
    };
    // The writer tells the coordinator itself: the process may end as soon
    // as it resumes (a short-lived program exits at once), and the writer,
    // which still holds the process's connection, lives on until this is
    // said. The image is of the checkpoint's instant all the same.
    if report {
        let m = match &result {
            Ok(bytes) => Message::new(proto::WRITTEN)
                .with("generation", generation)
                .with("image", &image)
                .with("bytes", bytes)
                .with("pause_us", pause.as_micros()),
            Err(e) => Message::new(proto::FAILED).with("generation", generation).with("reason", e),
        };
        let text = m.encode();
        // SAFETY: write reads the message's bytes from a live buffer.
        let _ =
            unsafe { sys::syscall6(libc::SYS_write, [agent_fd as usize, text.as_ptr() as usize, text.len(), 0, 0, 0]) };
    }
    // SIGPIPE is blocked here: a parent gone is an error, not a death.
    let _ = pipe.write_all(line.as_bytes());
    sys::exit_group(0)
}

/// The writer's result, and whether it reached the writer's end (then the
/// writer, if it was to, told the coordinator).
fn collect_child(flight: InFlight) -> (Result<Outcome, String>, bool) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match crate::conn_fd::read_writer_pipe(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let out = String::from_utf8_lossy(&bytes).into_owned();
    let status = match sys::wait_snapshot(flight.child) {
        Ok(st) => st,
        Err(e) => return (Err(format!("wait for image writer: errno {e}")), false),
    };
    let out = out.trim_start_matches('S');
    if let Some(bytes) = out.strip_prefix("OK ") {
        let written =
            Outcome::Written { image: flight.image, bytes: bytes.trim().parse().unwrap_or(0), pause: flight.pause };
        return (Ok(written), true);
    }
    if let Some(e) = out.strip_prefix("ERR ") {
        return (Err(e.trim().to_string()), true);
    }
    (Err(format!("image writer died (wait status {status:#x})")), false)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// In a restored process: wait until every thread has left the restorer's
/// memory (each says so from its first signal), then unmap it.
fn finish_restore(agent_fd: i32) {
    loop {
        let left = RESTORE_INFO.checkout.load(Ordering::Acquire);
        if left == 0 {
            break;
        }
        sys::futex_wait(&RESTORE_INFO.checkout, left, 100);
    }
    let start = RESTORE_INFO.blob_start.load(Ordering::Acquire);
    let len = RESTORE_INFO.blob_len.load(Ordering::Acquire);
    if start != 0 && len != 0 {
        sys::munmap(start as *mut u8, len as usize);
    }
    // Before the program runs again: where the coordinator is now.
    crate::control::restored(agent_fd);
    crate::mqueue::register_after_restore();
    RESTORE_INFO.phase.store(0, Ordering::Release);
    sys::futex_wake(&RESTORE_INFO.phase);
    RESTORE_INFO.restored.store(0, Ordering::Release);
    STOP_REQUESTED.store(false, Ordering::Release);
}
