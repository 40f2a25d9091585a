//! Writes the image. Runs in the copy-on-write snapshot child, so it sees
//! memory exactly as it was at the fork while the program runs on.

use std::io::Read;
use std::path::Path;

use stasis_image::{ChunkKind, ImageWriter, RegionKind};

use crate::collect::{PAGE, Pages, RegionPlan, Snapshot, reopen_fd};
use crate::sys;

/// Chunks are cut at this size, so a damaged chunk costs little and
/// incremental checkpoints can compare chunk checksums.
const MAX_CHUNK: u64 = 4 << 20;

/// Writes `snap` to `path`. `shared_done` is called once everything that
/// the running program could still change (shared memory, deleted files'
/// contents) is in the image; private memory follows.
pub fn write_image(snap: Snapshot, path: &Path, shared_done: &mut dyn FnMut()) -> Result<u64, String> {
    let err = |e: stasis_image::Error| e.to_string();
    let mut w = ImageWriter::create(path).map_err(err)?;
    let Snapshot { meta, plans, deleted_files } = snap;

    let first_pass = |i: usize| meta.regions[i].shared || meta.regions[i].kind == RegionKind::Vdso;
    for (i, plan) in plans.iter().enumerate() {
        if first_pass(i) {
            write_region(&mut w, i as u32, meta.regions[i].start, meta.regions[i].prot, plan)?;
        }
    }
    for &fd_index in &deleted_files {
        let fd = meta.fds[fd_index].fd;
        let mut f = reopen_fd(fd).map_err(|e| format!("reopen deleted file on fd {fd}: {e}"))?;
        let mut buf = vec![0u8; MAX_CHUNK as usize];
        let mut offset = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("read deleted file on fd {fd}: {e}"))?;
            if n == 0 {
                break;
            }
            w.append_chunk(ChunkKind::FileContents { fd_index: fd_index as u32, offset }, &buf[..n]).map_err(err)?;
            offset += n as u64;
        }
    }
    shared_done();
    for (i, plan) in plans.iter().enumerate() {
        if !first_pass(i) {
            write_region(&mut w, i as u32, meta.regions[i].start, meta.regions[i].prot, plan)?;
        }
    }
    w.finish(meta).map_err(err)
}

fn page_wanted(plan: &RegionPlan, page: u64) -> bool {
    match &plan.pages {
        Pages::None => false,
        Pages::Prefix(len) => page * PAGE < *len,
        Pages::Bitmap(bits) => bits.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0),
    }
}

fn is_zero_page(addr: u64) -> bool {
    // SAFETY: the page is mapped and readable (write_region made sure).
    let words = unsafe { std::slice::from_raw_parts(addr as *const u64, (PAGE / 8) as usize) };
    words.iter().all(|&w| w == 0)
}

fn write_region(w: &mut ImageWriter, region: u32, start: u64, prot: u8, plan: &RegionPlan) -> Result<(), String> {
    let pages = match &plan.pages {
        Pages::None => return Ok(()),
        Pages::Prefix(len) => len / PAGE,
        Pages::Bitmap(bits) => bits.len() as u64 * 64,
    };
    if prot & stasis_image::PROT_READ == 0 {
        // This is the snapshot child's private copy of the mapping: making
        // it readable here changes nothing for the program.
        let full = libc::PROT_READ | if prot & stasis_image::PROT_WRITE != 0 { libc::PROT_WRITE } else { 0 };
        let len = match &plan.pages {
            Pages::Prefix(len) => *len,
            _ => pages * PAGE,
        };
        if (0..pages).any(|p| page_wanted(plan, p)) {
            sys::mprotect(start, len, full).map_err(|e| format!("mprotect {start:#x}: errno {e}"))?;
        }
    }
    let mut run_start: Option<u64> = None;
    let mut bounce = vec![0u8; MAX_CHUNK as usize];
    let mut flush = |from: u64, to: u64, w: &mut ImageWriter| -> Result<(), String> {
        let addr = start + from * PAGE;
        let len = ((to - from) * PAGE) as usize;
        // SAFETY: pages [from, to) are mapped and readable in this process
        // (present in the pagemap, or within the mapped file's size).
        let live = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        // Copy first: libc's own wrappers briefly change this thread's
        // descriptor (cancellation state) in memory that may be saved here,
        // so what is hashed and what is written must be the same bytes.
        bounce[..len].copy_from_slice(live);
        w.append_chunk(ChunkKind::Memory { region, offset: from * PAGE }, &bounce[..len])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for p in 0..=pages {
        let keep = p < pages && page_wanted(plan, p) && !(plan.skip_zero && is_zero_page(start + p * PAGE));
        match (run_start, keep) {
            (None, true) => run_start = Some(p),
            (Some(s), true) if (p - s) * PAGE >= MAX_CHUNK => {
                flush(s, p, w)?;
                run_start = Some(p);
            }
            (Some(s), false) => {
                flush(s, p, w)?;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(())
}
