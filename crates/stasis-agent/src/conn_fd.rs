//! The agent's descriptors, kept out of the program's reach: its connection
//! to the coordinator, the socket it is connecting, and the pipe from an
//! image writer still running.
//!
//! They live at high numbers (`sys::dup_high`), kept in atomics
//! (`tree::CONN_FD`, `tree::WRITER_PIPE_FD`, `PENDING`). A program may still
//! name one: a dup2() or dup3() onto it, a close() of it, a close_range()
//! over it (a daemon closing everything). The wrappers here move the
//! connection or the pipe to another free number first, then let the
//! program's call go ahead: the program gets exactly what it asked for and
//! the agent keeps its descriptor. close_range() closes around them (there
//! may be no free number outside its range). fcntl's F_DUPFD and dup() pick
//! a free number, never an open one, and need nothing.
//!
//! The socket being connected is used by its number while it is set up (a
//! moment; seconds at worst, over TCP): a call that names it waits, a
//! little, until it is the connection, which can move. `FD_LOCK` keeps the
//! agent from choosing a number between a wrapper's check and its call.
//!
//! The checkpoint thread never holds the connection's number across calls:
//! `Link` reads `CONN_FD` for every read and write, with recv/send, which
//! fail on a descriptor that is not a socket rather than consume it. Should
//! the connection be lost anyway (a raw system call, no free number to move
//! to), the checkpoint thread notices (`Link::ours`), says so once, and
//! connects again. Nothing here is called from a signal handler of the
//! agent's; the wrappers make raw system calls (close is then no
//! cancellation point).

use std::ffi::c_int;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{sys, tree};

/// The inode of the connection's socket, to tell it from whatever else
/// the program may have put at its number; the same for the writer's pipe.
static CONN_INO: AtomicU64 = AtomicU64::new(0);
static PIPE_INO: AtomicU64 = AtomicU64::new(0);

/// The socket the checkpoint thread is connecting (-1: none), and its inode.
static PENDING: AtomicI32 = AtomicI32::new(-1);
static PENDING_INO: AtomicU64 = AtomicU64::new(0);
/// How long a program's call waits for a socket being connected.
const PENDING_WAIT: Duration = Duration::from_secs(5);

/// Held (by its owner's tid) around a program's call that names a number
/// (the check that it is not ours, then the call), and around the
/// checkpoint thread's choice of a high number: without it, the program's
/// dup2 could land on the number the agent chose between the two. Never
/// waited for without bound: a holder may be stopped by a checkpoint, or
/// gone (a fork child starts with it free: `after_fork`).
static FD_LOCK: AtomicI32 = AtomicI32::new(0);
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs `f` holding `FD_LOCK`, or without it if it stays taken too long or
/// this thread holds it already (a signal handler inside a wrapper).
fn locked<R>(f: impl FnOnce() -> R) -> R {
    let me = sys::gettid();
    let start = Instant::now();
    let mut held = false;
    while FD_LOCK.load(Ordering::Acquire) != me {
        if FD_LOCK.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            held = true;
            break;
        }
        if start.elapsed() > LOCK_WAIT {
            break;
        }
        sys::sleep_ms(0);
    }
    let r = f();
    if held {
        FD_LOCK.store(0, Ordering::Release);
    }
    r
}

/// In a fork child: no other thread exists to hold the lock.
pub fn after_fork() {
    FD_LOCK.store(0, Ordering::Release);
}

/// A duplicate of `fd` at a free high number for a socket the checkpoint
/// thread sets up, registered as pending before any program call can name
/// it (see `FD_LOCK`).
pub fn dup_pending(fd: i32, ino: u64) -> Option<i32> {
    locked(|| {
        let high = sys::dup_high(fd)?;
        set_pending(high, ino);
        Some(high)
    })
}

/// A socket at `fd`, of inode `ino`, is being set up by the checkpoint thread.
pub fn set_pending(fd: i32, ino: u64) {
    PENDING_INO.store(ino, Ordering::Release);
    PENDING.store(fd, Ordering::Release);
}

/// Whether `fd` still holds the socket being set up: a program's dup2 that
/// came in the instant before `set_pending` may have taken the number (the
/// connection then fails, and is tried again), and then it is the
/// program's to keep, not ours to close.
pub fn still_pending(fd: i32) -> bool {
    fd == PENDING.load(Ordering::Acquire) && inode_of(fd) == PENDING_INO.load(Ordering::Acquire)
}

/// The inode of the socket or pipe at `fd`; 0 for anything else.
pub fn inode(fd: i32) -> u64 {
    inode_of(fd)
}

/// It is set up (or given up).
pub fn clear_pending(fd: i32) {
    let _ = PENDING.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Acquire);
}

/// Waits while `target` is the socket being connected (by another thread
/// than the checkpoint thread itself, which must not wait for itself).
fn wait_pending(first: i32, last: i32) {
    if sys::gettid() == crate::signals::CT_TID.load(Ordering::Acquire) {
        return;
    }
    let start = Instant::now();
    loop {
        let p = PENDING.load(Ordering::Acquire);
        if p < first || p > last || start.elapsed() > PENDING_WAIT {
            return;
        }
        sys::sleep_ms(1);
    }
}

/// The writer's pipe at `fd` (while the program runs on).
pub fn adopt_writer_pipe(fd: i32) {
    PIPE_INO.store(inode_of(fd), Ordering::Release);
    tree::WRITER_PIPE_FD.store(fd, Ordering::Release);
}

/// Reads from the writer's pipe, wherever it is now.
pub fn read_writer_pipe(buf: &mut [u8]) -> io::Result<usize> {
    let fd = tree::WRITER_PIPE_FD.load(Ordering::Acquire);
    if fd < 0 || inode_of(fd) != PIPE_INO.load(Ordering::Acquire) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: read writes at most `buf.len()` bytes into `buf`.
    io_result(unsafe { sys::syscall6(libc::SYS_read, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0]) })
}

/// Closes the writer's pipe if its number still holds it.
pub fn close_writer_pipe() {
    let fd = tree::WRITER_PIPE_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 && inode_of(fd) == PIPE_INO.load(Ordering::Acquire) {
        sys::close(fd);
    }
}

/// The inode of the socket or pipe at `fd`; 0 for anything else.
fn inode_of(fd: i32) -> u64 {
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer.
    if fd < 0 || unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK | libc::S_IFIFO => st.st_ino,
        _ => 0,
    }
}

/// The checkpoint thread's connection, by whatever number it has now.
pub struct Link(());

impl Link {
    /// Takes `fd`, a connected socket, as the agent's connection.
    pub fn adopt(fd: i32) -> Link {
        CONN_INO.store(inode_of(fd), Ordering::Release);
        tree::CONN_FD.store(fd, Ordering::Release);
        // Now it can move: a call waiting for it goes on (`make_room`).
        clear_pending(fd);
        Link(())
    }

    /// The connection's number now (it may move between two calls).
    pub fn fd(&self) -> i32 {
        tree::CONN_FD.load(Ordering::Acquire)
    }

    /// Whether the connection's number still holds our socket.
    pub fn ours(&self) -> bool {
        let ino = inode_of(self.fd());
        ino != 0 && ino == CONN_INO.load(Ordering::Acquire)
    }

    /// Lets go of the connection: closes it if its number still holds it,
    /// else leaves the number, which is the program's now.
    pub fn let_go(self) {
        let fd = tree::CONN_FD.swap(-1, Ordering::AcqRel);
        if fd >= 0 && inode_of(fd) == CONN_INO.load(Ordering::Acquire) && inode_of(fd) != 0 {
            sys::close(fd);
        }
    }
}

fn io_result(r: Result<usize, i32>) -> io::Result<usize> {
    r.map_err(io::Error::from_raw_os_error)
}

impl io::Read for &Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        io_result(unsafe {
            sys::syscall6(libc::SYS_recvfrom, [self.fd() as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0])
        })
    }
}

impl io::Write for &Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let flags = libc::MSG_NOSIGNAL as usize;
        // SAFETY: send reads `buf.len()` bytes from `buf`.
        io_result(unsafe {
            sys::syscall6(libc::SYS_sendto, [self.fd() as usize, buf.as_ptr() as usize, buf.len(), flags, 0, 0])
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Moves whichever of the agent's descriptors sits at `target` to another
/// free number. Best effort: with no free number, it stays (and is lost to
/// the program's call; see the module comment).
fn make_room(target: i32) {
    if target < 0 {
        return;
    }
    wait_pending(target, target);
    move_off(&tree::CONN_FD, &CONN_INO, target);
    move_off(&tree::WRITER_PIPE_FD, &PIPE_INO, target);
}

fn move_off(slot: &AtomicI32, ino: &AtomicU64, target: i32) {
    let fd = slot.load(Ordering::Acquire);
    if fd != target || inode_of(fd) != ino.load(Ordering::Acquire) {
        return;
    }
    // `fd` is open, so the number found is another one. With every high
    // number taken, a low one: the wrappers keep it safe there too.
    let Some(moved) = sys::dup_high(fd).or_else(|| sys::dup_at_least(fd, 3)) else { return };
    // The checkpoint thread may have let go of it meanwhile.
    if slot.compare_exchange(fd, moved, Ordering::AcqRel, Ordering::Acquire).is_err() {
        sys::close(moved);
    }
}

/// Sets errno as libc's wrappers do, and returns -1; or the value.
fn libc_result(r: Result<usize, i32>) -> c_int {
    match r {
        Ok(v) => v as c_int,
        Err(e) => {
            // SAFETY: errno is this thread's own int.
            unsafe { *libc::__errno_location() = e };
            -1
        }
    }
}

/// A dup2 or dup3 onto `new`, once ours is out of the way. EBUSY means the
/// number was being handed out to another thread's open or dup that very
/// moment (ours, perhaps, connecting): look again and retry.
fn dup_onto(new: c_int, call: impl Fn() -> Result<usize, i32>) -> c_int {
    let mut tries = 0;
    loop {
        match locked(|| {
            make_room(new);
            call()
        }) {
            Err(libc::EBUSY) if tries < 1000 => {
                tries += 1;
                sys::sleep_ms(0);
            }
            r => return libc_result(r),
        }
    }
}

/// # Safety
/// As dup2(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: dup2 takes two numbers.
    let call = || unsafe { sys::syscall6(libc::SYS_dup2, [old as usize, new as usize, 0, 0, 0, 0]) };
    if old == new { libc_result(call()) } else { dup_onto(new, call) }
}

/// # Safety
/// As dup3(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: dup3 takes numbers only.
    let call = || unsafe { sys::syscall6(libc::SYS_dup3, [old as usize, new as usize, flags as usize, 0, 0, 0]) };
    if old == new { libc_result(call()) } else { dup_onto(new, call) }
}

/// # Safety
/// As close(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    // SAFETY: close takes a number.
    let call = || unsafe { sys::syscall6(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) };
    if !names_ours(fd, fd) {
        return libc_result(call()); // the usual case: no lock, no wait
    }
    libc_result(locked(|| {
        make_room(fd);
        call()
    }))
}

/// Whether `first..=last` holds one of the agent's descriptors (or the
/// socket being connected), as far as the atomics say.
fn names_ours(first: i32, last: i32) -> bool {
    [&tree::CONN_FD, &tree::WRITER_PIPE_FD, &PENDING].iter().any(|slot| {
        let fd = slot.load(Ordering::Acquire);
        fd >= 0 && fd >= first && fd <= last
    })
}

/// # Safety
/// As close_range(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    let raw = |first: libc::c_uint, last: libc::c_uint| {
        // SAFETY: close_range takes numbers only.
        unsafe { sys::syscall6(libc::SYS_close_range, [first as usize, last as usize, flags as usize, 0, 0, 0]) }
    };
    // CLOSE_RANGE_CLOEXEC alone changes nothing of ours (close-on-exec).
    if flags as libc::c_uint & libc::CLOSE_RANGE_CLOEXEC != 0 || first > last {
        return libc_result(raw(first, last));
    }
    let clamp = |v: libc::c_uint| v.min(i32::MAX as libc::c_uint) as i32;
    locked(|| libc_result(close_range_around_ours(first, last, &raw, clamp(first), clamp(last))))
}

fn close_range_around_ours(
    first: libc::c_uint,
    last: libc::c_uint,
    raw: &dyn Fn(libc::c_uint, libc::c_uint) -> Result<usize, i32>,
    first_fd: i32,
    last_fd: i32,
) -> Result<usize, i32> {
    wait_pending(first_fd, last_fd);
    // A range over everything from some number on (a daemon's, a
    // spawner's) leaves nowhere to move them to: ours are left out of the
    // range instead, unseen (close-on-exec, they go at the next exec).
    let ours = |slot: &AtomicI32, ino: &AtomicU64| {
        let fd = slot.load(Ordering::Acquire);
        let inside = fd >= 0 && (first..=last).contains(&(fd as libc::c_uint));
        (inside && inode_of(fd) == ino.load(Ordering::Acquire)).then_some(fd as libc::c_uint)
    };
    let mut keep = [ours(&tree::CONN_FD, &CONN_INO), ours(&tree::WRITER_PIPE_FD, &PIPE_INO)];
    keep.sort_unstable();
    let mut result = Ok(0);
    let mut from = first;
    for fd in keep.into_iter().flatten() {
        if fd > from {
            result = result.and(raw(from, fd - 1));
        }
        from = fd + 1;
    }
    if from <= last && from != 0 {
        result = result.and(raw(from, last));
    }
    result
}
