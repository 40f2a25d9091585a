//! Writes the image. Runs in the copy-on-write snapshot child, so it sees
//! memory exactly as it was at the fork while the program runs on.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use stasis_image::{ChunkKind, Compression, ImageWriter, RegionKind};

use crate::collect::{PAGE, Pages, RegionPlan, Snapshot, reopen_fd};
use crate::workers::{self, Failed, Failure, MAX_CHUNK, Unit};
use crate::zstd_static::{self, StaticZstd};

/// Writes `snap` to `path`. `shared_done` is called once everything that
/// the running program could still change (shared memory, deleted files'
/// contents) is in the image; private memory follows.
pub fn write_image(snap: Snapshot, path: &Path, compress: bool, shared_done: &mut dyn FnMut()) -> Result<u64, String> {
    let err = |e: stasis_image::Error| e.to_string();
    // Pages the kernel cannot hand over otherwise (their region could not
    // be made readable here) are read through /proc/self/mem: protection
    // does not stop it, and a page that cannot be read is an error naming
    // its region, not a crash (nor a page quietly left out).
    let mem = std::fs::File::open("/proc/self/mem").map_err(|e| format!("open /proc/self/mem: {e}"))?;
    // Only into a directory of ours that nobody else can write, whoever
    // sent the SUSPEND; created afresh there, never through a link.
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(format!("{} is not a path to an image", path.display())),
    };
    let dir = stasis_image::open_image_dir(dir)?;
    let mut w = ImageWriter::create_in(&dir, name).map_err(err)?;
    // Compressed here with a context of our own (no libc malloc); the
    // memory's workers have theirs.
    let mut zstd = if compress {
        Some(StaticZstd::new().ok_or("cannot map memory for the image writer's compressor")?)
    } else {
        None
    };
    let Snapshot { mut meta, plans, deleted_files, pipes, sockets, .. } = snap;
    let workers = workers::worker_count(compress);
    // Deleted files' contents are read into this buffer, one chunk at a time.
    let mut bounce = vec![0u8; MAX_CHUNK as usize];
    let mut scratch = if compress { vec![0u8; zstd_static::bound(MAX_CHUNK as usize)] } else { Vec::new() };
    let mut append = |w: &mut ImageWriter, kind: ChunkKind, data: &[u8]| -> Result<(), String> {
        let compressed = match zstd.as_mut() {
            Some(z) if data.len() >= stasis_image::MIN_COMPRESSED => {
                z.compress(data, &mut scratch).filter(|&n| stasis_image::compression_pays(n, data.len()))
            }
            _ => None,
        };
        if let Some(n) = compressed {
            let stored = &scratch[..n];
            let sum = xxhash_rust::xxh3::xxh3_64(stored);
            w.append_prepared(kind, stored, sum, Compression::Zstd, data.len() as u64).map_err(err)?;
            return Ok(());
        }
        w.append_chunk(kind, data).map_err(err)?;
        Ok(())
    };

    let first: Vec<bool> = meta.regions.iter().map(|r| r.shared || r.kind == RegionKind::Vdso).collect();
    let first_pass = |i: usize| first[i];
    write_memory(&mut w, &mem, &meta.regions, &plans, &first_pass, workers, compress)?;
    // Files open for writing, as they are at this instant (docs/files.md).
    let (generation, pid) = (meta.generation, meta.pid);
    crate::savefiles::save(&mut meta, &dir, &mut |note| {
        note_line(&format!("stasis agent[{pid}]: checkpoint {generation}: {note}\n"));
    })?;
    for &fd_index in &deleted_files {
        let fd = meta.fds[fd_index].fd;
        let write_only = matches!(&meta.fds[fd_index].kind,
            stasis_image::FdKind::File { flags, .. } if *flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32);
        // Read through the program's own descriptor (pread moves no offset);
        // opened again through /proc only when it cannot read.
        let reopened = if write_only {
            Some(reopen_fd(fd).map_err(|e| format!("reopen deleted file on fd {fd}: {e}"))?)
        } else {
            None
        };
        let source = reopened.as_ref().map_or(fd, |f| f.as_raw_fd());
        let buf = &mut bounce[..];
        let mut offset = 0u64;
        loop {
            let n = crate::sys::pread(source, buf, offset)
                .map_err(|e| format!("read deleted file on fd {fd}: {}", std::io::Error::from_raw_os_error(e)))?;
            if n == 0 {
                break;
            }
            append(&mut w, ChunkKind::FileContents { fd_index: fd_index as u32, offset }, &buf[..n])?;
            offset += n as u64;
        }
    }
    // Bytes in flight in the program's pipes, peeked (never taken) through
    // the program's own read end: the program could read them as soon as it
    // runs again.
    for &fd_index in &pipes {
        let fd = meta.fds[fd_index].fd;
        let bytes = crate::sys::pipe_peek(fd).map_err(|e| format!("save the bytes in the pipe on fd {fd}: {e}"))?;
        let mut offset = 0u64;
        for piece in bytes.chunks(MAX_CHUNK as usize) {
            append(&mut w, ChunkKind::FileContents { fd_index: fd_index as u32, offset }, piece)?;
            offset += piece.len() as u64;
        }
    }
    // Bytes waiting on stream sockets, as for pipes; on datagram and
    // seqpacket sockets, the messages, one chunk each.
    for &fd_index in &sockets {
        let fd = meta.fds[fd_index].fd;
        let is_stream =
            matches!(meta.fds[fd_index].kind, stasis_image::FdKind::Socket { kind, .. } if kind == libc::SOCK_STREAM);
        let pieces: Vec<Vec<u8>> = if is_stream {
            let bytes = crate::sockets::peek(fd)
                .map_err(|e| format!("save the bytes waiting on the socket on fd {fd}: {e}"))?;
            bytes.chunks(MAX_CHUNK as usize).map(<[u8]>::to_vec).collect()
        } else {
            crate::sockets::peek_messages(fd)
                .map_err(|e| format!("save the messages waiting on the socket on fd {fd}: {e}"))?
        };
        let mut offset = 0u64;
        for piece in &pieces {
            append(&mut w, ChunkKind::FileContents { fd_index: fd_index as u32, offset }, piece)?;
            offset += piece.len() as u64;
        }
    }
    // For measuring: a copy of stderr, which is closed below with the rest.
    let timing = std::env::var_os("STASIS_WRITER_TIMING").and_then(|_| crate::sys::dup_high(2));
    // The program's descriptors are of no more use here, and a pipe's write
    // end held by this copy would keep its reader from seeing end of file.
    // The coordinator connection stays: see `ckpt::writer_main`.
    for f in meta.fds.iter().filter(|f| f.kind != stasis_image::FdKind::Agent) {
        crate::sys::close(f.fd);
    }
    shared_done();
    identify_mapped_files(&mut meta.regions)?;
    let started = std::time::Instant::now();
    write_memory(&mut w, &mem, &meta.regions, &plans, &|i| !first_pass(i), workers, compress)?;
    let written = started.elapsed();
    let size = w.finish(meta).map_err(err)?;
    // For measuring (docs/image-format.md): how long the private memory
    // took, and the final fsync.
    if let Some(fd) = timing {
        let synced = started.elapsed() - written;
        crate::sys::write_fd(
            fd,
            format!(
                "stasis agent[{pid}]: checkpoint {generation}: {workers} workers wrote private memory in {} ms, \
                 then fsync {} ms; the writer used {} ms of CPU\n",
                written.as_millis(),
                synced.as_millis(),
                cpu_ms()
            )
            .as_bytes(),
        );
    }
    Ok(size)
}

/// CPU time of this process and of its ended children (the workers).
fn cpu_ms() -> u128 {
    let ms = |who| {
        // SAFETY: a zeroed rusage is valid; getrusage fills it.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid rusage to write.
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as u128 * 1000 + t.tv_usec as u128 / 1000;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    ms(libc::RUSAGE_SELF) + ms(libc::RUSAGE_CHILDREN)
}

/// A line on the program's stderr, where the agent's other messages go.
fn note_line(line: &str) {
    crate::sys::write_stderr(line.as_bytes());
}

/// Completes the identity of every private file mapping (see
/// `stasis_image::identity`): its build-id and the hash of its first pages.
///
/// Done here rather than on the checkpoint thread: reading a few pages of
/// each file would lengthen the pause, while the writer reads them after
/// the program runs again, and may allocate (its arena is its own). Each
/// file is read once per checkpoint, however many regions map it; the
/// writer is a fork, so nothing would carry over to the next checkpoint
/// anyway. The file is opened by path: if it is no longer the one whose
/// metadata the checkpoint thread took (replaced or written since), its
/// contents now would not be those the program mapped, and the checkpoint
/// fails rather than record them.
fn identify_mapped_files(regions: &mut [stasis_image::Region]) -> Result<(), String> {
    let mut done: Vec<(String, stasis_image::FileId)> = Vec::new();
    for r in regions.iter_mut() {
        // Writable shared mappings are saved whole and written back: their
        // file is not checked at restart.
        if r.shared {
            continue;
        }
        let RegionKind::File { path, id, .. } = &mut r.kind else { continue };
        if let Some((_, known)) = done.iter().find(|(p, known)| p == path && same_stat(known, id)) {
            *id = known.clone();
            continue;
        }
        let file = File::open(&*path).map_err(|e| format!("{path} (mapped by the program): {e}"))?;
        let now =
            stasis_image::identity::identify(&file).map_err(|e| format!("{path} (mapped by the program): {e}"))?;
        if !same_stat(&now, id) {
            return Err(format!("{path} (mapped by the program) changed while the checkpoint was taken; try again"));
        }
        *id = now;
        done.push((path.clone(), id.clone()));
    }
    Ok(())
}

fn same_stat(a: &stasis_image::FileId, b: &stasis_image::FileId) -> bool {
    (a.size, a.mtime_ns, a.ctime_ns, a.inode) == (b.size, b.mtime_ns, b.ctime_ns, b.inode)
}

/// Writes the wanted pages of the regions `pass` selects, in parallel
/// (`workers`), straight from this process's memory.
fn write_memory(
    w: &mut ImageWriter,
    mem: &File,
    regions: &[stasis_image::Region],
    plans: &[RegionPlan],
    pass: &dyn Fn(usize) -> bool,
    workers: usize,
    compress: bool,
) -> Result<(), String> {
    let mut units = Vec::new();
    for (i, (r, plan)) in regions.iter().zip(plans).enumerate() {
        if pass(i) && !matches!(plan.pages, Pages::None) {
            plan_units(&mut units, i as u32, r, plan);
        }
    }
    if units.is_empty() {
        return Ok(());
    }
    let start = w.next_offset();
    let (chunks, end) = workers::write_units(&units, w.file().as_raw_fd(), mem.as_raw_fd(), start, workers, compress)
        .map_err(|f| explain(f, regions, mem, w.path()))?;
    w.adopt(&chunks, end).map_err(|e| e.to_string())
}

/// Cuts a region's wanted pages into units of at most a chunk. A region
/// the program made unreadable is made readable in this process first
/// (its own copy: the program is not affected); where that fails, its
/// units are read through /proc/self/mem.
fn plan_units(units: &mut Vec<Unit>, region: u32, r: &stasis_image::Region, plan: &RegionPlan) {
    let first = units.len();
    let max_run = MAX_CHUNK / PAGE;
    for (a, b) in plan.pages.runs((r.end - r.start) / PAGE) {
        let mut p = a;
        while p < b {
            let q = b.min(p + max_run);
            units.push(Unit {
                region,
                addr: r.start + p * PAGE,
                offset: p * PAGE,
                len: (q - p) * PAGE,
                skip_zero: plan.skip_zero,
                via_mem: false,
            });
            p = q;
        }
    }
    // Only a region with pages to save (a large PROT_NONE reservation
    // usually has none).
    let readable = units.len() == first || r.prot & stasis_image::PROT_READ != 0 || {
        let prot = i32::from(r.prot) | libc::PROT_READ;
        crate::sys::mprotect(r.start, r.end - r.start, prot).is_ok()
    };
    if !readable {
        units[first..].iter_mut().for_each(|u| u.via_mem = true);
    }
}

/// The message for a failed memory pass. Every page saved was in memory
/// when the program stopped (the memory list and this fork hold the same
/// pages: `fork_advice`, `AgentAlloc::hold_unmaps`), so one that cannot
/// be read fails the checkpoint: an image quietly missing a page
/// restores wrong.
fn explain(f: Failed, regions: &[stasis_image::Region], mem: &File, image: &Path) -> String {
    let region = regions.get(f.unit.region as usize);
    let name = region.map_or_else(|| format!("{}", f.unit.region), crate::fork_advice::describe);
    let unreadable = |addr: u64, e: std::io::Error| {
        format!("cannot read page {addr:#x} of region {name}: {e}; the checkpoint would lose it")
    };
    match f.why {
        Failure::Read { addr, errno } => unreadable(addr, std::io::Error::from_raw_os_error(errno)),
        Failure::Write { errno } => {
            format!("{}: write: {}", image.display(), std::io::Error::from_raw_os_error(errno))
        }
        Failure::Died { .. } if f.unit.len == 0 => {
            "the image writer's workers ended before saving all the memory".into()
        }
        Failure::Died { signal } => {
            // A page that faults (a file cut short under a mapping, say)
            // kills the worker that reads it: find it and name it.
            let mut page = [0u8; PAGE as usize];
            let bad = (0..f.unit.len / PAGE)
                .map(|k| f.unit.addr + k * PAGE)
                .find_map(|addr| mem.read_exact_at(&mut page, addr).err().map(|e| (addr, e)));
            match bad {
                Some((addr, e)) => unreadable(addr, e),
                None => format!(
                    "an image writer worker died (signal {signal}) while saving {} bytes at {:#x} of region {name}",
                    f.unit.len, f.unit.addr
                ),
            }
        }
        Failure::Start { errno } => {
            format!("cannot start the image writer's workers: {}", std::io::Error::from_raw_os_error(errno))
        }
    }
}
