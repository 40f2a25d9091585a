//! System V message queues and semaphore sets (docs/ipc.md).
//!
//! A System V object has no descriptor: the program knows it by the id
//! msgget or semget returned. The agent wraps those calls, and the calls
//! that name an id (msgsnd, msgrcv, semop, semtimedop in `timeouts.rs`),
//! and keeps the ids it saw in a lock-free table inherited across fork;
//! the checkpoint reads each object's state from the kernel: a queue's
//! messages with MSG_COPY (read without taking them), a set's values with
//! GETALL. Every process of the computation is stopped by then, so every
//! holder reads the same contents. POSIX message queues: `mqueue.rs`.

use std::ffi::{c_int, c_long, c_void};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use stasis_image::{SysvMessage, SysvObject};

// ---- which System V objects the process uses --------------------------------

const IDS: usize = 256;
static MSG_IDS: [AtomicI32; IDS] = [const { AtomicI32::new(-1) }; IDS];
static SEM_IDS: [AtomicI32; IDS] = [const { AtomicI32::new(-1) }; IDS];

/// Adds `id` to `table` unless it is there (or the table is full: that
/// object is then not saved). Atomics only: safe from any thread, at any
/// moment.
fn note(table: &[AtomicI32; IDS], id: i32) {
    if id < 0 {
        return;
    }
    for slot in table {
        match slot.compare_exchange(-1, id, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(v) if v == id => return,
            Err(_) => {}
        }
    }
}

fn noted(table: &[AtomicI32; IDS]) -> Vec<i32> {
    let mut ids: Vec<i32> = table.iter().map(|s| s.load(Ordering::Acquire)).filter(|&id| id >= 0).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A semaphore set the program named (semtimedop's wrapper tells it too).
pub fn note_sem(id: i32) {
    note(&SEM_IDS, id);
}

// ---- the wrappers -----------------------------------------------------------

static REAL_MSGGET: AtomicUsize = AtomicUsize::new(0);
static REAL_MSGSND: AtomicUsize = AtomicUsize::new(0);
static REAL_MSGRCV: AtomicUsize = AtomicUsize::new(0);
static REAL_SEMGET: AtomicUsize = AtomicUsize::new(0);
static REAL_SEMOP: AtomicUsize = AtomicUsize::new(0);

/// Resolves libc's functions at start-up.
pub fn resolve_real_functions() {
    for (slot, name) in [
        (&REAL_MSGGET, c"msgget"),
        (&REAL_MSGSND, c"msgsnd"),
        (&REAL_MSGRCV, c"msgrcv"),
        (&REAL_SEMGET, c"semget"),
        (&REAL_SEMOP, c"semop"),
    ] {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        slot.store(unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize, Ordering::Release);
    }
}

/// libc's function in `slot`, or None (errno ENOSYS) if it was not found.
pub(crate) fn real(slot: &AtomicUsize) -> Option<usize> {
    let f = slot.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return None;
    }
    Some(f)
}

/// # Safety
/// Same contract as libc's msgget.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgget(key: libc::key_t, flags: c_int) -> c_int {
    let Some(f) = real(&REAL_MSGGET) else { return -1 };
    // SAFETY: dlsym found libc's function of this signature.
    let real = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(libc::key_t, c_int) -> c_int>(f) };
    // SAFETY: forwarded unchanged.
    let id = unsafe { real(key, flags) };
    note(&MSG_IDS, id);
    id
}

/// # Safety
/// Same contract as libc's msgsnd.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgsnd(id: c_int, msg: *const c_void, size: usize, flags: c_int) -> c_int {
    note(&MSG_IDS, id);
    let Some(f) = real(&REAL_MSGSND) else { return -1 };
    type Snd = unsafe extern "C" fn(c_int, *const c_void, usize, c_int) -> c_int;
    // SAFETY: dlsym found libc's function of this signature.
    let real = unsafe { std::mem::transmute::<usize, Snd>(f) };
    // SAFETY: forwarded unchanged.
    unsafe { real(id, msg, size, flags) }
}

/// # Safety
/// Same contract as libc's msgrcv.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msgrcv(id: c_int, msg: *mut c_void, size: usize, mtype: c_long, flags: c_int) -> isize {
    note(&MSG_IDS, id);
    let Some(f) = real(&REAL_MSGRCV) else { return -1 };
    type Rcv = unsafe extern "C" fn(c_int, *mut c_void, usize, c_long, c_int) -> isize;
    // SAFETY: dlsym found libc's function of this signature.
    let real = unsafe { std::mem::transmute::<usize, Rcv>(f) };
    // SAFETY: forwarded unchanged.
    unsafe { real(id, msg, size, mtype, flags) }
}

/// # Safety
/// Same contract as libc's semget.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn semget(key: libc::key_t, nsems: c_int, flags: c_int) -> c_int {
    let Some(f) = real(&REAL_SEMGET) else { return -1 };
    // SAFETY: dlsym found libc's function of this signature.
    let real = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(libc::key_t, c_int, c_int) -> c_int>(f) };
    // SAFETY: forwarded unchanged.
    let id = unsafe { real(key, nsems, flags) };
    note(&SEM_IDS, id);
    id
}

/// # Safety
/// Same contract as libc's semop.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn semop(id: c_int, ops: *mut libc::sembuf, n: usize) -> c_int {
    note(&SEM_IDS, id);
    let Some(f) = real(&REAL_SEMOP) else { return -1 };
    // SAFETY: dlsym found libc's function of this signature.
    let real =
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(c_int, *mut libc::sembuf, usize) -> c_int>(f) };
    // SAFETY: forwarded unchanged.
    unsafe { real(id, ops, n) }
}

// ---- System V objects at the checkpoint --------------------------------------

/// MSG_COPY (linux/msg.h): msgrcv copies message number `msgtyp` and
/// leaves it in the queue.
const MSG_COPY: c_long = 0o40000;

/// Raw system calls: the agent's own msgrcv above must not call itself.
pub(crate) fn syscall(nr: c_long, a: [c_long; 5]) -> Result<c_long, i32> {
    // SAFETY: the callers pass numbers and pointers to live buffers of the
    // sizes they name.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)) } else { Ok(r) }
}

/// The message queues and semaphore sets the process used that still
/// exist, with their contents; or why one could not be read.
pub fn sysv_objects() -> Result<Vec<SysvObject>, String> {
    let errno = std::io::Error::last_os_error().raw_os_error();
    let mut out = Vec::new();
    for id in noted(&MSG_IDS) {
        if let Some(q) = message_queue(id)? {
            out.push(q);
        }
    }
    for id in noted(&SEM_IDS) {
        if let Some(s) = semaphores(id)? {
            out.push(s);
        }
    }
    if let Some(e) = errno {
        // SAFETY: this thread's errno, as it was.
        unsafe { *libc::__errno_location() = e };
    }
    Ok(out)
}

fn message_queue(id: i32) -> Result<Option<SysvObject>, String> {
    // SAFETY: msqid_ds is plain data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    match syscall(libc::SYS_msgctl, [id as c_long, libc::IPC_STAT as c_long, &mut ds as *mut _ as c_long, 0, 0]) {
        Ok(_) => {}
        // Removed since (or never ours to read): nothing to save.
        Err(libc::EINVAL | libc::EIDRM) => return Ok(None),
        Err(e) => return Err(format!("System V message queue {id}: IPC_STAT: errno {e}")),
    }
    // No message is longer than what the queue holds in all.
    let longest = (ds.__msg_cbytes as usize).max(1);
    let mut buf = vec![0u8; 8 + longest];
    let mut messages = Vec::with_capacity(ds.msg_qnum as usize);
    for i in 0..ds.msg_qnum as c_long {
        let flags = (libc::IPC_NOWAIT as c_long) | MSG_COPY;
        let n = syscall(libc::SYS_msgrcv, [id as c_long, buf.as_mut_ptr() as c_long, longest as c_long, i, flags])
            .map_err(|e| {
                format!(
                    "System V message queue {id}: reading message {i} without taking it (MSG_COPY, a kernel built \
                     with CONFIG_CHECKPOINT_RESTORE): errno {e}"
                )
            })?;
        let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
        messages.push(SysvMessage { mtype, data: buf[8..8 + n as usize].to_vec() });
    }
    Ok(Some(SysvObject::MessageQueue {
        id,
        key: ds.msg_perm.__key,
        mode: u32::from(ds.msg_perm.mode) & 0o777,
        qbytes: ds.msg_qbytes,
        messages,
    }))
}

fn semaphores(id: i32) -> Result<Option<SysvObject>, String> {
    // SAFETY: semid_ds is plain data.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    match syscall(libc::SYS_semctl, [id as c_long, 0, libc::IPC_STAT as c_long, &mut ds as *mut _ as c_long, 0]) {
        Ok(_) => {}
        Err(libc::EINVAL | libc::EIDRM) => return Ok(None),
        Err(e) => return Err(format!("System V semaphore set {id}: IPC_STAT: errno {e}")),
    }
    let mut values = vec![0u16; ds.sem_nsems as usize];
    syscall(libc::SYS_semctl, [id as c_long, 0, libc::GETALL as c_long, values.as_mut_ptr() as c_long, 0])
        .map_err(|e| format!("System V semaphore set {id}: GETALL: errno {e}"))?;
    Ok(Some(SysvObject::Semaphores { id, key: ds.sem_perm.__key, mode: u32::from(ds.sem_perm.mode) & 0o777, values }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_noted_once() {
        static T: [AtomicI32; IDS] = [const { AtomicI32::new(-1) }; IDS];
        for id in [5, 7, 5, -1, 0] {
            note(&T, id);
        }
        assert_eq!(noted(&T), vec![0, 5, 7]);
    }
}
