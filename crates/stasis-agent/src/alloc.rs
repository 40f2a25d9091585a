//! The agent's own memory allocator.
//!
//! The checkpoint thread runs while the program's threads are stopped at
//! arbitrary points, possibly inside malloc with an arena lock held. If the
//! agent used the program's malloc it could deadlock on that lock, so all
//! of the agent's Rust allocations come from here instead: size classes
//! carved from mmap'd chunks, large blocks mapped directly. The lock is
//! only ever taken by agent code outside signal handlers, so the program
//! can never hold it.
//!
//! The image writer (a fork of the checkpoint thread) must not change any
//! memory it is saving, so while a writer runs it allocates from a separate
//! arena mapped for it alone and never frees (it exits soon after).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

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
    /// The writer's arena (0 when no writer is being started) and the pid
    /// of the process that made it: any other pid is the writer.
    child_arena: AtomicUsize,
    arena_owner: AtomicI32,
    /// Bumped whenever this allocator maps a new slab, so that the
    /// checkpoint can tell whether its list of memory regions went stale
    /// (the allocator's saved state must never point outside the image).
    /// Large blocks are mapped on their own and referenced by no allocator
    /// state, so they do not count.
    epoch: AtomicUsize,
}

/// Size of the writer's arena for small blocks (reserved, not committed).
const CHILD_ARENA: usize = 256 << 20;

struct State {
    /// Heads of the free lists, one per class (intrusive singly linked).
    free: [usize; CLASSES],
    /// Unused tail of the current slab.
    bump: usize,
    bump_end: usize,
    /// Large blocks freed while unmaps are held (see `hold_unmaps`).
    held: [(usize, usize); HELD],
    n_held: usize,
    holding: bool,
}

/// How many large blocks a checkpoint may free before its fork without
/// changing the memory list (its own temporary buffers: a few).
const HELD: usize = 64;

// SAFETY: `state` is only touched with `lock` held.
unsafe impl Sync for AgentAlloc {}

impl AgentAlloc {
    pub const fn new() -> Self {
        AgentAlloc {
            lock: AtomicBool::new(false),
            state: std::cell::UnsafeCell::new(State {
                free: [0; CLASSES],
                bump: 0,
                bump_end: 0,
                held: [(0, 0); HELD],
                n_held: 0,
                holding: false,
            }),
            child_arena: AtomicUsize::new(0),
            arena_owner: AtomicI32::new(0),
            epoch: AtomicUsize::new(0),
        }
    }

    /// Changes whenever the allocator maps a new slab.
    pub fn epoch(&self) -> usize {
        self.epoch.load(Ordering::Acquire)
    }

    /// Maps the arena a writer forked next will allocate from.
    pub fn prepare_child_arena(&self) -> bool {
        let Some(base) = sys::mmap_reserve(CHILD_ARENA) else { return false };
        // The first word is the arena's bump pointer.
        // SAFETY: fresh mapping, at least one page.
        unsafe { *(base as *mut usize) = base as usize + 64 };
        self.arena_owner.store(sys::getpid(), Ordering::Release);
        self.child_arena.store(base as usize, Ordering::Release);
        true
    }

    /// In the parent after the fork (or in a restored process): forget it.
    pub fn drop_child_arena(&self, unmap: bool) {
        let base = self.child_arena.swap(0, Ordering::AcqRel);
        if unmap && base != 0 {
            sys::munmap(base as *mut u8, CHILD_ARENA);
        }
    }

    /// The writer's arena, if this process is a writer.
    fn child(&self) -> Option<usize> {
        let base = self.child_arena.load(Ordering::Acquire);
        (base != 0 && sys::getpid() != self.arena_owner.load(Ordering::Acquire)).then_some(base)
    }

    fn acquire(&self) {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        self.acquire();
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    /// From the memory list to the writer's fork, the image writer must
    /// find every listed page mapped: large blocks the agent frees meanwhile
    /// (the text the list was parsed from, say) stay mapped until
    /// `release_unmaps`. One that does not fit is unmapped and bumps the
    /// epoch, so the list is taken again.
    pub fn hold_unmaps(&self) {
        self.with_state(|st| st.holding = true);
    }

    /// Unmaps what `hold_unmaps` kept (after the fork, or in a restored
    /// process, whose image holds those blocks too).
    pub fn release_unmaps(&self) {
        let (held, n) = self.with_state(|st| {
            st.holding = false;
            let n = std::mem::take(&mut st.n_held);
            (st.held, n)
        });
        for &(ptr, len) in &held[..n] {
            sys::munmap(ptr as *mut u8, len);
        }
    }

    /// Held across fork() (atfork prepare), so that the child never
    /// inherits it taken by a thread that does not exist there.
    pub fn lock_for_fork(&self) {
        self.acquire();
    }

    /// Releases it after fork(), in the parent and in the child.
    pub fn unlock_after_fork(&self) {
        self.lock.store(false, Ordering::Release);
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
        if let Some(base) = self.child() {
            if layout.size() > 1 << MAX_SHIFT || layout.align() > 4096 {
                return sys::mmap_anon(large_len(layout)).unwrap_or(std::ptr::null_mut());
            }
            // SAFETY: the arena's first word is its bump pointer; only the
            // writer's single thread uses it.
            unsafe {
                let next = base as *mut usize;
                let start = (*next).next_multiple_of(layout.align().max(16));
                if start + layout.size() > base + CHILD_ARENA {
                    return std::ptr::null_mut();
                }
                *next = start + layout.size();
                return start as *mut u8;
            }
        }
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
                self.epoch.fetch_add(1, Ordering::AcqRel);
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
        if self.child().is_some() {
            return; // the writer frees nothing: that would change saved memory
        }
        let Some(class) = class_of(layout) else {
            let len = large_len(layout);
            let held = self.with_state(|st| {
                if !st.holding {
                    return false;
                }
                if st.n_held < HELD {
                    st.held[st.n_held] = (ptr as usize, len);
                    st.n_held += 1;
                    return true;
                }
                self.epoch.fetch_add(1, Ordering::AcqRel);
                false
            });
            if !held {
                sys::munmap(ptr, len);
            }
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
