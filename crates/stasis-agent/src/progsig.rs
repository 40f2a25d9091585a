//! The program's own use of the checkpoint signal's number.
//!
//! The kernel's disposition of that number is always the agent's handler;
//! the program's idea of it (its `sigaction`, its mask bit) is kept here
//! and honoured by hand: a signal on our number that the agent did not send
//! (see `signals::is_agents`) is the program's, and is run through its
//! handler as the kernel would have, held while the program has the signal
//! blocked, ignored or given its default action.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::{sys, threads};

/// The program's sigaction for our number: handler, flags, mask (kernel
/// sigset). Written by the sigaction wrapper, read by the handler; a
/// handler that sees a half-written update gets one or the other field set,
/// as it could across two sigaction calls.
pub struct Shadow {
    handler: AtomicUsize,
    flags: AtomicU64,
    mask: AtomicU64,
}

pub static SHADOW: Shadow =
    Shadow { handler: AtomicUsize::new(libc::SIG_DFL), flags: AtomicU64::new(0), mask: AtomicU64::new(0) };

pub fn bit(sig: c_int) -> u64 {
    1u64 << (sig - 1)
}

/// A libc sigset's first 64 signals as a kernel sigset.
///
/// # Safety
/// `set` points to a valid sigset_t.
pub unsafe fn kernel_set(set: *const libc::sigset_t) -> u64 {
    // SAFETY: a sigset_t starts with the kernel's 64-bit word (x86_64).
    unsafe { *(set as *const u64) }
}

impl Shadow {
    /// Writes the program's current action into `old`.
    ///
    /// # Safety
    /// `old` points to a writable sigaction.
    pub unsafe fn read(&self, old: *mut libc::sigaction) {
        // SAFETY: the caller's promise; a zeroed sigaction is valid.
        unsafe {
            std::ptr::write_bytes(old, 0, 1);
            (*old).sa_sigaction = self.handler.load(Ordering::Relaxed);
            (*old).sa_flags = self.flags.load(Ordering::Relaxed) as c_int;
            *((&raw mut (*old).sa_mask) as *mut u64) = self.mask.load(Ordering::Relaxed);
        }
    }

    /// Takes the program's new action from `act`.
    ///
    /// # Safety
    /// `act` points to a readable sigaction.
    pub unsafe fn write(&self, act: *const libc::sigaction) {
        // SAFETY: the caller's promise.
        let (h, f, m) = unsafe { ((*act).sa_sigaction, (*act).sa_flags, kernel_set(&(*act).sa_mask)) };
        self.flags.store(f as u32 as u64, Ordering::Relaxed);
        self.mask.store(m, Ordering::Relaxed);
        self.handler.store(h, Ordering::Release);
    }

    /// `signal()`: a handler with SA_RESTART, as glibc's signal sets it.
    pub fn set_handler(&self, h: libc::sighandler_t) -> libc::sighandler_t {
        self.flags.store(libc::SA_RESTART as u32 as u64, Ordering::Relaxed);
        self.mask.store(0, Ordering::Relaxed);
        self.handler.swap(h, Ordering::AcqRel)
    }
}

/// Whether the program has our signal blocked on the calling thread.
pub fn program_blocks(tid: i32) -> bool {
    threads::BLOCKERS.load(Ordering::Acquire) != 0
        && threads::find(tid).is_some_and(|e| e.blocks_ours.load(Ordering::Relaxed))
}

/// Records the program's wish to have our signal blocked (or not) on the
/// calling thread; on unblocking, a signal held meanwhile is queued again.
pub fn set_program_blocks(sig: c_int, blocked: bool) {
    let Some(e) = threads::mine() else { return };
    let was = e.blocks_ours.swap(blocked, Ordering::AcqRel);
    if was != blocked {
        if blocked {
            threads::BLOCKERS.fetch_add(1, Ordering::AcqRel);
        } else {
            threads::BLOCKERS.fetch_sub(1, Ordering::AcqRel);
        }
    }
    if !blocked && e.held.load(Ordering::Acquire) {
        requeue_held(e, sig);
    }
    e.release_if_idle();
}

fn requeue_held(e: &threads::ThreadState, sig: c_int) {
    let mut info = [0u64; 16];
    for (w, v) in info.iter_mut().zip(&e.held_info) {
        *w = v.load(Ordering::Relaxed);
    }
    e.held.store(false, Ordering::Release);
    // SAFETY: `info` is 128 bytes.
    let _ = unsafe { sys::tgsigqueueinfo_raw(sys::getpid(), sys::gettid(), sig, info.as_ptr() as *const u8) };
}

/// Takes the signal held for the calling thread, if any (for sigwait and
/// friends, which take it instead of a handler).
pub fn take_held(info_out: *mut libc::siginfo_t) -> bool {
    let Some(e) = threads::find(sys::gettid()) else { return false };
    if !e.held.swap(false, Ordering::AcqRel) {
        return false;
    }
    if !info_out.is_null() {
        let out = info_out as *mut u64;
        for (i, v) in e.held_info.iter().enumerate() {
            // SAFETY: the caller gave a writable siginfo_t (128 bytes).
            unsafe { *out.add(i) = v.load(Ordering::Relaxed) };
        }
    }
    e.release_if_idle();
    true
}

/// Whether `sig`'s default action is to ignore it.
fn default_ignores(sig: c_int) -> bool {
    matches!(sig, libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT)
}

fn default_stops(sig: c_int) -> bool {
    matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU | libc::SIGSTOP)
}

/// Gives a program signal on our number what the kernel would have given
/// it. Runs in the agent's handler (every signal blocked).
pub fn deliver(sig: c_int, info: *mut libc::siginfo_t, uc: *mut c_void) {
    let tid = sys::gettid();
    if tid == crate::signals::CT_TID.load(Ordering::Relaxed) {
        // The checkpoint thread is the agent's: a process-wide signal that
        // reached it goes to the program's main thread instead.
        // SAFETY: the kernel's siginfo is 128 bytes.
        if unsafe { sys::tgsigqueueinfo_raw(sys::getpid(), sys::getpid(), sig, info as *const u8) }.is_ok() {
            return;
        }
    }
    crate::eintr::program_signal_at(sig, uc);
    if program_blocks(tid) {
        hold(sig, info);
        return;
    }
    let handler = SHADOW.handler.load(Ordering::Acquire);
    let flags = SHADOW.flags.load(Ordering::Relaxed) as u32 as c_int;
    match handler {
        libc::SIG_IGN => {}
        libc::SIG_DFL => default_action(sig, info),
        h => run_handler(sig, h, flags, info, uc),
    }
}

fn hold(_sig: c_int, info: *mut libc::siginfo_t) {
    let Some(e) = threads::mine() else { return };
    if e.held.load(Ordering::Acquire) {
        // One at a time, as for a standard signal pending twice.
        return;
    }
    let src = info as *const u64;
    for (i, v) in e.held_info.iter().enumerate() {
        // SAFETY: the kernel's siginfo is 128 bytes.
        v.store(unsafe { *src.add(i) }, Ordering::Relaxed);
    }
    e.held.store(true, Ordering::Release);
}

fn default_action(sig: c_int, info: *mut libc::siginfo_t) {
    if default_ignores(sig) {
        return;
    }
    if default_stops(sig) {
        let _ = sys::kill(sys::getpid(), libc::SIGSTOP);
        return;
    }
    // Terminate as the signal itself would: the default disposition back,
    // the same siginfo queued again, taken when this handler returns.
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: a valid action; the old one is not wanted.
    unsafe { crate::signals::real_sigaction()(sig, &dfl, std::ptr::null_mut()) };
    // SAFETY: the kernel's siginfo is 128 bytes.
    let _ = unsafe { sys::tgsigqueueinfo_raw(sys::getpid(), sys::gettid(), sig, info as *const u8) };
}

type InfoHandler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void);
type PlainHandler = extern "C" fn(c_int);

fn run_handler(sig: c_int, h: usize, flags: c_int, info: *mut libc::siginfo_t, uc: *mut c_void) {
    let ours = bit(sig);
    let tid = sys::gettid();
    if flags & libc::SA_RESETHAND != 0 {
        SHADOW.handler.store(libc::SIG_DFL, Ordering::Release);
        SHADOW.flags.store(0, Ordering::Relaxed);
    }
    // The mask the handler runs with, as the kernel would set it: the
    // interrupted mask, the action's mask, the signal itself unless
    // SA_NODEFER. Our own bit stays open (a checkpoint may come), the
    // program's view of it is kept in the thread table.
    let uc_ = uc as *const libc::ucontext_t;
    // SAFETY: `uc` is the kernel's ucontext for this delivery.
    let interrupted = unsafe { kernel_set(&(*uc_).uc_sigmask) };
    let mut mask = interrupted | SHADOW.mask.load(Ordering::Relaxed);
    let defer = flags & libc::SA_NODEFER == 0;
    let block_ours = defer || mask & ours != 0;
    mask &= !ours;
    let was_blocking = program_blocks(tid);
    if block_ours && !was_blocking {
        set_program_blocks(sig, true);
    }
    let handler_mask = sys::sigmask_set(libc::SIG_SETMASK, mask);
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this as an SA_SIGINFO handler.
        let f: InfoHandler = unsafe { std::mem::transmute::<usize, InfoHandler>(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: the program installed this as a one-argument handler.
        let f: PlainHandler = unsafe { std::mem::transmute::<usize, PlainHandler>(h) };
        f(sig);
    }
    sys::sigmask_set(libc::SIG_SETMASK, handler_mask);
    if block_ours && !was_blocking {
        // Not through set_program_blocks: a signal held meanwhile is queued
        // again only once this handler has returned (the kernel's mask is
        // the interrupted one again then).
        if let Some(e) = threads::find(tid) {
            if e.blocks_ours.swap(false, Ordering::AcqRel) {
                threads::BLOCKERS.fetch_sub(1, Ordering::AcqRel);
            }
            if e.held.load(Ordering::Acquire) {
                requeue_held(e, sig);
            }
            e.release_if_idle();
        }
    }
}

/// In our handler, as the thread stops: takes the program's signals on our
/// number still pending for it out of the kernel's queue (our handler
/// blocks the number, so one sent meanwhile waits there). A restart would
/// queue them again without their siginfo, and take the first for the
/// restorer's own signal. The first is kept and queued again by `unstash`;
/// further ones are kept as one, as a standard signal would be.
pub fn stash_pending(sig: c_int, is_agents: impl Fn(*const libc::siginfo_t) -> bool) {
    if sys::sigpending() & bit(sig) == 0 {
        return;
    }
    loop {
        let mut info = [0u64; 16];
        if sys::take_pending(bit(sig), &mut info).is_err() {
            return;
        }
        if is_agents(info.as_ptr() as *const libc::siginfo_t) {
            continue;
        }
        let Some(e) = threads::mine() else { return };
        if !e.stashed.load(Ordering::Relaxed) {
            for (v, w) in e.stashed_info.iter().zip(info) {
                v.store(w, Ordering::Relaxed);
            }
            e.stashed.store(true, Ordering::Release);
        }
    }
}

/// Queues again what `stash_pending` took (after the checkpoint, or in the
/// restored process); it is taken when our handler returns.
pub fn unstash(sig: c_int) {
    let Some(e) = threads::find(sys::gettid()) else { return };
    if !e.stashed.swap(false, Ordering::AcqRel) {
        return;
    }
    let mut info = [0u64; 16];
    for (w, v) in info.iter_mut().zip(&e.stashed_info) {
        *w = v.load(Ordering::Relaxed);
    }
    // SAFETY: `info` is 128 bytes.
    let _ = unsafe { sys::tgsigqueueinfo_raw(sys::getpid(), sys::gettid(), sig, info.as_ptr() as *const u8) };
    e.release_if_idle();
}

/// Whether the forking thread had our signal blocked (program side): its
/// child's only thread starts the same.
static FORK_BLOCKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn fork_prepare() {
    FORK_BLOCKS.store(program_blocks(sys::gettid()), Ordering::Release);
}

extern "C" fn fork_child() {
    // Runs after the agent's own child handler has emptied the table.
    let sig = crate::signals::CKPT_SIGNAL.load(Ordering::Acquire);
    if sig > 0 && FORK_BLOCKS.load(Ordering::Acquire) {
        set_program_blocks(sig, true);
    }
}

/// Registers the fork handlers above; after `tree::install_fork_handlers`
/// (child handlers run in the order they were registered).
pub fn install_fork_handlers() -> bool {
    // SAFETY: plain functions that live as long as the agent.
    unsafe { libc::pthread_atfork(Some(fork_prepare), None, Some(fork_child)) == 0 }
}

static REAL_SIGPENDING: AtomicUsize = AtomicUsize::new(0);

pub fn resolve_real_functions() {
    crate::signals::next_symbol(&REAL_SIGPENDING, c"sigpending");
}

/// # Safety
/// Same contract as libc's sigpending: a signal held for the program
/// (`hold`) is pending, as far as the program can tell.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigpending(set: *mut libc::sigset_t) -> c_int {
    let f = crate::signals::next_symbol(&REAL_SIGPENDING, c"sigpending");
    // SAFETY: libc's sigpending has this signature.
    let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(*mut libc::sigset_t) -> c_int>(f) };
    // SAFETY: forwarded unchanged.
    let r = unsafe { f(set) };
    let sig = crate::signals::CKPT_SIGNAL.load(Ordering::Relaxed);
    if r == 0
        && sig > 0
        && threads::BLOCKERS.load(Ordering::Acquire) != 0
        && threads::find(sys::gettid()).is_some_and(|e| e.held.load(Ordering::Acquire))
    {
        // SAFETY: `set` was just filled by libc.
        unsafe { libc::sigaddset(set, sig) };
    }
    r
}
