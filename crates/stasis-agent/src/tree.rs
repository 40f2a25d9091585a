//! The process tree: children made by fork() join the computation, and a
//! checkpoint learns which children it must wait for.
//!
//! A child of fork() inherits the agent's memory but not its checkpoint
//! thread. The atfork child handler starts a new one, which connects to the
//! coordinator with its own HELLO; the parent's connection, inherited too,
//! is closed there so that the coordinator still sees the parent leave. A
//! child that execs starts afresh from the agent's constructor (the
//! preload is in its environment).
//!
//! While a thread forks it blocks the checkpoint signal and holds the
//! agent's allocator lock (the child must not inherit it locked): stopping
//! that thread in between would leave the checkpoint thread waiting for a
//! lock a stopped thread holds. The signal is taken as soon as fork returns.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use stasis_image::Zombie;

use crate::{signals, sys};

/// The checkpoint thread's connection (-1: none), and the pipe from an image
/// writer still running: a forked child closes both.
pub static CONN_FD: AtomicI32 = AtomicI32::new(-1);
pub static WRITER_PIPE_FD: AtomicI32 = AtomicI32::new(-1);
/// The image writer in flight (0: none): a child of ours, but not the
/// program's, and not part of the computation.
pub static WRITER_PID: AtomicI32 = AtomicI32::new(0);

/// Keeps fork() out of the moments when the checkpoint thread holds a
/// descriptor or a libc lock of its own while the program runs (connecting,
/// setting the environment), so that no child inherits one: bit 0 is set
/// by a fork being prepared, the rest counts the checkpoint thread's
/// sections.
static FD_GUARD: AtomicU32 = AtomicU32::new(0);
/// How long a fork waits for such a section: a TCP connect to a coordinator
/// that does not answer may take seconds, and the program must not wait
/// that long (its child may then inherit that one socket).
const FORK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `f` (checkpoint thread only) with no fork starting meanwhile.
pub fn without_fork<R>(f: impl FnOnce() -> R) -> R {
    loop {
        let v = FD_GUARD.load(Ordering::Acquire);
        if v & 1 == 0 && FD_GUARD.compare_exchange(v, v + 2, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            break;
        }
        std::thread::yield_now();
    }
    let r = f();
    FD_GUARD.fetch_sub(2, Ordering::AcqRel);
    r
}

fn mask_ckpt_signal(how: i32) {
    let sig = signals::CKPT_SIGNAL.load(Ordering::Acquire);
    if sig > 0 {
        sys::sigmask_one(how, sig);
    }
}

extern "C" fn prepare() {
    mask_ckpt_signal(libc::SIG_BLOCK);
    let started = std::time::Instant::now();
    // Forks of several threads take turns; a long section of the
    // checkpoint thread is waited for only so long.
    while FD_GUARD.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        if started.elapsed() > FORK_WAIT && FD_GUARD.fetch_or(1, Ordering::AcqRel) & 1 == 0 {
            break;
        }
        std::thread::yield_now();
    }
    crate::ALLOC.lock_for_fork();
}

extern "C" fn parent() {
    crate::ALLOC.unlock_after_fork();
    FD_GUARD.fetch_and(!1, Ordering::AcqRel);
    mask_ckpt_signal(libc::SIG_UNBLOCK);
}

extern "C" fn child() {
    crate::ALLOC.unlock_after_fork();
    // No checkpoint thread here holds anything.
    FD_GUARD.store(0, Ordering::Release);
    crate::conn_fd::after_fork();
    // The parent's connection says where its coordinator is; the child's
    // own socket is made now, before the program runs on (it may close and
    // reuse low descriptor numbers at once, as a shell does).
    // SAFETY: reads FORK_PEER, which no thread of this child uses yet.
    if unsafe { (*FORK_PEER.0.get()).is_some() } {
        forget_inherited_peer();
    }
    let conn = CONN_FD.swap(-1, Ordering::AcqRel);
    if conn >= 0 {
        prepare_fork_peer(conn);
        sys::close(conn);
    }
    // Read before written (see `signals::reset_after_fork`).
    if WRITER_PIPE_FD.load(Ordering::Relaxed) >= 0 {
        let pipe = WRITER_PIPE_FD.swap(-1, Ordering::AcqRel);
        if pipe >= 0 {
            sys::close(pipe);
        }
    }
    if WRITER_PID.load(Ordering::Relaxed) != 0 {
        WRITER_PID.store(0, Ordering::Release);
    }
    signals::reset_after_fork();
    mask_ckpt_signal(libc::SIG_UNBLOCK);
    crate::start_checkpoint_thread();
}

/// A fork child's way to the coordinator: a socket made by its fork
/// handler, at a high descriptor, its inode, and the parent's peer address.
/// Written only in the child handler, before the checkpoint thread exists;
/// read by that thread (thread creation orders the two).
struct ForkPeer(std::cell::UnsafeCell<Option<Peer>>);
/// The socket's descriptor and inode, the address and its length.
type Peer = (i32, u64, [u8; 128], usize);
// SAFETY: see the type's comment: one writer, then one reader, ordered.
unsafe impl Sync for ForkPeer {}
static FORK_PEER: ForkPeer = ForkPeer(std::cell::UnsafeCell::new(None));

/// How long a fork child's checkpoint thread waits before it connects: a
/// child that execs or exits within it (most of a shell's children do one
/// or the other at once) costs no connection, nor the coordinator any
/// work. A checkpoint meanwhile waits for the child to join: its parent
/// lists it among its children.
const JOIN_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

fn prepare_fork_peer(conn: i32) {
    let mut sa = [0u8; 128];
    let mut len: libc::socklen_t = sa.len() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `sa`.
    if unsafe { libc::getpeername(conn, sa.as_mut_ptr() as *mut libc::sockaddr, &mut len) } != 0 || len < 2 {
        return;
    }
    let family = i32::from(u16::from_ne_bytes([sa[0], sa[1]]));
    // SAFETY: plain socket creation; moved to a high number, the low one
    // closed: all before the program runs again.
    let low = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if low < 0 {
        return;
    }
    let high = sys::dup_high(low);
    sys::close(low);
    let Some(high) = high else { return };
    // Not marked as being connected yet (`conn_fd::set_pending`): while the
    // checkpoint thread waits out JOIN_DELAY, a program that closes every
    // descriptor (close_range) must not wait for it; see `take_fork_peer`.
    let ino = crate::conn_fd::inode(high);
    // SAFETY: only this handler writes FORK_PEER, before any reader exists.
    unsafe { *FORK_PEER.0.get() = Some((high, ino, sa, (len as usize).min(sa.len()))) };
}

/// In a fork child: a fork peer its parent made but had not taken yet (it
/// forked within JOIN_DELAY of its own fork) is the parent's; this copy
/// of its socket is closed.
fn forget_inherited_peer() {
    // SAFETY: only fork handlers write FORK_PEER, before any reader exists
    // in this process (this child has no checkpoint thread yet).
    let peer = unsafe { &mut *FORK_PEER.0.get() };
    if let Some((fd, ino, ..)) = peer.take()
        && crate::conn_fd::inode(fd) == ino
    {
        sys::close(fd);
    }
}

/// The socket and the parent's coordinator address a fork child starts
/// with, after JOIN_DELAY; None if the program took the socket's number
/// meanwhile (closed it, or put another file there: then that is the
/// program's), and the checkpoint thread connects by address instead.
pub fn take_fork_peer() -> Option<(std::fs::File, Vec<u8>)> {
    std::thread::sleep(JOIN_DELAY);
    // SAFETY: the checkpoint thread reads what the fork handler wrote
    // before creating it; nobody writes it again in this process.
    let (fd, ino, sa, len) = unsafe { (*FORK_PEER.0.get()).take() }?;
    if crate::conn_fd::inode(fd) != ino {
        return None;
    }
    crate::conn_fd::set_pending(fd, ino);
    // A dup2 onto the number in the instant before: the program's now.
    if !crate::conn_fd::still_pending(fd) {
        crate::conn_fd::clear_pending(fd);
        return None;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the handler made `fd` for this use alone, and it still holds
    // that socket.
    Some((unsafe { std::fs::File::from_raw_fd(fd) }, sa[..len].to_vec()))
}

/// Registers the fork handlers (once, from the constructor).
pub fn install_fork_handlers() -> bool {
    // SAFETY: the three handlers are plain functions that live as long as
    // the agent (which is never unloaded).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) == 0 }
}

/// The live children and the zombies of this process, from every thread's
/// /proc/self/task/TID/children; the image writer is left out.
pub fn children() -> (Vec<i32>, Vec<Zombie>) {
    let writer = WRITER_PID.load(Ordering::Acquire);
    let mut live = Vec::new();
    let mut zombies = Vec::new();
    for tid in sys::numeric_entries(c"/proc/self/task").unwrap_or_default() {
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/children")) else { continue };
        for pid in stasis_procfs::parse_children(&text) {
            if pid == writer || live.contains(&pid) || zombies.iter().any(|z: &Zombie| z.pid == pid) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            match stat.as_deref().and_then(stasis_procfs::parse_stat) {
                Some(s) if s.state == 'Z' => zombies.push(Zombie { pid, status: s.exit_code }),
                Some(s) if s.state == 'X' => {}
                Some(_) => live.push(pid),
                None => {} // reaped meanwhile
            }
        }
    }
    live.sort_unstable();
    zombies.sort_unstable_by_key(|z| z.pid);
    (live, zombies)
}
