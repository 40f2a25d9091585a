//! Signals sent to the whole process and still pending at a checkpoint.
//!
//! The kernel tells only which signals are pending (`ShdPnd`), not who sent
//! them: raised again at restart from the bit alone, a signal would come
//! from the restarted process itself (a program checking `si_pid` sees the
//! wrong sender; a real-time signal loses its value and its count). So the
//! checkpoint thread takes them out of the kernel's queue while every
//! program thread is stopped, keeping each siginfo here, in memory the image
//! holds; the main thread queues them again for the process as it goes on,
//! live after the checkpoint or restored. Only the main thread may queue a
//! signal with the sender's own `si_code` (`SI_USER` of a `kill`) to its
//! process: with no main thread left, nothing is taken and the bits are
//! saved as before.
//!
//! Signals sent to one thread (`tgkill`) stay in that thread's queue and
//! come back from their bit (`SigPnd`), without their siginfo.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::sys;

/// Most signals kept: one of each standard signal and a few real-time
/// ones queued more than once. Past it the rest stay in the kernel's queue.
const CAPACITY: usize = 64;

/// A kernel siginfo: 128 bytes.
type Info = [AtomicU64; 16];

#[allow(clippy::declare_interior_mutable_const)] // one copy per array element
const EMPTY: Info = [const { AtomicU64::new(0) }; 16];

static KEPT: [Info; CAPACITY] = [EMPTY; CAPACITY];
static SIGNALS: [AtomicU64; CAPACITY] = [const { AtomicU64::new(0) }; CAPACITY];
/// How many of `KEPT` hold a signal not queued again yet.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Takes the process's pending signals (all but `ours`, SIGKILL, SIGSTOP
/// and those in the kernel sigset `leave`) out of the kernel's queue into
/// `KEPT`. Runs on the checkpoint
/// thread while every program thread is stopped with all signals blocked,
/// so that none of them can be delivered meanwhile.
pub fn take(ours: i32, leave: u64) {
    let pid = sys::getpid();
    if !main_thread_alive(pid) {
        return;
    }
    let mut set: u64 = !leave;
    for sig in [libc::SIGKILL, libc::SIGSTOP, ours] {
        if sig > 0 {
            set &= !(1u64 << (sig - 1));
        }
    }
    let mut n = COUNT.load(Ordering::Acquire);
    while n < CAPACITY {
        let mut info = [0u64; 16];
        let Ok(sig) = sys::take_pending(set, &mut info) else { break };
        for (slot, word) in KEPT[n].iter().zip(info) {
            slot.store(word, Ordering::Relaxed);
        }
        SIGNALS[n].store(sig as u64, Ordering::Relaxed);
        n += 1;
    }
    COUNT.store(n, Ordering::Release);
}

/// Queues again, to the process, what `take` kept. Called by each thread
/// as it goes on after a checkpoint (live or restored); only the main
/// thread acts, once.
pub fn give_back() {
    let pid = sys::getpid();
    if sys::gettid() != pid {
        return;
    }
    let n = COUNT.swap(0, Ordering::AcqRel);
    for i in 0..n {
        let mut info = [0u64; 16];
        for (word, slot) in info.iter_mut().zip(&KEPT[i]) {
            *word = slot.load(Ordering::Relaxed);
        }
        let sig = SIGNALS[i].load(Ordering::Relaxed) as usize;
        // SAFETY: the kernel reads one 128-byte siginfo at `info`; queued by
        // the main thread to its own process, any si_code is allowed.
        let queued =
            unsafe { sys::syscall6(libc::SYS_rt_sigqueueinfo, [pid as usize, sig, info.as_ptr() as usize, 0, 0, 0]) };
        if queued.is_err() {
            // Not lost: the bare signal, from this process.
            let _ = sys::tgkill(pid, pid, sig as i32);
        }
    }
}

/// Whether the process's first thread (the one whose tid is the pid) still
/// runs: the only one that may queue a `kill`'s siginfo again. (Runs on the
/// checkpoint thread, which may allocate from the agent's own allocator.)
fn main_thread_alive(pid: i32) -> bool {
    // A main thread that called pthread_exit stays a zombie (state Z) while
    // its directory stays: "PID (comm) S ...", the state after the last ')'.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{pid}/stat")) else { return false };
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].trim_start().chars().next().is_some_and(|s| s != 'Z' && s != 'X'),
        None => false,
    }
}
