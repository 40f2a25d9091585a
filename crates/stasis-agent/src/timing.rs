//! The pause's phases, for finding where a checkpoint's pause goes: with
//! STASIS_DEBUG_TIMING set, the checkpoint thread notes the moment each
//! phase ends and prints them to stderr once the program runs again.
//! Off, a note costs one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
const MAX: usize = 32;
static NAMES: [AtomicUsize; MAX] = [const { AtomicUsize::new(0) }; MAX];
static LENS: [AtomicUsize; MAX] = [const { AtomicUsize::new(0) }; MAX];
static AT_NS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Reads STASIS_DEBUG_TIMING (at start-up).
pub fn init() {
    ENABLED.store(crate::exec::env_var("STASIS_DEBUG_TIMING").is_some_and(|v| !v.is_empty()), Ordering::Relaxed);
}

fn now_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Starts a new list of phases (the checkpoint's start).
pub fn start() {
    if ENABLED.load(Ordering::Relaxed) {
        COUNT.store(0, Ordering::Relaxed);
        mark("start");
    }
}

/// Notes that the phase `name` ended now.
pub fn mark(name: &'static str) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let i = COUNT.fetch_add(1, Ordering::Relaxed);
    if i < MAX {
        NAMES[i].store(name.as_ptr() as usize, Ordering::Relaxed);
        LENS[i].store(name.len(), Ordering::Relaxed);
        AT_NS[i].store(now_ns(), Ordering::Relaxed);
    }
}

/// Prints the phases noted since `start`, each with its duration.
pub fn report() {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let n = COUNT.swap(0, Ordering::Relaxed).min(MAX);
    if n < 2 {
        return;
    }
    let mut line = format!("stasis agent[{}]: pause phases (ms):", crate::sys::getpid());
    for i in 1..n {
        // SAFETY: NAMES[i] and LENS[i] were stored together from a
        // &'static str in `mark`.
        let name = unsafe {
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(
                NAMES[i].load(Ordering::Relaxed) as *const u8,
                LENS[i].load(Ordering::Relaxed),
            ))
        };
        let ms = (AT_NS[i].load(Ordering::Relaxed) - AT_NS[i - 1].load(Ordering::Relaxed)) as f64 / 1e6;
        line.push_str(&format!(" {name} {ms:.2}"));
    }
    let total = (AT_NS[n - 1].load(Ordering::Relaxed) - AT_NS[0].load(Ordering::Relaxed)) as f64 / 1e6;
    line.push_str(&format!(" = {total:.2}\n"));
    crate::sys::write_stderr(line.as_bytes());
}
