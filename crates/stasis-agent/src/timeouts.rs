//! Wrappers of the libc functions whose relative timeout the kernel does
//! not update (poll, epoll_wait, epoll_pwait, nanosleep, clock_nanosleep,
//! usleep, semtimedop; sigtimedwait in `sigwait.rs`): each keeps a
//! deadline and, when our signal cut the call short (`eintr` marks it so),
//! calls again with the time left. docs/signals.md lists what is covered.

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::signals::next_symbol;
use crate::threads;

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

fn ts_ns(ts: &libc::timespec) -> i64 {
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

fn ns_ts(ns: i64) -> libc::timespec {
    libc::timespec { tv_sec: ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000 }
}

pub fn errno() -> c_int {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Runs `call(time_left_ns)` until it ends for another reason than our
/// signal; `call` returns its result and whether it failed with EINTR.
pub fn keep_time<R>(clock: libc::clockid_t, total_ns: i64, mut call: impl FnMut(i64) -> (R, bool)) -> R {
    let Some(e) = threads::mine() else { return call(total_ns).0 };
    let start = now_ns(clock);
    // A program handler run inside a wrapper may call another one.
    let outer = e.wrapper_nr.swap(1, Ordering::AcqRel);
    let mut left = total_ns;
    let r = loop {
        e.interrupted.store(false, Ordering::Release);
        let (r, eintr) = call(left);
        if !(eintr && e.interrupted.swap(false, Ordering::AcqRel)) || left == 0 {
            break r;
        }
        // Never more than asked, never less than what is left (a restored
        // process's clock may have moved either way).
        left = (total_ns - (now_ns(clock) - start)).clamp(0, total_ns);
    };
    e.wrapper_nr.store(outer, Ordering::Release);
    if outer == 0 {
        e.release_if_idle();
    }
    r
}

macro_rules! real {
    ($cache:ident, $name:literal, $ty:ty) => {{
        let f = next_symbol(&$cache, $name);
        // SAFETY: libc's function of that name has this signature.
        unsafe { std::mem::transmute::<usize, $ty>(f) }
    }};
}

static REAL_POLL: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_WAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_PWAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_NANOSLEEP: AtomicUsize = AtomicUsize::new(0);
static REAL_CLOCK_NANOSLEEP: AtomicUsize = AtomicUsize::new(0);
static REAL_SEMTIMEDOP: AtomicUsize = AtomicUsize::new(0);

pub fn resolve_real_functions() {
    next_symbol(&REAL_POLL, c"poll");
    next_symbol(&REAL_EPOLL_WAIT, c"epoll_wait");
    next_symbol(&REAL_EPOLL_PWAIT, c"epoll_pwait");
    next_symbol(&REAL_NANOSLEEP, c"nanosleep");
    next_symbol(&REAL_CLOCK_NANOSLEEP, c"clock_nanosleep");
    next_symbol(&REAL_SEMTIMEDOP, c"semtimedop");
}

fn ms_ceil(ns: i64) -> c_int {
    ((ns + 999_999) / 1_000_000).min(i64::from(c_int::MAX)) as c_int
}

type PollFn = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int;
type EpollWaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int;
type EpollPwaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int, *const libc::sigset_t) -> c_int;
type NanosleepFn = unsafe extern "C" fn(*const libc::timespec, *mut libc::timespec) -> c_int;
type ClockNanosleepFn =
    unsafe extern "C" fn(libc::clockid_t, c_int, *const libc::timespec, *mut libc::timespec) -> c_int;
type SemtimedopFn = unsafe extern "C" fn(c_int, *mut libc::sembuf, libc::size_t, *const libc::timespec) -> c_int;

/// # Safety
/// Same contract as libc's poll.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let f = real!(REAL_POLL, c"poll", PollFn);
    if timeout <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { f(fds, n, timeout) };
    }
    keep_time(libc::CLOCK_MONOTONIC, i64::from(timeout) * 1_000_000, |left| {
        // SAFETY: forwarded with the time left.
        let r = unsafe { f(fds, n, ms_ceil(left)) };
        (r, r < 0 && errno() == libc::EINTR)
    })
}

/// # Safety
/// Same contract as libc's epoll_wait.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn epoll_wait(ep: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    let f = real!(REAL_EPOLL_WAIT, c"epoll_wait", EpollWaitFn);
    if timeout <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { f(ep, ev, max, timeout) };
    }
    keep_time(libc::CLOCK_MONOTONIC, i64::from(timeout) * 1_000_000, |left| {
        // SAFETY: forwarded with the time left.
        let r = unsafe { f(ep, ev, max, ms_ceil(left)) };
        (r, r < 0 && errno() == libc::EINTR)
    })
}

/// # Safety
/// Same contract as libc's epoll_pwait.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn epoll_pwait(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    let f = real!(REAL_EPOLL_PWAIT, c"epoll_pwait", EpollPwaitFn);
    // SAFETY: `mask` is null or valid (caller's contract).
    let copy = (!mask.is_null()).then(|| unsafe { crate::signals::set_without_ours(mask) });
    let mask = copy.as_ref().map_or(std::ptr::null(), |m| m as *const libc::sigset_t);
    if timeout <= 0 {
        // SAFETY: forwarded, with our signal left open.
        return unsafe { f(ep, ev, max, timeout, mask) };
    }
    keep_time(libc::CLOCK_MONOTONIC, i64::from(timeout) * 1_000_000, |left| {
        // SAFETY: forwarded with the time left.
        let r = unsafe { f(ep, ev, max, ms_ceil(left), mask) };
        (r, r < 0 && errno() == libc::EINTR)
    })
}

/// # Safety
/// Same contract as libc's nanosleep.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> c_int {
    let f = real!(REAL_NANOSLEEP, c"nanosleep", NanosleepFn);
    if req.is_null() {
        // SAFETY: forwarded unchanged; libc reports EFAULT.
        return unsafe { f(req, rem) };
    }
    // SAFETY: `req` is valid (caller's contract).
    let (total, nsec) = unsafe { (ts_ns(&*req), (*req).tv_nsec) };
    if total <= 0 || nsec >= 1_000_000_000 {
        // SAFETY: forwarded unchanged (nothing to wait, or EINVAL).
        return unsafe { f(req, rem) };
    }
    keep_time(libc::CLOCK_MONOTONIC, total, |left| {
        let ts = ns_ts(left);
        // SAFETY: forwarded with the time left; `rem` as given.
        let r = unsafe { f(&ts, rem) };
        (r, r < 0 && errno() == libc::EINTR)
    })
}

/// # Safety
/// Same contract as libc's clock_nanosleep.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> c_int {
    let f = real!(REAL_CLOCK_NANOSLEEP, c"clock_nanosleep", ClockNanosleepFn);
    if req.is_null() || flags & libc::TIMER_ABSTIME != 0 {
        // SAFETY: forwarded unchanged; an absolute deadline restarts as is.
        return unsafe { f(clock, flags, req, rem) };
    }
    // SAFETY: `req` is valid (caller's contract).
    let (total, nsec) = unsafe { (ts_ns(&*req), (*req).tv_nsec) };
    if total <= 0 || nsec >= 1_000_000_000 {
        // SAFETY: forwarded unchanged.
        return unsafe { f(clock, flags, req, rem) };
    }
    keep_time(clock, total, |left| {
        let ts = ns_ts(left);
        // SAFETY: forwarded with the time left; returns an error number.
        let r = unsafe { f(clock, flags, &ts, rem) };
        (r, r == libc::EINTR)
    })
}

/// # Safety
/// Same contract as libc's usleep (glibc's calls its own nanosleep, which
/// no wrapper sees).
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn usleep(us: libc::useconds_t) -> c_int {
    let ts = ns_ts(i64::from(us) * 1000);
    // SAFETY: a valid request, no remainder wanted.
    unsafe { nanosleep(&ts, std::ptr::null_mut()) }
}

/// # Safety
/// Same contract as libc's semtimedop.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn semtimedop(
    id: c_int,
    ops: *mut libc::sembuf,
    n: libc::size_t,
    timeout: *const libc::timespec,
) -> c_int {
    crate::ipc::note_sem(id);
    let f = real!(REAL_SEMTIMEDOP, c"semtimedop", SemtimedopFn);
    if timeout.is_null() {
        // SAFETY: forwarded unchanged.
        return unsafe { f(id, ops, n, timeout) };
    }
    // SAFETY: `timeout` is valid (caller's contract).
    let total = unsafe { ts_ns(&*timeout) };
    if total <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { f(id, ops, n, timeout) };
    }
    keep_time(libc::CLOCK_MONOTONIC, total, |left| {
        let ts = ns_ts(left);
        // SAFETY: forwarded with the time left.
        let r = unsafe { f(id, ops, n, &ts) };
        (r, r < 0 && errno() == libc::EINTR)
    })
}
