//! Writes the image. Runs in the copy-on-write snapshot child, so it sees
//! memory exactly as it was at the fork while the program runs on.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use stasis_image::{ChunkKind, ImageWriter, RegionKind};

use crate::collect::{PAGE, Pages, RegionPlan, Snapshot, reopen_fd};

/// Chunks are cut at this size, so a damaged chunk costs little and
/// incremental checkpoints can compare chunk checksums.
const MAX_CHUNK: u64 = 4 << 20;

/// Writes `snap` to `path`. `shared_done` is called once everything that
/// the running program could still change (shared memory, deleted files'
/// contents) is in the image; private memory follows.
pub fn write_image(snap: Snapshot, path: &Path, compress: bool, shared_done: &mut dyn FnMut()) -> Result<u64, String> {
    let err = |e: stasis_image::Error| e.to_string();
    // Memory is read through /proc/self/mem: protection does not stop it,
    // and a page that cannot be read is an error naming its region, not a
    // crash (nor a page quietly left out: see `write_region`).
    let mem = std::fs::File::open("/proc/self/mem").map_err(|e| format!("open /proc/self/mem: {e}"))?;
    // Only into a directory of ours that nobody else can write, whoever
    // sent the SUSPEND; created afresh there, never through a link.
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(format!("{} is not a path to an image", path.display())),
    };
    let dir = stasis_image::open_image_dir(dir)?;
    let mut w = ImageWriter::create_in(&dir, name).map_err(err)?;
    if compress {
        w.set_compression(stasis_image::Compression::Lz4);
    }
    let Snapshot { mut meta, plans, deleted_files, pipes, sockets, .. } = snap;
    // One buffer for the whole image: a program with hundreds of regions
    // (a stack per thread) must not cost hundreds of fresh 4 MiB buffers.
    let mut bounce = vec![0u8; MAX_CHUNK as usize];

    let first: Vec<bool> = meta.regions.iter().map(|r| r.shared || r.kind == RegionKind::Vdso).collect();
    let first_pass = |i: usize| first[i];
    for (i, plan) in plans.iter().enumerate() {
        if first_pass(i) {
            write_region(&mut w, &mem, &mut bounce, i as u32, &meta.regions[i], plan)?;
        }
    }
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
            w.append_chunk(ChunkKind::FileContents { fd_index: fd_index as u32, offset }, &buf[..n]).map_err(err)?;
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
            w.append_chunk(ChunkKind::FileContents { fd_index: fd_index as u32, offset }, piece).map_err(err)?;
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
            w.append_chunk(ChunkKind::FileContents { fd_index: fd_index as u32, offset }, piece).map_err(err)?;
            offset += piece.len() as u64;
        }
    }
    // The program's descriptors are of no more use here, and a pipe's write
    // end held by this copy would keep its reader from seeing end of file.
    // The coordinator connection stays: see `ckpt::writer_main`.
    for f in meta.fds.iter().filter(|f| f.kind != stasis_image::FdKind::Agent) {
        crate::sys::close(f.fd);
    }
    shared_done();
    identify_mapped_files(&mut meta.regions)?;
    for (i, plan) in plans.iter().enumerate() {
        if !first_pass(i) {
            write_region(&mut w, &mem, &mut bounce, i as u32, &meta.regions[i], plan)?;
        }
    }
    w.finish(meta).map_err(err)
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

fn page_wanted(plan: &RegionPlan, page: u64) -> bool {
    match &plan.pages {
        Pages::None => false,
        Pages::Prefix(len) => page * PAGE < *len,
        Pages::Bitmap(bits) => bits.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0),
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// Writes the wanted pages of one region as chunks of runs of pages.
fn write_region(
    w: &mut ImageWriter,
    mem: &File,
    bounce: &mut [u8],
    region: u32,
    r: &stasis_image::Region,
    plan: &RegionPlan,
) -> Result<(), String> {
    let start = r.start;
    let pages = match &plan.pages {
        Pages::None => return Ok(()),
        Pages::Prefix(len) => len / PAGE,
        Pages::Bitmap(bits) => bits.len() as u64 * 64,
    };
    let max_run = bounce.len() as u64 / PAGE;
    let emit = |w: &mut ImageWriter, first: u64, data: &[u8]| -> Result<(), String> {
        // Runs of pages, split where all-zero pages may be left out.
        let n = data.len() / PAGE as usize;
        let page = |i: usize| &data[i * PAGE as usize..(i + 1) * PAGE as usize];
        let mut i = 0;
        while i < n {
            if plan.skip_zero && is_zero(page(i)) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && !(plan.skip_zero && is_zero(page(j))) {
                j += 1;
            }
            let bytes = &data[i * PAGE as usize..j * PAGE as usize];
            w.append_chunk(ChunkKind::Memory { region, offset: (first + i as u64) * PAGE }, bytes)
                .map_err(|e| e.to_string())?;
            i = j;
        }
        Ok(())
    };
    let mut p = 0;
    while p < pages {
        if !page_wanted(plan, p) {
            p += 1;
            continue;
        }
        let mut q = p + 1;
        while q < pages && q - p < max_run && page_wanted(plan, q) {
            q += 1;
        }
        let len = ((q - p) * PAGE) as usize;
        // Every page read here was in memory when the program stopped (the
        // memory list and this fork hold the same pages: `fork_advice`,
        // `AgentAlloc::hold_unmaps`), so one that cannot be read fails the
        // checkpoint: an image quietly missing a page restores wrong.
        if let Err(e) = mem.read_exact_at(&mut bounce[..len], start + p * PAGE) {
            let bad = (p..q).find(|k| mem.read_exact_at(&mut bounce[..PAGE as usize], start + k * PAGE).is_err());
            return Err(format!(
                "cannot read page {:#x} of region {}: {}; the checkpoint would lose it",
                start + bad.unwrap_or(p) * PAGE,
                crate::fork_advice::describe(r),
                e
            ));
        }
        emit(w, p, &bounce[..len])?;
        p = q;
    }
    Ok(())
}
