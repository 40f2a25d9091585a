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
    for g in generations {
        let (file, older) = older_image(meta, own, g)?;
        files.push(file);
        let index = files.len() - 1;
        for r in meta.inherited.iter().filter(|r| r.generation == g) {
            let region = &meta.regions[r.region as usize];
            let (from, to) = (region.start + r.offset, region.start + r.offset + r.len);
            pieces.extend(
                pieces_within(older.meta(), index, from, to)
                    .map_err(|e| err(format!("{}: generation {g}'s image of pid {}: {e}", own.display(), meta.pid)))?,
            );
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

/// The pieces of `older`'s memory chunks inside [from, to). A compressed
/// chunk is taken only whole (the writer leaves incremental checkpoints
/// uncompressed: docs/image-format.md).
fn pieces_within(older: &ProcessMeta, image: usize, from: u64, to: u64) -> Result<Vec<MemoryPiece>, String> {
    let mut out = Vec::new();
    for c in &older.chunks {
        let ChunkKind::Memory { region, offset } = c.kind else { continue };
        let start = older.regions[region as usize].start + offset;
        let end = start + c.data_len;
        let (a, b) = (start.max(from), end.min(to));
        if a >= b {
            continue;
        }
        if c.compression != Compression::None {
            if (a, b) != (start, end) {
                return Err(format!("a compressed chunk at {start:#x} lies partly outside {from:#x}-{to:#x}"));
            }
            out.push(MemoryPiece {
                image,
                addr: start,
                len: c.data_len,
                file_offset: c.file_offset,
                stored_len: c.len,
                compression: c.compression,
            });
            continue;
        }
        out.push(MemoryPiece {
            image,
            addr: a,
            len: b - a,
            file_offset: c.file_offset + (a - start),
            stored_len: b - a,
            compression: Compression::None,
        });
    }
    Ok(out)
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
        let p = pieces_within(&older, 2, 0x11000, 0x16000).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].addr, p[0].len, p[0].file_offset), (0x11000, 0x2000, 0x2000));
        assert_eq!((p[1].addr, p[1].len, p[1].file_offset, p[1].image), (0x15000, 0x1000, 0x4000, 2));
        assert!(pieces_within(&older, 1, 0x20000, 0x30000).unwrap().is_empty());
    }
}
