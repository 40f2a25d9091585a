//! Image files: the header, chunk payload and metadata described in lib.rs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::{Chunk, ChunkKind, Error, MAGIC, MAX_META_LEN, PAGE_SIZE, ProcessMeta, Result, VERSION};

const HEADER_LEN: usize = 64;

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

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.payload_offset.to_le_bytes());
        h[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.meta_offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.meta_len.to_le_bytes());
        h[48..56].copy_from_slice(&self.meta_checksum.to_le_bytes());
        let sum = xxh3_64(&h[..56]);
        h[56..64].copy_from_slice(&sum.to_le_bytes());
        h
    }

    fn decode(h: &[u8], path: &Path) -> Result<Header> {
        if h.len() < HEADER_LEN || h[0..8] != MAGIC {
            return Err(Error::NotAnImage { path: path.into() });
        }
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion { path: path.into(), version });
        }
        if u64_at(56) != xxh3_64(&h[..56]) || u32_at(12) as usize != HEADER_LEN {
            return Err(Error::Checksum { path: path.into(), what: "the header".into() });
        }
        let hd = Header {
            version,
            payload_offset: u64_at(16),
            payload_len: u64_at(24),
            meta_offset: u64_at(32),
            meta_len: u64_at(40),
            meta_checksum: u64_at(48),
        };
        if hd.meta_len > MAX_META_LEN || hd.payload_offset != PAGE_SIZE {
            return Err(Error::Corrupt { path: path.into(), what: "header fields out of range".into() });
        }
        Ok(hd)
    }
}

/// Writes one image: chunks first, then `finish` writes metadata and header.
pub struct ImageWriter {
    file: File,
    path: PathBuf,
    pos: u64,
    chunks: Vec<Chunk>,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { path: path.into(), op, source }
}

impl ImageWriter {
    /// Creates `path` (mode 0600, must not exist).
    pub fn create(path: &Path) -> Result<Self> {
        let mut file = File::options()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path, "create"))?;
        // A zero page where the header will go: a writer that dies leaves
        // a file without a valid header.
        file.write_all(&[0u8; PAGE_SIZE as usize]).map_err(io(path, "write"))?;
        Ok(ImageWriter { file, path: path.into(), pos: PAGE_SIZE, chunks: Vec::new() })
    }

    /// Appends `data` as one chunk starting on a page boundary.
    pub fn append_chunk(&mut self, kind: ChunkKind, data: &[u8]) -> Result<Chunk> {
        let checksum = xxh3_64(data);
        self.append_chunk_checksummed(kind, data, checksum)
    }

    /// Same, for a caller that computed the xxh3-64 of `data` already.
    pub fn append_chunk_checksummed(&mut self, kind: ChunkKind, data: &[u8], checksum: u64) -> Result<Chunk> {
        let start = self.pos.next_multiple_of(PAGE_SIZE);
        if start > self.pos {
            self.file.seek(SeekFrom::Start(start)).map_err(io(&self.path, "seek"))?;
        }
        self.file.write_all(data).map_err(io(&self.path, "write"))?;
        self.pos = start + data.len() as u64;
        let c = Chunk { kind, file_offset: start, len: data.len() as u64, checksum };
        self.chunks.push(c);
        Ok(c)
    }

    /// Writes the metadata (with the chunks appended so far), then the
    /// header, then fsyncs. Returns the file's size.
    pub fn finish(mut self, mut meta: ProcessMeta) -> Result<u64> {
        meta.chunks = std::mem::take(&mut self.chunks);
        let bytes = crate::encode_meta(&meta);
        let meta_offset = self.pos.next_multiple_of(8);
        self.file.write_all_at(&bytes, meta_offset).map_err(io(&self.path, "write"))?;
        let header = Header {
            version: VERSION,
            payload_offset: PAGE_SIZE,
            payload_len: meta_offset - PAGE_SIZE,
            meta_offset,
            meta_len: bytes.len() as u64,
            meta_checksum: xxh3_64(&bytes),
        };
        // Payload and metadata reach the disk before the header that makes
        // them valid.
        self.file.sync_data().map_err(io(&self.path, "fsync"))?;
        self.file.write_all_at(&header.encode(), 0).map_err(io(&self.path, "write"))?;
        self.file.sync_all().map_err(io(&self.path, "fsync"))?;
        Ok(meta_offset + bytes.len() as u64)
    }
}

/// An image opened for reading, header and metadata already checked.
pub struct ImageReader {
    file: File,
    path: PathBuf,
    header: Header,
    meta: ProcessMeta,
}

/// Checks the header, reads and checks the metadata, given a way to read.
fn load(path: &Path, len: u64, read_at: &mut dyn FnMut(&mut [u8], u64) -> Result<()>) -> Result<(Header, ProcessMeta)> {
    let mut h = [0u8; HEADER_LEN];
    if len < HEADER_LEN as u64 {
        read_at(&mut h[..len as usize], 0)?;
        if h[..len as usize] != MAGIC[..(len as usize).min(8)] {
            return Err(Error::NotAnImage { path: path.into() });
        }
        return Err(Error::Truncated { path: path.into(), expected: PAGE_SIZE, actual: len });
    }
    read_at(&mut h, 0)?;
    let header = Header::decode(&h, path)?;
    let end = header.meta_offset.saturating_add(header.meta_len);
    if end > len {
        return Err(Error::Truncated { path: path.into(), expected: end, actual: len });
    }
    let mut meta_bytes = vec![0u8; header.meta_len as usize];
    read_at(&mut meta_bytes, header.meta_offset)?;
    if xxh3_64(&meta_bytes) != header.meta_checksum {
        return Err(Error::Checksum { path: path.into(), what: "the metadata".into() });
    }
    let meta = crate::decode_meta(&meta_bytes).map_err(|e| e.at(path))?;
    let payload_end = header.payload_offset + header.payload_len;
    if header.meta_offset < payload_end {
        return Err(Error::Corrupt { path: path.into(), what: "metadata overlaps the payload".into() });
    }
    for (i, c) in meta.chunks.iter().enumerate() {
        let inside = c.file_offset >= header.payload_offset && c.file_offset.saturating_add(c.len) <= payload_end;
        let aligned = !matches!(c.kind, ChunkKind::Memory { .. }) || c.file_offset % PAGE_SIZE == 0;
        if !inside || !aligned {
            return Err(Error::Corrupt { path: path.into(), what: format!("chunk {i} lies outside the payload") });
        }
    }
    Ok((header, meta))
}

impl ImageReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io(path, "open"))?;
        let md = file.metadata().map_err(io(path, "stat"))?;
        if !md.is_file() {
            return Err(Error::NotAnImage { path: path.into() });
        }
        let (header, meta) =
            load(path, md.len(), &mut |buf, off| file.read_exact_at(buf, off).map_err(io(path, "read")))?;
        Ok(ImageReader { file, path: path.into(), header, meta })
    }

    pub fn meta(&self) -> &ProcessMeta {
        &self.meta
    }

    pub fn into_meta(self) -> ProcessMeta {
        self.meta
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open image, for reading chunks directly (restart maps from it).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn describe(&self, c: &Chunk) -> String {
        let i = self.meta.chunks.iter().position(|x| x == c).unwrap_or(usize::MAX);
        match c.kind {
            ChunkKind::Memory { region, offset } => {
                let start = self.meta.regions.get(region as usize).map_or(0, |r| r.start);
                format!("memory chunk {i} (at {:#x}, {} bytes)", start + offset, c.len)
            }
            ChunkKind::FileContents { fd_index, .. } => format!("file contents chunk {i} (descriptor #{fd_index})"),
        }
    }

    /// Reads a chunk into `buf` (exactly `chunk.len` bytes) and checks it.
    pub fn read_chunk(&self, chunk: &Chunk, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, chunk.file_offset).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Truncated {
                path: self.path.clone(),
                expected: chunk.file_offset + chunk.len,
                actual: self.file.metadata().map(|m| m.len()).unwrap_or(0),
            },
            _ => Error::Io { path: self.path.clone(), op: "read", source: e },
        })?;
        if xxh3_64(buf) != chunk.checksum {
            return Err(Error::Checksum { path: self.path.clone(), what: self.describe(chunk) });
        }
        Ok(())
    }

    pub fn chunk_data(&self, chunk: &Chunk) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; chunk.len as usize];
        self.read_chunk(chunk, &mut buf)?;
        Ok(buf)
    }

    /// Reads every chunk and checks its checksum, with bounded memory.
    pub fn verify_payload(&self) -> Result<()> {
        let mut buf = Vec::new();
        for c in &self.meta.chunks {
            buf.resize(c.len as usize, 0);
            self.read_chunk(c, &mut buf)?;
        }
        Ok(())
    }
}

/// Parses a whole image held in memory, chunks checked too (for fuzzing
/// and tests).
pub fn parse_image(bytes: &[u8]) -> Result<(Header, ProcessMeta)> {
    let path = Path::new("<memory>");
    let (header, meta) = load(path, bytes.len() as u64, &mut |buf, off| {
        let start = off as usize;
        let src = bytes.get(start..start + buf.len()).ok_or(Error::Truncated {
            path: path.into(),
            expected: off + buf.len() as u64,
            actual: bytes.len() as u64,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    })?;
    for (i, c) in meta.chunks.iter().enumerate() {
        let data = &bytes[c.file_offset as usize..(c.file_offset + c.len) as usize];
        if xxh3_64(data) != c.checksum {
            return Err(Error::Checksum { path: path.into(), what: format!("chunk {i}") });
        }
    }
    Ok((header, meta))
}

/// Reads a whole small file (used by tests and tools).
#[allow(dead_code)]
pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut v)).map_err(io(path, "read"))?;
    Ok(v)
}
