//! Per-thread state the agent keeps for the program's threads, found by
//! tid from signal handlers and wrappers alike: no TLS (a thread made with
//! a raw clone may have none), no allocation, no lock.
//!
//! An open-addressing table: an entry belongs to the thread whose tid it
//! holds, and only that thread changes it (its handlers run on it too), so
//! the only shared step is claiming an empty entry. An entry is given up
//! (marked `GONE`) when its thread has nothing left in it.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crate::sys;

const SIZE: usize = 4096;
/// Never used: a lookup stops here.
const FREE: i32 = 0;
/// Given up: a lookup goes on, a new thread may take it.
const GONE: i32 = -1;

pub struct ThreadState {
    tid: AtomicI32,
    /// The program has our signal blocked on this thread (it is not
    /// blocked for real: a checkpoint must still stop the thread).
    pub blocks_ours: AtomicBool,
    /// A program signal on our number, held while `blocks_ours`.
    pub held: AtomicBool,
    pub held_info: [AtomicU64; 16],
    /// The system call a timeout-keeping wrapper is in (0: none).
    pub wrapper_nr: AtomicI64,
    /// Set by our handler: the wrapper's call was interrupted by a
    /// checkpoint, not by the program.
    pub interrupted: AtomicBool,
    /// A sigwait-like wrapper waits for the program's signals on our number.
    pub waits_for_ours: AtomicBool,
    /// A program signal on our number that was pending when the thread
    /// stopped, taken out of the kernel's queue (where a restart would
    /// lose its siginfo) and queued again when the thread goes on.
    pub stashed: AtomicBool,
    pub stashed_info: [AtomicU64; 16],
    /// Where our handler set a call to run again while a signal on our
    /// number was pending: if that is the program's, its EINTR is owed.
    pub restarted_at: AtomicU64,
    /// Where the program's signal on our number found a call failed with
    /// EINTR while ours was pending: ours must not restart that call.
    pub owed_at: AtomicU64,
    /// What our handler decided for the call it cut short (`eintr::Fix`,
    /// encoded), kept here so that a restored thread finds it too.
    pub fix: [AtomicU64; 9],
}

impl ThreadState {
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: ThreadState = ThreadState {
        tid: AtomicI32::new(FREE),
        blocks_ours: AtomicBool::new(false),
        held: AtomicBool::new(false),
        held_info: [const { AtomicU64::new(0) }; 16],
        wrapper_nr: AtomicI64::new(0),
        interrupted: AtomicBool::new(false),
        waits_for_ours: AtomicBool::new(false),
        stashed: AtomicBool::new(false),
        stashed_info: [const { AtomicU64::new(0) }; 16],
        restarted_at: AtomicU64::new(0),
        owed_at: AtomicU64::new(0),
        fix: [const { AtomicU64::new(0) }; 9],
    };

    fn idle(&self) -> bool {
        !self.blocks_ours.load(Ordering::Relaxed)
            && !self.held.load(Ordering::Relaxed)
            && self.wrapper_nr.load(Ordering::Relaxed) == 0
            && !self.waits_for_ours.load(Ordering::Relaxed)
            && !self.stashed.load(Ordering::Relaxed)
            && self.restarted_at.load(Ordering::Relaxed) == 0
            && self.owed_at.load(Ordering::Relaxed) == 0
            && self.fix[0].load(Ordering::Relaxed) == 0
    }

    fn clear(&self) {
        self.blocks_ours.store(false, Ordering::Relaxed);
        self.held.store(false, Ordering::Relaxed);
        self.wrapper_nr.store(0, Ordering::Relaxed);
        self.interrupted.store(false, Ordering::Relaxed);
        self.waits_for_ours.store(false, Ordering::Relaxed);
        self.stashed.store(false, Ordering::Relaxed);
        self.restarted_at.store(0, Ordering::Relaxed);
        self.owed_at.store(0, Ordering::Relaxed);
        self.fix[0].store(0, Ordering::Relaxed);
    }

    /// Gives the entry up if nothing in it is wanted any more.
    pub fn release_if_idle(&self) {
        if self.idle() {
            self.interrupted.store(false, Ordering::Relaxed);
            self.tid.store(GONE, Ordering::Release);
        }
    }
}

static TABLE: [ThreadState; SIZE] = [ThreadState::EMPTY; SIZE];
/// Threads whose program mask blocks our signal: most programs never do,
/// and then the mask wrappers skip the table entirely.
pub static BLOCKERS: AtomicUsize = AtomicUsize::new(0);

fn start(tid: i32) -> usize {
    (tid as u32 as usize).wrapping_mul(2_654_435_761) % SIZE
}

/// The calling thread's entry, if it has one.
pub fn find(tid: i32) -> Option<&'static ThreadState> {
    let first = start(tid);
    for i in 0..SIZE {
        let e = &TABLE[(first + i) % SIZE];
        match e.tid.load(Ordering::Acquire) {
            t if t == tid => return Some(e),
            FREE => return None,
            _ => {}
        }
    }
    None
}

/// Which entries were ever claimed (bit i: entry i), so that a fork child
/// resets those without reading the whole table.
static CLAIMED: [AtomicU64; SIZE / 64] = [const { AtomicU64::new(0) }; SIZE / 64];

/// The calling thread's entry, made if needed (None: the table is full).
pub fn mine() -> Option<&'static ThreadState> {
    let tid = sys::gettid();
    if let Some(e) = find(tid) {
        return Some(e);
    }
    let first = start(tid);
    for i in 0..SIZE {
        let e = &TABLE[(first + i) % SIZE];
        let t = e.tid.load(Ordering::Acquire);
        if (t == FREE || t == GONE) && e.tid.compare_exchange(t, tid, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            let i = (first + i) % SIZE;
            CLAIMED[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
            e.clear();
            return Some(e);
        }
    }
    None
}

/// In a child of fork(): the parent's threads are not here.
///
/// Only entries ever used are written: the table is 1.5 MB, and writing
/// the rest would copy every page of it into each child (hundreds of
/// copy-on-write faults per fork).
pub fn reset_after_fork() {
    for (w, word) in CLAIMED.iter().enumerate() {
        // Read first: a store, even of zero, would copy the page.
        if word.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let mut bits = word.swap(0, Ordering::Relaxed);
        while bits != 0 {
            let e = &TABLE[w * 64 + bits.trailing_zeros() as usize];
            bits &= bits - 1;
            e.clear();
            e.tid.store(FREE, Ordering::Relaxed);
        }
    }
    crate::sys::store_if_changed_usize(&BLOCKERS, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_by_its_thread_and_given_up_when_idle() {
        std::thread::spawn(|| {
            let tid = sys::gettid();
            let e = mine().expect("an entry");
            assert!(std::ptr::eq(e, find(tid).expect("found again")));
            e.wrapper_nr.store(1, Ordering::Relaxed);
            e.release_if_idle();
            assert!(find(tid).is_some(), "an entry in use stays");
            e.wrapper_nr.store(0, Ordering::Relaxed);
            e.release_if_idle();
            assert!(find(tid).is_none(), "an idle entry is given up");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_program_side_block_is_per_thread() {
        let blocked = std::thread::spawn(|| {
            crate::progsig::set_program_blocks(62, true);
            crate::progsig::program_blocks(sys::gettid())
        });
        let other = std::thread::spawn(|| crate::progsig::program_blocks(sys::gettid()));
        assert!(blocked.join().unwrap());
        assert!(!other.join().unwrap());
    }
}
