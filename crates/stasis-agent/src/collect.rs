//! Gathers what an image holds about this process, while its other threads
//! are stopped: memory layout and which pages to save, threads, descriptors,
//! signal state, timers and the rest. Runs on the checkpoint thread.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;

use stasis_image::{
    AgentInfo, EpollTarget, Fd, FdKind, FileId, ITimer, MmLayout, PosixTimer, ProcessMeta, Region, RegionKind, Rlimit,
    SigAction, Thread,
};
use stasis_plan::{UC_FPSTATE_OFFSET, UCONTEXT_LEN};

use crate::signals::{self, Slot};
use crate::sys;

pub const PAGE: u64 = 4096;

/// Which pages of a region the writer saves.
pub enum Pages {
    None,
    /// Every page from the start up to `len` bytes.
    Prefix(u64),
    /// Pages whose bit is set (bit i = page i of the region).
    Bitmap(Vec<u64>),
    /// Pages in these ranges [first, end) of page numbers, sorted: a huge
    /// sparse region (a 2 TiB MAP_NORESERVE reservation with a few pages
    /// touched), whose bitmap alone would be tens of MiB. Not tracked for
    /// incremental checkpoints (`track` takes bitmaps only): saved whole.
    Runs(Vec<(u64, u64)>),
}

impl Pages {
    /// The wanted pages of a region of `pages` pages, as ranges [first, end)
    /// of page numbers in order; a bitmap's empty words are skipped whole.
    pub fn runs(&self, pages: u64) -> Vec<(u64, u64)> {
        let within = |(a, b): (u64, u64)| (a, b.min(pages));
        match self {
            Pages::None => Vec::new(),
            Pages::Prefix(len) => [(0, len / PAGE)].into_iter().map(within).filter(|(a, b)| a < b).collect(),
            Pages::Runs(runs) => runs.iter().copied().map(within).filter(|(a, b)| a < b).collect(),
            Pages::Bitmap(bits) => {
                let mut out: Vec<(u64, u64)> = Vec::new();
                for (w, &word) in bits.iter().enumerate() {
                    let mut rest = word;
                    while rest != 0 {
                        let p = w as u64 * 64 + u64::from(rest.trailing_zeros());
                        if p >= pages {
                            break;
                        }
                        match out.last_mut() {
                            Some(last) if last.1 == p => last.1 += 1,
                            _ => out.push((p, p + 1)),
                        }
                        rest &= rest - 1;
                    }
                }
                out
            }
        }
    }
}

/// A region and what to save of it.
pub struct RegionPlan {
    pub pages: Pages,
    /// Pages that are all zero may be left out (anonymous memory).
    pub skip_zero: bool,
    /// Registered with the agent's userfaultfd (smaps `uw`): its written
    /// pages are tracked (`track`).
    pub uffd_wp: bool,
}

pub struct Snapshot {
    pub meta: ProcessMeta,
    pub plans: Vec<RegionPlan>,
    /// fds (index into meta.fds) whose file contents must be saved.
    pub deleted_files: Vec<usize>,
    /// The first read end (index into meta.fds) of each pipe, whose bytes
    /// in flight must be saved.
    pub pipes: Vec<usize>,
    /// The first descriptor (index into meta.fds) of each socket whose
    /// bytes (or messages) waiting to be read must be saved.
    pub sockets: Vec<usize>,
    /// The allocator's epoch before memory was listed.
    pub epoch: usize,
}

fn read_string(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))
}

/// Collects everything; `agent_fd` is the coordinator connection.
///
/// Memory is read last, and the returned snapshot carries the allocator's
/// epoch at that moment: if the agent maps or unmaps anything after it
/// (its own allocations), the caller must take the memory list again.
pub fn snapshot(agent_fd: i32, ckpt_signal: i32, interval_s: u32, compress: bool) -> Result<Snapshot, String> {
    let pid = sys::getpid();
    let stat = stasis_procfs::parse_stat(&read_string("/proc/self/stat")?).ok_or("cannot parse /proc/self/stat")?;
    // Signals sent to the process and pending are kept with their sender
    // (`pending.rs`), POSIX timers' own too: raised again from the bit
    // alone, a timer's signal would come without its value (a handler that
    // reads `si_value` as a pointer crashes: DMTCP's timer1). Taking one
    // out is what its delivery does to the timer (a periodic one goes on).
    crate::pending::take(ckpt_signal, 0);
    // Timers before the pending signals: one that fires in between reads
    // as armed (restart arms it again) or is pending (queued again), never
    // neither, which would leave a program waiting for it for ever.
    let itimers = (0..3)
        .map(|w| {
            let t = sys::getitimer(w);
            ITimer {
                interval_us: t.it_interval.tv_sec as u64 * 1_000_000 + t.it_interval.tv_usec as u64,
                value_us: t.it_value.tv_sec as u64 * 1_000_000 + t.it_value.tv_usec as u64,
            }
        })
        .collect();
    let posix_timers = posix_timers()?;
    let status = read_string("/proc/self/status")?;
    let umask =
        stasis_procfs::status_field(&status, "Umask").and_then(|u| u32::from_str_radix(u, 8).ok()).unwrap_or(0o022);
    let shared_pending = stasis_procfs::status_hex(&status, "ShdPnd").unwrap_or(0);

    let threads = threads(pid)?;
    crate::mqueue::forget_kept();
    let fds = descriptors(agent_fd)?;
    let deleted_files = fds
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.kind, FdKind::File { deleted: true, .. }))
        .map(|(i, _)| i)
        .collect();
    // Bytes in flight are peeked from a read end of this process. A pipe
    // this process only writes to is left to its reader: one in the
    // computation saves them from its own end, one outside it (a batch
    // system's or `sudo`'s pipe, perhaps another user's) reads them itself.
    let mut pipes: Vec<usize> = Vec::new();
    for (i, f) in fds.iter().enumerate() {
        // (A named pipe opened O_RDWR reads too.)
        // The launch's stdin from outside is the outside's: never peeked.
        if let FdKind::Pipe { id, flags, .. } = f.kind
            && f.outside_stdio.is_none()
            && flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32
            && !pipes.iter().any(|&p| matches!(fds[p].kind, FdKind::Pipe { id: other, .. } if other == id))
        {
            pipes.push(i);
        }
    }
    let mut sockets: Vec<usize> = Vec::new();
    let mut sockets_peer_shut: Vec<u64> = Vec::new();
    for (i, f) in fds.iter().enumerate() {
        let FdKind::Socket { id, domain, kind, listening: false, ref peer, peer_id, .. } = f.kind else { continue };
        if f.outside_stdio.is_some() {
            continue; // the outside's, never peeked
        }
        // Connected streams, and Unix datagram and seqpacket sockets (UDP
        // queues are not saved: a datagram's sender cannot be made again).
        let stream = kind == libc::SOCK_STREAM && (domain == libc::AF_UNIX || !peer.is_empty());
        let messages = domain == libc::AF_UNIX && matches!(kind, libc::SOCK_DGRAM | libc::SOCK_SEQPACKET);
        if !stream && !messages {
            continue;
        }
        if sockets.iter().any(|&s| matches!(fds[s].kind, FdKind::Socket { id: other, .. } if other == id)) {
            continue;
        }
        // A half-closed connection: end of file after the bytes waiting.
        let connected = !peer.is_empty() || peer_id != 0;
        if kind != libc::SOCK_DGRAM && connected && crate::sockets::peer_shut_down(f.fd) {
            sockets_peer_shut.push(id);
        }
        if domain != libc::AF_UNIX {
            let stuck = crate::sockets::unsent(f.fd);
            if stuck > 0 {
                return Err(format!(
                    "fd {}: {stuck} bytes sent on this TCP connection have not reached its peer yet (its \
                     receive buffer is full); they could not be saved",
                    f.fd
                ));
            }
        }
        sockets.push(i);
    }
    let mut meta = ProcessMeta {
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        zombies: crate::tree::children().1,
        name: read_string("/proc/self/comm")?.trim_end().to_string(),
        exe: fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        cmdline: read_string("/proc/self/cmdline")
            .unwrap_or_default()
            .split_terminator('\0')
            .map(str::to_string)
            .collect(),
        cwd: fs::read_link("/proc/self/cwd")
            .map_err(|e| format!("read /proc/self/cwd: {e}"))?
            .to_string_lossy()
            .into_owned(),
        umask,
        rlimits: rlimits(),
        mm: mm_layout(&stat)?,
        threads,
        fds,
        sigactions: sigactions(),
        shared_pending,
        itimers,
        posix_timers,
        sockets_peer_shut,
        agent: AgentInfo {
            restore_info_addr: &signals::RESTORE_INFO as *const _ as u64,
            ckpt_signal,
            interval_s,
            compress,
        },
        ..Default::default()
    };
    meta.sysv_ipc = crate::ipc::sysv_objects()?;
    crate::timing::mark("collect");
    let epoch = crate::ALLOC.epoch();
    let (regions, plans) = memory()?;
    meta.regions = regions;
    Ok(Snapshot { meta, plans, deleted_files, pipes, sockets, epoch })
}

/// Takes the memory list again (see `snapshot`).
pub fn refresh_memory(snap: &mut Snapshot) -> Result<(), String> {
    snap.epoch = crate::ALLOC.epoch();
    let (regions, plans) = memory()?;
    snap.meta.regions = regions;
    snap.plans = plans;
    Ok(())
}

fn rlimits() -> Vec<Rlimit> {
    (0..16)
        .filter_map(|r| {
            // SAFETY: a zeroed rlimit is valid; getrlimit fills it.
            let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: `l` is a valid rlimit to write.
            (unsafe { libc::getrlimit(r, &mut l) } == 0).then_some(Rlimit {
                resource: r,
                soft: l.rlim_cur,
                hard: l.rlim_max,
            })
        })
        .collect()
}

fn mm_layout(stat: &stasis_procfs::StatMm) -> Result<MmLayout, String> {
    let mut auxv_bytes = Vec::new();
    fs::File::open("/proc/self/auxv")
        .and_then(|mut f| f.read_to_end(&mut auxv_bytes))
        .map_err(|e| format!("read /proc/self/auxv: {e}"))?;
    // SAFETY: brk(0) changes nothing and returns the current break.
    let brk = unsafe { sys::syscall6(libc::SYS_brk, [0; 6]) }.unwrap_or(0) as u64;
    Ok(MmLayout {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv: auxv_bytes.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default())).collect(),
    })
}

fn sigactions() -> Vec<SigAction> {
    (1..=64)
        .map(|sig| match sys::rt_sigaction_get(sig) {
            Ok([handler, flags, restorer, mask]) => SigAction { handler, flags, restorer, mask },
            Err(_) => SigAction::default(),
        })
        .collect()
}

fn posix_timers() -> Result<Vec<PosixTimer>, String> {
    let text = read_string("/proc/self/timers")?;
    let entries = stasis_procfs::parse_timers(&text).ok_or("cannot parse /proc/self/timers")?;
    let mut out = Vec::new();
    for e in entries {
        let Some(spec) = sys::timer_gettime(e.id) else { continue };
        let notify = match e.notify {
            stasis_procfs::TimerNotify::None => libc::SIGEV_NONE,
            stasis_procfs::TimerNotify::Thread => libc::SIGEV_THREAD,
            stasis_procfs::TimerNotify::Signal if e.to_thread => libc::SIGEV_THREAD_ID,
            stasis_procfs::TimerNotify::Signal => libc::SIGEV_SIGNAL,
        };
        let ns = |t: libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
        out.push(PosixTimer {
            id: e.id,
            clock: e.clock,
            notify,
            signal: e.signal,
            sigev_value: e.sigev_value,
            notify_tid: if e.to_thread { e.notify_pid } else { 0 },
            interval_ns: ns(spec.it_interval),
            value_ns: ns(spec.it_value),
            overrun: sys::timer_getoverrun(e.id),
        });
    }
    Ok(out)
}

// ---- threads -------------------------------------------------------------------

fn thread_from_slot(slot: &Slot) -> Result<Thread, String> {
    let tid = slot.tid.load(Ordering::Acquire);
    let uc = slot.uc.load(Ordering::Acquire) as *const u8;
    if uc.is_null() {
        return Err(format!("thread {tid} left no context"));
    }
    // SAFETY: the thread is stopped inside its handler, so its kernel
    // ucontext (UCONTEXT_LEN bytes) is live on its stack.
    let ucontext = unsafe { std::slice::from_raw_parts(uc, UCONTEXT_LEN) }.to_vec();
    let fp = u64::from_le_bytes(ucontext[UC_FPSTATE_OFFSET..UC_FPSTATE_OFFSET + 8].try_into().unwrap_or_default());
    let fpstate = if fp == 0 {
        Vec::new()
    } else {
        // The software-reserved bytes at 464 of the FXSAVE area say how
        // long the XSAVE area that follows is (magic 'FPXS').
        // SAFETY: the kernel put at least a 512-byte FXSAVE area there.
        let fx = unsafe { std::slice::from_raw_parts(fp as *const u8, 512) };
        let magic = u32::from_le_bytes(fx[464..468].try_into().unwrap_or_default());
        let ext = u32::from_le_bytes(fx[468..472].try_into().unwrap_or_default()) as usize;
        let len = if magic == 0x4650_5853 && (512..=1 << 20).contains(&ext) { ext } else { 512 };
        // SAFETY: the kernel wrote `len` bytes of state at `fp` (its own header says so).
        unsafe { std::slice::from_raw_parts(fp as *const u8, len) }.to_vec()
    };
    let task_status = read_string(&format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    let (rseq_addr, rseq_len, rseq_sig) = rseq_of(slot.fs_base.load(Ordering::Relaxed));
    Ok(Thread {
        tid,
        ucontext,
        fpstate,
        fs_base: slot.fs_base.load(Ordering::Relaxed),
        gs_base: slot.gs_base.load(Ordering::Relaxed),
        clear_child_tid: slot.clear_child_tid.load(Ordering::Relaxed),
        robust_list: slot.robust_list.load(Ordering::Relaxed),
        robust_list_len: slot.robust_list_len.load(Ordering::Relaxed),
        rseq_addr,
        rseq_len,
        rseq_sig,
        pending: stasis_procfs::status_hex(&task_status, "SigPnd").unwrap_or(0),
        name: slot.name(),
    })
}

/// glibc's rseq registration: offset from the thread pointer, or None.
static RSEQ_OFFSET: std::sync::OnceLock<Option<isize>> = std::sync::OnceLock::new();

/// Looks up glibc's __rseq_offset/__rseq_size (exported since 2.35). Done
/// at start-up: dlsym takes the loader's lock, which a stopped thread may
/// hold during a checkpoint.
pub fn init_rseq_lookup() {
    RSEQ_OFFSET.get_or_init(|| {
        // SAFETY: dlsym with NUL-terminated names; the symbols, when
        // present, are glibc's read-only variables of these types.
        unsafe {
            let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
            let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
            (!off.is_null() && !size.is_null() && *size != 0).then(|| *off)
        }
    });
}

/// Unregisters the calling thread's rseq area (which lives at
/// `fs_base`-relative `rseq_of`). The image writer does this first: it
/// inherits the checkpoint thread's registration, and the kernel would keep
/// updating the cpu number inside memory being saved.
pub fn forget_rseq() {
    let (addr, len, sig) = rseq_of(sys::fs_base());
    if addr != 0 {
        // SAFETY: rseq(UNREGISTER) with the registration glibc made; it
        // only stops the kernel from writing to that area.
        let _ = unsafe { sys::syscall6(libc::SYS_rseq, [addr as usize, len as usize, 1, sig as usize, 0, 0]) };
    }
}

/// A thread's rseq area: glibc registers the whole 32-byte struct rseq at
/// a fixed offset from the thread pointer, with RSEQ_SIG.
fn rseq_of(fs_base: u64) -> (u64, u32, u32) {
    match RSEQ_OFFSET.get().copied().flatten() {
        Some(off) => ((fs_base as i64 + off as i64) as u64, 32, 0x5305_3053),
        None => (0, 0, 0),
    }
}

/// Every thread: the stopped ones, then the checkpoint thread itself; the
/// thread-group leader first.
fn threads(pid: i32) -> Result<Vec<Thread>, String> {
    let n = signals::NEXT_SLOT.load(Ordering::Acquire).min(signals::MAX_THREADS);
    let mut out = Vec::with_capacity(n + 1);
    for slot in &signals::SLOTS[..n] {
        out.push(thread_from_slot(slot)?);
    }
    out.push(thread_from_slot(&signals::CT_SLOT)?);
    let leader = out.iter().position(|t| t.tid == pid).ok_or("the main thread has exited; cannot checkpoint")?;
    out.swap(0, leader);
    Ok(out)
}

// ---- memory --------------------------------------------------------------------

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

fn memory() -> Result<(Vec<Region>, Vec<RegionPlan>), String> {
    let text = read_string("/proc/self/smaps")?;
    let entries = stasis_procfs::parse_smaps(&text).ok_or("cannot parse /proc/self/smaps")?;
    let pagemap = fs::File::open("/proc/self/pagemap").map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    let mut regions = Vec::new();
    let mut plans = Vec::new();
    for e in entries {
        if e.name == "[vsyscall]" {
            continue;
        }
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        let prot = bit(e.read, stasis_image::PROT_READ)
            | bit(e.write, stasis_image::PROT_WRITE)
            | bit(e.exec, stasis_image::PROT_EXEC);
        let len = e.end - e.start;
        let (kind, plan) = match e.name.as_str() {
            "[vdso]" => (RegionKind::Vdso, RegionPlan { pages: Pages::Prefix(len), skip_zero: false, uffd_wp: false }),
            "[vvar]" | "[vvar_vclock]" => {
                (RegionKind::Vvar, RegionPlan { pages: Pages::None, skip_zero: false, uffd_wp: false })
            }
            // Memory a restart mapped from an image (`imagemap`): the
            // anonymous memory it stands for, every page of it (pages not
            // touched since are the image's bytes, not zeros). A private
            // file mapping cannot be write-protected by userfaultfd: not
            // tracked, saved whole.
            _ if !e.shared && crate::imagemap::image_backed(e.dev, e.inode) => {
                (RegionKind::Anonymous, RegionPlan { pages: Pages::Prefix(len), skip_zero: true, uffd_wp: false })
            }
            _ => match e.path() {
                Some(path) if !e.is_deleted() && !path.starts_with("/SYSV") && !path.starts_with("/memfd:") => {
                    let md = fs::metadata(path).map_err(|err| format!("stat {path}: {err}"))?;
                    // The build-id and head hash are read by the image
                    // writer, after the program runs again (`writer`).
                    let id = FileId {
                        size: md.size(),
                        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
                        ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
                        inode: md.ino(),
                        ..FileId::default()
                    };
                    // "mw": the mapping may be made writable, so the program
                    // may have changed the file through it.
                    let writable_shared = e.shared && (e.write || e.has_flag("mw"));
                    let plan = if e.shared && !writable_shared {
                        RegionPlan { pages: Pages::None, skip_zero: false, uffd_wp: false }
                    } else if e.shared {
                        // The file itself holds these contents: save them
                        // all (up to the file's end) and write them back.
                        let in_file = md.size().saturating_sub(e.offset).next_multiple_of(PAGE).min(len);
                        RegionPlan { pages: Pages::Prefix(in_file), skip_zero: false, uffd_wp: false }
                    } else {
                        // Pages still backed by the file come from it again.
                        let bits = kept_pages(&e, &pagemap, |pm| {
                            pm & PM_SWAPPED != 0 || (pm & PM_PRESENT != 0 && pm & PM_FILE == 0)
                        })?;
                        RegionPlan { pages: Pages::Bitmap(bits), skip_zero: false, uffd_wp: false }
                    };
                    (RegionKind::File { path: path.to_string(), offset: e.offset, id }, plan)
                }
                // Shared memory that no file brings back (shared anonymous,
                // deleted /dev/shm files, memfd, SysV): saved whole, and
                // named, so restart shares it between the processes again.
                _ if e.shared => (
                    RegionKind::SharedMemory { dev: e.dev, inode: e.inode, offset: e.offset },
                    RegionPlan { pages: Pages::Prefix(len), skip_zero: true, uffd_wp: false },
                ),
                Some(_) => {
                    // A deleted file: nothing to map at restart, so keep
                    // everything that is in memory now.
                    let pages = resident_pages(&e, &pagemap, false)?;
                    (RegionKind::Anonymous, RegionPlan { pages, skip_zero: false, uffd_wp: false })
                }
                None => {
                    let pages = resident_pages(&e, &pagemap, true)?;
                    (RegionKind::Anonymous, RegionPlan { pages, skip_zero: true, uffd_wp: e.has_flag("uw") })
                }
            },
        };
        // The kernel makes the vdso and vvar again: nothing to lift or set.
        let fork_advice = if matches!(kind, RegionKind::Vdso | RegionKind::Vvar) { 0 } else { fork_advice(&e) };
        regions.push(Region {
            start: e.start,
            end: e.end,
            prot,
            shared: e.shared,
            growsdown: e.has_flag("gd"),
            kind,
            name: e.name.clone(),
            fork_advice,
            noreserve: e.has_flag("nr"),
        });
        plans.push(plan);
    }
    Ok((regions, plans))
}

/// The region's behaviour across fork, as madvise set it (V8 marks its
/// heap and code DONTFORK): the writer is a fork, so `fork_advice.rs` lifts
/// these around it, and restart sets them again.
fn fork_advice(e: &stasis_procfs::MapEntry) -> u8 {
    let bit = |flag: &str, b: u8| if e.has_flag(flag) { b } else { 0 };
    // "dc": VM_DONTCOPY ("dd" is VM_DONTDUMP, which has no effect on fork).
    bit("dc", stasis_image::ADVICE_DONTFORK) | bit("wf", stasis_image::ADVICE_WIPEONFORK)
}

/// Regions of at least this size whose pages are in memory or swapped are
/// listed as ranges (`Pages::Runs`), found by PAGEMAP_SCAN, which skips
/// the holes of the page table whole: a bitmap of a 2 TiB reservation is
/// 64 MiB, and reading its pagemap 4 GiB.
const HUGE_REGION: u64 = 4 << 30;

/// The pages of a private anonymous region (or a deleted file's:
/// `anonymous` false) to save: those in memory or swapped out.
fn resident_pages(e: &stasis_procfs::MapEntry, pagemap: &fs::File, anonymous: bool) -> Result<Pages, String> {
    let len = e.end - e.start;
    // No page of it in memory nor in swap (a reservation never written):
    // nothing to read. (A deleted file's pages are in the page cache, which
    // smaps does not count as anonymous.)
    let untouched = anonymous && e.anonymous + e.swap == 0;
    if len >= HUGE_REGION {
        if untouched {
            return Ok(Pages::Runs(Vec::new()));
        }
        if let Some(runs) = scanned_runs(pagemap, e.start, e.end) {
            return Ok(Pages::Runs(runs));
        }
    } else if untouched && !e.has_flag("uw") {
        // A tracked region keeps its bitmap (`track`).
        return Ok(Pages::Bitmap(Vec::new()));
    }
    let bits = kept_pages(e, pagemap, |pm| pm & (PM_PRESENT | PM_SWAPPED) != 0)?;
    Ok(Pages::Bitmap(bits))
}

/// The pages of [start, end) in memory or swapped, as ranges of page
/// numbers from `start`; None where the kernel has no PAGEMAP_SCAN (before
/// Linux 6.7).
fn scanned_runs(pagemap: &fs::File, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let found = crate::track::scan(pagemap.as_raw_fd(), start, end, false).ok()?;
    let wanted = crate::track::PAGE_IS_PRESENT | crate::track::PAGE_IS_SWAPPED;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for r in found.iter().filter(|r| r.categories & wanted != 0) {
        let (a, b) = ((r.start.max(start) - start) / PAGE, (r.end.min(end) - start) / PAGE);
        match runs.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ if a < b => runs.push((a, b)),
            _ => {}
        }
    }
    Some(runs)
}

/// The pages of a private region to save: those `keep` picks from their
/// pagemap entries, which `keep` always picks among anonymous pages in
/// memory and swapped ones. When smaps counts every page of the region as
/// one or the other, all are saved without reading the pagemap: reading it
/// walks the page table, about as long as smaps itself took (20 ms a GiB).
fn kept_pages(e: &stasis_procfs::MapEntry, pagemap: &fs::File, keep: impl Fn(u64) -> bool) -> Result<Vec<u64>, String> {
    let len = e.end - e.start;
    if e.anonymous + e.swap >= len {
        return Ok(all_pages(len));
    }
    page_bits(pagemap, e.start, len, keep)
}

/// A bitmap with a bit set for each page of `len` bytes.
fn all_pages(len: u64) -> Vec<u64> {
    let pages = (len / PAGE) as usize;
    let mut bits = vec![u64::MAX; pages.div_ceil(64)];
    if !pages.is_multiple_of(64)
        && let Some(last) = bits.last_mut()
    {
        *last = (1u64 << (pages % 64)) - 1;
    }
    bits
}

/// Reads the pagemap entries of a range and keeps a bit per page.
fn page_bits(pagemap: &fs::File, start: u64, len: u64, keep: impl Fn(u64) -> bool) -> Result<Vec<u64>, String> {
    let pages = (len / PAGE) as usize;
    let mut bits = vec![0u64; pages.div_ceil(64)];
    let mut buf = vec![0u8; 8 * 4096];
    let mut done = 0usize;
    while done < pages {
        let n = (pages - done).min(4096);
        let off = (start / PAGE + done as u64) * 8;
        pagemap.read_exact_at(&mut buf[..n * 8], off).map_err(|e| format!("read pagemap: {e}"))?;
        for i in 0..n {
            let pm = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            if keep(pm) {
                let p = done + i;
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        done += n;
    }
    Ok(bits)
}

// ---- descriptors -----------------------------------------------------------------

fn descriptors(agent_fd: i32) -> Result<Vec<Fd>, String> {
    let mut nums = sys::numeric_entries(c"/proc/self/fd").map_err(|e| format!("read /proc/self/fd: errno {e}"))?;
    nums.sort_unstable();
    let mut out = Vec::new();
    crate::stdio::begin_listing();
    // Read once, when the first socket shows up.
    let mut unix_peers: Option<Vec<(u64, u64)>> = None;
    for fd in nums {
        if fd == crate::track::own_fd() {
            continue; // the agent's, made again after a restart
        }
        let Ok(link) = fs::read_link(format!("/proc/self/fd/{fd}")) else { continue }; // closed meanwhile
        let link = link.to_string_lossy().into_owned();
        let is_pipe = link.starts_with("pipe:[");
        let Ok(info_text) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else { continue };
        let info = stasis_procfs::parse_fdinfo(&info_text).ok_or_else(|| format!("cannot parse fdinfo of fd {fd}"))?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        // SAFETY: a zeroed stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid stat buffer.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            continue;
        }
        let fifo = st.st_mode & libc::S_IFMT == libc::S_IFIFO && !is_pipe && link.starts_with('/');
        let kind = if fd == agent_fd {
            FdKind::Agent
        } else if let Some(kind) = link.strip_prefix("anon_inode:") {
            anon_inode(fd, kind, flags, &info_text).unwrap_or(FdKind::Unsupported)
        } else if st.st_mode & libc::S_IFMT == libc::S_IFREG && crate::mqueue::is_message_queue(fd) {
            let name = link.strip_suffix(" (deleted)").unwrap_or(&link);
            crate::mqueue::describe_queue(fd, name, &st, flags)?
        } else {
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {
                    let deleted = st.st_nlink == 0;
                    let path =
                        if deleted { link.strip_suffix(" (deleted)").unwrap_or(&link).to_string() } else { link };
                    // Whether its contents are saved is the writer's to say.
                    FdKind::File {
                        path,
                        flags,
                        offset: info.pos,
                        size: st.st_size as u64,
                        deleted,
                        // As /proc/PID/maps names it (major << 32 | minor),
                        // so that a mapping of the same file matches.
                        dev: (libc::major(st.st_dev) as u64) << 32 | libc::minor(st.st_dev) as u64,
                        inode: st.st_ino,
                        saved: stasis_image::FileSave::None,
                    }
                }
                libc::S_IFDIR => FdKind::Directory { path: link, flags },
                libc::S_IFSOCK => {
                    if unix_peers.is_none() {
                        unix_peers = Some(crate::sockets::unix_peers()?);
                    }
                    let peers = unix_peers.as_deref().unwrap_or_default();
                    match crate::sockets::describe(fd, st.st_ino, flags, peers) {
                        Some(kind) => kind,
                        None => FdKind::Inherited { what: link },
                    }
                }
                libc::S_IFCHR
                    if link != "/dev/tty"
                        && let Some(kind) = terminal(fd, flags) =>
                {
                    kind
                }
                _ if fd <= 2 => FdKind::Inherited { what: link },
                libc::S_IFCHR if link.starts_with('/') && !link.starts_with("/dev/pts") => {
                    FdKind::Device { path: link, flags }
                }
                _ => FdKind::Inherited { what: link },
            }
        };
        // Every pipe is saved by its inode: restart finds out which pipes
        // have both ends in the computation, and which lead outside it. A
        // named pipe (its link is its path) is opened again by its path.
        let kind = if st.st_mode & libc::S_IFMT == libc::S_IFIFO && (is_pipe || fifo) && fd != agent_fd {
            let write = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
            let size = sys::pipe_size(fd).unwrap_or(0) as u32;
            let path = if fifo {
                fs::read_link(format!("/proc/self/fd/{fd}"))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            // With no writer left a read end polls POLLHUP; with no reader
            // left a write end polls POLLERR.
            let mut p = libc::pollfd { fd, events: if write { libc::POLLOUT } else { libc::POLLIN }, revents: 0 };
            // SAFETY: poll of one pollfd, not waiting.
            unsafe { libc::poll(&mut p, 1, 0) };
            let peer_gone = p.revents & if write { libc::POLLERR } else { libc::POLLHUP } != 0;
            FdKind::Pipe { id: st.st_ino, write, flags, size, fifo: path, peer_gone }
        } else {
            kind
        };
        let outside_stdio = if fd == agent_fd {
            None
        } else {
            let terminal = matches!(kind, FdKind::Terminal { .. });
            crate::stdio::which(fd, st.st_dev, st.st_ino, st.st_mode, terminal)
        };
        out.push(Fd { fd, cloexec, kind, outside_stdio });
    }
    Ok(out)
}

/// A terminal's settings and, if it is our controlling terminal, its
/// foreground process group; None if `fd` is no terminal.
fn terminal(fd: i32, flags: u32) -> Option<FdKind> {
    // SAFETY: a zeroed termios is valid; tcgetattr fills it (and fails on
    // anything that is not a terminal).
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to write.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return None;
    }
    // SAFETY: termios is plain data; its bytes are read as they are.
    let termios = unsafe {
        std::slice::from_raw_parts(&t as *const libc::termios as *const u8, std::mem::size_of::<libc::termios>())
    }
    .to_vec();
    // SAFETY: plain queries on our own descriptor.
    let (sid, my_sid, foreground) = unsafe { (libc::tcgetsid(fd), libc::getsid(0), libc::tcgetpgrp(fd)) };
    let controlling = sid > 0 && sid == my_sid;
    let foreground = if controlling { foreground } else { 0 };
    let (window, pty) = crate::pty::describe(fd);
    // Output waiting on a master is taken and put back (the computation is
    // stopped); not on our own controlling terminal.
    let unread = match pty {
        Some(p) if p.master && !controlling => crate::pty::unread_output(fd, p.packet),
        _ => Vec::new(),
    };
    Some(FdKind::Terminal { flags, termios, controlling, foreground, window, pty, unread })
}

/// The kernel objects without a path that a process can have on its own;
/// None for the ones Stasis cannot save (its fdinfo says too little).
fn anon_inode(fd: i32, kind: &str, flags: u32, info: &str) -> Option<FdKind> {
    Some(match kind {
        "inotify" => {
            let watches = stasis_procfs::parse_inotify(info)?
                .into_iter()
                .map(|w| stasis_image::InotifyWatch {
                    wd: w.wd,
                    mask: w.mask,
                    path: crate::inotify::path_of(fd, w.wd).unwrap_or_default(),
                })
                .collect();
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) };
            FdKind::Inotify { flags, watches, unread: unread.max(0) as u32 }
        }
        "[eventfd]" => {
            let e = stasis_procfs::parse_eventfd(info)?;
            FdKind::EventFd { count: e.count, semaphore: e.semaphore, flags }
        }
        "[signalfd]" => FdKind::SignalFd { mask: stasis_procfs::parse_signalfd(info)?, flags },
        "[timerfd]" => {
            let t = stasis_procfs::parse_timerfd(info)?;
            FdKind::TimerFd { clock: t.clock, flags, value_ns: t.value_ns, interval_ns: t.interval_ns, ticks: t.ticks }
        }
        "[eventpoll]" => {
            let targets = stasis_procfs::parse_epoll_targets(info)?
                .into_iter()
                .map(|t| EpollTarget { fd: t.fd, events: t.events, data: t.data })
                .collect();
            FdKind::Epoll { flags, targets }
        }
        _ => return None,
    })
}

/// The file behind `fd`, for reading a deleted file's contents.
pub fn reopen_fd(fd: i32) -> std::io::Result<fs::File> {
    fs::File::open(format!("/proc/self/fd/{fd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pages_sets_one_bit_per_page_and_no_more() {
        assert_eq!(all_pages(64 * PAGE), vec![u64::MAX]);
        assert_eq!(all_pages(3 * PAGE), vec![0b111]);
        assert_eq!(all_pages(65 * PAGE), vec![u64::MAX, 1]);
        assert!(all_pages(0).is_empty());
    }

    #[test]
    fn wanted_pages_as_ranges() {
        assert!(Pages::None.runs(10).is_empty());
        assert_eq!(Pages::Prefix(3 * PAGE).runs(10), vec![(0, 3)]);
        assert_eq!(Pages::Prefix(30 * PAGE).runs(10), vec![(0, 10)]);
        assert!(Pages::Prefix(0).runs(10).is_empty());
        // Bits 1-2, 63-65 (across two words), 200 (past the region).
        let mut bits = vec![0u64; 4];
        for p in [1, 2, 63, 64, 65, 200] {
            bits[p / 64] |= 1 << (p % 64);
        }
        assert_eq!(Pages::Bitmap(bits).runs(100), vec![(1, 3), (63, 66)]);
        assert!(Pages::Bitmap(Vec::new()).runs(100).is_empty());
        assert_eq!(Pages::Runs(vec![(0, 2), (5, 1 << 30)]).runs(100), vec![(0, 2), (5, 100)]);
        assert_eq!(Pages::Runs(vec![(0, 2), (200, 300)]).runs(100), vec![(0, 2)]);
    }
}
