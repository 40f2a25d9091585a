//! The checkpoint signal: stopping threads, and the libc wrappers that keep
//! the program from blocking or replacing that signal.
//!
//! A stopped thread waits inside the handler; the kernel's signal frame on
//! its stack already holds its whole user context (registers, FPU and
//! vector state, signal mask, alternate stack), so the handler records
//! where that frame is and nothing else. Nothing here allocates or takes a
//! lock: handlers run at any point of the program.

use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::sys;

/// Most threads a process may have for a checkpoint to succeed.
pub const MAX_THREADS: usize = 4096;

/// What a stopped thread leaves for the checkpoint thread.
pub struct Slot {
    pub tid: AtomicI32,
    /// Address of the kernel `ucontext` the handler received.
    pub uc: AtomicU64,
    pub fs_base: AtomicU64,
    pub gs_base: AtomicU64,
    pub clear_child_tid: AtomicU64,
    pub robust_list: AtomicU64,
    pub robust_list_len: AtomicU64,
    /// The thread's name (PR_GET_NAME, 16 bytes NUL-padded): asked by the
    /// thread itself, not read from /proc per thread during the pause.
    pub name: [AtomicU64; 2],
}

impl Slot {
    // Only used to initialise the statics below, one copy each.
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        tid: AtomicI32::new(0),
        uc: AtomicU64::new(0),
        fs_base: AtomicU64::new(0),
        gs_base: AtomicU64::new(0),
        clear_child_tid: AtomicU64::new(0),
        robust_list: AtomicU64::new(0),
        robust_list_len: AtomicU64::new(0),
        name: [const { AtomicU64::new(0) }; 2],
    };

    /// Records the calling thread's state next to its frame.
    pub fn fill(&self, uc: *mut c_void) {
        let (robust, robust_len) = sys::robust_list();
        self.tid.store(sys::gettid(), Ordering::Relaxed);
        self.uc.store(uc as u64, Ordering::Relaxed);
        self.fs_base.store(sys::fs_base(), Ordering::Relaxed);
        self.gs_base.store(sys::gs_base(), Ordering::Relaxed);
        self.clear_child_tid.store(sys::tid_address(), Ordering::Relaxed);
        self.robust_list.store(robust, Ordering::Relaxed);
        self.robust_list_len.store(robust_len, Ordering::Relaxed);
        let name = sys::thread_name();
        for (w, v) in self.name.iter().zip(name) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// The name `fill` recorded.
    pub fn name(&self) -> String {
        let mut bytes = [0u8; 16];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(&self.name) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..len]).into_owned()
    }
}

pub static SLOTS: [Slot; MAX_THREADS] = [Slot::EMPTY; MAX_THREADS];
/// The checkpoint thread's own slot.
pub static CT_SLOT: Slot = Slot::EMPTY;
/// Next free slot; threads stopped so far.
pub static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
pub static STOPPED: AtomicU32 = AtomicU32::new(0);
/// How many stopped threads the checkpoint thread waits for: the thread
/// that makes `STOPPED` reach it wakes the checkpoint thread (one wake, not
/// one per thread).
pub static STOP_TARGET: AtomicU32 = AtomicU32::new(u32::MAX);
/// Bumped to release stopped threads.
pub static RESUME: AtomicU32 = AtomicU32::new(0);
/// Set while a checkpoint wants threads to stop; a stray signal otherwise
/// is ignored.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
pub static CT_TID: AtomicI32 = AtomicI32::new(0);
/// The signal number in use (set once at start-up).
pub static CKPT_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Runs agent code that allocates on a program thread (a wrapper), with the
/// checkpoint signal blocked: stopped in the middle, the thread could hold
/// the agent allocator's lock, which the checkpoint thread needs. A
/// checkpoint signal that comes meanwhile is taken right after.
pub fn unstoppable<R>(f: impl FnOnce() -> R) -> R {
    let sig = CKPT_SIGNAL.load(Ordering::Acquire);
    if sig > 0 {
        sys::sigmask_one(libc::SIG_BLOCK, sig);
    }
    let r = f();
    if sig > 0 {
        sys::sigmask_one(libc::SIG_UNBLOCK, sig);
    }
    r
}

/// In a child of fork(): nothing of the parent's checkpoint goes on here
/// (pending signals are not inherited, but the flags are).
///
/// Each word is written only if it changes: a fork child that writes a page
/// of the parent's gets a copy of it (a page fault per page, per fork).
pub fn reset_after_fork() {
    crate::threads::reset_after_fork();
    crate::timerthread::reset_after_fork();
    if STOP_REQUESTED.load(Ordering::Relaxed) {
        STOP_REQUESTED.store(false, Ordering::Release);
    }
    sys::store_if_changed_usize(&NEXT_SLOT, 0);
    sys::store_if_changed_u32(&STOPPED, 0);
    if CT_TID.load(Ordering::Relaxed) != 0 {
        CT_TID.store(0, Ordering::Release);
    }
}

/// The block the restorer pokes; layout in `stasis_plan::restore_info`.
#[repr(C)]
pub struct RestoreInfo {
    pub magic: AtomicU64,
    pub checkout: AtomicU32,
    pub phase: AtomicU32,
    pub blob_start: AtomicU64,
    pub blob_len: AtomicU64,
    pub restored: AtomicU64,
    pub generation: AtomicU64,
    /// The images memory is mapped from (`imagemap`).
    pub images: crate::imagemap::Table,
    /// The temporary directory restart was told (`restore_info::TMPDIR_*`).
    pub tmpdir_len: AtomicU64,
    pub tmpdir: [AtomicU64; stasis_plan::restore_info::TMPDIR_MAX / 8],
}

pub static RESTORE_INFO: RestoreInfo = RestoreInfo {
    magic: AtomicU64::new(stasis_plan::restore_info::MAGIC),
    checkout: AtomicU32::new(0),
    phase: AtomicU32::new(0),
    blob_start: AtomicU64::new(0),
    blob_len: AtomicU64::new(0),
    restored: AtomicU64::new(0),
    generation: AtomicU64::new(0),
    images: crate::imagemap::Table::new(),
    tmpdir_len: AtomicU64::new(0),
    tmpdir: [const { AtomicU64::new(0) }; stasis_plan::restore_info::TMPDIR_MAX / 8],
};

/// The temporary directory the restart that brought this process back
/// was told, if any; read once (cleared), so that a later restart that
/// names none does not find this one's.
pub fn take_restart_tmpdir() -> Option<Vec<u8>> {
    let len = RESTORE_INFO.tmpdir_len.swap(0, Ordering::AcqRel) as usize;
    if len == 0 || len > stasis_plan::restore_info::TMPDIR_MAX {
        return None;
    }
    let mut bytes: Vec<u8> = RESTORE_INFO.tmpdir.iter().flat_map(|w| w.load(Ordering::Acquire).to_le_bytes()).collect();
    bytes.truncate(len);
    Some(bytes)
}

/// Runs the checkpoint itself when the checkpoint thread signals itself.
pub type SelfHandler = fn(*mut c_void);
static SELF_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// A random value the agent puts in the signals it sends itself, so that
/// the program's own signals on the same number are told apart. A fork
/// child keeps its parent's: the child's memory is a copy anyway, and the
/// check also wants the sender to be this very process (si_pid).
static COOKIE: AtomicU64 = AtomicU64::new(0);

/// Sends the checkpoint signal to thread `tid` of this process, marked as
/// the agent's.
pub fn send_ours(tid: i32) -> sys::SysResult {
    let sig = CKPT_SIGNAL.load(Ordering::Acquire);
    let pid = sys::getpid();
    let info = sys::QueuedInfo::new(sig, libc::SI_QUEUE, pid, sys::getuid(), COOKIE.load(Ordering::Relaxed));
    sys::tgsigqueueinfo(pid, tid, sig, &info)
}

/// Whether a delivery of our signal number was sent by the agent.
fn is_agents(info: *const libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: the kernel's siginfo is 128 bytes; read as the queue layout.
    let q = unsafe { &*(info as *const sys::QueuedInfo) };
    q.code == libc::SI_QUEUE && q.pid == sys::getpid() && q.value == COOKIE.load(Ordering::Relaxed)
}

extern "C" fn on_signal(sig: c_int, info: *mut libc::siginfo_t, uc: *mut c_void) {
    // SAFETY: __errno_location returns the calling thread's errno.
    let errno_ptr = unsafe { libc::__errno_location() };
    // SAFETY: as above, valid for this thread.
    let saved_errno = unsafe { *errno_ptr };

    if RESTORE_INFO.phase.load(Ordering::Acquire) == stasis_plan::restore_info::PHASE_RESTORING {
        // This thread has just left the restorer through rt_sigreturn: say so.
        if RESTORE_INFO.checkout.fetch_sub(1, Ordering::AcqRel) == 1 {
            sys::futex_wake(&RESTORE_INFO.checkout);
        }
        // The program's threads wait until the checkpoint thread has told
        // the agent where the coordinator is now (a child forked at once
        // must not inherit the old address); bounded, so that a broken
        // checkpoint thread never holds the program.
        if sys::gettid() != CT_TID.load(Ordering::Relaxed) {
            for _ in 0..100 {
                if RESTORE_INFO.phase.load(Ordering::Acquire) != stasis_plan::restore_info::PHASE_RESTORING {
                    break;
                }
                sys::futex_wait(&RESTORE_INFO.phase, stasis_plan::restore_info::PHASE_RESTORING, 100);
            }
            // The restorer queued the program's signals that were pending at
            // the checkpoint before its own: one on our number came first
            // (and stood for the restorer's), so whatever is still queued
            // on it goes to the program. Then the one stashed at the stop.
            crate::progsig::stash_pending(sig, |_| false);
            crate::progsig::unstash(sig);
            // And those sent to the process (`pending.rs`).
            crate::pending::give_back();
            // The call our signal cut short at the checkpoint.
            crate::eintr::restored(sig, uc);
        }
    } else if !is_agents(info) {
        crate::progsig::deliver(sig, info, uc);
    } else if sys::gettid() == CT_TID.load(Ordering::Relaxed) {
        let f = SELF_HANDLER.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only ever set from a `SelfHandler` in `install`.
            let f: SelfHandler = unsafe { std::mem::transmute::<usize, SelfHandler>(f) };
            f(uc);
        }
    } else {
        // What becomes of a system call our signal cut short is decided
        // now, and carried out as the thread goes on (here, or in a
        // restored process as it leaves the restorer).
        let fix = crate::eintr::prepare(sig, uc);
        if STOP_REQUESTED.load(Ordering::Acquire) {
            crate::progsig::stash_pending(sig, is_agents);
            let round = RESUME.load(Ordering::Acquire);
            let i = NEXT_SLOT.fetch_add(1, Ordering::AcqRel);
            if let Some(slot) = SLOTS.get(i) {
                slot.fill(uc);
            }
            if STOPPED.fetch_add(1, Ordering::SeqCst) + 1 >= STOP_TARGET.load(Ordering::SeqCst) {
                sys::futex_wake(&STOPPED);
            }
            while RESUME.load(Ordering::Acquire) == round {
                sys::futex_wait(&RESUME, round, 0);
            }
        }
        crate::progsig::unstash(sig);
        crate::pending::give_back();
        // A program signal that came meanwhile is owed its EINTR.
        crate::eintr::confirm(sig, uc, fix);
    }
    // SAFETY: as above.
    unsafe { *errno_ptr = saved_errno };
}

/// Installs the handler for `sig`; `self_handler` runs when the checkpoint
/// thread signals itself.
pub fn install(sig: c_int, self_handler: SelfHandler) -> Result<(), i32> {
    SELF_HANDLER.store(self_handler as usize, Ordering::Release);
    COOKIE.store(sys::random_u64(), Ordering::Relaxed);
    CKPT_SIGNAL.store(sig, Ordering::Release);
    // SAFETY: a zeroed sigaction is a valid starting point.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_signal as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    let real = real_sigaction();
    // SAFETY: `act` is fully initialised; the old action is not wanted.
    let r = unsafe { real(sig, &act, std::ptr::null_mut()) };
    if r == 0 { Ok(()) } else { Err(sig) }
}

// ---- libc wrappers ----------------------------------------------------------

type SigactionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
type SigmaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;
type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
type SigsuspendFn = unsafe extern "C" fn(*const libc::sigset_t) -> c_int;

static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGPROCMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_PTHREAD_SIGMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGNAL: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGSUSPEND: AtomicUsize = AtomicUsize::new(0);

/// The next definition of `name` after ours (libc's).
pub(crate) fn next_symbol(cache: &AtomicUsize, name: &CStr) -> usize {
    let mut f = cache.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        cache.store(f, Ordering::Release);
    }
    f
}

/// Resolves every wrapped function now, so that no wrapper has to call
/// dlsym later (possibly inside a signal handler).
pub fn resolve_real_functions() {
    next_symbol(&REAL_SIGACTION, c"sigaction");
    next_symbol(&REAL_SIGPROCMASK, c"sigprocmask");
    next_symbol(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask");
    next_symbol(&REAL_SIGNAL, c"signal");
    next_symbol(&REAL_SIGSUSPEND, c"sigsuspend");
}

pub(crate) fn real_sigaction() -> SigactionFn {
    let f = next_symbol(&REAL_SIGACTION, c"sigaction");
    // SAFETY: libc's sigaction has this signature; dlsym found it.
    unsafe { std::mem::transmute::<usize, SigactionFn>(f) }
}

pub(crate) fn is_ours(sig: c_int) -> bool {
    let ours = CKPT_SIGNAL.load(Ordering::Relaxed);
    ours != 0 && sig == ours
}

/// Our signal's bit, as a kernel sigset (0 before start-up).
pub(crate) fn our_bit() -> u64 {
    let ours = CKPT_SIGNAL.load(Ordering::Relaxed);
    if ours > 0 { crate::progsig::bit(ours) } else { 0 }
}

/// A copy of the libc sigset at `set` without our signal.
///
/// # Safety
/// `set` points to a valid sigset_t.
pub(crate) unsafe fn set_without_ours(set: *const libc::sigset_t) -> libc::sigset_t {
    // SAFETY: `set` is valid for reads (caller's contract).
    let mut copy = unsafe { *set };
    // SAFETY: `copy` is a valid sigset_t.
    unsafe { libc::sigdelset(&mut copy, CKPT_SIGNAL.load(Ordering::Relaxed)) };
    copy
}

/// # Safety
/// Same contract as libc's sigaction.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if is_ours(sig) {
        if !old.is_null() {
            // SAFETY: the caller gave a writable sigaction.
            unsafe { crate::progsig::SHADOW.read(old) };
        }
        if !act.is_null() {
            // SAFETY: the caller gave a readable sigaction.
            unsafe { crate::progsig::SHADOW.write(act) };
        }
        return 0;
    }
    if !act.is_null() {
        // The program's handlers must not hold our signal off while they
        // run: a checkpoint then waits for them, and our signal, taken
        // right after, would land on the system call they interrupted.
        // SAFETY: the caller gave a readable sigaction; we pass a copy.
        let mut copy = unsafe { *act };
        // SAFETY: `copy.sa_mask` is a valid sigset_t.
        unsafe { libc::sigdelset(&mut copy.sa_mask, CKPT_SIGNAL.load(Ordering::Relaxed)) };
        // SAFETY: forwarded to libc with a valid copy.
        return unsafe { real_sigaction()(sig, &copy, old) };
    }
    // SAFETY: forwarded unchanged to libc.
    unsafe { real_sigaction()(sig, act, old) }
}

/// # Safety
/// Same contract as libc's signal.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if is_ours(sig) {
        return crate::progsig::SHADOW.set_handler(handler);
    }
    let f = next_symbol(&REAL_SIGNAL, c"signal");
    // SAFETY: libc's signal has this signature.
    unsafe { std::mem::transmute::<usize, SignalFn>(f)(sig, handler) }
}

/// Calls a mask-setting function with our signal removed from `set`; the
/// program's wish about our signal is kept per thread instead
/// (`progsig`), and shown back in `old`.
///
/// # Safety
/// `set` is null or points to a valid sigset_t; `old` is null or writable;
/// `f` has the SigmaskFn contract.
unsafe fn without_ours(f: SigmaskFn, how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let sig = CKPT_SIGNAL.load(Ordering::Relaxed);
    if sig <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { f(how, set, old) };
    }
    // No gettid unless some thread blocks our signal (program side).
    let was_blocked =
        crate::threads::BLOCKERS.load(Ordering::Acquire) != 0 && crate::progsig::program_blocks(sys::gettid());
    let r = if set.is_null() || how == libc::SIG_UNBLOCK {
        // SAFETY: forwarded unchanged.
        unsafe { f(how, set, old) }
    } else {
        // SAFETY: `set` is valid (caller's contract).
        let copy = unsafe { set_without_ours(set) };
        // SAFETY: forwarded with our own valid copy.
        unsafe { f(how, &copy, old) }
    };
    if r != 0 {
        return r;
    }
    if was_blocked && !old.is_null() {
        // SAFETY: `old` was just written by libc.
        unsafe { libc::sigaddset(old, sig) };
    }
    if !set.is_null() {
        // SAFETY: `set` is valid (caller's contract).
        let asks = unsafe { libc::sigismember(set, sig) } == 1;
        let blocked = match how {
            libc::SIG_BLOCK => was_blocked || asks,
            libc::SIG_UNBLOCK => was_blocked && !asks,
            libc::SIG_SETMASK => asks,
            _ => was_blocked,
        };
        if blocked != was_blocked {
            crate::progsig::set_program_blocks(sig, blocked);
        }
    }
    r
}

/// # Safety
/// Same contract as libc's sigprocmask.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let f = next_symbol(&REAL_SIGPROCMASK, c"sigprocmask");
    // SAFETY: libc's sigprocmask has this signature; arguments as given.
    unsafe { without_ours(std::mem::transmute::<usize, SigmaskFn>(f), how, set, old) }
}

/// # Safety
/// Same contract as libc's pthread_sigmask.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let f = next_symbol(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask");
    // SAFETY: libc's pthread_sigmask has this signature; arguments as given.
    unsafe { without_ours(std::mem::transmute::<usize, SigmaskFn>(f), how, set, old) }
}

/// # Safety
/// Same contract as libc's sigsuspend.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigsuspend(mask: *const libc::sigset_t) -> c_int {
    let f = next_symbol(&REAL_SIGSUSPEND, c"sigsuspend");
    if mask.is_null() {
        // SAFETY: forwarded unchanged; libc reports EFAULT.
        return unsafe { std::mem::transmute::<usize, SigsuspendFn>(f)(mask) };
    }
    // SAFETY: `mask` is valid (caller's contract); our copy is valid.
    unsafe {
        let copy = set_without_ours(mask);
        std::mem::transmute::<usize, SigsuspendFn>(f)(&copy)
    }
}
