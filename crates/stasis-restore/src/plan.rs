//! Builds the restore plan inside the restorer's area and jumps there.

use std::arch::asm;

use std::os::fd::{FromRawFd, IntoRawFd};

use stasis_image::{ImageReader, ProcessMeta, RegionKind};
use stasis_plan::{
    Itimerval, KernelSigaction, MapOp, Move, Plan, Poke, PrctlMmMap, RESTORER_THREAD_STACK, ReadOp, RemapOp, Slice,
    ThreadPlan, TimerPlan, restore_info,
};

use crate::fds::Helpers;
use crate::layout::{self, PAGE};
use crate::memory;
use crate::vdso::{self, VdsoArea};

static RESTORER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/restorer.bin"));
const RESTORER_ENTRY: u64 = include!(concat!(env!("OUT_DIR"), "/restorer_entry.rs"));
/// The blob's R_X86_64_RELATIVE relocations: (offset, addend); each slot
/// gets the blob's base address plus the addend once the blob is placed.
const RESTORER_RELOCS: &[(u64, i64)] = &include!(concat!(env!("OUT_DIR"), "/restorer_relocs.rs"));
const MAIN_STACK: u64 = 64 * 1024;

/// Bytes laid out in the restorer's area, at known absolute addresses.
struct Arena<'a> {
    base: u64,
    buf: &'a mut [u8],
    used: usize,
}

impl Arena<'_> {
    fn alloc(&mut self, len: usize, align: usize) -> Result<u64, String> {
        let start = self.used.next_multiple_of(align);
        if start + len > self.buf.len() {
            return Err("restorer area too small (internal error)".into());
        }
        self.used = start + len;
        Ok(self.base + start as u64)
    }

    fn write_bytes(&mut self, addr: u64, bytes: &[u8]) {
        let off = (addr - self.base) as usize;
        self.buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn put<T: Copy>(&mut self, items: &[T]) -> Result<Slice, String> {
        let len = std::mem::size_of_val(items);
        let addr = self.alloc(len.max(1), std::mem::align_of::<T>().max(8))?;
        // SAFETY: T is a plain repr(C) record type; viewing it as bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(items.as_ptr() as *const u8, len) };
        self.write_bytes(addr, bytes);
        Ok(Slice { addr, len: items.len() as u64 })
    }
}

/// The region `addr` lies in.
fn region_at(meta: &ProcessMeta, addr: u64) -> Option<&stasis_image::Region> {
    let i = meta.regions.partition_point(|r| r.end <= addr);
    meta.regions.get(i).filter(|r| r.start <= addr)
}

fn map_flags(r: &stasis_image::Region) -> u32 {
    let mut f = if r.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
    if matches!(r.kind, RegionKind::Anonymous) {
        f |= libc::MAP_ANONYMOUS as u32;
    }
    if r.growsdown {
        f |= libc::MAP_GROWSDOWN as u32;
    }
    // No memory committed for it, before as now (smaps VmFlags `nr`).
    if r.noreserve {
        f |= libc::MAP_NORESERVE as u32;
    }
    f
}

/// Whether the region's saved pages are put in from the image: not the
/// vdso or vvar (the kernel's), not shared memory (filled by restart before
/// any process started), not a shared file mapping (written back into the
/// file already).
fn filled_from_image(r: &stasis_image::Region) -> bool {
    match r.kind {
        RegionKind::Vdso | RegionKind::Vvar | RegionKind::SharedMemory { .. } => false,
        RegionKind::File { .. } => !r.shared,
        RegionKind::Anonymous => true,
    }
}

fn fork_advice(a: u8) -> u32 {
    let mut v = 0;
    if a & stasis_image::ADVICE_DONTFORK != 0 {
        v |= stasis_plan::FORK_DONTFORK;
    }
    if a & stasis_image::ADVICE_WIPEONFORK != 0 {
        v |= stasis_plan::FORK_WIPEONFORK;
    }
    v
}

fn prot(p: u8) -> u32 {
    let mut v = 0;
    if p & stasis_image::PROT_READ != 0 {
        v |= libc::PROT_READ;
    }
    if p & stasis_image::PROT_WRITE != 0 {
        v |= libc::PROT_WRITE;
    }
    if p & stasis_image::PROT_EXEC != 0 {
        v |= libc::PROT_EXEC;
    }
    v as u32
}

/// A thread name as prctl(PR_SET_NAME) takes it: at most 15 bytes and a NUL.
fn comm(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// The time to a periodic timer's next expiry, as it must be re-armed.
///
/// The kernel re-arms a periodic ITIMER_REAL (and a periodic POSIX timer)
/// only when the signal of its last expiry is dequeued. A checkpoint stops
/// the program with every signal blocked, so a timer that has just fired
/// reads as disarmed (value 0, interval set) while its signal waits,
/// pending. That signal is queued again at restart; the timer must be
/// armed too, or it would never fire again: one interval from now.
fn rearm(value: u64, interval: u64) -> u64 {
    if value == 0 { interval } else { value }
}

fn us(v: u64) -> (i64, i64) {
    ((v / 1_000_000) as i64, (v % 1_000_000) as i64)
}

fn ns(v: u64) -> (i64, i64) {
    ((v / 1_000_000_000) as i64, (v % 1_000_000_000) as i64)
}

/// The saved RLIMIT_NOFILE, within this process's hard limit (as restart
/// sets the other limits, `restore_process`); false if none was saved.
fn open_files_limit(meta: &ProcessMeta) -> ([u64; 2], bool) {
    let Some(l) = meta.rlimits.iter().find(|l| l.resource == libc::RLIMIT_NOFILE) else {
        return ([0; 2], false);
    };
    // SAFETY: a zeroed rlimit is valid; getrlimit fills it.
    let mut cur: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `cur` is a valid rlimit to write.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } != 0 {
        return ([0; 2], false);
    }
    ([l.soft.min(cur.rlim_max), l.hard.min(cur.rlim_max)], true)
}

/// Maps the restorer's area somewhere free in both the saved layout and
/// this process. Returns its address.
fn place_area(meta: &ProcessMeta, current_vdso: &[VdsoArea], size: u64) -> Result<u64, String> {
    let mut occupied: Vec<(u64, u64)> = meta.regions.iter().map(|r| (r.start, r.end)).collect();
    occupied.extend(current_vdso.iter().map(|a| (a.start, a.end)));
    for start in layout::gaps(&occupied, size) {
        let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe { libc::mmap(start as *mut _, size as usize, prot, flags, -1, 0) };
        if p as u64 == start {
            return Ok(start);
        }
        if p != libc::MAP_FAILED {
            // SAFETY: an unwanted mapping we just made.
            unsafe { libc::munmap(p, size as usize) };
        }
    }
    Err("no room in the address space for the restorer".into())
}

/// Builds the plan and runs the restorer. Only returns on error.
/// `ready` is the last word: it returns once every process of the
/// computation is as far, or fails, and then nothing has been changed yet.
pub fn build_and_jump(
    image: &ImageReader,
    gate: Option<i32>,
    tmpdir: Option<&[u8]>,
    mut helpers: Helpers,
    ready: &dyn Fn() -> Result<(), String>,
) -> Result<(), String> {
    let meta = image.meta();
    let current_vdso = vdso::current()?;
    // The process's memory (`memory`): mapped from the images where it
    // can be, compressed pieces decompressed here (below), the rest read
    // by the restorer. Only an agent of image version 7 or later knows
    // image mappings (its madvise and its next checkpoint treat them as the
    // anonymous memory they stand for): older ones get nothing mapped.
    // SAFETY: the image's descriptor that fds::restore kept, borrowed for
    // this call only (ManuallyDrop: never closed here).
    let own = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(helpers.image) });
    let (sources, pieces) = memory::memory_pieces(image, &own).map_err(|e| e.0)?;
    // The agent's table names at most IMAGES_MAX images. On a filesystem
    // mounted noexec, a mapping of the image could never be made executable
    // (a JIT's memory): nothing is mapped from it then.
    let direct = image.header().version >= 7
        && sources.len() <= restore_info::IMAGES_MAX
        && sources.iter().all(|s| !memory::on_noexec_mount(&s.file));
    let pieces: Vec<_> = pieces.into_iter().filter(|p| filled_from_image(&meta.regions[p.region])).collect();
    let layout = memory::lay_out(meta, &pieces, direct);
    let staging: u64 = layout.staged.iter().map(|r| r.len.next_multiple_of(PAGE) + PAGE).sum();
    let threads = &meta.threads;
    let frames: u64 = threads.iter().map(|t| layout::frame_len(t) + 64).sum();
    // Every array of the plan, each padded to its alignment.
    let record = |n: usize, size: usize| (n * size + 16) as u64;
    let arrays = record(meta.regions.len(), std::mem::size_of::<MapOp>())
        + record(pieces.len(), std::mem::size_of::<ReadOp>())
        + record(8 + 3 * restore_info::IMAGES_MAX + restore_info::TMPDIR_MAX / 8, std::mem::size_of::<Poke>())
        + record(pieces.len(), std::mem::size_of::<MapOp>())
        + record(layout.staged.len(), std::mem::size_of::<RemapOp>())
        + record(threads.len(), std::mem::size_of::<ThreadPlan>())
        + record(meta.posix_timers.len(), std::mem::size_of::<TimerPlan>())
        + record(meta.mm.auxv.len(), 8);
    let code = RESTORER.len() as u64;
    let size = (code
        + staging
        + std::mem::size_of::<Plan>() as u64
        + arrays
        + frames
        + threads.len() as u64 * RESTORER_THREAD_STACK
        + MAIN_STACK
        + 16 * PAGE)
        .next_multiple_of(PAGE);
    let base = place_area(meta, &current_vdso, size)?;
    // SAFETY: we just mapped `size` bytes at `base`, read-write, for us alone.
    let buf = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, size as usize) };
    buf[..RESTORER.len()].copy_from_slice(RESTORER);
    for &(offset, addend) in RESTORER_RELOCS {
        let slot = offset as usize;
        let value = base.wrapping_add_signed(addend);
        buf[slot..slot + 8].copy_from_slice(&value.to_le_bytes());
    }
    let mut arena = Arena { base, buf, used: RESTORER.len() };
    let plan_addr = arena.alloc(std::mem::size_of::<Plan>(), PAGE as usize)?;

    // Memory. A region no piece goes into is mapped as it is at once.
    let mut filled = vec![false; meta.regions.len()];
    for p in &pieces {
        filled[p.region] = true;
    }
    let mut maps = Vec::new();
    for (r, filled) in meta.regions.iter().zip(filled) {
        let (fd, offset) = match &r.kind {
            RegionKind::Vdso | RegionKind::Vvar => continue,
            RegionKind::Anonymous => (-1, 0),
            RegionKind::SharedMemory { dev, inode, offset } => (helpers.shm_fd(*dev, *inode)?, *offset),
            RegionKind::File { path, offset, id } => {
                let write = r.shared && r.prot & stasis_image::PROT_WRITE != 0;
                (helpers.map_fd(path, write, (!r.shared).then_some(id))?, *offset)
            }
        };
        maps.push(MapOp {
            start: r.start,
            len: r.end - r.start,
            prot: prot(r.prot),
            flags: map_flags(r),
            fd,
            fork_advice: fork_advice(r.fork_advice),
            offset,
            empty: u32::from(!filled),
            _pad: 0,
        });
    }
    // Compressed pieces, decompressed now (in parallel, each checked as it
    // is read) into the restorer's area, whence the restorer moves them.
    let mut remaps = Vec::with_capacity(layout.staged.len());
    let mut dest = Vec::with_capacity(layout.staged.len());
    for run in &layout.staged {
        let from = arena.alloc(run.len as usize, PAGE as usize)?;
        dest.push(from);
        remaps.push(RemapOp { from, to: run.addr, len: run.len, copy: u64::from(!run.moved) });
    }
    memory::decompress_staged(&sources, &layout.staged, &dest)?;
    // Each image's descriptor goes to the range the restorer closes; the
    // files are dropped here, as nothing after the jump would close them.
    let mut image_fds = Vec::with_capacity(sources.len());
    let mut images = Vec::with_capacity(sources.len());
    for s in sources {
        image_fds.push(helpers.keep(s.file.into_raw_fd())?);
        images.push((s.dev, s.inode, s.generation));
    }
    let image_maps: Vec<MapOp> = layout
        .maps
        .iter()
        .map(|&(img, start, len, offset)| MapOp {
            start,
            len,
            // The region's final protection comes with its mprotect.
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            // Part of a MAP_NORESERVE region stays one.
            flags: (libc::MAP_PRIVATE
                | if region_at(meta, start).is_some_and(|r| r.noreserve) { libc::MAP_NORESERVE } else { 0 })
                as u32,
            fd: image_fds[img],
            fork_advice: 0,
            offset,
            empty: 0,
            _pad: 0,
        })
        .collect();
    let reads: Vec<ReadOp> = layout
        .reads
        .iter()
        .map(|p| ReadOp { addr: p.addr, len: p.len, file_offset: p.file_offset, fd: image_fds[p.image], _pad: 0 })
        .collect();

    // The agent's block, and what to tell it.
    let ri = meta.agent.restore_info_addr;
    let mut pokes = vec![
        Poke {
            addr: ri + restore_info::CHECKOUT_OFFSET,
            value: threads.len() as u64 | (u64::from(restore_info::PHASE_RESTORING) << 32),
        },
        Poke { addr: ri + restore_info::BLOB_START_OFFSET, value: base },
        Poke { addr: ri + restore_info::BLOB_LEN_OFFSET, value: size },
        Poke { addr: ri + restore_info::RESTORED_OFFSET, value: 1 },
        Poke { addr: ri + restore_info::GENERATION_OFFSET, value: meta.generation },
    ];
    if direct {
        // The image files its memory is mapped from, and the descriptor that
        // says when restart has verified them (`gate`, placed below).
        let n = images.len();
        pokes.push(Poke { addr: ri + restore_info::IMAGES_COUNT_OFFSET, value: n as u64 });
        for (i, &(dev, inode, generation)) in images.iter().enumerate() {
            let at = ri + restore_info::IMAGES_OFFSET + i as u64 * restore_info::IMAGE_ENTRY_LEN;
            pokes.push(Poke { addr: at, value: dev });
            pokes.push(Poke { addr: at + 8, value: inode });
            pokes.push(Poke { addr: at + 16, value: generation });
        }
    }
    // Restart's --tmpdir, for an agent that has room for it (version 8).
    if let Some(dir) = tmpdir.filter(|d| !d.is_empty() && d.len() <= restore_info::TMPDIR_MAX)
        && image.header().version >= 8
    {
        pokes.push(Poke { addr: ri + restore_info::TMPDIR_LEN_OFFSET, value: dir.len() as u64 });
        for (i, word) in dir.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            pokes.push(Poke { addr: ri + restore_info::TMPDIR_OFFSET + 8 * i as u64, value: u64::from_le_bytes(w) });
        }
    }

    // Threads: a frame each, and a small stack for all but the leader.
    let mut tplans = Vec::new();
    for (i, t) in threads.iter().enumerate() {
        let frame = arena.alloc(layout::frame_len(t) as usize, 64)?;
        let bytes = layout::build_frame(t, frame, meta.agent.ckpt_signal);
        arena.write_bytes(frame, &bytes);
        let stack_top =
            if i == 0 { 0 } else { arena.alloc(RESTORER_THREAD_STACK as usize, 16)? + RESTORER_THREAD_STACK };
        tplans.push(ThreadPlan {
            tid: t.tid,
            _pad: 0,
            fs_base: t.fs_base,
            gs_base: t.gs_base,
            frame,
            stack_top,
            clear_child_tid: t.clear_child_tid,
            robust_list: t.robust_list,
            robust_list_len: t.robust_list_len,
            rseq_addr: t.rseq_addr,
            rseq_len: t.rseq_len,
            rseq_sig: t.rseq_sig,
            pending: t.pending,
            name: comm(&t.name),
        });
    }
    let main_stack_top = arena.alloc(MAIN_STACK as usize, 16)? + MAIN_STACK;

    let timers: Vec<TimerPlan> = meta
        .posix_timers
        .iter()
        .map(|t| {
            let (is, ins) = ns(t.interval_ns);
            let (vs, vns) = ns(rearm(t.value_ns, t.interval_ns));
            TimerPlan {
                id: t.id,
                clock: t.clock,
                notify: t.notify,
                signal: t.signal,
                notify_tid: t.notify_tid,
                _pad: 0,
                sigev_value: t.sigev_value,
                interval_sec: is,
                interval_nsec: ins,
                value_sec: vs,
                value_nsec: vns,
            }
        })
        .collect();

    let mut sigactions = [KernelSigaction::default(); 64];
    let mut sigaction_set = 0u64;
    for (i, a) in meta.sigactions.iter().enumerate().take(64) {
        let sig = i as i32 + 1;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        sigactions[i] = KernelSigaction { handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask };
        sigaction_set |= 1 << i;
    }
    let mut itimers = [Itimerval::default(); 3];
    for (i, t) in meta.itimers.iter().enumerate().take(3) {
        let (is, ius) = us(t.interval_us);
        let (vs, vus) = us(rearm(t.value_us, t.interval_us));
        itimers[i] = Itimerval { interval_sec: is, interval_usec: ius, value_sec: vs, value_usec: vus };
    }

    let auxv = arena.put(&meta.mm.auxv)?;
    let exe_fd = std::ffi::CString::new(meta.exe.as_str())
        .ok()
        .map(|c| {
            // SAFETY: open with a NUL-terminated path.
            unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
        })
        .filter(|&fd| fd >= 0)
        .and_then(|fd| helpers.keep(fd).ok())
        .map(|fd| fd as u32)
        .unwrap_or(u32::MAX);
    let m = &meta.mm;
    let mm_map = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv: if m.auxv.is_empty() { 0 } else { auxv.addr },
        auxv_size: (m.auxv.len() * 8) as u32,
        exe_fd,
    };

    // Above the range the restorer closes: the agent takes it over.
    let close_to = helpers.end();
    if let Some(g) = gate.filter(|_| direct) {
        // SAFETY: F_DUPFD_CLOEXEC of a descriptor this process holds.
        let fd = unsafe { libc::fcntl(g, libc::F_DUPFD_CLOEXEC, close_to) };
        if fd < 0 {
            return Err(format!("the verification descriptor: {}", std::io::Error::last_os_error()));
        }
        pokes.push(Poke { addr: ri + restore_info::VERIFY_GATE_OFFSET, value: fd as u64 + 1 });
    }
    if let Some(g) = gate {
        // SAFETY: closing the inherited copy, which nothing else uses.
        unsafe { libc::close(g) };
    }

    let (keep, moves) = vdso::plan_moves(meta, &current_vdso, base, size)?;
    let (open_files_limit, set_open_files_limit) = open_files_limit(meta);
    let mut plan = Plan {
        magic: stasis_plan::PLAN_MAGIC,
        blob_start: base,
        blob_end: base + size,
        keep: [Move::default(); 4],
        n_keep: keep.len() as u64,
        moves: [Move::default(); 8],
        n_moves: moves.len() as u64,
        maps: arena.put(&maps)?,
        image_maps: arena.put(&image_maps)?,
        reads: arena.put(&reads)?,
        remaps: arena.put(&remaps)?,
        pokes: arena.put(&pokes)?,
        threads: arena.put(&tplans)?,
        timers: arena.put(&timers)?,
        sigactions,
        sigaction_set,
        itimers,
        mm_map,
        shared_pending: meta.shared_pending,
        image_fd: helpers.image,
        log_fd: helpers.log,
        ckpt_signal: meta.agent.ckpt_signal,
        go: 0,
        close_from: helpers.base,
        close_to,
        open_files_limit,
        set_open_files_limit: u64::from(set_open_files_limit),
    };
    plan.keep[..keep.len()].copy_from_slice(&keep);
    plan.moves[..moves.len()].copy_from_slice(&moves);
    // SAFETY: plan_addr is page-aligned inside our area, with room for a Plan.
    unsafe { std::ptr::write(plan_addr as *mut Plan, plan) };

    ready()?;
    forget_rseq();
    // SAFETY: block every signal; the saved masks come back with each frame.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    let entry = base + RESTORER_ENTRY;
    // SAFETY: the restorer takes over the process: it gets its own stack
    // (aligned as after a call) and the plan, and never returns.
    unsafe {
        asm!(
            "mov rsp, {sp}",
            "xor ebp, ebp",
            "jmp {entry}",
            sp = in(reg) main_stack_top - 8,
            entry = in(reg) entry,
            in("rdi") plan_addr,
            options(noreturn),
        )
    }
}

/// glibc registered this thread's rseq area in memory the restorer is about
/// to unmap; the kernel would then fault writing to it. Unregister first.
fn forget_rseq() {
    // SAFETY: dlsym with NUL-terminated names; the values are glibc's
    // read-only variables. rseq(UNREGISTER) only affects this thread.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if off.is_null() || size.is_null() || *size == 0 {
            return;
        }
        let mut tp: u64;
        asm!("mov {}, fs:0", out(reg) tp);
        tp = (tp as i64 + *off as i64) as u64;
        for len in [32u32, *size] {
            if libc::syscall(libc::SYS_rseq, tp, len, 1, 0x5305_3053) == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_timer_caught_between_expiry_and_signal_is_rearmed() {
        assert_eq!(rearm(0, 10_000), 10_000); // fired, signal pending
        assert_eq!(rearm(2_500, 10_000), 2_500); // running
        assert_eq!(rearm(0, 0), 0); // disarmed stays disarmed
        assert_eq!(rearm(7, 0), 7); // one-shot
    }
}
