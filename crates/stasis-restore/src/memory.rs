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

use stasis_image::{ChunkKind, Compression, ImageReader, ProcessMeta, Region, RegionKind};

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
/// time memory is planned; the caller kept this one).
pub fn memory_pieces(image: &ImageReader, own: &File) -> Result<(Vec<ImageSource>, Vec<MemoryPiece>), RestoreError> {
    let meta = image.meta();
    let own = source(own, image.path(), meta.generation)
        .map_err(|e| RestoreError(format!("{}: {e}", image.path().display())))?;
    let pieces = meta
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
            }),
            ChunkKind::FileContents { .. } => None,
        })
        .collect();
    Ok((vec![own], pieces))
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

/// Decompresses a chunk's stored bytes into `out` (exactly its size).
/// Stands in for `stasis_image::decompress_chunk` (same arguments) until
/// that lands with zstd: then this body becomes a call to it.
fn decompress_chunk(compression: Compression, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    match compression {
        Compression::None if stored.len() == out.len() => {
            out.copy_from_slice(stored);
            Ok(())
        }
        Compression::Lz4 => match lz4_flex::block::decompress_into(stored, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err("does not decompress".into()),
        },
        _ => Err("does not decompress".into()),
    }
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
    let one = |buf: &mut Vec<u8>, (p, at): (MemoryPiece, u64)| -> Result<(), String> {
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
        decompress_chunk(p.compression, buf, out).map_err(|e| format!("{} {e}", name()))
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = Vec::new();
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

/// Decides, for `pieces` of `meta`, what is mapped and what is read.
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
            read.extend(pieces.iter().filter(|p| p.image == img && p.addr >= addr && p.addr < addr + len).copied());
            let _ = off;
        }
    }
    read.sort_by_key(|p| p.addr);
    out.reads = read;
    out
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
    fn pieces_of_two_regions_are_not_joined() {
        let base = 0x10_0000_0000;
        let m = meta(vec![anon(base, base + M), anon(base + M, base + 2 * M)]);
        let l = lay_out(&m, &[piece(0, base, M, 4096), piece(1, base + M, M, 4096 + M)], true);
        assert_eq!(l.maps.len(), 2);
    }
}
