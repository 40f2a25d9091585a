//! Incremental checkpoints: which pages of the program's private anonymous
//! memory were written since the previous checkpoint.
//!
//! The kernel keeps the record (userfaultfd's asynchronous write-protect):
//! each tracked region is registered with a userfaultfd in WP mode and
//! write-protected; a write clears the protection of its page in the kernel
//! itself (no fault-handling thread, kernel-mode writes included). At each
//! checkpoint, with the program stopped, one PAGEMAP_SCAN per region reads
//! which pages were written and protects them again in the same call.
//!
//! A page that was not written still holds what the image of the
//! generation that last saved it holds: the image records it as a
//! reference to that generation (`ProcessMeta::inherited`), flattened, so
//! that a restart never follows a chain. `HOLDERS` remembers, page by page,
//! which generation holds each tracked page.
//!
//! Everything here runs on the checkpoint thread while the program is
//! stopped (`select`), or on it just after a restart (`forget`).

use std::cell::UnsafeCell;

use stasis_image::{Inherited, RegionKind};

use crate::collect::{PAGE, Pages, Snapshot};
use crate::sys;

// The kernel's uapi (linux/userfaultfd.h, linux/fs.h), newer than the
// libc headers.
const UFFD_USER_MODE_ONLY: usize = 1;
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const PAGEMAP_SCAN: u64 = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// One run of pages with the same categories, as PAGEMAP_SCAN reports it.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// A generation number no image has: a page of the checkpoint being taken.
const NONE: u64 = 0;

/// The pages of one tracked region and the generation holding each (NONE:
/// zero, or not known to any image).
struct Held {
    start: u64,
    holder: Vec<u64>,
}

#[derive(Default)]
struct State {
    /// The userfaultfd (-1: none yet) and the process that made it (a
    /// forked child inherits the descriptor, not the registrations).
    uffd: i32,
    owner: i32,
    /// Tracking was refused by the kernel: full checkpoints only.
    unavailable: bool,
    /// The generation at which the pages were last write-protected and
    /// `held` made true; 0: never.
    tracked_at: u64,
    held: Vec<Held>,
    /// During one checkpoint: pages reported written by the scans taken so
    /// far (a second `select` of the same checkpoint must not lose them).
    dirty: Vec<(u64, Vec<u64>)>,
    /// The new `held` that `selected` installs.
    next: Vec<Held>,
}

struct Cell(UnsafeCell<Option<State>>);
// SAFETY: only the checkpoint thread touches it, never reentrantly.
unsafe impl Sync for Cell {}
static STATE: Cell = Cell(UnsafeCell::new(None));

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // SAFETY: see `Cell`: one thread, no reentrance.
    let s = unsafe { &mut *STATE.0.get() };
    f(s.get_or_insert_with(|| State { uffd: -1, ..Default::default() }))
}

/// The descriptor of the agent's userfaultfd, if any: not the program's,
/// never saved in an image.
pub fn own_fd() -> i32 {
    with(|s| s.uffd)
}

/// What the coordinator said about this checkpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct Base {
    /// The last committed generation (0: none): only pages it holds, or
    /// that its image refers to, may be referred to.
    pub generation: u64,
    /// Write every page this time (`--full-every`).
    pub full: bool,
    /// Track written pages at all (`--full-every 1` says no).
    pub track: bool,
}

/// After a restart: the registrations and the descriptor are gone (the
/// number may now be the program's: it is not closed).
pub fn forget() {
    with(|s| {
        s.uffd = -1;
        s.tracked_at = 0;
        s.held.clear();
        s.dirty.clear();
        s.next.clear();
    });
}

fn note_once(s: &mut State, why: &str) {
    if !s.unavailable {
        s.unavailable = true;
        let line = format!(
            "stasis agent[{}]: incremental checkpoints unavailable ({why}); every checkpoint is full\n",
            sys::getpid()
        );
        sys::write_stderr(line.as_bytes());
    }
}

/// The agent's userfaultfd, made on first use (and again in a forked
/// child); None where the kernel refuses.
fn uffd(s: &mut State) -> Option<i32> {
    let pid = sys::getpid();
    if s.uffd >= 0 && s.owner == pid && is_uffd(s.uffd) {
        return Some(s.uffd);
    }
    if s.uffd >= 0 && s.owner != pid && is_uffd(s.uffd) {
        // The parent's, inherited by fork: of no use here.
        sys::close(s.uffd);
    }
    s.uffd = -1;
    s.held.clear();
    s.tracked_at = 0;
    if s.unavailable {
        return None;
    }
    let flags = libc::O_CLOEXEC as usize | libc::O_NONBLOCK as usize | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd takes flags only.
    let fd = match unsafe { sys::syscall6(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0]) } {
        Ok(fd) => fd as i32,
        Err(e) => {
            note_once(s, &format!("userfaultfd: {}", std::io::Error::from_raw_os_error(e)));
            return None;
        }
    };
    let high = sys::dup_high(fd);
    let fd = match high {
        Some(h) => {
            sys::close(fd);
            h
        }
        None => fd,
    };
    // The kernel adds UFFD_FEATURE_WP_UNPOPULATED itself: protecting a
    // page never touched, or dropping a protected page (MADV_DONTNEED),
    // leaves a marker that PAGEMAP_SCAN reports as swapped and not written
    // (see `decide`).
    let wanted = UFFD_FEATURE_WP_ASYNC;
    let mut api = UffdioApi { api: UFFD_API, features: wanted, ioctls: 0 };
    // SAFETY: UFFDIO_API reads and writes one uffdio_api.
    let r = unsafe {
        sys::syscall6(libc::SYS_ioctl, [fd as usize, UFFDIO_API as usize, &mut api as *mut _ as usize, 0, 0, 0])
    };
    if let Err(e) = r {
        sys::close(fd);
        note_once(s, &format!("userfaultfd asynchronous write-protect: {}", std::io::Error::from_raw_os_error(e)));
        return None;
    }
    s.uffd = fd;
    s.owner = pid;
    Some(fd)
}

fn is_uffd(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == b"anon_inode:[userfaultfd]")
}

fn register(uffd: i32, start: u64, end: u64) -> Result<(), i32> {
    let mut reg = UffdioRegister { start, len: end - start, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register.
    unsafe {
        sys::syscall6(libc::SYS_ioctl, [uffd as usize, UFFDIO_REGISTER as usize, &mut reg as *mut _ as usize, 0, 0, 0])
    }
    .map(|_| ())
}

/// One PAGEMAP_SCAN over [start, end): every page, reported in runs by
/// written/present/swapped/zero-page; with `protect`, every page is
/// write-protected again in the same walk.
pub fn scan(pagemap: i32, start: u64, end: u64, protect: bool) -> Result<Vec<PageRun>, i32> {
    let mut out = Vec::new();
    let mut buf = vec![PageRun::default(); 512];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: if protect { PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC } else { 0 },
            start: at,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            return_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO,
            ..Default::default()
        };
        // SAFETY: PAGEMAP_SCAN reads `arg`, writes it back (walk_end) and
        // fills at most vec_len page_regions of `buf`.
        let n = unsafe {
            sys::syscall6(
                libc::SYS_ioctl,
                [pagemap as usize, PAGEMAP_SCAN as usize, &mut arg as *mut _ as usize, 0, 0, 0],
            )
        }?;
        out.extend_from_slice(&buf[..n.min(buf.len())]);
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// What to do with one page, from its categories at the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Written since the last scan: saved.
    Changed,
    /// Neither in memory nor in swap, or the shared zero page: zero (an
    /// anonymous page that was MADV_DONTNEED'd and read reads as this).
    Zero,
    /// In memory (or swap) and not written: what the last image held.
    Unchanged,
}

pub fn verdict(categories: u64) -> Verdict {
    if categories & PAGE_IS_WRITTEN != 0 {
        Verdict::Changed
    } else if categories & PAGE_IS_PFNZERO != 0 || categories & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) == 0 {
        Verdict::Zero
    } else {
        Verdict::Unchanged
    }
}

/// The generation holding the page at `addr` (Some(NONE): it was zero),
/// or None if the page was not tracked.
fn holder_of(held: &[&Held], addr: u64) -> Option<u64> {
    held.iter().find_map(|h| {
        let end = h.start + h.holder.len() as u64 * PAGE;
        (h.start..end).contains(&addr).then(|| h.holder[((addr - h.start) / PAGE) as usize])
    })
}

/// What becomes of one page of a tracked region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Saved in this image (if it is in memory or swap at all).
    Save,
    /// Zero: not saved, nothing referred to.
    Zero,
    /// As generation N's image holds it.
    Refer(u64),
}

/// Decides one page from its verdict, the categories of the scan, the
/// generation that held it at the base (None: unknown) and whether any
/// swap is in use. A page reported swapped and not in memory is either in
/// swap (what the base held) or the kernel's write-protect marker left on
/// a page never touched or dropped since (zero): without swap, the marker.
pub fn decide(v: Verdict, categories: u64, held: Option<u64>, swap_in_use: bool) -> Decision {
    match v {
        Verdict::Changed => Decision::Save,
        Verdict::Zero => Decision::Zero,
        Verdict::Unchanged if categories & PAGE_IS_PRESENT != 0 => match held {
            Some(g) if g != NONE => Decision::Refer(g),
            _ => Decision::Save,
        },
        Verdict::Unchanged => match held {
            Some(NONE) => Decision::Zero,
            _ if !swap_in_use => Decision::Zero,
            _ => Decision::Save,
        },
    }
}

fn swap_in_use() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |t| t.lines().count() > 1)
}

fn bit(bits: &[u64], p: usize) -> bool {
    bits.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)
}

fn set_bit(bits: &mut [u64], p: usize, on: bool) {
    if let Some(w) = bits.get_mut(p / 64) {
        if on {
            *w |= 1 << (p % 64);
        } else {
            *w &= !(1 << (p % 64));
        }
    }
}

/// Restricts the snapshot's region plans to the pages written since the
/// base generation, and lists the others as references. Called with the
/// program stopped; may be called again for the same checkpoint (the
/// memory list taken again): nothing is lost. `selected` then makes the
/// result the new state.
pub fn select(snap: &mut Snapshot, base: Base) {
    with(|s| select_in(s, snap, base));
}

fn select_in(s: &mut State, snap: &mut Snapshot, base: Base) {
    snap.meta.inherited.clear();
    s.next.clear();
    if !base.track {
        return;
    }
    let Some(uffd) = uffd(s) else { return };
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else { return };
    let pagemap = std::os::fd::AsRawFd::as_raw_fd(&pagemap);
    // References only to what the base holds, and only when the state is
    // that of the base (a checkpoint that was not committed since: full).
    let incremental = !base.full && base.generation != 0 && s.tracked_at == base.generation;
    let generation = snap.meta.generation;
    let swap = swap_in_use();
    for (i, (r, plan)) in snap.meta.regions.iter().zip(snap.plans.iter_mut()).enumerate() {
        let tracked_kind = r.kind == RegionKind::Anonymous
            && !r.shared
            && r.prot & stasis_image::PROT_WRITE != 0
            && plan.skip_zero
            && !r.growsdown;
        if !tracked_kind {
            continue;
        }
        let Pages::Bitmap(bits) = &mut plan.pages else { continue };
        let pages = ((r.end - r.start) / PAGE) as usize;
        let mut holder = vec![NONE; pages];
        if !plan.uffd_wp {
            // Not registered: new since the last checkpoint, moved by
            // mremap, or this is a forked child. Saved whole, and tracked
            // from now on.
            if register(uffd, r.start, r.end).is_err() || scan(pagemap, r.start, r.end, true).is_err() {
                continue;
            }
            for (p, h) in holder.iter_mut().enumerate() {
                if bit(bits, p) {
                    *h = generation;
                }
            }
            s.next.push(Held { start: r.start, holder });
            continue;
        }
        let Ok(runs) = scan(pagemap, r.start, r.end, true) else { continue };
        // What was tracked of this range (usually one region, the same).
        let before: Vec<&Held> =
            s.held.iter().filter(|h| h.start < r.end && h.start + h.holder.len() as u64 * PAGE > r.start).collect();
        // Written pages, kept across a second select of this checkpoint.
        let dirty = match s.dirty.iter().position(|(start, d)| *start == r.start && d.len() == pages.div_ceil(64)) {
            Some(k) => &mut s.dirty[k].1,
            None => {
                s.dirty.push((r.start, vec![0u64; pages.div_ceil(64)]));
                &mut s.dirty.last_mut().expect("just pushed").1
            }
        };
        for run in &runs {
            let first = ((run.start.max(r.start) - r.start) / PAGE) as usize;
            let last = ((run.end.min(r.end) - r.start) / PAGE) as usize;
            for (p, h) in holder.iter_mut().enumerate().take(last).skip(first) {
                let v = if bit(dirty, p) { Verdict::Changed } else { verdict(run.categories) };
                if v == Verdict::Changed {
                    set_bit(dirty, p, true);
                }
                let held = if incremental { holder_of(&before, r.start + p as u64 * PAGE) } else { None };
                match decide(v, run.categories, held, swap) {
                    Decision::Save => *h = if bit(bits, p) { generation } else { NONE },
                    Decision::Zero => set_bit(bits, p, false),
                    Decision::Refer(g) => {
                        set_bit(bits, p, false);
                        *h = g;
                    }
                }
            }
        }
        // References, in runs of one generation.
        let mut p = 0;
        while p < pages {
            let g = holder[p];
            if g == NONE || g == generation {
                p += 1;
                continue;
            }
            let mut q = p + 1;
            while q < pages && holder[q] == g {
                q += 1;
            }
            snap.meta.inherited.push(Inherited {
                region: i as u32,
                offset: p as u64 * PAGE,
                len: (q - p) as u64 * PAGE,
                generation: g,
            });
            p = q;
        }
        s.next.push(Held { start: r.start, holder });
    }
}

/// The snapshot `select` last restricted is the one being written: its
/// pages are what the next checkpoint compares with.
pub fn selected(generation: u64) {
    with(|s| {
        if s.uffd < 0 {
            return;
        }
        s.held = std::mem::take(&mut s.next);
        s.dirty.clear();
        s.tracked_at = generation;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let present = PAGE_IS_PRESENT;
        let marker = PAGE_IS_SWAPPED;
        assert_eq!(decide(Verdict::Changed, present | PAGE_IS_WRITTEN, Some(3), false), Decision::Save);
        assert_eq!(decide(Verdict::Unchanged, present, Some(3), false), Decision::Refer(3));
        assert_eq!(decide(Verdict::Unchanged, present, Some(NONE), false), Decision::Save);
        assert_eq!(decide(Verdict::Unchanged, present, None, true), Decision::Save);
        // Dropped since (a marker) or in swap.
        assert_eq!(decide(Verdict::Unchanged, marker, Some(3), false), Decision::Zero);
        assert_eq!(decide(Verdict::Unchanged, marker, Some(3), true), Decision::Save);
        assert_eq!(decide(Verdict::Unchanged, marker, Some(NONE), true), Decision::Zero);
        assert_eq!(decide(Verdict::Zero, 0, Some(3), true), Decision::Zero);
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(PAGE_IS_WRITTEN | PAGE_IS_PRESENT), Verdict::Changed);
        assert_eq!(verdict(PAGE_IS_WRITTEN), Verdict::Changed);
        assert_eq!(verdict(PAGE_IS_PRESENT), Verdict::Unchanged);
        assert_eq!(verdict(PAGE_IS_SWAPPED), Verdict::Unchanged);
        assert_eq!(verdict(PAGE_IS_PRESENT | PAGE_IS_PFNZERO), Verdict::Zero);
        assert_eq!(verdict(0), Verdict::Zero);
    }

    /// The kernel's side: what a write, a read and MADV_DONTNEED leave.
    #[test]
    fn the_kernel_reports_written_pages() {
        let mut s = State { uffd: -1, ..Default::default() };
        let Some(uffd) = uffd(&mut s) else { return }; // not on this kernel
        let len = 16 * PAGE as usize;
        // SAFETY: a fresh private anonymous mapping of our own.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        let start = p as u64;
        let end = start + len as u64;
        // SAFETY: writes within the mapping.
        unsafe {
            *p = 1;
            *p.add(PAGE as usize) = 2;
            *p.add(5 * PAGE as usize) = 5;
        }
        register(uffd, start, end).unwrap();
        let pm = std::fs::File::open("/proc/self/pagemap").unwrap();
        let pm = std::os::fd::AsRawFd::as_raw_fd(&pm);
        scan(pm, start, end, true).unwrap();
        // SAFETY: within the mapping: write page 2, read page 3, drop page 1.
        unsafe {
            *p.add(2 * PAGE as usize) = 3;
            std::ptr::read_volatile(p.add(3 * PAGE as usize));
            libc::madvise(p.add(PAGE as usize) as *mut _, PAGE as usize, libc::MADV_DONTNEED);
            std::ptr::read_volatile(p.add(PAGE as usize));
            libc::madvise(p.add(5 * PAGE as usize) as *mut _, PAGE as usize, libc::MADV_DONTNEED);
        }
        let runs = scan(pm, start, end, true).unwrap();
        let at = |k: u64| {
            let a = start + k * PAGE;
            verdict(runs.iter().find(|r| (r.start..r.end).contains(&a)).map_or(0, |r| r.categories))
        };
        assert_eq!(at(0), Verdict::Unchanged);
        // Dropped and read again: zero, never what the last image held
        // (the kernel reports it written).
        assert_ne!(at(1), Verdict::Unchanged);
        assert_eq!(at(2), Verdict::Changed);
        assert_ne!(at(3), Verdict::Unchanged);
        // Never touched: a marker, swapped and not written, or a hole.
        assert_ne!(at(4), Verdict::Changed);
        assert_ne!(at(5), Verdict::Unchanged);
        let again = scan(pm, start, end, true).unwrap();
        assert!(again.iter().all(|r| verdict(r.categories) != Verdict::Changed), "{again:?}");
        // SAFETY: our mapping.
        unsafe { libc::munmap(p as *mut _, len) };
        sys::close(uffd);
    }
}
