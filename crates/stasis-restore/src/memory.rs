//! Where a restored process's memory comes from: which bytes of which image
//! file go to which address, and how the restorer puts them there.
//!
//! [`memory_pieces`] is the one place that decides the sources (today the
//! process's own image; incremental checkpoints add older generations'
//! images). [`lay_out`] then turns pieces into the restorer's work:
//! uncompressed pieces of private anonymous regions are mapped straight
//! from the image (MAP_PRIVATE, demand paged: nothing is read before the
//! program runs), contiguous ones as one mapping; everything else is read.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stasis_image::{ChunkKind, Compression, ImageReader, Manifest, ProcessMeta, Region, RegionKind};

use crate::RestoreError;

/// `len` bytes at `addr` are `stored_len` bytes at `file_offset` of image
/// file `image` (an index into the files `memory_pieces` returns), stored
/// with `compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPiece {
    pub image: usize,
    /// Index of the chunk in that image's metadata (for messages).
    pub chunk: usize,
    /// Index of the region of `meta.regions` the bytes belong to.
    pub region: usize,
    pub addr: u64,
    pub len: u64,
    pub file_offset: u64,
    pub stored_len: u64,
    pub compression: Compression,
    /// xxh3-64 of the stored bytes.
    pub checksum: u64,
    /// For a compressed chunk that an incremental checkpoint refers to
    /// only in part: where the piece starts in the decompressed chunk, and
    /// the chunk's whole decompressed length (`len` and 0 otherwise).
    pub skip: u64,
    pub chunk_len: u64,
}

/// An image file a process's memory comes from, and who it is to the
/// agent's image table (`stasis_plan::restore_info`).
pub struct ImageSource {
    pub file: File,
    pub path: std::path::PathBuf,
    /// As /proc/PID/maps prints it: major << 32 | minor.
    pub dev: u64,
    pub inode: u64,
    pub generation: u64,
}

/// The image files and the pieces of memory that come from them. `own`
/// is the process's image, open (restart's descriptors are closed by the
/// time memory is planned; the caller kept this one). An incremental
/// image's `inherited` references add the images of the generations that
/// hold those pages (`older_images`), after the own one; the pieces never
/// overlap.
pub fn memory_pieces(image: &ImageReader, own: &File) -> Result<(Vec<ImageSource>, Vec<MemoryPiece>), RestoreError> {
    let meta = image.meta();
    let own = source(own, image.path(), meta.generation)
        .map_err(|e| RestoreError(format!("{}: {e}", image.path().display())))?;
    let mut pieces: Vec<MemoryPiece> = meta
        .chunks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c.kind {
            ChunkKind::Memory { region, offset } => Some(MemoryPiece {
                image: 0,
                chunk: i,
                region: region as usize,
                addr: meta.regions[region as usize].start + offset,
                len: c.data_len,
                file_offset: c.file_offset,
                stored_len: c.len,
                compression: c.compression,
                checksum: c.checksum,
                skip: 0,
                chunk_len: c.data_len,
            }),
            ChunkKind::FileContents { .. } => None,
        })
        .collect();
    let mut sources = vec![own];
    for older in older_images(image)? {
        let index = sources.len();
        let g = older.meta().generation;
        for r in meta.inherited.iter().filter(|r| r.generation == g) {
            let region = &meta.regions[r.region as usize];
            let (from, to) = (region.start + r.offset, region.start + r.offset + r.len);
            // Pages the older image does not hold were all zero there
            // (left out) and are zero still: the region starts as zeros.
            pieces.extend(pieces_within(older.meta(), index, r.region as usize, from, to));
        }
        let file = older.file().try_clone().map_err(|e| RestoreError(format!("{}: {e}", older.path().display())))?;
        sources.push(
            source(&file, older.path(), g).map_err(|e| RestoreError(format!("{}: {e}", older.path().display())))?,
        );
    }
    pieces.sort_by_key(|p| p.addr);
    Ok((sources, pieces))
}

/// The images of the earlier generations that `image`'s `inherited`
/// references name, each the same process's image in its generation's
/// directory of the same checkpoint directory, checked against that
/// generation's MANIFEST (digest, size, pid, generation) and of the same
/// computation. References are flattened by the agent: each generation
/// named holds the bytes itself, so nothing further is followed.
pub fn older_images(image: &ImageReader) -> Result<Vec<ImageReader>, RestoreError> {
    let meta = image.meta();
    let mut generations: Vec<u64> = meta.inherited.iter().map(|r| r.generation).collect();
    generations.sort_unstable();
    generations.dedup();
    generations.into_iter().map(|g| older_image(image, g)).collect()
}

/// The earlier generations' images that any of `images` refers to, each
/// once: restart verifies their chunks as it verifies the images' own.
pub fn referenced_images(images: &[&ImageReader]) -> Result<Vec<ImageReader>, RestoreError> {
    let mut out: Vec<ImageReader> = Vec::new();
    for image in images {
        for older in older_images(image)? {
            if !out.iter().any(|o| o.path() == older.path()) {
                out.push(older);
            }
        }
    }
    Ok(out)
}

fn older_image(image: &ImageReader, g: u64) -> Result<ImageReader, RestoreError> {
    let meta = image.meta();
    let own = image.path();
    // The image is in its generation's directory, or is one of the DMTCP
    // names at the top of the checkpoint directory (`ckpt_*.dmtcp`).
    let parent = own.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let ck = if parent.join(format!("gen-{:06}", meta.generation)).is_dir() { Some(parent) } else { parent.parent() };
    let gen_dir: PathBuf = ck
        .map(|d| d.join(format!("gen-{g:06}")))
        .ok_or_else(|| RestoreError(format!("{}: not in a checkpoint directory", own.display())))?;
    let bad = |why: String| RestoreError(format!("{} (needed by pid {}'s image): {why}", gen_dir.display(), meta.pid));
    let m = Manifest::read_from(&gen_dir).map_err(|e| bad(e.to_string()))?;
    let p = m
        .processes
        .iter()
        .find(|p| p.pid == meta.pid)
        .ok_or_else(|| bad(format!("it has no image of pid {}", meta.pid)))?;
    let path = gen_dir.join(&p.image);
    let r = ImageReader::open(&path).map_err(|e| bad(e.to_string()))?;
    stasis_image::check_image(&m, p, r.meta(), r.len(), r.digest())
        .map_err(|why| bad(format!("{}{why}", path.display())))?;
    if r.meta().computation_id != meta.computation_id {
        return Err(bad("another computation's".into()));
    }
    Ok(r)
}

/// The pieces of `older`'s memory chunks inside [from, to), as pieces of
/// region `region` of the image that refers to them, from image `image`.
/// An uncompressed chunk is cut to the range (it stays page aligned); a
/// compressed one is decompressed whole and the range taken (`skip`).
fn pieces_within(older: &ProcessMeta, image: usize, region: usize, from: u64, to: u64) -> Vec<MemoryPiece> {
    let mut out = Vec::new();
    for (i, c) in older.chunks.iter().enumerate() {
        let ChunkKind::Memory { region: r, offset } = c.kind else { continue };
        let start = older.regions[r as usize].start + offset;
        let end = start + c.data_len;
        let (a, b) = (start.max(from), end.min(to));
        if a >= b {
            continue;
        }
        let compressed = c.compression != Compression::None;
        out.push(MemoryPiece {
            image,
            chunk: i,
            region,
            addr: a,
            len: b - a,
            file_offset: if compressed { c.file_offset } else { c.file_offset + (a - start) },
            stored_len: if compressed { c.len } else { b - a },
            compression: c.compression,
            checksum: c.checksum,
            skip: if compressed { a - start } else { 0 },
            chunk_len: if compressed { c.data_len } else { b - a },
        });
    }
    out
}

fn source(file: &File, path: &std::path::Path, generation: u64) -> std::io::Result<ImageSource> {
    let md = file.metadata()?;
    let dev = md.dev();
    let dev = (u64::from(libc::major(dev)) << 32) | u64::from(libc::minor(dev));
    Ok(ImageSource { file: file.try_clone()?, path: path.to_path_buf(), dev, inode: md.ino(), generation })
}

/// Whether `file` lies on a filesystem mounted noexec (where memory mapped
/// from it could not be made executable, as anonymous memory can).
pub fn on_noexec_mount(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed statvfs is valid; fstatvfs fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs on an open descriptor, writing `st`.
    let r = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    r != 0 || st.f_flag & libc::ST_NOEXEC != 0
}

/// Decompresses a chunk's stored bytes into `out` (exactly its size):
/// zstd, or LZ4 in version 6 images.
fn decompress_chunk(compression: Compression, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    stasis_image::decompress_chunk(compression, stored, out).map_err(|e| match e {
        stasis_image::Error::Corrupt { what, .. } => what,
        other => other.to_string(),
    })
}

/// Decompresses every staged run into its staging place (`dest[i]` for
/// `staged[i]`: page-aligned, writable, of the run's length), in parallel
/// on up to as many threads as there are CPUs. Each piece's stored bytes
/// are checked against their checksum as they are read.
pub fn decompress_staged(sources: &[ImageSource], staged: &[Staged], dest: &[u64]) -> Result<(), String> {
    let work: Vec<(MemoryPiece, u64)> = staged
        .iter()
        .zip(dest)
        .flat_map(|(run, &d)| run.pieces.iter().map(move |p| (*p, d + (p.addr - run.addr))))
        .collect();
    if work.is_empty() {
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(work.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let one = |(buf, whole): &mut (Vec<u8>, Vec<u8>), (p, at): (MemoryPiece, u64)| -> Result<(), String> {
        let src = &sources[p.image];
        let name = || format!("{}: memory chunk {} ({} bytes at {:#x})", src.path.display(), p.chunk, p.len, p.addr);
        buf.resize(p.stored_len as usize, 0);
        std::os::unix::fs::FileExt::read_exact_at(&src.file, buf, p.file_offset)
            .map_err(|e| format!("{}: reading it: {e}", name()))?;
        if xxhash_rust::xxh3::xxh3_64(buf) != p.checksum {
            // The wording of stasis-image's own check.
            return Err(format!(
                "{}: checksum mismatch in memory chunk {} ({} bytes at {:#x})",
                src.path.display(),
                p.chunk,
                p.len,
                p.addr
            ));
        }
        // SAFETY: `at` lies in the staging area restart mapped writable for
        // this run, and the pieces of the work list do not overlap.
        let out = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, p.len as usize) };
        if p.skip == 0 && p.len == p.chunk_len {
            return decompress_chunk(p.compression, buf, out).map_err(|e| format!("{} {e}", name()));
        }
        // Part of a chunk (an incremental checkpoint refers to the rest
        // elsewhere): the chunk whole, then the part.
        whole.resize(p.chunk_len as usize, 0);
        decompress_chunk(p.compression, buf, whole).map_err(|e| format!("{} {e}", name()))?;
        out.copy_from_slice(&whole[p.skip as usize..(p.skip + p.len) as usize]);
        Ok(())
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = (Vec::new(), Vec::new());
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&item) = work.get(i) else { return Ok(()) };
                        one(&mut buf, item)?;
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err("a decompressing thread failed".into())))
    })
}

/// Pieces shorter than this are read rather than mapped: each mapping is
/// a VMA of its own (vm.max_map_count), and a few pages cost little to read.
pub const MAP_MIN: u64 = 16 * 4096;
/// At most this many image mappings per process; pieces past it are read.
pub const MAPS_MAX: usize = 16384;

/// What the restorer does with the pieces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// (image, addr, len, file_offset): map MAP_PRIVATE|MAP_FIXED.
    pub maps: Vec<(usize, u64, u64, u64)>,
    /// Compressed pieces, in runs contiguous in memory: decompressed by
    /// restart before the jump into a staging area, moved into place by
    /// the restorer (mremap, no copy).
    pub staged: Vec<Staged>,
    /// Uncompressed pieces to read into place.
    pub reads: Vec<MemoryPiece>,
}

/// A run of compressed pieces that fill `len` bytes at `addr`, in order.
/// `moved`: its pages are moved into place (mremap); otherwise copied
/// (memory whose mapping must stay one: a stack that grows down, the heap,
/// a file's pages), as a move would split it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Staged {
    pub addr: u64,
    pub len: u64,
    pub pieces: Vec<MemoryPiece>,
    pub moved: bool,
}

/// Whether a region's pages may come back as a private mapping of the
/// image: private anonymous memory only. Not a stack that grows down (the
/// kernel grows only an anonymous VMA), not the heap (brk extends the VMA
/// at its end), not shared memory, the vdso or a file's pages, and not
/// memory to be wiped on fork (MADV_WIPEONFORK takes anonymous memory only).
pub fn mappable(r: &Region) -> bool {
    matches!(r.kind, RegionKind::Anonymous)
        && !r.shared
        && !r.growsdown
        && r.name != "[heap]"
        && r.fork_advice & stasis_image::ADVICE_WIPEONFORK == 0
}

/// Decides, for `pieces` of `meta` (sorted by address, as `memory_pieces`
/// returns them), what is mapped and what is read.
/// `direct` says whether this process's agent can hold memory mapped from
/// images (it must know them: `imagemap` in the agent); when false,
/// everything is read as before.
pub fn lay_out(meta: &ProcessMeta, pieces: &[MemoryPiece], direct: bool) -> Layout {
    let mut out = Layout::default();
    let mut runs: Vec<(usize, u64, u64, u64)> = Vec::new();
    let mut read = Vec::new();
    for p in pieces {
        let page_aligned =
            p.addr.is_multiple_of(4096) && p.file_offset.is_multiple_of(4096) && p.len.is_multiple_of(4096);
        if p.compression != Compression::None {
            // Whole pages (the writer saves pages) so that they can be moved.
            match out.staged.last_mut() {
                Some(run) if run.addr + run.len == p.addr && same_region(meta, run.addr, p.region) => {
                    run.len += p.len;
                    run.pieces.push(*p);
                }
                _ => {
                    let moved = page_aligned && meta.regions.get(p.region).is_some_and(mappable);
                    out.staged.push(Staged { addr: p.addr, len: p.len, pieces: vec![*p], moved })
                }
            }
            if let Some(run) = out.staged.last_mut() {
                run.moved &= page_aligned;
            }
            continue;
        }
        let can_map = direct
            && p.compression == Compression::None
            && page_aligned
            && meta.regions.get(p.region).is_some_and(mappable);
        if !can_map {
            read.push(*p);
            continue;
        }
        match runs.last_mut() {
            Some((img, addr, len, off))
                if *img == p.image
                    && *addr + *len == p.addr
                    && *off + *len == p.file_offset
                    && same_region(meta, *addr, p.region) =>
            {
                *len += p.len
            }
            _ => runs.push((p.image, p.addr, p.len, p.file_offset)),
        }
    }
    let runs = bridge(meta, pieces, runs);
    // The longest runs are mapped; the rest is read.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(runs[i].2));
    let mut mapped = vec![false; runs.len()];
    for &i in order.iter().take(MAPS_MAX) {
        mapped[i] = runs[i].2 >= MAP_MIN;
    }
    for (i, run) in runs.iter().enumerate() {
        if mapped[i] {
            out.maps.push(*run);
        } else {
            // Back into the pieces it was made of.
            let (img, addr, len, off) = *run;
            let _ = off;
            read.extend(within(pieces, addr, addr + len).filter(|p| p.image == img && p.addr >= addr).copied());
        }
    }
    read.sort_by_key(|p| p.addr);
    out.reads = read;
    out
}

/// Joins runs of one image that only pieces of other images interrupt:
/// the unchanged pages an incremental image refers to, with its own
/// changed pages between them. The joined run is mapped whole, older bytes
/// in the gaps included, and the pieces of the gaps are read or moved over
/// them afterwards (the restorer maps first): one mapping instead of one
/// per gap, and the region stays one mapping. Only where the gap's pieces
/// cover every byte of it: a page none covers is zero now, and the older
/// image's bytes must not show there.
fn bridge(
    meta: &ProcessMeta,
    pieces: &[MemoryPiece],
    runs: Vec<(usize, u64, u64, u64)>,
) -> Vec<(usize, u64, u64, u64)> {
    let mut out: Vec<(usize, u64, u64, u64)> = Vec::with_capacity(runs.len());
    for run in runs {
        // The image's previous run; the runs after it are other images'
        // (pieces in the gap, if it is one).
        if let Some(last) = out.iter_mut().rev().find(|r| r.0 == run.0) {
            let (img, addr, len, off) = *last;
            let (gap_start, gap_end) = (addr + len, run.1);
            let bridgeable = run.0 == img
                && gap_end > gap_start
                && run.3.checked_sub(off + len) == Some(gap_end - gap_start)
                && same_region(meta, addr, region_of(meta, run.1))
                && {
                    let inside = within(pieces, gap_start, gap_end);
                    let mut covered = 0;
                    let mut others = true;
                    for p in inside {
                        others &= p.image != img && p.addr >= gap_start && p.addr + p.len <= gap_end;
                        covered += p.len;
                    }
                    others && covered == gap_end - gap_start
                };
            if bridgeable {
                last.2 = run.1 + run.2 - addr;
                continue;
            }
        }
        out.push(run);
    }
    out
}

/// The pieces that overlap [from, to), of `pieces` sorted by address
/// (`memory_pieces` sorts them; they do not overlap): found by bisection,
/// since an incremental image has thousands.
fn within(pieces: &[MemoryPiece], from: u64, to: u64) -> impl Iterator<Item = &MemoryPiece> {
    let first = pieces.partition_point(|p| p.addr + p.len <= from);
    pieces[first..].iter().take_while(move |p| p.addr < to)
}

/// The index of the region `addr` lies in (or past the last).
fn region_of(meta: &ProcessMeta, addr: u64) -> usize {
    meta.regions.partition_point(|r| r.end <= addr)
}

/// Whether `addr` lies in region `region` (a run never spans two regions:
/// each is its own mapping with its own protection).
fn same_region(meta: &ProcessMeta, addr: u64, region: usize) -> bool {
    meta.regions.get(region).is_some_and(|r| r.start <= addr && addr < r.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(regions: Vec<Region>) -> ProcessMeta {
        ProcessMeta { regions, ..Default::default() }
    }

    fn anon(start: u64, end: u64) -> Region {
        Region { start, end, prot: 3, ..Default::default() }
    }

    fn piece(region: usize, addr: u64, len: u64, file_offset: u64) -> MemoryPiece {
        MemoryPiece {
            image: 0,
            chunk: 0,
            region,
            addr,
            len,
            file_offset,
            stored_len: len,
            compression: Compression::None,
            checksum: 0,
            skip: 0,
            chunk_len: len,
        }
    }

    const M: u64 = 1 << 20;

    #[test]
    fn contiguous_pieces_become_one_mapping() {
        let m = meta(vec![anon(0x10_0000_0000, 0x10_0000_0000 + 4 * M)]);
        let base = 0x10_0000_0000;
        let pieces =
            [piece(0, base, M, 8192), piece(0, base + M, M, 8192 + M), piece(0, base + 3 * M, M, 8192 + 2 * M)];
        let l = lay_out(&m, &pieces, true);
        assert_eq!(l.maps, vec![(0, base, 2 * M, 8192), (0, base + 3 * M, M, 8192 + 2 * M)]);
        assert!(l.reads.is_empty());
    }

    #[test]
    fn small_compressed_and_other_regions_are_read() {
        let base = 0x10_0000_0000;
        let mut stack = anon(base + 8 * M, base + 9 * M);
        stack.growsdown = true;
        let mut heap = anon(base + 10 * M, base + 11 * M);
        heap.name = "[heap]".into();
        let m = meta(vec![anon(base, base + 4 * M), stack, heap]);
        let mut z = piece(0, base + M, M, 4096 + M);
        z.compression = Compression::Lz4;
        let pieces =
            [piece(0, base, 4096, 4096), z, piece(1, base + 8 * M, M, 8 * M), piece(2, base + 10 * M, M, 10 * M)];
        let l = lay_out(&m, &pieces, true);
        assert!(l.maps.is_empty());
        assert_eq!(l.reads.len(), 3);
        assert_eq!(l.staged, vec![Staged { addr: base + M, len: M, pieces: vec![z], moved: true }]);
        // An agent that cannot know image mappings: all read.
        let l = lay_out(&m, &[piece(0, base, M, 4096)], false);
        assert!(l.maps.is_empty() && l.reads.len() == 1);
    }

    #[test]
    fn runs_of_an_older_image_are_mapped_across_the_newer_pieces_between_them() {
        let base = 0x10_0000_0000;
        let m = meta(vec![anon(base, base + 4 * M)]);
        let older = |addr: u64, len: u64| MemoryPiece { image: 1, ..piece(0, addr, len, 4096 + (addr - base)) };
        let changed = piece(0, base + M, 4096, 8192);
        let pieces = [older(base, M), changed, older(base + M + 4096, M - 4096)];
        let l = lay_out(&m, &pieces, true);
        assert_eq!(l.maps, vec![(1, base, 2 * M, 4096)]);
        assert_eq!(l.reads, vec![changed]);
        // A page between them that no piece holds is zero now: not bridged.
        let l = lay_out(&m, &[older(base, M), older(base + M + 4096, M - 4096)], true);
        assert_eq!(l.maps.len(), 2);
    }

    #[test]
    fn pieces_of_two_regions_are_not_joined() {
        let base = 0x10_0000_0000;
        let m = meta(vec![anon(base, base + M), anon(base + M, base + 2 * M)]);
        let l = lay_out(&m, &[piece(0, base, M, 4096), piece(1, base + M, M, 4096 + M)], true);
        assert_eq!(l.maps.len(), 2);
    }
}
