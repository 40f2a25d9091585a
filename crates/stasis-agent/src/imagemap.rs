//! Memory mapped from checkpoint images, and what the agent owes it.
//!
//! A restart maps the saved pages of private anonymous memory straight from
//! the image file (MAP_PRIVATE, read on first touch) instead of reading them
//! in. The program must not tell the difference, so:
//!
//! - the restorer writes the image files' (dev, inode) into [`Table`]
//!   (part of the restore-info block, `stasis_plan::restore_info`), and
//!   [`image_backed`] answers for a mapping seen in /proc/self/maps;
//! - `madvise(MADV_DONTNEED | MADV_DONTNEED_LOCKED | MADV_FREE)` on such
//!   memory would bring the image's bytes back where anonymous memory reads
//!   zeros (allocators rely on it): the wrapper here replaces those ranges
//!   with fresh anonymous memory instead; `MADV_WIPEONFORK`, which takes
//!   anonymous memory only, gets an anonymous copy first. (A program that
//!   makes the madvise system call itself, not through libc, is not seen.)
//! - `mremap` of memory a restart left as several mappings (image pages,
//!   pages moved in after decompression, zero pages) or as a mapping of an
//!   image (which would grow by the image's next bytes) first makes the
//!   range one anonymous mapping with the same bytes;
//! - the next checkpoint saves them as the anonymous memory they stand for
//!   (`collect`);
//! - restart verifies the images' checksums in the background: the agent
//!   waits for its word ([`wait_verified`]) before stopping for a checkpoint.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stasis_plan::restore_info::IMAGES_MAX;

use crate::sys;

/// The image files this process's memory was mapped from at its restart;
/// laid out as `stasis_plan::restore_info` says from `VERIFY_GATE_OFFSET`.
#[repr(C)]
pub struct Table {
    /// 1 + the descriptor restart's verification gate was left at; 0: none.
    gate: AtomicU64,
    count: AtomicU64,
    /// (dev as /proc/PID/maps prints it, inode, generation).
    entries: [[AtomicU64; 3]; IMAGES_MAX],
}

impl Table {
    pub const fn new() -> Table {
        Table {
            gate: AtomicU64::new(0),
            count: AtomicU64::new(0),
            entries: [const { [const { AtomicU64::new(0) }; 3] }; IMAGES_MAX],
        }
    }
}

fn table() -> &'static Table {
    &crate::signals::RESTORE_INFO.images
}

/// Whether a mapping of file (dev, inode) is of one of the images this
/// process was restored from (dev as /proc/PID/maps prints it).
pub fn image_backed(dev: u64, inode: u64) -> bool {
    let t = table();
    let n = (t.count.load(Ordering::Acquire) as usize).min(IMAGES_MAX);
    t.entries[..n].iter().any(|e| e[0].load(Ordering::Relaxed) == dev && e[1].load(Ordering::Relaxed) == inode)
}

/// Whether any memory of this process may be mapped from an image.
fn any_images() -> bool {
    table().count.load(Ordering::Acquire) != 0
}

/// The gate, moved out of the program's way (`sys::dup_high`) by the
/// checkpoint thread of a restored process; -1: nothing to wait for.
static GATE_FD: AtomicI32 = AtomicI32::new(-1);

/// In a restored process, before its program runs: takes restart's
/// verification gate from where the restorer left it.
pub fn restored() {
    let left = table().gate.swap(0, Ordering::AcqRel);
    if left == 0 {
        return;
    }
    let fd = (left - 1) as i32;
    let high = sys::dup_high(fd).unwrap_or(-1);
    if high >= 0 {
        sys::close(fd);
        let old = GATE_FD.swap(high, Ordering::AcqRel);
        if old >= 0 {
            sys::close(old);
        }
    } else {
        GATE_FD.store(fd, Ordering::Release);
    }
}

/// Waits, at most `limit`, until restart has verified the images this
/// process came from (at once when there is nothing to wait for). Err:
/// why no checkpoint may be taken yet.
pub fn wait_verified(limit: Duration) -> Result<(), String> {
    let fd = GATE_FD.load(Ordering::Acquire);
    if fd < 0 {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let left = limit.saturating_sub(start.elapsed());
        // SAFETY: poll on one pollfd we own.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 && p.revents & libc::POLLIN != 0 {
            // Verified: the gate is not needed any more (the byte stays
            // for any other process that holds the gate).
            if GATE_FD.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                sys::close(fd);
            }
            return Ok(());
        }
        if r > 0 && p.revents & libc::POLLNVAL != 0 {
            // The program closed it (a daemon closing everything): nobody
            // can say any more; the checksums were restart's to check.
            GATE_FD.store(-1, Ordering::Release);
            return Ok(());
        }
        if r > 0 && p.revents & libc::POLLHUP != 0 {
            // Restart ended (killed) before it could say: the memory this
            // process runs on was never verified, and is not saved.
            return Err("restart ended before it verified the checkpoint this process was restored from".into());
        }
        if r == 0 || start.elapsed() >= limit {
            return Err("restart has not finished verifying the checkpoint this process was restored from".into());
        }
    }
}

/// After fork: the child holds the gate too (same descriptor number) and
/// the same image mappings; nothing to do. After exec, the new program's
/// agent starts with an empty table and no gate.
const MADV_DONTNEED_LOCKED: c_int = 24;

/// Whether `advice` makes anonymous memory read zeros afterwards.
fn zeroes(advice: c_int) -> bool {
    matches!(advice, libc::MADV_DONTNEED | libc::MADV_FREE | MADV_DONTNEED_LOCKED)
}

fn real_madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    // SAFETY: the madvise system call with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) as c_int }
}

/// madvise(2), with memory mapped from an image made to behave as the
/// anonymous memory it stands for.
///
/// # Safety
/// Same contract as libc's madvise.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let wipe = advice == libc::MADV_WIPEONFORK;
    if !(zeroes(advice) || wipe) || !any_images() || len == 0 {
        return real_madvise(addr, len, advice);
    }
    let start = addr as u64;
    let end = start.saturating_add(len as u64).next_multiple_of(4096);
    let r = crate::signals::unstoppable(|| replace_image_ranges(start, end, wipe));
    match r {
        Some(()) => real_madvise(addr, len, advice),
        None => {
            // SAFETY: this thread's errno.
            unsafe { *libc::__errno_location() = libc::ENOMEM };
            -1
        }
    }
}

/// Replaces the parts of [start, end) that are private mappings of an
/// image with anonymous memory of the same protection: zero pages (what
/// MADV_DONTNEED leaves of anonymous memory), or with `keep` a copy of
/// their contents (MADV_WIPEONFORK takes anonymous memory only). The rest
/// is left to the real madvise. None: it could not be done.
fn replace_image_ranges(start: u64, end: u64, keep: bool) -> Option<()> {
    if !start.is_multiple_of(4096) {
        return Some(()); // the real madvise refuses it (EINVAL)
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        let Some(e) = stasis_procfs::parse_map_line(line) else { continue };
        if e.end <= start || e.start >= end || e.shared || !image_backed(e.dev, e.inode) {
            continue;
        }
        let (lo, hi) = (e.start.max(start), e.end.min(end));
        let len = (hi - lo) as usize;
        let prot = (if e.read { libc::PROT_READ } else { 0 })
            | (if e.write { libc::PROT_WRITE } else { 0 })
            | (if e.exec { libc::PROT_EXEC } else { 0 });
        if keep {
            anonymous_copy(lo, len, prot)?;
            continue;
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
        // SAFETY: replaces memory the program asked to discard, within one
        // mapping of its own, by zero pages: what it will read is what
        // MADV_DONTNEED would have left of anonymous memory.
        let p = unsafe { libc::mmap(lo as *mut c_void, len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return None;
        }
    }
    Some(())
}

fn real_mremap(old: *mut c_void, old_len: usize, new_len: usize, flags: c_int, new_addr: *mut c_void) -> *mut c_void {
    // SAFETY: the mremap system call with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut c_void }
}

/// mremap(2), with memory a restart put in place made to behave as the one
/// anonymous mapping it stands for. Restart may leave an anonymous region
/// as several mappings (pages mapped from an image, pages moved in after
/// decompression, zero pages between them), where the kernel's mremap
/// wants one (EFAULT otherwise), and growing a mapping of an image would
/// map the image's next bytes (or nothing: SIGBUS) where anonymous memory
/// grows by zeros. So in a process that has such memory, the range is
/// first made one anonymous mapping holding the same bytes
/// ([`make_one_anonymous`]). (glibc's realloc calls the system call itself,
/// not through here: on failure it falls back to copying, and the part it
/// grows is uninitialised for the program anyway.)
///
/// Declared with the optional fifth argument (`new_address`): on x86_64 a
/// variadic argument travels as a fixed one would, and the kernel reads it
/// only with MREMAP_FIXED or MREMAP_DONTUNMAP, when the caller passed it.
///
/// # Safety
/// Same contract as libc's mremap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    if any_images() && old_len != 0 && (old as u64).is_multiple_of(4096) {
        let start = old as u64;
        let end = start.saturating_add(old_len as u64).next_multiple_of(4096);
        let _ = crate::signals::unstoppable(|| make_one_anonymous(start, end));
    }
    real_mremap(old, old_len, new_len, flags, new_addr)
}

/// Makes [start, end) one private anonymous mapping with the same bytes
/// when it is made of several private mappings, anonymous or of an image,
/// of one protection, with no gap, at least one of them of an image or
/// more than one: what a restart leaves. Anything else (a gap, a file, a
/// shared mapping, mixed protections) is left for the kernel to refuse as
/// it would have. None: it could not be done.
fn make_one_anonymous(start: u64, end: u64) -> Option<()> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut covered = start;
    let mut parts = 0;
    let mut from_image = false;
    let mut prot = None;
    for line in maps.lines() {
        let Some(e) = stasis_procfs::parse_map_line(line) else { continue };
        if e.end <= start || e.start >= end {
            continue;
        }
        let image = !e.shared && image_backed(e.dev, e.inode);
        let anonymous = !e.shared && e.inode == 0 && (e.name.is_empty() || e.name.starts_with("[anon:"));
        let p = (if e.read { libc::PROT_READ } else { 0 })
            | (if e.write { libc::PROT_WRITE } else { 0 })
            | (if e.exec { libc::PROT_EXEC } else { 0 });
        if e.start > covered || !(image || anonymous) || prot.is_some_and(|q| q != p) {
            return Some(());
        }
        prot = Some(p);
        parts += 1;
        from_image |= image;
        covered = e.end;
    }
    if covered < end || !(from_image || parts > 1) {
        return Some(());
    }
    anonymous_copy(start, (end - start) as usize, prot?)
}

/// Puts anonymous memory holding the same bytes in place of `len` bytes
/// at `at` (built aside, then moved over in one mremap).
fn anonymous_copy(at: u64, len: usize, prot: c_int) -> Option<()> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh private anonymous mapping, ours alone.
    let tmp = unsafe { libc::mmap(std::ptr::null_mut(), len, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if tmp == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: reads the program's mapping (made readable for the copy if it
    // is not) into ours; both are `len` bytes and distinct.
    unsafe {
        if prot & libc::PROT_READ == 0 {
            libc::mprotect(at as *mut c_void, len, libc::PROT_READ);
        }
        std::ptr::copy_nonoverlapping(at as *const u8, tmp as *mut u8, len);
        libc::mprotect(tmp, len, prot);
    }
    // SAFETY: moves our copy over the program's range, replacing it whole.
    let r = unsafe { libc::mremap(tmp, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, at as *mut c_void) };
    if r == libc::MAP_FAILED {
        // SAFETY: our own mapping, not moved.
        unsafe { libc::munmap(tmp, len) };
        return None;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_advice_that_zeroes_is_looked_at() {
        assert!(zeroes(libc::MADV_DONTNEED) && zeroes(libc::MADV_FREE) && zeroes(MADV_DONTNEED_LOCKED));
        assert!(!zeroes(libc::MADV_WILLNEED) && !zeroes(libc::MADV_REMOVE) && !zeroes(libc::MADV_HUGEPAGE));
    }

    #[test]
    fn the_table_sits_where_the_restorer_writes_it() {
        use stasis_plan::restore_info as ri;
        let base = &crate::signals::RESTORE_INFO as *const _ as u64;
        let t = table();
        assert_eq!(&t.gate as *const _ as u64 - base, ri::VERIFY_GATE_OFFSET);
        assert_eq!(&t.count as *const _ as u64 - base, ri::IMAGES_COUNT_OFFSET);
        assert_eq!(&t.entries[1][0] as *const _ as u64 - base, ri::IMAGES_OFFSET + ri::IMAGE_ENTRY_LEN);
        let info = &crate::signals::RESTORE_INFO;
        assert_eq!(&info.tmpdir_len as *const _ as u64 - base, ri::TMPDIR_LEN_OFFSET);
        assert_eq!(&info.tmpdir[0] as *const _ as u64 - base, ri::TMPDIR_OFFSET);
        assert!(!image_backed(1, 2));
    }
}
