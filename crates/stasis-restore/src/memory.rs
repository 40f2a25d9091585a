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
    /// Index of the region of `meta.regions` the bytes belong to.
    pub region: usize,
    pub addr: u64,
    pub len: u64,
    pub file_offset: u64,
    pub stored_len: u64,
    pub compression: Compression,
}

/// An image file a process's memory comes from, and who it is to the
/// agent's image table (`stasis_plan::restore_info`).
pub struct ImageSource {
    pub file: File,
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
    let own = source(own, meta.generation).map_err(|e| RestoreError(format!("{}: {e}", image.path().display())))?;
    let pieces = meta
        .chunks
        .iter()
        .filter_map(|c| match c.kind {
            ChunkKind::Memory { region, offset } => Some(MemoryPiece {
                image: 0,
                region: region as usize,
                addr: meta.regions[region as usize].start + offset,
                len: c.data_len,
                file_offset: c.file_offset,
                stored_len: c.len,
                compression: c.compression,
            }),
            ChunkKind::FileContents { .. } => None,
        })
        .collect();
    Ok((vec![own], pieces))
}

fn source(file: &File, generation: u64) -> std::io::Result<ImageSource> {
    let md = file.metadata()?;
    let dev = md.dev();
    let dev = (u64::from(libc::major(dev)) << 32) | u64::from(libc::minor(dev));
    Ok(ImageSource { file: file.try_clone()?, dev, inode: md.ino(), generation })
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
    /// Pieces to read (and decompress) into place.
    pub reads: Vec<MemoryPiece>,
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
        let page_aligned = p.addr % 4096 == 0 && p.file_offset % 4096 == 0 && p.len % 4096 == 0;
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
            region,
            addr,
            len,
            file_offset,
            stored_len: len,
            compression: Compression::None,
        }
    }

    const M: u64 = 1 << 20;

    #[test]
    fn contiguous_pieces_become_one_mapping() {
        let m = meta(vec![anon(0x10_0000_0000, 0x10_0000_0000 + 4 * M)]);
        let base = 0x10_0000_0000;
        let pieces = [piece(0, base, M, 8192), piece(0, base + M, M, 8192 + M), piece(0, base + 3 * M, M, 8192 + 2 * M)];
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
        let pieces = [
            piece(0, base, 4096, 4096),
            z,
            piece(1, base + 8 * M, M, 8 * M),
            piece(2, base + 10 * M, M, 10 * M),
        ];
        let l = lay_out(&m, &pieces, true);
        assert!(l.maps.is_empty());
        assert_eq!(l.reads.len(), 4);
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
