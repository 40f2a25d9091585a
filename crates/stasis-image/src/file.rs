use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Chunk, ChunkKind, ProcessMeta, Result};

/// The fixed header at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub version: u32,
    pub payload_offset: u64,
    pub payload_len: u64,
    pub meta_offset: u64,
    pub meta_len: u64,
    pub meta_checksum: u64,
}

/// Writes one image: chunks first, then `finish` writes metadata and header.
pub struct ImageWriter {
    _file: File,
    _path: PathBuf,
    _chunks: Vec<Chunk>,
}

impl ImageWriter {
    /// Creates `path` (mode 0600, must not exist).
    pub fn create(path: &Path) -> Result<Self> {
        let _ = path;
        todo!()
    }

    /// Appends `data` as one chunk starting on a page boundary.
    pub fn append_chunk(&mut self, kind: ChunkKind, data: &[u8]) -> Result<Chunk> {
        let _ = (kind, data);
        todo!()
    }

    /// Writes the metadata (with the chunks appended so far), then the
    /// header, then fsyncs. Returns the file's size.
    pub fn finish(self, meta: ProcessMeta) -> Result<u64> {
        let _ = meta;
        todo!()
    }
}

/// An image opened for reading, header and metadata already checked.
pub struct ImageReader {
    _file: File,
}

impl ImageReader {
    pub fn open(path: &Path) -> Result<Self> {
        let _ = path;
        todo!()
    }
}

/// Parses a whole image held in memory (for fuzzing and tests).
pub fn parse_image(bytes: &[u8]) -> Result<(Header, ProcessMeta)> {
    let _ = bytes;
    todo!()
}
