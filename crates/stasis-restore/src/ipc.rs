//! Message queues and semaphores made again (docs/ipc.md): System V
//! message queues and semaphore sets with their ids, keys, modes and
//! contents, and POSIX message queues with their names, attributes and
//! messages.
//!
//! Each restart gives the computation an IPC namespace of its own (`ns`),
//! whose init makes every object once (`Ipc::create`), before any process
//! of the computation exists: a System V object gets its old id through
//! the namespace's `msg_next_id` / `sem_next_id` (which its creator may
//! write), so the ids the program keeps in its memory name the same
//! objects again, and nothing needs translating. POSIX queues are held
//! open by init, above every descriptor number the program uses, and
//! inherited by every process, which opens its own descriptor of each
//! queue it had (`open_queue`), with its flags; the one that had asked
//! mq_notify asks again.

use std::cell::OnceCell;
use std::ffi::CString;
use std::io;

use stasis_image::{FdKind, ImageReader, MqMessage, MqNotify, SysvObject};

/// One POSIX queue, as the first image holding it saved it.
struct Queue {
    id: u64,
    name: String,
    mode: u32,
    maxmsg: u64,
    msgsize: u64,
    messages: Vec<MqMessage>,
}

pub struct Ipc {
    sysv: Vec<SysvObject>,
    queues: Vec<Queue>,
    /// (queue id, init's descriptor of it), once made.
    fds: OnceCell<Vec<(u64, i32)>>,
}

impl Ipc {
    /// What the images hold, each object once (every holder saved it alike,
    /// all at one instant: the first image's copy is taken).
    pub fn new(images: &[&ImageReader]) -> Ipc {
        let mut sysv: Vec<SysvObject> = Vec::new();
        let mut queues: Vec<Queue> = Vec::new();
        for image in images {
            let meta = image.meta();
            for o in &meta.sysv_ipc {
                let same_kind = |a: &SysvObject| std::mem::discriminant(a) == std::mem::discriminant(o);
                if !sysv.iter().any(|s| s.id() == o.id() && same_kind(s)) {
                    sysv.push(o.clone());
                }
            }
            for f in &meta.fds {
                let FdKind::MessageQueue { id, ref name, mode, maxmsg, msgsize, ref messages, .. } = f.kind else {
                    continue;
                };
                if !queues.iter().any(|q| q.id == id) {
                    let (name, messages) = (name.clone(), messages.clone());
                    queues.push(Queue { id, name, mode, maxmsg, msgsize, messages });
                }
            }
        }
        Ipc { sysv, queues, fds: OnceCell::new() }
    }

    /// Makes every object, in the computation's new IPC namespace (init,
    /// before any process); queues at descriptors >= `min_fd`.
    pub fn create(&self, min_fd: i32) -> Result<(), String> {
        for o in &self.sysv {
            match o {
                SysvObject::MessageQueue { id, key, mode, qbytes, messages } => {
                    message_queue(*id, *key, *mode, *qbytes, messages)
                        .map_err(|e| format!("System V message queue {id}: {e}"))?;
                }
                SysvObject::Semaphores { id, key, mode, values } => {
                    semaphores(*id, *key, *mode, values).map_err(|e| format!("System V semaphore set {id}: {e}"))?;
                }
            }
        }
        let mut fds = Vec::new();
        for (n, q) in self.queues.iter().enumerate() {
            let what = if q.name.is_empty() { "an unlinked POSIX message queue".into() } else { q.name.clone() };
            match posix_queue(q, n, min_fd) {
                Ok(fd) => fds.push((q.id, fd)),
                Err(e) => {
                    for (_, fd) in fds {
                        close(fd);
                    }
                    return Err(format!("{what}: {e}"));
                }
            }
        }
        let _ = self.fds.set(fds);
        Ok(())
    }

    /// Init's descriptor of queue `id`, in a process made after `create`.
    pub fn queue(&self, id: u64) -> Option<i32> {
        self.fds.get()?.iter().find(|(q, _)| *q == id).map(|&(_, fd)| fd)
    }

    pub fn fds(&self) -> Vec<i32> {
        self.fds.get().map(|v| v.iter().map(|&(_, fd)| fd).collect()).unwrap_or_default()
    }
}

fn check(r: libc::c_int) -> io::Result<i32> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn close(fd: i32) {
    // SAFETY: closes a descriptor this module made.
    unsafe { libc::close(fd) };
}

/// Raises a limit of this IPC namespace to `needed` where it is lower, as
/// far as we may (a restart by root may; an ordinary user's namespace keeps
/// the defaults, and a bigger object then fails to be made, saying so).
fn raise_limit(path: &str, needed: u64) {
    let now: u64 = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u64::MAX);
    if needed > now {
        let _ = std::fs::write(path, needed.to_string());
    }
}

/// The next System V object of `kind` ("msg", "sem") made in this
/// namespace gets `id`.
fn next_id(kind: &str, id: i32) -> Result<(), String> {
    let path = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&path, id.to_string()).map_err(|e| format!("cannot give it its id back ({path}: {e})"))
}

fn made_with(got: i32, id: i32) -> Result<(), String> {
    if got == id { Ok(()) } else { Err(format!("made with id {got}, not {id}")) }
}

fn creation_flags(key: i32, mode: u32) -> libc::c_int {
    // A key of IPC_PRIVATE (0) makes a new object anyway.
    let excl = if key == libc::IPC_PRIVATE { 0 } else { libc::IPC_EXCL };
    libc::IPC_CREAT | excl | (mode & 0o777) as libc::c_int
}

fn message_queue(
    id: i32,
    key: i32,
    mode: u32,
    qbytes: u64,
    messages: &[stasis_image::SysvMessage],
) -> Result<(), String> {
    let total: u64 = messages.iter().map(|m| m.data.len() as u64).sum();
    raise_limit("/proc/sys/kernel/msgmnb", qbytes);
    raise_limit("/proc/sys/kernel/msgmax", messages.iter().map(|m| m.data.len() as u64).max().unwrap_or(0));
    next_id("msg", id)?;
    // SAFETY: msgget takes plain integers.
    let got = check(unsafe { libc::msgget(key, creation_flags(key, mode)) }).map_err(|e| format!("msgget: {e}"))?;
    made_with(got, id)?;
    // SAFETY: msqid_ds is plain data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid buffer for IPC_STAT, then IPC_SET.
    if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } == 0 && ds.msg_qbytes != qbytes {
        ds.msg_qbytes = qbytes;
        // SAFETY: as above.
        if unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } != 0 && total > ds.msg_qbytes {
            return Err(format!("capacity {qbytes} not granted: {}", io::Error::last_os_error()));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let mut buf = Vec::with_capacity(8 + m.data.len());
        buf.extend_from_slice(&m.mtype.to_ne_bytes());
        buf.extend_from_slice(&m.data);
        // SAFETY: msgsnd reads a long and `data.len()` bytes from `buf`.
        let r = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), m.data.len(), libc::IPC_NOWAIT) };
        check(r).map_err(|e| format!("putting back message {i} of {}: {e}", messages.len()))?;
    }
    Ok(())
}

fn semaphores(id: i32, key: i32, mode: u32, values: &[u16]) -> Result<(), String> {
    next_id("sem", id)?;
    let n = values.len() as libc::c_int;
    // SAFETY: semget takes plain integers.
    let got = check(unsafe { libc::semget(key, n, creation_flags(key, mode)) }).map_err(|e| format!("semget: {e}"))?;
    made_with(got, id)?;
    if !values.is_empty() {
        // SAFETY: SETALL reads one unsigned short per semaphore of the set.
        let r = unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) };
        check(r).map_err(|e| format!("setting its values: {e}"))?;
    }
    Ok(())
}

/// Queue `q` made and filled; the `n`th of the restart (an unlinked one
/// gets a passing name of its own). Returns a descriptor >= `min_fd`.
fn posix_queue(q: &Queue, n: usize, min_fd: i32) -> Result<i32, String> {
    raise_limit("/proc/sys/fs/mqueue/msg_max", q.maxmsg);
    raise_limit("/proc/sys/fs/mqueue/msgsize_max", q.msgsize);
    let name = if q.name.is_empty() {
        // SAFETY: getpid cannot fail.
        format!("/stasis-restart-{}-{n}", unsafe { libc::getpid() })
    } else {
        q.name.clone()
    };
    let c = CString::new(name.clone()).map_err(|_| "a NUL byte in its name".to_string())?;
    // SAFETY: mq_attr is plain data.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = q.maxmsg as _;
    attr.mq_msgsize = q.msgsize as _;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: mq_open with a NUL-terminated name and a valid attribute block.
    let fd = unsafe { libc::mq_open(c.as_ptr(), flags, q.mode as libc::mode_t, &mut attr as *mut libc::mq_attr) };
    let fd = check(fd).map_err(|e| {
        format!(
            "mq_open with at most {} messages of {} bytes: {e} (the limits of /proc/sys/fs/mqueue)",
            q.maxmsg, q.msgsize
        )
    })?;
    if q.name.is_empty() {
        // SAFETY: mq_unlink with a NUL-terminated name.
        unsafe { libc::mq_unlink(c.as_ptr()) };
    }
    // SAFETY: F_DUPFD_CLOEXEC on the descriptor just made.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min_fd) };
    close(fd);
    let moved = check(moved).map_err(|e| format!("move its descriptor: {e}"))?;
    for (i, m) in q.messages.iter().enumerate() {
        // SAFETY: mq_send reads `data.len()` bytes from a live buffer.
        let r = unsafe { libc::mq_send(moved, m.data.as_ptr().cast(), m.data.len(), m.priority) };
        if let Err(e) = check(r) {
            close(moved);
            return Err(format!("putting back message {i} of {}: {e}", q.messages.len()));
        }
    }
    Ok(moved)
}

/// In the process being restored: its own descriptor of the queue that
/// init holds at `shared`, with the saved `flags` (access mode,
/// O_NONBLOCK); and the mq_notify registration, if this process (`pid`)
/// had made it.
pub fn open_queue(
    shared: i32,
    flags: u32,
    notify: Option<&MqNotify>,
    pid: i32,
    warn: &mut dyn FnMut(String),
) -> io::Result<i32> {
    let path = CString::new(format!("/proc/self/fd/{shared}")).map_err(io::Error::other)?;
    let mode = (flags as libc::c_int) & (libc::O_ACCMODE | libc::O_NONBLOCK);
    // SAFETY: open with a NUL-terminated path.
    let fd = check(unsafe { libc::open(path.as_ptr(), mode | libc::O_CLOEXEC) })?;
    if let Some(n) = notify.filter(|n| n.pid == pid) {
        if n.notify == libc::SIGEV_THREAD {
            warn("its mq_notify registration (SIGEV_THREAD) cannot be made again; it is gone".into());
        } else {
            // SAFETY: sigevent is plain data.
            let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
            sev.sigev_notify = n.notify;
            sev.sigev_signo = n.signal;
            sev.sigev_value = libc::sigval { sival_ptr: n.value as usize as *mut libc::c_void };
            // SAFETY: `sev` is a valid sigevent for the call.
            if unsafe { libc::mq_notify(fd, &sev) } != 0 {
                warn(format!("its mq_notify registration is gone ({})", io::Error::last_os_error()));
            }
        }
    }
    Ok(fd)
}
