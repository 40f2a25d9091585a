//! Threads the program creates start with the checkpoint signal open.
//!
//! A new thread inherits its creator's mask, and the agent blocks its
//! signal for real in a few places (a fork's prepare-to-child window,
//! `signals::unstoppable`). A library whose fork child handler runs before
//! the agent's (its constructor ran first) and starts a thread there would
//! give that thread a blocked checkpoint signal for good, and no checkpoint
//! could stop it. So pthread_create starts every thread through a
//! trampoline that opens the signal first, and carries over the creator's
//! *program* view of it (`progsig`), or the one the thread's attributes
//! ask for (`pthread_attr_setsigmask_np`, which libc applies for real).
//!
//! The (routine, argument) pair travels in a fixed pool: allocating is not
//! allowed here (in a fork child the agent's allocator may still be held).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::signals::{CKPT_SIGNAL, next_symbol};
use crate::{progsig, sys};

type StartFn = extern "C-unwind" fn(*mut c_void) -> *mut c_void;
type CreateFn =
    unsafe extern "C" fn(*mut libc::pthread_t, *const libc::pthread_attr_t, StartFn, *mut c_void) -> libc::c_int;

struct Start {
    busy: AtomicBool,
    routine: AtomicUsize,
    arg: AtomicUsize,
    blocks_ours: AtomicBool,
}

const POOL: usize = 256;
static STARTS: [Start; POOL] = [const {
    Start {
        busy: AtomicBool::new(false),
        routine: AtomicUsize::new(0),
        arg: AtomicUsize::new(0),
        blocks_ours: AtomicBool::new(false),
    }
}; POOL];

static REAL_PTHREAD_CREATE: AtomicUsize = AtomicUsize::new(0);
/// glibc 2.32's pthread_attr_getsigmask_np (0 where libc has none).
static REAL_ATTR_GETSIGMASK: AtomicUsize = AtomicUsize::new(0);

type AttrGetSigmaskFn = unsafe extern "C" fn(*const libc::pthread_attr_t, *mut libc::sigset_t) -> libc::c_int;

pub fn resolve_real_functions() {
    next_symbol(&REAL_PTHREAD_CREATE, c"pthread_create");
    next_symbol(&REAL_ATTR_GETSIGMASK, c"pthread_attr_getsigmask_np");
}

/// Whether the mask that thread attributes `attr` give the new thread
/// (`pthread_attr_setsigmask_np`) blocks our signal; None when they give
/// none (the thread inherits its creator's).
///
/// # Safety
/// `attr` is null or initialised thread attributes.
unsafe fn attr_blocks_ours(attr: *const libc::pthread_attr_t, sig: libc::c_int) -> Option<bool> {
    let f = REAL_ATTR_GETSIGMASK.load(Ordering::Acquire);
    if attr.is_null() || f == 0 || sig <= 0 {
        return None;
    }
    // SAFETY: dlsym found libc's function of this signature; a zeroed
    // sigset is valid for it to fill.
    unsafe {
        let get = std::mem::transmute::<usize, AttrGetSigmaskFn>(f);
        let mut set: libc::sigset_t = std::mem::zeroed();
        // Not 0: PTHREAD_ATTR_NO_SIGMASK_NP, no mask given.
        (get(attr, &mut set) == 0).then(|| libc::sigismember(&set, sig) == 1)
    }
}

extern "C-unwind" fn trampoline(slot: *mut c_void) -> *mut c_void {
    let s = &STARTS[slot as usize];
    let routine = s.routine.load(Ordering::Acquire);
    let arg = s.arg.load(Ordering::Relaxed) as *mut c_void;
    let blocks = s.blocks_ours.load(Ordering::Relaxed);
    s.busy.store(false, Ordering::Release);
    let sig = CKPT_SIGNAL.load(Ordering::Acquire);
    if sig > 0 {
        sys::sigmask_one(libc::SIG_UNBLOCK, sig);
        if blocks {
            progsig::set_program_blocks(sig, true);
        }
    }
    // SAFETY: `routine` is the start routine the program gave pthread_create.
    let f: StartFn = unsafe { std::mem::transmute::<usize, StartFn>(routine) };
    f(arg)
}

/// # Safety
/// Same contract as libc's pthread_create.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    routine: StartFn,
    arg: *mut c_void,
) -> libc::c_int {
    let f = next_symbol(&REAL_PTHREAD_CREATE, c"pthread_create");
    // SAFETY: libc's pthread_create has this signature.
    let real: CreateFn = unsafe { std::mem::transmute::<usize, CreateFn>(f) };
    let free =
        STARTS.iter().position(|s| s.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok());
    let Some(i) = free else {
        // SAFETY: forwarded unchanged (the pool is exhausted: rare, harmless).
        return unsafe { real(thread, attr, routine, arg) };
    };
    let s = &STARTS[i];
    s.routine.store(routine as usize, Ordering::Relaxed);
    s.arg.store(arg as usize, Ordering::Relaxed);
    // The program's wish for the new thread: its attributes' mask, else
    // its creator's (the real mask never blocks our signal).
    // SAFETY: `attr` is the caller's (null or initialised).
    let blocks = unsafe { attr_blocks_ours(attr, CKPT_SIGNAL.load(Ordering::Acquire)) }
        .unwrap_or_else(|| progsig::program_blocks(sys::gettid()));
    s.blocks_ours.store(blocks, Ordering::Relaxed);
    // SAFETY: the trampoline has the start routine's signature; slot index as argument.
    let r = unsafe { real(thread, attr, trampoline, i as *mut c_void) };
    if r != 0 {
        s.busy.store(false, Ordering::Release);
    }
    r
}
