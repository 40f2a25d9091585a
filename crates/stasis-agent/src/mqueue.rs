//! POSIX message queues (docs/ipc.md).
//!
//! A queue is a descriptor: its attributes come from mq_getattr, its
//! mq_notify registration from reading the queue itself. The kernel cannot
//! read a message without taking it, so the checkpoint takes them all, in
//! the order mq_receive gives them, and sends them back at once in the same
//! order (priority first, then arrival: the order comes back the same),
//! before the program runs again. Processes holding one queue take their
//! turn under a flock on it.

use std::ffi::{c_int, c_long};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use stasis_image::{FdKind, MqMessage, MqNotify};

use crate::ipc::{real, syscall};

/// statfs f_type of the mqueue filesystem.
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// Whether `fd` is a POSIX message queue.
pub fn is_message_queue(fd: i32) -> bool {
    // SAFETY: statfs is plain data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer.
    unsafe { libc::fstatfs(fd, &mut st) == 0 && st.f_type == MQUEUE_MAGIC }
}

#[repr(C)]
#[derive(Default)]
struct MqAttr {
    flags: c_long,
    maxmsg: c_long,
    msgsize: c_long,
    curmsgs: c_long,
    _reserved: [c_long; 4],
}

fn getattr(fd: i32) -> Result<MqAttr, i32> {
    let mut a = MqAttr::default();
    syscall(libc::SYS_mq_getsetattr, [fd as c_long, 0, &mut a as *mut _ as c_long, 0, 0])?;
    Ok(a)
}

/// Descriptor `fd`, a POSIX message queue: its attributes, its messages
/// (taken and sent back, see the module's comment) and who it notifies.
/// `link` is its /proc/self/fd link ("/name", "/name (deleted)").
pub fn describe_queue(fd: i32, link: &str, st: &libc::stat, flags: u32) -> Result<FdKind, String> {
    let at = |what: &str, e: i32| format!("fd {fd} (POSIX message queue {link}): {what}: errno {e}");
    let attr = getattr(fd).map_err(|e| at("mq_getattr", e))?;
    let name = if st.st_nlink == 0 { String::new() } else { link.to_string() };
    let readable = flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32;
    let mut messages = Vec::new();
    let notify = if attr.curmsgs == 0 && readable {
        // Nothing to take: the program's own descriptor tells who is
        // notified (pread leaves its offset alone), and no descriptor of
        // ours is closed, which would drop this process's registration.
        notification(fd)
    } else {
        // Our own open file: reading and the flags it needs leave the
        // program's descriptor (its offset, O_NONBLOCK, access mode) alone.
        let own = reopen(fd).map_err(|e| at("open it again", e))?;
        let notify = notification(own);
        if attr.curmsgs > 0 {
            let locked = lock(own);
            let result = take_and_put_back(own, attr.msgsize.max(1) as usize, &mut messages);
            if locked {
                // SAFETY: flock on our own descriptor.
                unsafe { libc::flock(own, libc::LOCK_UN) };
            }
            if let Err(e) = result {
                close(own);
                return Err(at("saving its messages", e));
            }
        }
        close(own);
        // Closing any descriptor of a queue drops the registration the
        // closing process holds on it (the kernel's mqueue flush): ours,
        // just closed, did. It is made again at once, as it was.
        if let Some(n) = notify.filter(|n| n.pid == crate::sys::getpid()) {
            register_again(fd, &n).map_err(|e| at("its mq_notify registration could not be kept", e))?;
        }
        notify
    };
    if let Some(n) = notify.filter(|n| n.pid == crate::sys::getpid()) {
        keep_for_restore(fd, &n);
    }
    Ok(FdKind::MessageQueue {
        id: st.st_ino,
        name,
        flags,
        mode: st.st_mode & 0o7777,
        maxmsg: attr.maxmsg as u64,
        msgsize: attr.msgsize as u64,
        messages,
        notify,
    })
}

/// A new open file of the queue behind `fd`, for reading and writing,
/// non-blocking (every process that uses a queue may open it so).
fn reopen(fd: i32) -> Result<i32, i32> {
    let path = format!("/proc/self/fd/{fd}\0");
    // SAFETY: open with a NUL-terminated path.
    let own = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if own < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)) } else { Ok(own) }
}

/// The kernel's `struct sigevent` (64 bytes): value, signal, how.
#[repr(C)]
struct KernelSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    _pad: [i32; 12],
}

fn register_again(fd: i32, n: &MqNotify) -> Result<(), i32> {
    if n.notify == libc::SIGEV_THREAD {
        // Its netlink socket and cookie are glibc's, unknown here: the
        // registration is lost (docs/ipc.md says so); the restart's log
        // names it.
        return Ok(());
    }
    let sev = KernelSigevent { value: n.value, signo: n.signal, notify: n.notify, _pad: [0; 12] };
    syscall(libc::SYS_mq_notify, [fd as c_long, &sev as *const KernelSigevent as c_long, 0, 0, 0]).map(|_| ())
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this module opened.
    unsafe { libc::close(fd) };
}

/// Takes the queue for us alone among the computation's processes, which
/// all save it at this moment; gives up after two seconds (something else
/// holds a lock on it) and goes on without.
fn lock(fd: i32) -> bool {
    for _ in 0..2000 {
        // SAFETY: flock on our own descriptor.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        crate::sys::sleep_ms(1);
    }
    false
}

/// Receives every message (non-blocking `fd`), then sends them back in the
/// same order. A message that cannot go back is an error: the checkpoint
/// fails rather than lose it silently (the program has lost it anyway).
fn take_and_put_back(fd: i32, msgsize: usize, out: &mut Vec<MqMessage>) -> Result<(), i32> {
    let mut buf = vec![0u8; msgsize];
    loop {
        let mut prio: u32 = 0;
        let args = [fd as c_long, buf.as_mut_ptr() as c_long, msgsize as c_long, &mut prio as *mut u32 as c_long, 0];
        match syscall(libc::SYS_mq_timedreceive, args) {
            Ok(n) => out.push(MqMessage { priority: prio, data: buf[..n as usize].to_vec() }),
            Err(libc::EAGAIN) => break,
            Err(libc::EINTR) => continue,
            Err(e) => {
                put_back(fd, out)?;
                return Err(e);
            }
        }
    }
    put_back(fd, out)
}

fn put_back(fd: i32, messages: &[MqMessage]) -> Result<(), i32> {
    for m in messages {
        loop {
            let args = [fd as c_long, m.data.as_ptr() as c_long, m.data.len() as c_long, c_long::from(m.priority), 0];
            match syscall(libc::SYS_mq_timedsend, args) {
                Ok(_) => break,
                Err(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The registration reading the queue shows: "QSIZE:n NOTIFY:k SIGNO:s
/// NOTIFY_PID:p" (NOTIFY is SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD 2;
/// the pid as this process's pid namespace sees it; 0: nobody).
fn notification(fd: i32) -> Option<MqNotify> {
    let mut buf = [0u8; 128];
    // SAFETY: pread into a live buffer from our own descriptor.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let text = std::str::from_utf8(buf.get(..n.max(0) as usize)?).ok()?;
    parse_notification(text).map(|(pid, notify, signal)| MqNotify {
        pid,
        notify,
        signal,
        value: notify_value(fd_inode(fd), pid),
    })
}

fn parse_notification(text: &str) -> Option<(i32, i32, i32)> {
    let field = |name: &str| -> Option<i32> {
        let at = text.find(name)? + name.len();
        text[at..].split_whitespace().next()?.parse().ok()
    };
    let pid = field("NOTIFY_PID:")?;
    (pid > 0).then_some((pid, field(" NOTIFY:")?, field("SIGNO:")?))
}

fn fd_inode(fd: i32) -> u64 {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer.
    if unsafe { libc::fstat(fd, &mut st) } == 0 { st.st_ino } else { 0 }
}

// ---- mq_notify after a restart -----------------------------------------------

/// This process's registrations at the checkpoint, by descriptor: a
/// restored process asks again (`register_after_restore`), after restart
/// has closed its own descriptors of the queues (each close by the owner
/// would have dropped a registration made earlier).
struct Kept {
    fd: AtomicI32,
    notify: AtomicI32,
    signal: AtomicI32,
    value: std::sync::atomic::AtomicU64,
}

const KEPT_SLOTS: usize = 16;
static KEPT: [Kept; KEPT_SLOTS] = [const {
    Kept {
        fd: AtomicI32::new(-1),
        notify: AtomicI32::new(0),
        signal: AtomicI32::new(0),
        value: std::sync::atomic::AtomicU64::new(0),
    }
}; KEPT_SLOTS];

/// Called once per checkpoint before the descriptors are listed.
pub fn forget_kept() {
    for k in &KEPT {
        k.fd.store(-1, Ordering::Release);
    }
}

fn keep_for_restore(fd: i32, n: &MqNotify) {
    if let Some(k) = KEPT.iter().find(|k| k.fd.load(Ordering::Acquire) < 0) {
        k.notify.store(n.notify, Ordering::Release);
        k.signal.store(n.signal, Ordering::Release);
        k.value.store(n.value, Ordering::Release);
        k.fd.store(fd, Ordering::Release);
    }
}

/// In a restored process, before the program runs again.
pub fn register_after_restore() {
    for k in &KEPT {
        let fd = k.fd.load(Ordering::Acquire);
        if fd < 0 {
            continue;
        }
        let n = MqNotify {
            pid: 0,
            notify: k.notify.load(Ordering::Acquire),
            signal: k.signal.load(Ordering::Acquire),
            value: k.value.load(Ordering::Acquire),
        };
        // EBUSY: restart's own registration held (the same one).
        let _ = register_again(fd, &n);
        // The queue is another inode now.
        remember_notify_value(fd_inode(fd), n.value);
    }
}

// ---- mq_notify: the sigev_value the kernel does not tell -------------------

const NOTIFY_SLOTS: usize = 64;
/// (queue inode, sigev_value) of this process's registrations; inode 0 is free.
static NOTIFY_INODE: [std::sync::atomic::AtomicU64; NOTIFY_SLOTS] =
    [const { std::sync::atomic::AtomicU64::new(0) }; NOTIFY_SLOTS];
static NOTIFY_VALUE: [std::sync::atomic::AtomicU64; NOTIFY_SLOTS] =
    [const { std::sync::atomic::AtomicU64::new(0) }; NOTIFY_SLOTS];
static REAL_MQ_NOTIFY: AtomicUsize = AtomicUsize::new(0);

/// The value this process gave for its registration on queue `inode`
/// (0 if the agent did not see it: another process registered).
fn notify_value(inode: u64, pid: i32) -> u64 {
    if pid != crate::sys::getpid() {
        return 0;
    }
    (0..NOTIFY_SLOTS)
        .find(|&i| NOTIFY_INODE[i].load(Ordering::Acquire) == inode)
        .map_or(0, |i| NOTIFY_VALUE[i].load(Ordering::Acquire))
}

fn remember_notify_value(inode: u64, value: u64) {
    if inode == 0 {
        return;
    }
    let slot = (0..NOTIFY_SLOTS).find(|&i| NOTIFY_INODE[i].load(Ordering::Acquire) == inode).or_else(|| {
        (0..NOTIFY_SLOTS)
            .find(|&i| NOTIFY_INODE[i].compare_exchange(0, inode, Ordering::AcqRel, Ordering::Acquire).is_ok())
    });
    if let Some(i) = slot {
        NOTIFY_VALUE[i].store(value, Ordering::Release);
    }
}

/// Resolves libc's mq_notify (in libc, or librt on older glibc).
pub fn resolve_mq_notify() {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    REAL_MQ_NOTIFY.store(unsafe { libc::dlsym(libc::RTLD_NEXT, c"mq_notify".as_ptr()) } as usize, Ordering::Release);
}

/// # Safety
/// Same contract as libc's mq_notify.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_notify(fd: libc::mqd_t, sev: *const libc::sigevent) -> c_int {
    let Some(f) = real(&REAL_MQ_NOTIFY) else { return -1 };
    // SAFETY: dlsym found libc's function of this signature.
    let real =
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(libc::mqd_t, *const libc::sigevent) -> c_int>(f) };
    // SAFETY: forwarded unchanged.
    let r = unsafe { real(fd, sev) };
    if r == 0 && !sev.is_null() {
        let errno = std::io::Error::last_os_error().raw_os_error();
        // SAFETY: the caller passes a valid sigevent; sigev_value is its
        // first field, a union of an int and a pointer.
        let value = unsafe { std::ptr::read(sev.cast::<u64>()) };
        remember_notify_value(fd_inode(fd), value);
        if let Some(e) = errno {
            // SAFETY: this thread's errno, as libc left it.
            unsafe { *libc::__errno_location() = e };
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notification_line_is_read() {
        let line = "QSIZE:2          NOTIFY:0     SIGNO:10    NOTIFY_PID:4242  \n";
        assert_eq!(parse_notification(line), Some((4242, 0, 10)));
        assert_eq!(parse_notification("QSIZE:0          NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n"), None);
        assert_eq!(parse_notification("garbage"), None);
    }

    #[test]
    fn messages_taken_and_put_back_keep_their_order() {
        let name = format!("/stasis-agent-test-{}\0", std::process::id());
        // SAFETY: mq_attr is plain data.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = 8;
        attr.mq_msgsize = 16;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK;
        // SAFETY: a NUL-terminated name and a valid attribute block.
        let q = unsafe { libc::mq_open(name.as_ptr().cast(), flags, 0o600, &mut attr as *mut libc::mq_attr) };
        assert!(q >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: as above.
        unsafe { libc::mq_unlink(name.as_ptr().cast()) };
        let sent: [(u32, &[u8]); 5] = [(1, b"a"), (5, b"b"), (1, b"c"), (3, b"d"), (5, b"e")];
        for (prio, data) in sent {
            // SAFETY: sends from a live buffer.
            assert_eq!(unsafe { libc::mq_send(q, data.as_ptr().cast(), data.len(), prio) }, 0);
        }
        let mut saved = Vec::new();
        take_and_put_back(q, 16, &mut saved).unwrap();
        let order: Vec<(u32, &[u8])> = saved.iter().map(|m| (m.priority, m.data.as_slice())).collect();
        let want: Vec<(u32, &[u8])> = vec![(5, b"b"), (5, b"e"), (3, b"d"), (1, b"a"), (1, b"c")];
        assert_eq!(order, want);
        // The queue holds them again, in the same order.
        let mut again = Vec::new();
        take_and_put_back(q, 16, &mut again).unwrap();
        assert_eq!(again, saved);
        close(q);
    }
}
