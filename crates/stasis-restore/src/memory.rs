//! Where each saved piece of a process's memory is: its own image's memory
//! chunks, and, for an incremental checkpoint, the chunks of the earlier
//! generations' images its `inherited` list refers to.

use std::fs::File;
use std::path::{Path, PathBuf};

use stasis_image::{ChunkKind, Compression, ImageReader, Manifest, ProcessMeta};

use crate::RestoreError;

/// `len` bytes at `addr` come from `files[image]` at `file_offset`
/// (`stored_len` bytes there, compressed as `compression` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPiece {
    pub image: usize,
    pub addr: u64,
    pub len: u64,
    pub file_offset: u64,
    pub stored_len: u64,
    pub compression: Compression,
}

/// The files to read from (the process's own image `own` first) and the
/// pieces of memory in them. Pieces of earlier generations come first, so
/// that nothing of them can hide the image's own (they never overlap).
pub fn memory_pieces(meta: &ProcessMeta, own: &Path) -> Result<(Vec<File>, Vec<MemoryPiece>), RestoreError> {
    let err = |s: String| RestoreError(s);
    let own_file = File::open(own).map_err(|e| err(format!("{}: {e}", own.display())))?;
    let mut files = vec![own_file];
    let mut pieces = Vec::new();
    let mut generations: Vec<u64> = meta.inherited.iter().map(|r| r.generation).collect();
    generations.sort_unstable();
    generations.dedup();
    // Parts of compressed chunks, decompressed (made on first need).
    let mut cut = CutChunks::default();
    for g in generations {
        let (file, older) = older_image(meta, own, g)?;
        files.push(file);
        let index = files.len() - 1;
        for r in meta.inherited.iter().filter(|r| r.generation == g) {
            let region = &meta.regions[r.region as usize];
            let (from, to) = (region.start + r.offset, region.start + r.offset + r.len);
            let named = |e: String| err(format!("{}: generation {g}'s image of pid {}: {e}", own.display(), meta.pid));
            for piece in pieces_within(older.meta(), index, from, to) {
                match piece {
                    Piece::Whole(p) => pieces.push(p),
                    Piece::PartOf { chunk, addr, len } => {
                        pieces.push(cut.add(&older, &older.meta().chunks[chunk], addr, len).map_err(named)?)
                    }
                }
            }
        }
    }
    if let Some(f) = cut.file.take() {
        files.push(f);
        let index = files.len() - 1;
        for p in pieces.iter_mut().filter(|p| p.image == CUT) {
            p.image = index;
        }
    }
    for c in &meta.chunks {
        if let ChunkKind::Memory { region, offset } = c.kind {
            pieces.push(MemoryPiece {
                image: 0,
                addr: meta.regions[region as usize].start + offset,
                len: c.data_len,
                file_offset: c.file_offset,
                stored_len: c.len,
                compression: c.compression,
            });
        }
    }
    Ok((files, pieces))
}

/// The image of the same process in generation `g` of the same checkpoint
/// directory, checked against that generation's MANIFEST.
fn older_image(meta: &ProcessMeta, own: &Path, g: u64) -> Result<(File, ImageReader), RestoreError> {
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
    let file = r.file().try_clone().map_err(|e| bad(e.to_string()))?;
    Ok((file, r))
}

/// A piece of an older image: read as it is, or part of a compressed
/// chunk (`chunks[chunk]`), which the restorer cannot cut.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Whole(MemoryPiece),
    PartOf { chunk: usize, addr: u64, len: u64 },
}

/// The pieces of `older`'s memory chunks inside [from, to).
fn pieces_within(older: &ProcessMeta, image: usize, from: u64, to: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for (i, c) in older.chunks.iter().enumerate() {
        let ChunkKind::Memory { region, offset } = c.kind else { continue };
        let start = older.regions[region as usize].start + offset;
        let end = start + c.data_len;
        let (a, b) = (start.max(from), end.min(to));
        if a >= b {
            continue;
        }
        if c.compression != Compression::None && (a, b) != (start, end) {
            out.push(Piece::PartOf { chunk: i, addr: a, len: b - a });
            continue;
        }
        let whole = (a, b) == (start, end);
        out.push(Piece::Whole(MemoryPiece {
            image,
            addr: a,
            len: b - a,
            file_offset: c.file_offset + (a - start),
            stored_len: if whole { c.len } else { b - a },
            compression: c.compression,
        }));
    }
    out
}

/// Stands for the index of `CutChunks::file` until it is known.
const CUT: usize = usize::MAX;

/// The parts of compressed chunks that references cover, decompressed here
/// into a memfd (page-aligned, uncompressed) for the restorer to read.
#[derive(Default)]
struct CutChunks {
    file: Option<File>,
    len: u64,
}

impl CutChunks {
    fn add(
        &mut self,
        image: &ImageReader,
        chunk: &stasis_image::Chunk,
        addr: u64,
        len: u64,
    ) -> Result<MemoryPiece, String> {
        use std::os::unix::fs::FileExt;
        let ChunkKind::Memory { region, offset } = chunk.kind else { return Err("not a memory chunk".into()) };
        let start = image.meta().regions[region as usize].start + offset;
        let data = image.chunk_data(chunk).map_err(|e| e.to_string())?;
        let bytes = &data[(addr - start) as usize..(addr - start + len) as usize];
        if self.file.is_none() {
            // SAFETY: memfd_create with a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"stasis-inherited".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: a descriptor just made, owned by nobody else.
            self.file = Some(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
        let file = self.file.as_ref().expect("made above");
        let at = self.len;
        file.write_all_at(bytes, at).map_err(|e| format!("memfd: {e}"))?;
        self.len = (at + len).next_multiple_of(stasis_image::PAGE_SIZE);
        Ok(MemoryPiece { image: CUT, addr, len, file_offset: at, stored_len: len, compression: Compression::None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::{Chunk, Region};

    #[test]
    fn pieces_are_cut_to_the_reference() {
        let chunk = |offset, len, file_offset| Chunk {
            kind: ChunkKind::Memory { region: 0, offset },
            file_offset,
            len,
            checksum: 0,
            compression: Compression::None,
            data_len: len,
        };
        let older = ProcessMeta {
            regions: vec![Region { start: 0x10000, end: 0x20000, ..Default::default() }],
            chunks: vec![chunk(0, 0x3000, 0x1000), chunk(0x5000, 0x1000, 0x4000)],
            ..Default::default()
        };
        let p: Vec<MemoryPiece> = pieces_within(&older, 2, 0x11000, 0x16000)
            .into_iter()
            .map(|p| match p {
                Piece::Whole(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].addr, p[0].len, p[0].file_offset), (0x11000, 0x2000, 0x2000));
        assert_eq!((p[1].addr, p[1].len, p[1].file_offset, p[1].image), (0x15000, 0x1000, 0x4000, 2));
        assert!(pieces_within(&older, 1, 0x20000, 0x30000).is_empty());
        // A compressed chunk is taken whole, or cut here.
        let mut older = older;
        older.chunks[0].compression = Compression::Lz4;
        older.chunks[0].len = 0x100;
        let p = pieces_within(&older, 2, 0x10000, 0x16000);
        assert!(matches!(&p[0], Piece::Whole(w) if w.stored_len == 0x100 && w.len == 0x3000), "{p:?}");
        let p = pieces_within(&older, 2, 0x11000, 0x12000);
        assert_eq!(p, [Piece::PartOf { chunk: 0, addr: 0x11000, len: 0x1000 }]);
    }
}
