//! POSIX timers that notify by starting a thread (`SIGEV_THREAD`), run by
//! the agent instead of libc, as DMTCP does.
//!
//! glibc runs them with a helper thread of its own, started inside libc
//! (past our `pthread_create`) with every signal blocked, ours included,
//! and waiting in `sigwaitinfo` for the timers' signal: no checkpoint could
//! ever stop it (vim arms such a timer at start). Here the helper is
//! started through `threadstart`, so it blocks every signal but ours; each
//! timer is a kernel timer aimed at that thread (`SIGEV_THREAD_ID`), which
//! the checkpoint saves and a restart makes again like any other, and the
//! helper starts a thread running the program's function on each expiry.
//! The timer id the program gets is the kernel's, which libc's
//! timer_settime, timer_gettime, timer_getoverrun and timer_delete take.
//!
//! Nothing here allocates: the timers' functions live in a fixed table,
//! found by the index the kernel hands back in each expiry's siginfo.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crate::signals::{CKPT_SIGNAL, next_symbol};
use crate::sys;

/// The signal the helper waits for: glibc's own choice for the same job
/// (SIGCANCEL), which libc never lets a program block or wait for, so no
/// program uses it.
const TIMER_SIGNAL: c_int = 32;
/// Most `SIGEV_THREAD` timers alive at once; more are left to libc.
const TABLE: usize = 256;

struct Timer {
    /// The kernel's timer id + 1 (0: a free entry; -1: being made).
    id: AtomicI64,
    function: AtomicUsize,
    value: AtomicU64,
    /// The stack size the program's thread attributes asked for (0: libc's).
    stack: AtomicUsize,
}

static TIMERS: [Timer; TABLE] = [const {
    Timer { id: AtomicI64::new(0), function: AtomicUsize::new(0), value: AtomicU64::new(0), stack: AtomicUsize::new(0) }
}; TABLE];

/// The helper's tid; 0: none yet; -1: being started.
static HELPER: AtomicI32 = AtomicI32::new(0);

static REAL_TIMER_CREATE: AtomicUsize = AtomicUsize::new(0);
static REAL_TIMER_DELETE: AtomicUsize = AtomicUsize::new(0);

type TimerCreateFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::sigevent, *mut libc::timer_t) -> c_int;
type TimerDeleteFn = unsafe extern "C" fn(libc::timer_t) -> c_int;
type NotifyFn = unsafe extern "C" fn(u64);

pub fn resolve_real_functions() {
    next_symbol(&REAL_TIMER_CREATE, c"timer_create");
    next_symbol(&REAL_TIMER_DELETE, c"timer_delete");
}

/// In a child of fork(): timers and the helper stayed with the parent.
pub fn reset_after_fork() {
    if HELPER.load(Ordering::Relaxed) != 0 {
        HELPER.store(0, Ordering::Relaxed);
    }
    for t in &TIMERS {
        if t.id.load(Ordering::Relaxed) != 0 {
            t.id.store(0, Ordering::Relaxed);
        }
    }
}

/// The kernel sigset of the timer signal.
fn timer_set() -> u64 {
    1u64 << (TIMER_SIGNAL - 1)
}

/// The helper: waits for expiries and starts the program's function on a
/// thread of its own for each one.
extern "C-unwind" fn helper(_: *mut c_void) -> *mut c_void {
    // Every signal blocked but ours: the program's go to its other threads.
    let ours = crate::signals::our_bit();
    sys::sigmask_set(libc::SIG_SETMASK, !ours);
    HELPER.store(sys::gettid(), Ordering::Release);
    let set = timer_set();
    loop {
        let mut info = [0u64; 16];
        // SAFETY: rt_sigtimedwait reads one kernel sigset and writes one
        // 128-byte siginfo into `info`; no timeout.
        let got = unsafe {
            sys::syscall6(
                libc::SYS_rt_sigtimedwait,
                [&set as *const u64 as usize, info.as_mut_ptr() as usize, 0, 8, 0, 0],
            )
        };
        // Interrupted (a checkpoint): wait again.
        if got != Ok(TIMER_SIGNAL as usize) || (info[1] as u32 as i32) != libc::SI_TIMER {
            continue;
        }
        // The siginfo of a timer: si_value at byte 24, our table index.
        let index = info[3] as usize;
        if let Some(t) = TIMERS.get(index)
            && t.id.load(Ordering::Acquire) > 0
        {
            start_notification(index, t);
        }
    }
}

/// Starts the thread that runs timer `index`'s function.
fn start_notification(index: usize, t: &Timer) {
    // SAFETY: a zeroed pthread_attr_t is initialised by pthread_attr_init;
    // the attribute calls below take it; it is destroyed after use.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let stack = t.stack.load(Ordering::Relaxed);
        if stack != 0 {
            libc::pthread_attr_setstacksize(&mut attr, stack);
        }
        let mut thread: libc::pthread_t = 0;
        crate::threadstart::pthread_create(&mut thread, &attr, notification, index as *mut c_void);
        libc::pthread_attr_destroy(&mut attr);
    }
}

/// A notification thread: the program's function with the timer's value.
/// It inherits the helper's mask, the program's signals all blocked, as
/// libc's notification threads have them.
extern "C-unwind" fn notification(index: *mut c_void) -> *mut c_void {
    let Some(t) = TIMERS.get(index as usize) else { return std::ptr::null_mut() };
    let (function, value) = (t.function.load(Ordering::Acquire), t.value.load(Ordering::Relaxed));
    if function != 0 {
        // SAFETY: the function the program gave timer_create, of this
        // signature (a union sigval is passed as one word).
        unsafe { std::mem::transmute::<usize, NotifyFn>(function)(value) };
    }
    std::ptr::null_mut()
}

/// The helper's tid, started if need be (None: it could not be started).
fn helper_tid() -> Option<i32> {
    loop {
        match HELPER.load(Ordering::Acquire) {
            0 => {
                if HELPER.compare_exchange(0, -1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    continue;
                }
                // SAFETY: a zeroed pthread_attr_t is initialised by
                // pthread_attr_init and destroyed after use.
                let started = unsafe {
                    let mut attr: libc::pthread_attr_t = std::mem::zeroed();
                    libc::pthread_attr_init(&mut attr);
                    libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
                    libc::pthread_attr_setstacksize(&mut attr, 64 * 1024);
                    let mut thread: libc::pthread_t = 0;
                    let r = crate::threadstart::pthread_create(&mut thread, &attr, helper, std::ptr::null_mut());
                    libc::pthread_attr_destroy(&mut attr);
                    r == 0
                };
                if !started {
                    HELPER.store(0, Ordering::Release);
                    return None;
                }
            }
            -1 => sys::sleep_ms(1),
            tid => return Some(tid),
        }
    }
}

/// # Safety
/// Same contract as libc's timer_create.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn timer_create(
    clock: libc::clockid_t,
    sevp: *mut libc::sigevent,
    timerid: *mut libc::timer_t,
) -> c_int {
    let f = next_symbol(&REAL_TIMER_CREATE, c"timer_create");
    // SAFETY: libc's timer_create has this signature.
    let real: TimerCreateFn = unsafe { std::mem::transmute::<usize, TimerCreateFn>(f) };
    // SAFETY: a non-null `sevp` is a readable sigevent (caller's contract).
    let by_thread = !sevp.is_null() && unsafe { (*sevp).sigev_notify } == libc::SIGEV_THREAD;
    if !by_thread || CKPT_SIGNAL.load(Ordering::Acquire) <= 0 {
        // SAFETY: forwarded unchanged.
        return unsafe { real(clock, sevp, timerid) };
    }
    // The union's SIGEV_THREAD side: the function at byte 16, the thread
    // attributes at byte 24.
    // SAFETY: a sigevent is 64 bytes, read as words.
    let words = unsafe { &*(sevp as *const [u64; 8]) };
    let (value, function, attributes) = (words[0], words[2] as usize, words[3] as *const libc::pthread_attr_t);
    let mut stack = 0usize;
    // SAFETY: non-null thread attributes are the program's, initialised.
    if !attributes.is_null() && unsafe { libc::pthread_attr_getstacksize(attributes, &mut stack) } != 0 {
        stack = 0;
    }
    let Some(index) =
        TIMERS.iter().position(|t| t.id.compare_exchange(0, -1, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    else {
        // SAFETY: forwarded unchanged (the table is full: libc's way).
        return unsafe { real(clock, sevp, timerid) };
    };
    let t = &TIMERS[index];
    let Some(tid) = helper_tid() else {
        t.id.store(0, Ordering::Release);
        // SAFETY: forwarded unchanged.
        return unsafe { real(clock, sevp, timerid) };
    };
    t.function.store(function, Ordering::Relaxed);
    t.value.store(value, Ordering::Relaxed);
    t.stack.store(stack, Ordering::Relaxed);
    // SAFETY: a zeroed sigevent is valid; the public fields are set.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = TIMER_SIGNAL;
    sev.sigev_value = libc::sigval { sival_ptr: index as *mut c_void };
    sev.sigev_notify_thread_id = tid;
    let mut id: libc::timer_t = std::ptr::null_mut();
    // SAFETY: a valid sigevent and timer id to write.
    let r = unsafe { real(clock, &mut sev, &mut id) };
    if r != 0 {
        t.id.store(0, Ordering::Release);
        return r;
    }
    // A kernel timer's id is a small number (libc's timer_t is the id).
    t.id.store(id as usize as i64 + 1, Ordering::Release);
    if !timerid.is_null() {
        // SAFETY: the caller gave a writable timer_t.
        unsafe { *timerid = id };
    }
    0
}

/// # Safety
/// Same contract as libc's timer_delete.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn timer_delete(timerid: libc::timer_t) -> c_int {
    let f = next_symbol(&REAL_TIMER_DELETE, c"timer_delete");
    // SAFETY: libc's timer_delete has this signature; forwarded.
    let r = unsafe { std::mem::transmute::<usize, TimerDeleteFn>(f)(timerid) };
    // Only a kernel timer's id can be one of ours (libc's own timers have
    // ids it makes negative).
    if r == 0 && (0..i32::MAX as isize).contains(&(timerid as isize)) {
        let key = timerid as isize as i64 + 1;
        if let Some(t) = TIMERS.iter().find(|t| t.id.load(Ordering::Acquire) == key) {
            t.id.store(0, Ordering::Release);
        }
    }
    r
}
