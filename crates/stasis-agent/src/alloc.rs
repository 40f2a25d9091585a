//! The agent's own memory allocator.
//!
//! The checkpoint thread runs while the program's threads are stopped at
//! arbitrary points, possibly inside malloc with an arena lock held. If the
//! agent used the program's malloc it could deadlock on that lock, so all
//! of the agent's Rust allocations come from here instead: size classes
//! carved from mmap'd chunks, large blocks mapped directly. The lock is
//! only ever taken by agent code outside signal handlers, so the program
//! can never hold it.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

/// Size classes: 16 bytes to 32 KiB, powers of two.
const MIN_SHIFT: usize = 4;
const MAX_SHIFT: usize = 15;
const CLASSES: usize = MAX_SHIFT - MIN_SHIFT + 1;
/// Memory is taken from the kernel in slabs of this size.
const SLAB: usize = 1 << 20;

pub struct AgentAlloc {
    lock: AtomicBool,
    state: std::cell::UnsafeCell<State>,
}

struct State {
    /// Heads of the free lists, one per class (intrusive singly linked).
    free: [usize; CLASSES],
    /// Unused tail of the current slab.
    bump: usize,
    bump_end: usize,
}

// SAFETY: `state` is only touched with `lock` held.
unsafe impl Sync for AgentAlloc {}

impl AgentAlloc {
    pub const fn new() -> Self {
        AgentAlloc {
            lock: AtomicBool::new(false),
            state: std::cell::UnsafeCell::new(State { free: [0; CLASSES], bump: 0, bump_end: 0 }),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }
}

fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = usize::BITS as usize - (size - 1).leading_zeros() as usize;
    (shift <= MAX_SHIFT).then(|| shift - MIN_SHIFT)
}

fn large_len(layout: Layout) -> usize {
    layout.size().next_multiple_of(4096)
}

// SAFETY: blocks of a class are aligned to their size (slabs are page
// aligned and carved in size-aligned steps), large blocks come straight
// from mmap; a block is never handed out twice before being freed.
unsafe impl GlobalAlloc for AgentAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            if layout.align() > 4096 {
                return std::ptr::null_mut();
            }
            return sys::mmap_anon(large_len(layout)).unwrap_or(std::ptr::null_mut());
        };
        let size = 1usize << (class + MIN_SHIFT);
        self.with_state(|st| {
            let head = st.free[class];
            if head != 0 {
                // SAFETY: a free block's first word holds the next free block.
                st.free[class] = unsafe { *(head as *const usize) };
                return head as *mut u8;
            }
            let start = st.bump.next_multiple_of(size);
            if start + size > st.bump_end || st.bump == 0 {
                let Some(slab) = sys::mmap_anon(SLAB) else { return std::ptr::null_mut() };
                st.bump = slab as usize + size;
                st.bump_end = slab as usize + SLAB;
                return slab;
            }
            st.bump = start + size;
            start as *mut u8
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            sys::munmap(ptr, large_len(layout));
            return;
        };
        self.with_state(|st| {
            // SAFETY: the block is ours again and at least 16 bytes long.
            unsafe { *(ptr as *mut usize) = st.free[class] };
            st.free[class] = ptr as usize;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_of(Layout::from_size_align(1, 1).unwrap()), Some(0));
        assert_eq!(class_of(Layout::from_size_align(16, 8).unwrap()), Some(0));
        assert_eq!(class_of(Layout::from_size_align(17, 8).unwrap()), Some(1));
        assert_eq!(class_of(Layout::from_size_align(32768, 8).unwrap()), Some(CLASSES - 1));
        assert_eq!(class_of(Layout::from_size_align(32769, 8).unwrap()), None);
    }
}
