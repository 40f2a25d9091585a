//! The image writer's memory, written in parallel and with one copy.
//!
//! The writer is a copy-on-write fork of the program: its own memory is
//! the snapshot. So pages go from where they lie straight into the image
//! file (`pwrite` from their address, or zstd reading them there): no
//! bounce buffer. The writer cuts the pages to save into work units (runs
//! of wanted pages of one region, at most a chunk long), then N workers
//! take units in turn from a shared index. A worker leaves out all-zero
//! pages where the region allows, compresses where asked and where it
//! pays, in parallel; then it takes a ticket and, at its turn, writes the
//! chunk at the payload's end (checksumming it piece by piece as it goes),
//! and files the chunk's record in a shared array; the
//! writer sorts the records into a deterministic order. Writes take turns
//! because they would anyway (a file's writes hold its inode lock), and
//! a file written in order is written back in order: concurrent writers
//! at interleaved offsets made checkpoints to ext4 several times slower.
//!
//! Workers are processes cloned with CLONE_VM (they share the writer's
//! memory, so nothing is copied to them), not threads: they touch neither
//! the allocator nor thread-local storage, only memory made ready for
//! them. Each asks to die with the writer. The writer waits for every one;
//! one that dies by a signal fails the checkpoint with the unit it was on.
//!
//! Writeback starts as data is written, so the final fsync is short: each
//! time `WRITEBACK_EVERY` more bytes are written, the worker whose turn it
//! is starts their writeback (`sys::start_writeback`), in one range.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use stasis_image::{Chunk, ChunkKind, Compression};

use crate::collect::PAGE;
use crate::sys;
use crate::zstd_static::{self, StaticZstd};

/// Chunks are at most this long (the format's advice: see `writer`).
pub const MAX_CHUNK: u64 = 4 << 20;
/// At most this many workers by default, whatever the machine.
const MAX_WORKERS: usize = 4;
/// At most this many however many are asked for.
const MAX_ASKED: usize = 16;
/// A worker starts writeback of what it wrote after this many bytes.
const WRITEBACK_EVERY: u64 = 32 << 20;
const WORKER_STACK: usize = 1 << 20;
/// Chunks are checksummed and written in pieces of this size, which stay
/// in the cache between the two.
const HASH_PIECE: usize = 256 << 10;

/// A run of wanted pages of one region, at most a chunk long.
#[derive(Clone, Copy)]
pub struct Unit {
    pub region: u32,
    /// Address of the first page (in the writer, where it lies).
    pub addr: u64,
    /// Offset of the first page in its region.
    pub offset: u64,
    pub len: u64,
    /// All-zero pages may be left out.
    pub skip_zero: bool,
    /// Read through /proc/self/mem: the region could not be made readable.
    pub via_mem: bool,
}

/// Why a unit failed, as workers record it (they cannot format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A page could not be read: its address and the errno.
    Read { addr: u64, errno: i32 },
    /// The image could not be written: the errno.
    Write { errno: i32 },
    /// A worker died of this signal while on the unit.
    Died { signal: i32 },
    /// The workers could not be started.
    Start { errno: i32 },
}

/// What a failed memory pass reports: the unit and why.
pub struct Failed {
    pub unit: Unit,
    pub why: Failure,
}

/// The number of workers: `STASIS_WRITER_THREADS` if set (for
/// measurement); else, when compressing, the CPUs this process may run on,
/// at most four; else one. Uncompressed, a worker's own work per byte (the
/// zero check, the checksum) is small beside the write, which takes turns
/// anyway: measured on ext4 (1 GiB, 2 CPUs), a second worker gained
/// nothing and cost a little more CPU.
pub fn worker_count(compress: bool) -> usize {
    let asked = std::env::var("STASIS_WRITER_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    let cpus = || std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS);
    let n = asked.unwrap_or_else(|| if compress { cpus() } else { 1 });
    n.clamp(1, MAX_ASKED)
}

/// What workers share; lives in the writer's memory, which they share.
struct Shared<'a> {
    /// The writer's pid: the workers' parent.
    writer: i32,
    units: &'a [Unit],
    image_fd: i32,
    mem_fd: i32,
    next_unit: AtomicUsize,
    next_offset: AtomicU64,
    /// Records of the chunks written, `n_chunks` of them filled.
    chunks: *mut Chunk,
    capacity: usize,
    n_chunks: AtomicUsize,
    /// Units written completely.
    units_done: AtomicUsize,
    /// Tickets for writing, and the one whose turn it is.
    tickets: AtomicU32,
    turn: AtomicU32,
    /// Writeback was started of the file up to here.
    written_back: AtomicU64,
    failed: AtomicBool,
    /// The first failure: its unit, kind, and numbers.
    fail_unit: AtomicUsize,
    fail_kind: AtomicI32,
    fail_errno: AtomicI32,
    fail_addr: AtomicU64,
}

// SAFETY: the chunk array is written at distinct indices (each handed out
// once by `n_chunks`) and read by the writer only after every worker ended.
unsafe impl Sync for Shared<'_> {}

/// One worker's own memory, made before it starts.
struct Worker<'a> {
    shared: &'a Shared<'a>,
    zstd: Option<StaticZstd>,
    /// Compressed output; and, for `via_mem` units, the pages read.
    out: &'a mut [u8],
    bounce: &'a mut [u8],
    /// The unit it is on (+1; 0 between units), for the writer to name
    /// when it dies.
    current: AtomicUsize,
}

/// Writes `units` into the image `image_fd`, chunks from file offset
/// `start` on, with `workers` workers. Returns the chunk
/// records sorted by region and offset, and where the written payload
/// ends.
pub fn write_units(
    units: &[Unit],
    image_fd: i32,
    mem_fd: i32,
    start: u64,
    workers: usize,
    compress: bool,
) -> Result<(Vec<Chunk>, u64), Failed> {
    let start_failed = |errno| Failed { unit: units.first().copied().unwrap_or(EMPTY), why: Failure::Start { errno } };
    // A chunk holds at least a page: one record per page is enough.
    let capacity: usize = units.iter().map(|u| (u.len / PAGE) as usize).sum();
    let mut records: Vec<Chunk> = Vec::with_capacity(capacity);
    let shared = Shared {
        writer: sys::getpid(),
        units,
        image_fd,
        mem_fd,
        next_unit: AtomicUsize::new(0),
        next_offset: AtomicU64::new(start),
        chunks: records.as_mut_ptr(),
        capacity,
        n_chunks: AtomicUsize::new(0),
        units_done: AtomicUsize::new(0),
        tickets: AtomicU32::new(0),
        turn: AtomicU32::new(0),
        written_back: AtomicU64::new(start),
        failed: AtomicBool::new(false),
        fail_unit: AtomicUsize::new(0),
        fail_kind: AtomicI32::new(0),
        fail_errno: AtomicI32::new(0),
        fail_addr: AtomicU64::new(0),
    };
    let workers = workers.clamp(1, units.len().clamp(1, MAX_ASKED));
    let mut pool: Vec<Worker> = Vec::with_capacity(workers);
    for _ in 0..workers {
        let zstd = if compress { Some(StaticZstd::new().ok_or_else(|| start_failed(libc::ENOMEM))?) } else { None };
        let out = map_buffer(if compress { zstd_static::bound(MAX_CHUNK as usize) } else { 0 })
            .ok_or_else(|| start_failed(libc::ENOMEM))?;
        let via_mem = units.iter().any(|u| u.via_mem);
        let bounce =
            map_buffer(if via_mem { MAX_CHUNK as usize } else { 0 }).ok_or_else(|| start_failed(libc::ENOMEM))?;
        pool.push(Worker { shared: &shared, zstd, out, bounce, current: AtomicUsize::new(0) });
    }
    if workers == 1 {
        pool[0].run();
    } else {
        run_parallel(&mut pool, &shared)?;
    }
    drop(pool);
    if shared.failed.load(Ordering::Acquire) {
        return Err(shared.failure());
    }
    // Every unit done, or the pass failed: never an image with a hole.
    if shared.units_done.load(Ordering::Acquire) != units.len() {
        return Err(Failed { unit: EMPTY, why: Failure::Died { signal: 0 } });
    }
    let n = shared.n_chunks.load(Ordering::Acquire).min(capacity);
    // SAFETY: workers filled records 0..n (each index once) and have all
    // ended; the Vec's buffer holds `capacity` of them.
    unsafe { records.set_len(n) };
    records.sort_unstable_by_key(|c| match c.kind {
        ChunkKind::Memory { region, offset } => (region, offset),
        ChunkKind::FileContents { .. } => (u32::MAX, 0),
    });
    let end = shared.next_offset.load(Ordering::Acquire);
    Ok((records, end))
}

const EMPTY: Unit = Unit { region: 0, addr: 0, offset: 0, len: 0, skip_zero: false, via_mem: false };

/// A buffer for one worker (mapped apart, committed as it is used).
fn map_buffer(len: usize) -> Option<&'static mut [u8]> {
    if len == 0 {
        return Some(&mut []);
    }
    let p = sys::mmap_reserve(len)?;
    // SAFETY: a fresh private mapping of `len` bytes, never unmapped (the
    // writer exits without freeing).
    Some(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Starts every worker as a process of its own, waits for them all.
fn run_parallel(pool: &mut [Worker], shared: &Shared) -> Result<(), Failed> {
    let mut pids = Vec::with_capacity(pool.len());
    let mut start_error = None;
    for w in pool.iter_mut() {
        let Some(stack) = sys::mmap_anon(WORKER_STACK) else {
            start_error = Some(libc::ENOMEM);
            break;
        };
        let top = (stack as usize + WORKER_STACK) & !15;
        // SAFETY: the stack is fresh and only this worker's; the worker
        // (and everything it points to) outlives the child, which the
        // writer waits for below before touching any of it.
        match unsafe { sys::clone_vm(top, worker_main, w as *mut Worker as usize) } {
            Ok(pid) => pids.push((pid as i32, w as *const Worker)),
            Err(e) => {
                start_error = Some(e);
                break;
            }
        }
    }
    if start_error.is_some() {
        // Those started stop at their next unit.
        shared.failed.store(true, Ordering::Release);
    }
    // In the order they end (looked at every millisecond): one that dies
    // fails the pass at once, so that the others stop waiting for its turn.
    while !pids.is_empty() {
        let ended = pids.iter().enumerate().find_map(|(k, &(pid, _))| match sys::wait_done(pid) {
            Ok(Some(status)) => Some((k, status)),
            Ok(None) => None,
            // Not ours to wait for (cannot happen): count it as dead.
            Err(_) => Some((k, 0x7f)),
        });
        let Some((k, status)) = ended else {
            sys::sleep_ms(1);
            continue;
        };
        let (_, w) = pids.swap_remove(k);
        // SAFETY: the worker has ended; its record is ours again.
        let w = unsafe { &*w };
        let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if !clean {
            let signal = if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { 0 };
            let unit = w.current.load(Ordering::Acquire).saturating_sub(1);
            shared.fail(unit, Failure::Died { signal });
        }
    }
    if let Some(errno) = start_error
        && !shared.failed_by_worker()
    {
        return Err(Failed { unit: shared.units.first().copied().unwrap_or(EMPTY), why: Failure::Start { errno } });
    }
    Ok(())
}

extern "C" fn worker_main(worker: usize) -> ! {
    // SAFETY: `run_parallel` passes a Worker that outlives this process
    // and that no one else touches until it ends.
    let w = unsafe { &mut *(worker as *mut Worker) };
    sys::kill_with_parent();
    // The writer may already be gone (then its death signal came first).
    if sys::getppid() != w.shared.writer {
        sys::exit_group(1);
    }
    // A page that faults kills this worker, which the writer reports:
    // the program's handlers (copied here with the writer's) must not run.
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
        sys::default_action(sig);
    }
    w.run();
    sys::exit_group(0)
}

impl Shared<'_> {
    /// Records the first failure; later ones are consequences.
    fn fail(&self, unit: usize, why: Failure) {
        if self.failed.swap(true, Ordering::AcqRel) && self.fail_kind.load(Ordering::Acquire) != 0 {
            return;
        }
        let (kind, errno, addr) = match why {
            Failure::Read { addr, errno } => (1, errno, addr),
            Failure::Write { errno } => (2, errno, 0),
            Failure::Died { signal } => (3, signal, 0),
            Failure::Start { errno } => (4, errno, 0),
        };
        self.fail_unit.store(unit, Ordering::Release);
        self.fail_errno.store(errno, Ordering::Release);
        self.fail_addr.store(addr, Ordering::Release);
        self.fail_kind.store(kind, Ordering::Release);
    }

    /// Waits for this caller's turn, writes `stored` at the next offset
    /// of the file (the next page boundary if `aligned`: bytes as they are,
    /// which a restart could map; compressed ones are packed) and returns
    /// it; starts writeback every
    /// `WRITEBACK_EVERY` bytes. A failure (this worker's or another's)
    /// ends the wait: a worker that died holding a ticket must not hang
    /// the others.
    fn write_in_turn(&self, stored: &[u8], aligned: bool) -> Result<(u64, u64), i32> {
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel);
        loop {
            let turn = self.turn.load(Ordering::Acquire);
            if turn == ticket {
                break;
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(libc::ECANCELED);
            }
            sys::futex_wait(&self.turn, turn, 100);
        }
        let end = self.next_offset.load(Ordering::Acquire);
        let at = if aligned { end.next_multiple_of(PAGE) } else { end };
        // Checksummed piece by piece just before each piece is written, so
        // that the write copies from the cache: memory is read once.
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        let written = stored.chunks(HASH_PIECE).try_fold(at, |piece_at, piece| {
            hasher.update(piece);
            sys::pwrite_from(self.image_fd, piece.as_ptr() as usize, piece.len(), piece_at)?;
            Ok(piece_at + piece.len() as u64)
        });
        if written.is_ok() {
            let end = at + stored.len() as u64;
            self.next_offset.store(end, Ordering::Release);
            let from = self.written_back.load(Ordering::Acquire);
            if end >= from + WRITEBACK_EVERY {
                self.written_back.store(end, Ordering::Release);
                sys::start_writeback(self.image_fd, from, end - from);
            }
        }
        self.turn.fetch_add(1, Ordering::AcqRel);
        sys::futex_wake(&self.turn);
        written.map(|_| (at, hasher.digest()))
    }

    /// Whether a worker (not the start) recorded the failure.
    fn failed_by_worker(&self) -> bool {
        self.fail_kind.load(Ordering::Acquire) != 0
    }

    fn failure(&self) -> Failed {
        let unit = self.units.get(self.fail_unit.load(Ordering::Acquire)).copied().unwrap_or(EMPTY);
        let errno = self.fail_errno.load(Ordering::Acquire);
        let why = match self.fail_kind.load(Ordering::Acquire) {
            1 => Failure::Read { addr: self.fail_addr.load(Ordering::Acquire), errno },
            2 => Failure::Write { errno },
            3 => Failure::Died { signal: errno },
            _ => Failure::Start { errno },
        };
        Failed { unit, why }
    }
}

impl Worker<'_> {
    /// Takes units until none is left or one has failed. Allocates nothing.
    fn run(&mut self) {
        let shared = self.shared;
        loop {
            if shared.failed.load(Ordering::Acquire) {
                break;
            }
            let i = shared.next_unit.fetch_add(1, Ordering::AcqRel);
            let Some(unit) = shared.units.get(i).copied() else { break };
            self.current.store(i + 1, Ordering::Release);
            if let Err(why) = self.unit(&unit) {
                shared.fail(i, why);
                break;
            }
            shared.units_done.fetch_add(1, Ordering::AcqRel);
        }
        self.current.store(0, Ordering::Release);
    }

    fn unit(&mut self, u: &Unit) -> Result<(), Failure> {
        let len = u.len as usize;
        let bounce = std::mem::take(&mut self.bounce);
        let result = (|| {
            let data: &[u8] = if u.via_mem {
                let buf = bounce.get_mut(..len).ok_or(Failure::Read { addr: u.addr, errno: libc::E2BIG })?;
                read_mem(self.shared.mem_fd, buf, u.addr)?;
                buf
            } else {
                // SAFETY: the unit's pages are mapped readable in this
                // process (the writer made sure: `writer::plan_units`), and
                // nothing writes them while workers run: this process is a
                // snapshot, and the writer waits.
                unsafe { std::slice::from_raw_parts(u.addr as *const u8, len) }
            };
            // Runs of pages, split where all-zero pages may be left out.
            let pages = len / PAGE as usize;
            let page = |i: usize| &data[i * PAGE as usize..(i + 1) * PAGE as usize];
            let mut i = 0;
            while i < pages {
                if u.skip_zero && is_zero(page(i)) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < pages && !(u.skip_zero && is_zero(page(j))) {
                    j += 1;
                }
                let run = &data[i * PAGE as usize..j * PAGE as usize];
                self.chunk(u, u.offset + (i as u64) * PAGE, run)?;
                i = j;
            }
            Ok(())
        })();
        self.bounce = bounce;
        result
    }

    /// Writes one chunk and files its record.
    fn chunk(&mut self, u: &Unit, offset: u64, data: &[u8]) -> Result<(), Failure> {
        let shared = self.shared;
        let compressed = match &mut self.zstd {
            Some(z) if data.len() >= stasis_image::MIN_COMPRESSED => {
                z.compress(data, self.out).filter(|&n| stasis_image::compression_pays(n, data.len()))
            }
            _ => None,
        };
        let (stored, compression) = match compressed {
            Some(n) => (&self.out[..n], Compression::Zstd),
            None => (data, Compression::None),
        };
        let len = stored.len() as u64;
        let (at, checksum) = shared.write_in_turn(stored, compression == Compression::None).map_err(|errno| {
            if errno == libc::EFAULT {
                Failure::Read { addr: u.addr + (offset - u.offset), errno }
            } else {
                Failure::Write { errno }
            }
        })?;
        let i = shared.n_chunks.fetch_add(1, Ordering::AcqRel);
        if i >= shared.capacity {
            // Cannot happen (a chunk holds at least a page); refuse
            // rather than write outside the array.
            return Err(Failure::Write { errno: libc::EOVERFLOW });
        }
        let kind = ChunkKind::Memory { region: u.region, offset };
        let c = Chunk { kind, file_offset: at, len, checksum, compression, data_len: data.len() as u64 };
        // SAFETY: index `i` is this worker's alone (handed out once) and
        // inside the array.
        unsafe { shared.chunks.add(i).write(c) };
        Ok(())
    }
}

/// Reads pages through /proc/self/mem, which protection does not stop; a
/// page that cannot be read is named.
fn read_mem(mem_fd: i32, buf: &mut [u8], addr: u64) -> Result<(), Failure> {
    let mut done = 0;
    while done < buf.len() {
        match sys::pread(mem_fd, &mut buf[done..], addr + done as u64) {
            Ok(0) => return Err(Failure::Read { addr: addr + done as u64, errno: libc::EIO }),
            Ok(n) => done += n,
            Err(errno) => {
                let page = (addr + done as u64) & !(PAGE - 1);
                return Err(Failure::Read { addr: page, errno });
            }
        }
    }
    Ok(())
}

fn is_zero(page: &[u8]) -> bool {
    // Word at a time: this scan reads every saved anonymous page.
    let (head, words, tail) = {
        // SAFETY: any bytes are valid u64s.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn zero_pages() {
        let mut p = vec![0u8; PAGE as usize];
        assert!(is_zero(&p));
        p[4095] = 1;
        assert!(!is_zero(&p));
    }

    /// Memory for units: `pages` pages, mapped apart (page aligned).
    fn pages(n: usize, fill: impl Fn(usize) -> u8) -> &'static mut [u8] {
        let m = map_buffer(n * PAGE as usize).unwrap();
        for (i, page) in m.chunks_mut(PAGE as usize).enumerate() {
            page.iter_mut().enumerate().for_each(|(k, b)| *b = if fill(i) == 0 { 0 } else { fill(i) ^ (k % 7) as u8 });
        }
        m
    }

    fn unit(region: u32, mem: &[u8], skip_zero: bool) -> Unit {
        Unit { region, addr: mem.as_ptr() as u64, offset: 0, len: mem.len() as u64, skip_zero, via_mem: false }
    }

    #[test]
    fn workers_write_every_chunk_once_in_order() {
        // Region 0: zero pages every third (left out); region 1: kept whole.
        let a = pages(1500, |i| if i % 3 == 0 { 0 } else { (i % 250 + 1) as u8 });
        let b = pages(9, |_| 0);
        let mut units = Vec::new();
        for (k, piece) in a.chunks(1024 * PAGE as usize).enumerate() {
            let mut u = unit(0, piece, true);
            u.offset = (k * 1024) as u64 * PAGE;
            units.push(u);
        }
        units.push(unit(1, b, false));
        let t = tempfile::tempfile().unwrap();
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        for (workers, compress) in [(3, true), (1, false), (2, false)] {
            let (chunks, end) = write_units(&units, t.as_raw_fd(), mem.as_raw_fd(), PAGE, workers, compress)
                .unwrap_or_else(|f| panic!("{:?}", f.why));
            // 1000 runs of two pages in region 0 (one per unit boundary too),
            // one chunk for region 1.
            let keys: Vec<(u32, u64)> = chunks
                .iter()
                .map(|c| match c.kind {
                    ChunkKind::Memory { region, offset } => (region, offset),
                    _ => panic!(),
                })
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
            assert_eq!(chunks.iter().filter(|c| matches!(c.kind, ChunkKind::Memory { region: 1, .. })).count(), 1);
            let saved: u64 = chunks.iter().map(|c| c.data_len).sum();
            assert_eq!(saved, (1000 + 9) * PAGE);
            assert_eq!(chunks.iter().any(|c| c.compression == Compression::Zstd), compress);
            for c in &chunks {
                assert!(c.file_offset % PAGE == 0 || c.compression != Compression::None);
                assert!(c.file_offset + c.len <= end);
                let mut stored = vec![0u8; c.len as usize];
                t.read_exact_at(&mut stored, c.file_offset).unwrap();
                assert_eq!(xxhash_rust::xxh3::xxh3_64(&stored), c.checksum);
                let mut data = vec![0u8; c.data_len as usize];
                stasis_image::decompress_chunk(c.compression, &stored, &mut data).unwrap();
                let ChunkKind::Memory { region, offset } = c.kind else { panic!() };
                let src = if region == 0 { &a[..] } else { &b[..] };
                assert_eq!(&src[offset as usize..offset as usize + data.len()], &data[..]);
            }
        }
    }

    #[test]
    fn a_page_that_cannot_be_read_is_named() {
        let a = pages(8, |i| i as u8 + 1);
        sys::mprotect(a.as_ptr() as u64 + 4 * PAGE, PAGE, libc::PROT_NONE).unwrap();
        let t = tempfile::tempfile().unwrap();
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        // Through /proc/self/mem, protection does not matter: pages
        // unmapped do.
        sys::munmap((a.as_ptr() as u64 + 6 * PAGE) as *mut u8, PAGE as usize);
        let mut u = unit(0, a, false);
        u.via_mem = true;
        let f = write_units(&[u], t.as_raw_fd(), mem.as_raw_fd(), PAGE, 1, false).err().unwrap();
        assert_eq!(f.why, Failure::Read { addr: a.as_ptr() as u64 + 6 * PAGE, errno: libc::EIO });
    }

    /// A worker that faults dies; the pass fails naming the unit, and
    /// the other workers stop: nothing hangs.
    #[test]
    fn a_worker_that_dies_fails_the_pass() {
        let good = pages(4096, |i| (i % 200 + 1) as u8);
        let bad = pages(4, |_| 1);
        sys::mprotect(bad.as_ptr() as u64, 4 * PAGE, libc::PROT_NONE).unwrap();
        let mut units: Vec<Unit> = good.chunks(256 * PAGE as usize).map(|p| unit(0, p, true)).collect();
        units.insert(3, unit(1, bad, true));
        let t = tempfile::tempfile().unwrap();
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let f = write_units(&units, t.as_raw_fd(), mem.as_raw_fd(), PAGE, 3, true).err().unwrap();
        assert_eq!(f.why, Failure::Died { signal: libc::SIGSEGV });
        assert_eq!((f.unit.region, f.unit.addr), (1, bad.as_ptr() as u64));
    }
}
