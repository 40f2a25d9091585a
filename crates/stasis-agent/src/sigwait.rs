//! sigwait and friends, and the calls that wait with a mask of their own
//! (ppoll, pselect): they never take or block the checkpoint signal (a thread
//! that blocks everything and waits on the full set would otherwise
//! swallow it, and no checkpoint could stop it), and they still return the
//! program's own signals on that number, which the agent's handler holds
//! for them (`progsig`).

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::signals::{CKPT_SIGNAL, next_symbol, set_without_ours};
use crate::{progsig, threads, timeouts};

static REAL_SIGTIMEDWAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGNALFD: AtomicUsize = AtomicUsize::new(0);

type SigtimedwaitFn = unsafe extern "C" fn(*const libc::sigset_t, *mut libc::siginfo_t, *const libc::timespec) -> c_int;
type SignalfdFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, c_int) -> c_int;

pub fn resolve_real_functions() {
    next_symbol(&REAL_SIGTIMEDWAIT, c"sigtimedwait");
    next_symbol(&REAL_SIGNALFD, c"signalfd");
    resolve_mask_functions();
}

fn real_sigtimedwait() -> SigtimedwaitFn {
    let f = next_symbol(&REAL_SIGTIMEDWAIT, c"sigtimedwait");
    // SAFETY: libc's sigtimedwait has this signature.
    unsafe { std::mem::transmute::<usize, SigtimedwaitFn>(f) }
}

fn set_errno(e: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// The common body: waits for a signal of `set` (ours taken out), for at
/// most `timeout` (null: no limit), keeping the time across checkpoints;
/// a program signal on our number held for this thread counts as arrived.
///
/// # Safety
/// `set` valid; `info` null or writable; `timeout` null or valid.
unsafe fn wait(set: *const libc::sigset_t, info: *mut libc::siginfo_t, timeout: *const libc::timespec) -> c_int {
    let real = real_sigtimedwait();
    let sig = CKPT_SIGNAL.load(Ordering::Relaxed);
    // SAFETY: `set` is valid (caller's contract).
    let wants_ours = sig > 0 && unsafe { libc::sigismember(set, sig) } == 1;
    if sig <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { real(set, info, timeout) };
    }
    // SAFETY: as above.
    let copy = unsafe { set_without_ours(set) };
    let entry = if wants_ours { threads::mine() } else { None };
    if let Some(e) = entry {
        e.waits_for_ours.store(true, Ordering::Release);
    }
    let took_held = |r: &mut c_int| {
        if wants_ours && progsig::take_held(info) {
            *r = sig;
            true
        } else {
            false
        }
    };
    let mut r = 0;
    if !took_held(&mut r) {
        r = if timeout.is_null() {
            // No timeout: our interruptions are restarted in place.
            // SAFETY: forwarded with our copy of the set.
            unsafe { real(&copy, info, timeout) }
        } else {
            // SAFETY: `timeout` is valid (caller's contract).
            let total = unsafe { (*timeout).tv_sec.saturating_mul(1_000_000_000).saturating_add((*timeout).tv_nsec) };
            timeouts::keep_time(libc::CLOCK_MONOTONIC, total.max(0), |left| {
                let ts = libc::timespec { tv_sec: left / 1_000_000_000, tv_nsec: left % 1_000_000_000 };
                // SAFETY: forwarded with our copy of the set and the time left.
                let r = unsafe { real(&copy, info, &ts) };
                (r, r < 0 && timeouts::errno() == libc::EINTR)
            })
        };
        if r < 0 && timeouts::errno() == libc::EINTR {
            // Interrupted by the program's signal on our number: it is the
            // one waited for.
            took_held(&mut r);
        }
    }
    if let Some(e) = entry {
        e.waits_for_ours.store(false, Ordering::Release);
        e.release_if_idle();
    }
    r
}

/// # Safety
/// Same contract as libc's sigtimedwait.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn sigtimedwait(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
    timeout: *const libc::timespec,
) -> c_int {
    if set.is_null() {
        // SAFETY: forwarded unchanged; libc reports EFAULT.
        return unsafe { real_sigtimedwait()(set, info, timeout) };
    }
    // SAFETY: the caller's contract.
    unsafe { wait(set, info, timeout) }
}

/// # Safety
/// Same contract as libc's sigwaitinfo.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn sigwaitinfo(set: *const libc::sigset_t, info: *mut libc::siginfo_t) -> c_int {
    // SAFETY: the caller's contract; no timeout.
    unsafe { sigtimedwait(set, info, std::ptr::null()) }
}

/// # Safety
/// Same contract as libc's sigwait (which never fails with EINTR).
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int {
    if set.is_null() {
        return libc::EFAULT;
    }
    loop {
        // SAFETY: the caller's contract; no timeout.
        let r = unsafe { wait(set, std::ptr::null_mut(), std::ptr::null()) };
        if r > 0 {
            if !sig.is_null() {
                // SAFETY: the caller gave a writable int.
                unsafe { *sig = r };
            }
            return 0;
        }
        let e = timeouts::errno();
        if e != libc::EINTR {
            set_errno(e);
            return e;
        }
    }
}

/// # Safety
/// Same contract as libc's signalfd.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int {
    let f = next_symbol(&REAL_SIGNALFD, c"signalfd");
    // SAFETY: libc's signalfd has this signature.
    let f = unsafe { std::mem::transmute::<usize, SignalfdFn>(f) };
    if mask.is_null() || CKPT_SIGNAL.load(Ordering::Relaxed) <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { f(fd, mask, flags) };
    }
    // SAFETY: `mask` is valid (caller's contract); passed as our copy.
    unsafe {
        let copy = set_without_ours(mask);
        f(fd, &copy, flags)
    }
}

// ---- calls that wait with a mask of their own ---------------------------------

static REAL_PPOLL: AtomicUsize = AtomicUsize::new(0);
static REAL_PSELECT: AtomicUsize = AtomicUsize::new(0);

type PpollFn =
    unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, *const libc::timespec, *const libc::sigset_t) -> c_int;
type PselectFn = unsafe extern "C" fn(
    c_int,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *const libc::timespec,
    *const libc::sigset_t,
) -> c_int;

pub fn resolve_mask_functions() {
    next_symbol(&REAL_PPOLL, c"ppoll");
    next_symbol(&REAL_PSELECT, c"pselect");
}

/// `mask` without our signal, in `copy` (null stays null).
///
/// # Safety
/// `mask` is null or valid.
unsafe fn open_ours(mask: *const libc::sigset_t, copy: &mut libc::sigset_t) -> *const libc::sigset_t {
    if mask.is_null() || CKPT_SIGNAL.load(Ordering::Relaxed) <= 0 {
        return mask;
    }
    // SAFETY: `mask` is valid (caller's contract).
    *copy = unsafe { set_without_ours(mask) };
    copy
}

/// # Safety
/// Same contract as libc's ppoll. The kernel writes the time left into
/// the timeout, so a restart in place keeps the time (see `eintr`).
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let f = next_symbol(&REAL_PPOLL, c"ppoll");
    // SAFETY: libc's ppoll has this signature.
    let f = unsafe { std::mem::transmute::<usize, PpollFn>(f) };
    // SAFETY: an all-zero sigset_t is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: forwarded with our signal left open.
    unsafe { f(fds, n, timeout, open_ours(mask, &mut copy)) }
}

/// # Safety
/// Same contract as libc's pselect.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let f = next_symbol(&REAL_PSELECT, c"pselect");
    // SAFETY: libc's pselect has this signature.
    let f = unsafe { std::mem::transmute::<usize, PselectFn>(f) };
    // SAFETY: an all-zero sigset_t is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: forwarded with our signal left open.
    unsafe { f(nfds, r, w, e, timeout, open_ours(mask, &mut copy)) }
}
