//! Image files: the header, chunk payload and metadata described in lib.rs.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use crate::{
    Chunk, ChunkKind, Compression, Digest, Error, MAGIC, MAX_CHUNK_LEN, MAX_META_LEN, OLDEST_VERSION, PAGE_SIZE,
    ProcessMeta, Result, VERSION,
};

/// Length of the header's fields (with their checksum).
const HEADER_LEN: usize = 64;
/// The header checksum covers everything before it.
const HEADER_SUMMED: usize = 56;
/// What a version-8 image starts with, before the header: DMTCP's
/// signature prefix (tools and scripts written for DMTCP, its test suite
/// among them, recognise a checkpoint image by it), then whose image it
/// is. Zero-padded to `SIGNATURE_LEN`.
pub const SIGNATURE: [u8; SIGNATURE_LEN] = *b"DMTCP_CHECKPOINT_IMAGE_STASIS\n\0\0";
/// Where a version-8 header starts: after the signature.
const SIGNATURE_LEN: usize = 32;
/// The first version that starts with `SIGNATURE`.
const SIGNED_VERSION: u32 = 8;
/// The most a header takes at the start of the file (signature included).
const HEADER_MAX: usize = SIGNATURE_LEN + HEADER_LEN;
/// Block size for checking chunks: memory stays bounded whatever their size.
const VERIFY_BLOCK: usize = 1 << 20;

/// The fixed header at offset 0 (after the signature from version 8 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub version: u32,
    pub payload_offset: u64,
    pub payload_len: u64,
    pub meta_offset: u64,
    pub meta_len: u64,
    pub meta_checksum: u64,
}

/// Where the header's fields start in an image of `version`.
fn fields_at(version: u32) -> usize {
    if version >= SIGNED_VERSION { SIGNATURE_LEN } else { 0 }
}

impl Header {
    /// The most the encoded header takes; the rest of the first page is zero.
    pub const LEN: u64 = HEADER_MAX as u64;

    /// Where the metadata ends: the length of a complete image file.
    pub fn file_len(&self) -> u64 {
        self.meta_offset.saturating_add(self.meta_len)
    }

    /// How many bytes at offset 0 the header of this version takes.
    pub fn encoded_len(&self) -> usize {
        fields_at(self.version) + HEADER_LEN
    }

    /// The bytes at offset 0 (`encoded_len()` of them; zero after):
    /// from version 8 the signature, then the fields and their checksum.
    pub fn encode(&self) -> [u8; HEADER_MAX] {
        let mut out = [0u8; HEADER_MAX];
        let at = fields_at(self.version);
        if at > 0 {
            out[..SIGNATURE_LEN].copy_from_slice(&SIGNATURE);
        }
        let h = &mut out[at..at + HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.payload_offset.to_le_bytes());
        h[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.meta_offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.meta_len.to_le_bytes());
        h[48..56].copy_from_slice(&self.meta_checksum.to_le_bytes());
        let sum = xxh3_64(&h[..HEADER_SUMMED]);
        h[HEADER_SUMMED..].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes and checks the header that `h` (the start of the file)
    /// starts with. The checks run in the order that gives the most useful
    /// message: a foreign file is "not an image" and a newer image is
    /// "unsupported version" (a later format may lay out or checksum its
    /// header differently), before any talk of corruption.
    pub fn decode(h: &[u8], path: &Path) -> Result<Header> {
        let actual = h.len() as u64;
        let n = h.len().min(SIGNATURE_LEN);
        let signed = n > 0 && h[..n] == SIGNATURE[..n];
        let h = if signed { h.get(SIGNATURE_LEN..).unwrap_or_default() } else { h };
        let Some(h) = h.get(..HEADER_LEN) else {
            let magic_prefix = h.len() <= MAGIC.len() && h == &MAGIC[..h.len()] || h.starts_with(&MAGIC);
            return Err(if magic_prefix || signed {
                Error::Truncated { path: path.into(), expected: PAGE_SIZE, actual }
            } else {
                Error::NotAnImage { path: path.into() }
            });
        };
        if h[0..8] != MAGIC {
            return Err(Error::NotAnImage { path: path.into() });
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| (u64::from(u32_at(o + 4)) << 32) | u64::from(u32_at(o));
        let version = u32_at(8);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion { path: path.into(), version });
        }
        if u64_at(HEADER_SUMMED) != xxh3_64(&h[..HEADER_SUMMED]) {
            return Err(Error::Checksum { path: path.into(), what: "the header".into() });
        }
        let corrupt = |what: String| Error::Corrupt { path: path.into(), what };
        if signed != (version >= SIGNED_VERSION) {
            return Err(corrupt(if signed {
                format!("a version {version} header after the signature of version {SIGNED_VERSION} and later")
            } else {
                format!("a version {version} header without the signature it starts with")
            }));
        }
        let header_len = u32_at(12);
        if header_len as usize != HEADER_LEN {
            return Err(corrupt(format!("header length {header_len} (expected {HEADER_LEN})")));
        }
        let hd = Header {
            version,
            payload_offset: u64_at(16),
            payload_len: u64_at(24),
            meta_offset: u64_at(32),
            meta_len: u64_at(40),
            meta_checksum: u64_at(48),
        };
        if hd.payload_offset != PAGE_SIZE {
            return Err(corrupt(format!("payload offset {} (expected {PAGE_SIZE})", hd.payload_offset)));
        }
        if hd.meta_len > MAX_META_LEN {
            return Err(corrupt(format!("metadata length {} is over the limit of {MAX_META_LEN}", hd.meta_len)));
        }
        let payload_end = hd.payload_offset.checked_add(hd.payload_len);
        if payload_end.is_none_or(|end| end > hd.meta_offset) || hd.meta_offset.checked_add(hd.meta_len).is_none() {
            return Err(corrupt(format!(
                "payload ({} bytes at {}) and metadata ({} bytes at {}) overlap",
                hd.payload_len, hd.payload_offset, hd.meta_len, hd.meta_offset
            )));
        }
        Ok(hd)
    }

    fn payload_end(&self) -> u64 {
        // decode() made sure this does not overflow.
        self.payload_offset + self.payload_len
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { path: path.into(), op, source }
}

/// Writes one image: chunks first, then `finish` writes metadata and header.
///
/// Dropping a writer without `finish` leaves a file whose first page is
/// zero, which every reader refuses.
pub struct ImageWriter {
    /// Chunks appended from now on are compressed when that pays.
    compression: Compression,
    /// Where compressed chunks are built.
    scratch: Vec<u8>,
    /// The zstd context, made on first use (it allocates through libc:
    /// the agent's image writer compresses with its own, see
    /// `append_prepared`).
    zstd: Option<zstd_safe::CCtx<'static>>,
    file: File,
    path: PathBuf,
    /// End of the bytes written so far.
    pos: u64,
    chunks: Vec<Chunk>,
    /// A write failed: refuse more.
    failed: bool,
}

/// zstd level for chunks: the fastest that still compresses (`zstd -1`).
pub const ZSTD_LEVEL: i32 = 1;

/// Whether a chunk of `data_len` bytes is stored compressed in `stored_len`
/// bytes: only when that saves at least an eighth, so that random data
/// stays as it is, page aligned and cheaper to restore.
pub fn compression_pays(stored_len: usize, data_len: usize) -> bool {
    stored_len < data_len - data_len / 8
}

/// Chunks shorter than this are never compressed.
pub const MIN_COMPRESSED: usize = 512;

/// Decompresses one stored chunk into `out`, which must be exactly the
/// chunk's decompressed length (`Chunk::data_len`); anything else, or
/// bytes that do not decompress, is an error naming the problem. For
/// readers of chunks outside `ImageReader` (restart decompresses in
/// parallel with this).
pub fn decompress_chunk(compression: Compression, stored: &[u8], out: &mut [u8]) -> Result<()> {
    let bad = |what: String| Error::Corrupt { path: PathBuf::from("<chunk>"), what };
    let n = match compression {
        Compression::None => {
            if stored.len() != out.len() {
                return Err(bad(format!("{} stored bytes for {} bytes", stored.len(), out.len())));
            }
            out.copy_from_slice(stored);
            return Ok(());
        }
        Compression::Lz4 => lz4_flex::block::decompress_into(stored, out).map_err(|e| bad(format!("lz4: {e}")))?,
        Compression::Zstd => zstd_safe::decompress(out, stored)
            .map_err(|code| bad(format!("zstd: {}", zstd_safe::get_error_name(code))))?,
    };
    if n != out.len() {
        return Err(bad(format!("{} decompresses to {n} bytes, not {}", compression.name(), out.len())));
    }
    Ok(())
}

impl ImageWriter {
    /// Creates `path` (mode 0600, must not exist, not even as a link).
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io(path, "create"))?;
        Self::start(file, path)
    }

    /// Creates `name` in the open directory `dir` (mode 0600, must not
    /// exist, not even as a link).
    pub fn create_in(dir: &crate::Dir, name: &str) -> Result<Self> {
        let path = dir.path().join(name);
        let file = dir.create_file(name, 0o600).map_err(io(&path, "create"))?;
        Self::start(file, &path)
    }

    fn start(mut file: File, path: &Path) -> Result<Self> {
        // A zero page where the header will go: a writer that dies leaves
        // a file without a valid header.
        file.write_all(&[0u8; PAGE_SIZE as usize]).map_err(io(path, "write"))?;
        Ok(ImageWriter {
            compression: Compression::None,
            scratch: Vec::new(),
            zstd: None,
            file,
            path: path.into(),
            pos: PAGE_SIZE,
            chunks: Vec::new(),
            failed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chunks appended so far.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    fn usable(&self) -> Result<()> {
        if self.failed {
            let source = io::Error::other("an earlier write to this image failed");
            return Err(Error::Io { path: self.path.clone(), op: "write", source });
        }
        Ok(())
    }

    /// Appends `data` as one chunk starting on a page boundary.
    pub fn append_chunk(&mut self, kind: ChunkKind, data: &[u8]) -> Result<Chunk> {
        if self.compression != Compression::None && data.len() >= MIN_COMPRESSED && data.len() as u64 <= MAX_CHUNK_LEN {
            let mut scratch = std::mem::take(&mut self.scratch);
            let n = self.compress(data, &mut scratch);
            let result = match n {
                Some(n) if compression_pays(n, data.len()) => {
                    let stored = &scratch[..n];
                    Some(self.append_prepared(kind, stored, xxh3_64(stored), self.compression, data.len() as u64))
                }
                _ => None,
            };
            self.scratch = scratch;
            if let Some(r) = result {
                return r;
            }
        }
        let checksum = xxh3_64(data);
        self.append_chunk_checksummed(kind, data, checksum)
    }

    /// `data` compressed into `out` (resized to fit), or None if it fails.
    fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        match self.compression {
            Compression::None => None,
            Compression::Lz4 => {
                out.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
                lz4_flex::block::compress_into(data, out).ok()
            }
            Compression::Zstd => {
                out.resize(zstd_safe::compress_bound(data.len()), 0);
                let cctx = self.zstd.get_or_insert_with(zstd_safe::CCtx::create);
                cctx.compress(&mut out[..], data, ZSTD_LEVEL).ok()
            }
        }
    }

    /// Compresses the chunks appended from now on, where that pays.
    pub fn set_compression(&mut self, c: Compression) {
        self.compression = c;
    }

    /// The image file, for writers that fill the payload themselves (in
    /// parallel, at offsets from `reserve`), then `adopt` what they wrote.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the payload written so far ends: writers that fill the
    /// payload themselves take their offsets from here on (an uncompressed
    /// chunk at the next page boundary).
    pub fn next_offset(&self) -> u64 {
        self.pos
    }

    /// Records chunks written to the file by someone else, between
    /// `next_offset()` and `end`, which becomes the payload's end so far.
    pub fn adopt(&mut self, chunks: &[Chunk], end: u64) -> Result<()> {
        self.usable()?;
        let from = self.next_offset();
        for c in chunks {
            let inside = c.file_offset >= from && c.file_offset.saturating_add(c.len) <= end;
            if !inside || (c.compression == Compression::None && c.file_offset % PAGE_SIZE != 0) {
                let what = format!("a chunk written at {} ({} bytes), outside {from}..{end}", c.file_offset, c.len);
                return Err(Error::Invalid { path: self.path.clone(), what });
            }
        }
        self.pos = self.pos.max(end);
        self.chunks.extend_from_slice(chunks);
        Ok(())
    }

    /// Same, for a caller that computed the xxh3-64 of `data` already.
    pub fn append_chunk_checksummed(&mut self, kind: ChunkKind, data: &[u8], checksum: u64) -> Result<Chunk> {
        self.append_prepared(kind, data, checksum, Compression::None, data.len() as u64)
    }

    /// Appends bytes as they are to be stored: compressed by the caller
    /// (`compression`, holding `data_len` bytes once decompressed), with
    /// `checksum` the xxh3-64 of `stored`.
    pub fn append_prepared(
        &mut self,
        kind: ChunkKind,
        stored: &[u8],
        checksum: u64,
        compression: Compression,
        data_len: u64,
    ) -> Result<Chunk> {
        self.usable()?;
        // Bytes as they are start on a page boundary, so that a restart
        // could map them (skipping to it leaves a hole, which reads as
        // zeros and costs no write); compressed ones follow on directly.
        let start = if compression == Compression::None { self.pos.next_multiple_of(PAGE_SIZE) } else { self.pos };
        if let Err(e) = self.file.write_all_at(stored, start) {
            self.failed = true;
            return Err(io(&self.path, "write")(e));
        }
        self.pos = start + stored.len() as u64;
        let c = Chunk { kind, file_offset: start, len: stored.len() as u64, checksum, compression, data_len };
        self.chunks.push(c);
        Ok(c)
    }

    /// Writes the metadata (with the chunks appended so far), then the
    /// header, then fsyncs. Returns the file's size. The metadata is
    /// checked as a reader would check it first, so that an image that
    /// could not be restarted fails now rather than at restart.
    pub fn finish(mut self, mut meta: ProcessMeta) -> Result<u64> {
        self.usable()?;
        meta.chunks = std::mem::take(&mut self.chunks);
        let invalid = |what: String| Error::Invalid { path: self.path.clone(), what };
        crate::codec::validate(&meta).map_err(|e| match e {
            Error::Corrupt { what, .. } => invalid(what),
            other => other,
        })?;
        let bytes = crate::encode_meta(&meta);
        if bytes.len() as u64 > MAX_META_LEN {
            return Err(invalid(format!("{} bytes of metadata, over the limit of {MAX_META_LEN}", bytes.len())));
        }
        let meta_offset = self.pos.next_multiple_of(8);
        let header = Header {
            version: VERSION,
            payload_offset: PAGE_SIZE,
            payload_len: meta_offset - PAGE_SIZE,
            meta_offset,
            meta_len: bytes.len() as u64,
            meta_checksum: xxh3_64(&bytes),
        };
        self.file.write_all_at(&bytes, meta_offset).map_err(io(&self.path, "write"))?;
        // Payload and metadata reach the disk before the header that makes
        // them valid.
        self.file.sync_data().map_err(io(&self.path, "fsync"))?;
        self.file.write_all_at(&header.encode(), 0).map_err(io(&self.path, "write"))?;
        if let Err(e) = self.file.sync_all() {
            // Failure must not leave a valid-looking image; best effort.
            let _ = self.file.write_all_at(&[0u8; HEADER_MAX], 0);
            return Err(io(&self.path, "fsync")(e));
        }
        Ok(header.file_len())
    }
}

/// An image opened for reading, header and metadata already checked.
#[derive(Debug)]
pub struct ImageReader {
    file: File,
    path: PathBuf,
    header: Header,
    meta: ProcessMeta,
    digest: Digest,
    len: u64,
}

/// Checks the header, reads and checks the metadata and where the chunks
/// lie, given the file's length and a way to read from it.
fn load(
    path: &Path,
    len: u64,
    read_at: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
) -> Result<(Header, ProcessMeta, Digest)> {
    let mut h = [0u8; HEADER_MAX];
    let head = &mut h[..len.min(HEADER_MAX as u64) as usize];
    read_at(head, 0)?;
    let header = Header::decode(head, path)?;
    // What the digest covers: the header as its version lays it out.
    let h = &h[..header.encoded_len()];
    let end = header.file_len();
    if end > len {
        return Err(Error::Truncated { path: path.into(), expected: end, actual: len });
    }
    // Bounded: decode() capped meta_len, and the file holds that many bytes.
    let mut meta_bytes = vec![0u8; header.meta_len as usize];
    read_at(&mut meta_bytes, header.meta_offset)?;
    if xxh3_64(&meta_bytes) != header.meta_checksum {
        return Err(Error::Checksum { path: path.into(), what: "the metadata".into() });
    }
    let meta = crate::codec::decode_meta_version(&meta_bytes, header.version).map_err(|e| e.at(path))?;
    let digest = Digest::of(h, &meta_bytes);
    for (i, c) in meta.chunks.iter().enumerate() {
        let inside =
            c.file_offset >= header.payload_offset && c.file_offset.saturating_add(c.len) <= header.payload_end();
        if !inside {
            return Err(Error::Corrupt {
                path: path.into(),
                what: format!("chunk {i} ({} bytes at {}) lies outside the payload", c.len, c.file_offset),
            });
        }
        let mappable = c.compression == Compression::None && matches!(c.kind, ChunkKind::Memory { .. });
        if mappable && c.file_offset % PAGE_SIZE != 0 {
            return Err(Error::Corrupt {
                path: path.into(),
                what: format!("memory chunk {i} starts at {}, not on a page boundary", c.file_offset),
            });
        }
    }
    Ok((header, meta, digest))
}

/// Names a chunk in messages: its index, and what it holds.
fn describe(meta: &ProcessMeta, c: &Chunk) -> String {
    let index = meta.chunks.iter().position(|x| x == c).map_or_else(|| "?".into(), |i| i.to_string());
    let index = match c.compression {
        Compression::None => index,
        other => format!("{index} ({}, {} bytes stored)", other.name(), c.len),
    };
    match c.kind {
        ChunkKind::Memory { region, offset } => match meta.regions.get(region as usize) {
            Some(r) => format!(
                "memory chunk {index} (region {:#x}-{:#x}, {} bytes at {:#x})",
                r.start,
                r.end,
                c.data_len,
                r.start.saturating_add(offset)
            ),
            None => format!("memory chunk {index} (region {region}, {} bytes)", c.data_len),
        },
        ChunkKind::FileContents { fd_index, offset } => {
            let fd = meta.fds.get(fd_index as usize).map_or_else(|| format!("#{fd_index}"), |f| f.fd.to_string());
            format!("file contents chunk {index} (descriptor {fd}, {} bytes at offset {offset})", c.data_len)
        }
    }
}

impl ImageReader {
    /// Opens an image and checks its header, its metadata and where its
    /// chunks lie; the chunks' contents are checked as they are read.
    pub fn open(path: &Path) -> Result<Self> {
        // Checked before opening: opening a FIFO would block.
        let md = std::fs::metadata(path).map_err(io(path, "open"))?;
        if !md.is_file() {
            return Err(io(path, "open")(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let file = File::open(path).map_err(io(path, "open"))?;
        Self::from_file(file, path)
    }

    /// Checks an image already open (a regular file), named `path` in
    /// messages.
    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(io(path, "stat"))?.len();
        let (header, meta, digest) = load(path, len, &mut |buf, off| read_exact_at(&file, path, buf, off))?;
        Ok(ImageReader { file, path: path.into(), header, meta, digest, len })
    }

    /// The SHA-256 of the header and metadata, as a MANIFEST lists it.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The file's length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    /// A chunk of this image lies inside the payload and decompresses to
    /// at most MAX_CHUNK_LEN (open() checked); refuse to allocate for any
    /// other a caller hands in.
    fn check_bounds(&self, chunk: &Chunk) -> Result<()> {
        let inside = chunk.file_offset >= self.header.payload_offset
            && chunk.file_offset.saturating_add(chunk.len) <= self.header.payload_end();
        let sized = chunk.compression == Compression::None || chunk.data_len <= MAX_CHUNK_LEN;
        if !inside || !sized {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "chunk of {} bytes ({} stored) at {} lies outside the payload",
                    chunk.data_len, chunk.len, chunk.file_offset
                ),
            });
        }
        Ok(())
    }

    /// Reads a chunk into `buf` (exactly `chunk.data_len` bytes), checked
    /// and decompressed.
    pub fn read_chunk(&self, chunk: &Chunk, buf: &mut [u8]) -> Result<()> {
        self.check_bounds(chunk)?;
        if buf.len() as u64 != chunk.data_len {
            let msg = format!("a {}-byte buffer for a {}-byte chunk", buf.len(), chunk.data_len);
            return Err(io(&self.path, "read")(io::Error::new(io::ErrorKind::InvalidInput, msg)));
        }
        if chunk.compression == Compression::None {
            read_exact_at(&self.file, &self.path, buf, chunk.file_offset)?;
            if xxh3_64(buf) != chunk.checksum {
                return Err(Error::Checksum { path: self.path.clone(), what: describe(&self.meta, chunk) });
            }
            return Ok(());
        }
        let mut stored = vec![0u8; chunk.len as usize];
        read_exact_at(&self.file, &self.path, &mut stored, chunk.file_offset)?;
        if xxh3_64(&stored) != chunk.checksum {
            return Err(Error::Checksum { path: self.path.clone(), what: describe(&self.meta, chunk) });
        }
        decompress_chunk(chunk.compression, &stored, buf).map_err(|e| self.undecompressible(chunk, e))
    }

    fn undecompressible(&self, chunk: &Chunk, e: Error) -> Error {
        undecompressible(&self.path, &self.meta, chunk, e)
    }

    /// A chunk's bytes, checked.
    pub fn chunk_data(&self, chunk: &Chunk) -> Result<Vec<u8>> {
        self.check_bounds(chunk)?;
        let mut buf = vec![0u8; chunk.data_len as usize];
        self.read_chunk(chunk, &mut buf)?;
        Ok(buf)
    }

    /// Reads every chunk and checks its checksum, in blocks of at most
    /// 1 MiB whatever the chunks' sizes.
    pub fn verify_payload(&self) -> Result<()> {
        let mut buf = vec![0u8; VERIFY_BLOCK];
        (0..self.meta.chunks.len()).try_for_each(|i| verify_chunk(&self.file, &self.path, &self.meta, i, &mut buf))
    }
}

/// Checks the stored bytes of chunk `index` of `meta`, in the image `file`
/// at `path`, against the chunk's checksum, reading them in blocks of
/// `buf`'s length (not empty). Restart's background verifier checks
/// chunks one by one through this too.
pub fn verify_chunk(file: &File, path: &Path, meta: &ProcessMeta, index: usize, buf: &mut [u8]) -> Result<()> {
    let c = &meta.chunks[index];
    let mut hasher = Xxh3Default::new();
    let mut done = 0u64;
    while done < c.len {
        let n = (c.len - done).min(buf.len() as u64) as usize;
        read_exact_at(file, path, &mut buf[..n], c.file_offset + done)?;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    if hasher.digest() != c.checksum {
        return Err(Error::Checksum { path: path.into(), what: describe(meta, c) });
    }
    Ok(())
}

/// A chunk that does not decompress, named: `memory chunk 0 (zstd, 12
/// bytes stored) ...: does not decompress (zstd: ...)`.
fn undecompressible(path: &Path, meta: &ProcessMeta, c: &Chunk, e: Error) -> Error {
    let why = match e {
        Error::Corrupt { what, .. } => what,
        other => other.to_string(),
    };
    Error::Corrupt { path: path.into(), what: format!("{} does not decompress ({why})", describe(meta, c)) }
}

/// read_exact_at, with a file that ends early reported as truncated.
fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated {
            path: path.into(),
            expected: offset.saturating_add(buf.len() as u64),
            actual: file.metadata().map_or(0, |m| m.len()),
        },
        _ => Error::Io { path: path.into(), op: "read", source: e },
    })
}

/// Parses a whole image held in memory, with every check that
/// `ImageReader::open` and `verify_payload` make, and one more: each
/// compressed chunk must decompress to its length (for fuzzing and tests;
/// a file reader leaves that to whoever reads the chunk).
pub fn parse_image(bytes: &[u8]) -> Result<(Header, ProcessMeta)> {
    parse_image_digest(bytes).map(|(h, m, _)| (h, m))
}

/// [`parse_image`], with the digest a MANIFEST lists for the image.
pub fn parse_image_digest(bytes: &[u8]) -> Result<(Header, ProcessMeta, Digest)> {
    let path = Path::new("<memory>");
    let len = bytes.len() as u64;
    let slice = |off: u64, n: u64| {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(n).ok()?)?;
        bytes.get(start..end)
    };
    let (header, meta, digest) = load(path, len, &mut |buf, off| {
        let src = slice(off, buf.len() as u64).ok_or(Error::Truncated {
            path: path.into(),
            expected: off.saturating_add(buf.len() as u64),
            actual: len,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    })?;
    for c in &meta.chunks {
        // load() checked that every chunk lies inside the bytes.
        let data = slice(c.file_offset, c.len).unwrap_or_default();
        if data.len() as u64 != c.len || xxh3_64(data) != c.checksum {
            return Err(Error::Checksum { path: path.into(), what: describe(&meta, c) });
        }
        if c.compression != Compression::None {
            // Bounded: validate() capped data_len at MAX_CHUNK_LEN.
            let mut out = vec![0u8; c.data_len as usize];
            decompress_chunk(c.compression, data, &mut out).map_err(|e| undecompressible(path, &meta, c, e))?;
        }
    }
    Ok((header, meta, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fd, FdKind, Region, Thread, UCONTEXT_LEN};

    fn meta() -> ProcessMeta {
        ProcessMeta {
            pid: 7,
            regions: vec![Region { start: 0x10000, end: 0x14000, prot: 3, ..Default::default() }],
            threads: vec![Thread { tid: 7, ucontext: vec![0; UCONTEXT_LEN], ..Default::default() }],
            fds: vec![Fd { fd: 3, cloexec: false, kind: FdKind::Agent, outside_stdio: None }],
            ..Default::default()
        }
    }

    /// An image with two memory chunks (the first shorter than a page, so
    /// the second needs padding) and one file contents chunk.
    fn image(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("t.img");
        let mut w = ImageWriter::create(&path).unwrap();
        w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[1u8; 100]).unwrap();
        w.append_chunk(ChunkKind::Memory { region: 0, offset: 8192 }, &[2u8; 8192]).unwrap();
        w.append_chunk_checksummed(ChunkKind::FileContents { fd_index: 0, offset: 0 }, b"abc", xxh3_64(b"abc"))
            .unwrap();
        let size = w.finish(meta()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        (path, bytes)
    }

    /// Rewrites the header of `bytes` with a valid checksum, so that the
    /// checks behind the checksum are reached.
    fn forge(bytes: &mut [u8], f: impl FnOnce(&mut Header)) {
        let mut h = Header::decode(&bytes[..HEADER_MAX], Path::new("x")).unwrap();
        f(&mut h);
        bytes[..HEADER_MAX].copy_from_slice(&h.encode());
    }

    fn err(bytes: &[u8]) -> String {
        parse_image(bytes).unwrap_err().to_string()
    }

    #[test]
    fn layout() {
        let t = tempfile::tempdir().unwrap();
        let (_, bytes) = image(t.path());
        let (h, m) = parse_image(&bytes).unwrap();
        // DMTCP's signature prefix, then the header.
        assert!(bytes.starts_with(b"DMTCP_CHECKPOINT_IMAGE_"));
        assert_eq!(&bytes[..SIGNATURE_LEN], b"DMTCP_CHECKPOINT_IMAGE_STASIS\n\0\0");
        assert_eq!(&bytes[SIGNATURE_LEN..SIGNATURE_LEN + 8], b"STASISIM");
        assert!(bytes[HEADER_MAX..PAGE_SIZE as usize].iter().all(|&b| b == 0));
        assert_eq!(h.payload_offset, PAGE_SIZE);
        assert_eq!(h.meta_offset % 8, 0);
        assert_eq!(h.file_len(), bytes.len() as u64);
        let offsets: Vec<u64> = m.chunks.iter().map(|c| c.file_offset).collect();
        assert_eq!(offsets, [4096, 8192, 16384]);
        // The padding after the short chunk reads as zeros.
        assert!(bytes[4096 + 100..8192].iter().all(|&b| b == 0));
        assert_eq!(&bytes[16384..16387], b"abc");
    }

    #[test]
    fn reader_reads_chunks() {
        let t = tempfile::tempdir().unwrap();
        let (path, _) = image(t.path());
        let r = ImageReader::open(&path).unwrap();
        let chunks = r.meta().chunks.clone();
        assert_eq!(r.chunk_data(&chunks[0]).unwrap(), [1u8; 100]);
        assert_eq!(r.chunk_data(&chunks[2]).unwrap(), b"abc");
        let mut small = [0u8; 2];
        assert!(r.read_chunk(&chunks[2], &mut small).unwrap_err().to_string().contains("3-byte chunk"));
        let mut bogus = chunks[2];
        bogus.len = u64::MAX;
        assert!(matches!(r.chunk_data(&bogus), Err(Error::Corrupt { .. })));
        r.verify_payload().unwrap();
        assert_eq!(r.header().file_len(), std::fs::metadata(&path).unwrap().len());
        assert_eq!(r.into_meta().pid, 7);
    }

    #[test]
    fn forged_headers_are_refused_without_panicking() {
        let t = tempfile::tempdir().unwrap();
        let (_, good) = image(t.path());
        type Forge = fn(&mut Header);
        let cases: [(&str, Forge); 6] = [
            ("overlap", |h| h.payload_len = u64::MAX),
            ("overlap", |h| h.meta_offset = 100),
            ("overlap", |h| h.meta_offset = u64::MAX),
            ("over the limit", |h| h.meta_len = MAX_META_LEN + 1),
            ("payload offset", |h| h.payload_offset = 0),
            ("truncated", |h| h.meta_len += 1),
        ];
        for (want, f) in cases {
            let mut v = good.clone();
            forge(&mut v, f);
            let e = err(&v);
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        let mut v = good.clone();
        let h = &mut v[SIGNATURE_LEN..HEADER_MAX];
        h[12] = 32;
        let sum = xxh3_64(&h[..HEADER_SUMMED]);
        h[HEADER_SUMMED..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        assert!(err(&v).contains("header length 32"));
        // A signed header must be of version 8 or later, and those are signed.
        let mut v = good.clone();
        let h = &mut v[SIGNATURE_LEN..HEADER_MAX];
        h[8..12].copy_from_slice(&7u32.to_le_bytes());
        let sum = xxh3_64(&h[..HEADER_SUMMED]);
        h[HEADER_SUMMED..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        assert!(err(&v).contains("a version 7 header after the signature"), "{}", err(&v));
        let mut v = good.clone();
        v.copy_within(SIGNATURE_LEN..HEADER_MAX, 0);
        assert!(err(&v).contains("a version 8 header without the signature"), "{}", err(&v));
    }

    #[test]
    fn version_7_images_are_read() {
        let t = tempfile::tempdir().unwrap();
        let (path, mut bytes) = image(t.path());
        let digest_of = |path: &Path| ImageReader::open(path).unwrap().digest();
        // Version 7 metadata is version 8's without its last fields: the
        // `sockets_peer_shut`, `sysv_ipc` and MAP_NORESERVE lists (empty
        // here, 4 bytes of count each) and `allow_file_overwrite` (1 byte).
        let h = Header::decode(&bytes[..HEADER_MAX], Path::new("x")).unwrap();
        let meta = &bytes[h.meta_offset as usize..(h.meta_offset + h.meta_len - 13) as usize];
        let checksum = xxh3_64(meta);
        forge(&mut bytes, |h| {
            h.version = 7;
            h.meta_len -= 13;
            h.meta_checksum = checksum;
        });
        // Version 7 starts with the header itself, and its digest covers it alone.
        assert_eq!(&bytes[..8], b"STASISIM");
        assert!(bytes[HEADER_LEN..PAGE_SIZE as usize].iter().all(|&b| b == 0));
        std::fs::write(&path, &bytes).unwrap();
        let r = ImageReader::open(&path).unwrap();
        assert_eq!(r.header().version, 7);
        assert_eq!(r.chunk_data(&r.meta().chunks[1]).unwrap(), [2u8; 8192]);
        let h = r.header();
        let meta = &bytes[h.meta_offset as usize..(h.meta_offset + h.meta_len) as usize];
        assert_eq!(digest_of(&path), Digest::of(&bytes[..HEADER_LEN], meta));
    }

    #[test]
    fn chunks_outside_the_payload_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (_, good) = image(t.path());
        let (h, mut m) = parse_image(&good).unwrap();
        let rewrite = |m: &ProcessMeta| {
            let enc = crate::encode_meta(m);
            let mut v = good[..h.meta_offset as usize].to_vec();
            v.extend_from_slice(&enc);
            forge(&mut v, |h| {
                h.meta_len = enc.len() as u64;
                h.meta_checksum = xxh3_64(&enc);
            });
            v
        };
        parse_image(&rewrite(&m)).unwrap();
        m.chunks[2].file_offset = h.meta_offset - 1;
        assert!(err(&rewrite(&m)).contains("chunk 2 (3 bytes at"), "{}", err(&rewrite(&m)));
        m.chunks[2].file_offset = 100;
        assert!(err(&rewrite(&m)).contains("outside the payload"));
        m.chunks[2].file_offset = 16384;
        m.chunks[1].file_offset = 8192 + 8;
        assert!(err(&rewrite(&m)).contains("not on a page boundary"));
    }

    #[test]
    fn compressed_chunks_that_do_not_decompress() {
        for (compression, name) in [(Compression::Lz4, "lz4"), (Compression::Zstd, "zstd")] {
            let t = tempfile::tempdir().unwrap();
            let path = t.path().join("z.img");
            let mut w = ImageWriter::create(&path).unwrap();
            w.set_compression(compression);
            let c = w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[5u8; 8192]).unwrap();
            assert_eq!(c.compression, compression);
            w.finish(meta()).unwrap();
            let good = std::fs::read(&path).unwrap();
            let (h, mut m) = parse_image(&good).unwrap();
            // Claims one byte more than the block holds; checksums all valid.
            m.chunks[0].data_len += 1;
            let enc = crate::encode_meta(&m);
            let mut v = good[..h.meta_offset as usize].to_vec();
            v.extend_from_slice(&enc);
            forge(&mut v, |h| {
                h.meta_len = enc.len() as u64;
                h.meta_checksum = xxh3_64(&enc);
            });
            let e = err(&v);
            assert!(e.contains(&format!("memory chunk 0 ({name}, ")) && e.contains("does not decompress"), "{e}");
            std::fs::write(t.path().join("y.img"), &v).unwrap();
            let r = ImageReader::open(&t.path().join("y.img")).unwrap();
            let e = r.chunk_data(&r.meta().chunks[0]).unwrap_err().to_string();
            assert!(e.contains("does not decompress"), "{e}");
            // A chunk handed in that claims more than any reader decompresses.
            let mut huge = r.meta().chunks[0];
            huge.data_len = crate::MAX_CHUNK_LEN + 1;
            assert!(matches!(r.chunk_data(&huge), Err(Error::Corrupt { .. })));
        }
    }

    #[test]
    fn decompress_chunk_checks_lengths_and_bytes() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let zstd = zstd_safe::compress(&mut vec![0u8; zstd_safe::compress_bound(data.len())][..], &data, 1).unwrap();
        let mut frame = vec![0u8; zstd_safe::compress_bound(data.len())];
        let n = zstd_safe::compress(&mut frame[..], &data, 1).unwrap();
        assert_eq!(n, zstd);
        let frame = &frame[..n];
        let lz4 = lz4_flex::block::compress(&data);
        for (c, stored) in [(Compression::Zstd, frame), (Compression::Lz4, &lz4[..]), (Compression::None, &data[..])] {
            let mut out = vec![0u8; data.len()];
            decompress_chunk(c, stored, &mut out).unwrap();
            assert_eq!(out, data, "{c:?}");
            // Too short and too long an output are both refused.
            let e = decompress_chunk(c, stored, &mut vec![0u8; data.len() - 1]).unwrap_err().to_string();
            assert!(!e.is_empty());
            let e = decompress_chunk(c, stored, &mut vec![0u8; data.len() + 1]).unwrap_err().to_string();
            assert!(!e.is_empty(), "{c:?}");
        }
        let mut out = vec![0u8; data.len()];
        let e = decompress_chunk(Compression::Zstd, &frame[..n - 3], &mut out).unwrap_err().to_string();
        assert!(e.contains("zstd"), "{e}");
        let e = decompress_chunk(Compression::Zstd, &lz4, &mut out).unwrap_err().to_string();
        assert!(e.contains("zstd: "), "{e}");
        let e = decompress_chunk(Compression::Lz4, frame, &mut out).unwrap_err().to_string();
        assert!(e.contains("lz4"), "{e}");
        let e = decompress_chunk(Compression::None, &data[1..], &mut out).unwrap_err().to_string();
        assert!(e.contains("65535 stored bytes for 65536 bytes"), "{e}");
    }

    #[test]
    fn zstd_images_read_back() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("z.img");
        let mut w = ImageWriter::create(&path).unwrap();
        w.set_compression(Compression::Zstd);
        let text: Vec<u8> = (0..8192u32).map(|i| (i % 13) as u8).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let a = w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &text).unwrap();
        let b = w.append_chunk(ChunkKind::Memory { region: 0, offset: 8192 }, &random).unwrap();
        let c = w.append_chunk(ChunkKind::FileContents { fd_index: 0, offset: 0 }, &text).unwrap();
        let d = w.append_chunk(ChunkKind::FileContents { fd_index: 0, offset: 8192 }, &text).unwrap();
        assert_eq!((a.compression, b.compression), (Compression::Zstd, Compression::None));
        assert!(a.len < 1000 && a.data_len == 8192);
        // Bytes as they are start on a page; compressed ones are packed.
        assert_eq!((a.file_offset, b.file_offset), (PAGE_SIZE, 2 * PAGE_SIZE));
        assert_eq!(c.file_offset, b.file_offset + b.len);
        assert_eq!(d.file_offset, c.file_offset + c.len);
        w.finish(meta()).unwrap();
        let r = ImageReader::open(&path).unwrap();
        assert_eq!(r.header().version, VERSION);
        r.verify_payload().unwrap();
        assert_eq!(r.chunk_data(&r.meta().chunks[0]).unwrap(), text);
        assert_eq!(r.chunk_data(&r.meta().chunks[1]).unwrap(), random);
        assert_eq!(r.chunk_data(&r.meta().chunks[3]).unwrap(), text);
        parse_image(&std::fs::read(&path).unwrap()).unwrap();
        assert!(crate::render(r.meta()).contains("3 chunks compressed"), "{}", crate::render(r.meta()));
    }

    #[test]
    fn version_6_images_are_read() {
        let t = tempfile::tempdir().unwrap();
        let (path, mut bytes) = image(t.path());
        // Version 6 metadata is version 8's without its last fields: the
        // `inherited`, `sockets_peer_shut`, `sysv_ipc` and MAP_NORESERVE
        // lists (empty here, 4 bytes of count each) and
        // `allow_file_overwrite` (1 byte).
        let h = Header::decode(&bytes[..HEADER_MAX], Path::new("x")).unwrap();
        let meta = &bytes[h.meta_offset as usize..(h.meta_offset + h.meta_len - 17) as usize];
        let checksum = xxhash_rust::xxh3::xxh3_64(meta);
        forge(&mut bytes, |h| {
            h.version = 6;
            h.meta_len -= 17;
            h.meta_checksum = checksum;
        });
        std::fs::write(&path, &bytes).unwrap();
        let r = ImageReader::open(&path).unwrap();
        assert_eq!(r.header().version, 6);
        assert_eq!(r.chunk_data(&r.meta().chunks[1]).unwrap(), [2u8; 8192]);
        forge(&mut bytes, |h| h.version = 5);
        assert!(matches!(parse_image(&bytes), Err(Error::UnsupportedVersion { version: 5, .. })));
    }

    #[test]
    fn chunks_written_elsewhere_are_adopted() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("p.img");
        let mut w = ImageWriter::create(&path).unwrap();
        let at = w.next_offset();
        assert_eq!(at, PAGE_SIZE);
        let misaligned = Chunk {
            kind: ChunkKind::Memory { region: 0, offset: 0 },
            file_offset: at + 8,
            len: 8,
            checksum: 0,
            compression: Compression::None,
            data_len: 8,
        };
        assert!(w.adopt(&[misaligned], at + PAGE_SIZE).is_err());
        w.file().write_all_at(&[7u8; 4096], at + PAGE_SIZE).unwrap();
        w.file().write_all_at(&[6u8; 4096], at).unwrap();
        let chunk = |offset: u64, file_offset: u64, byte: u8| Chunk {
            kind: ChunkKind::Memory { region: 0, offset },
            file_offset,
            len: 4096,
            checksum: xxh3_64(&[byte; 4096]),
            compression: Compression::None,
            data_len: 4096,
        };
        let mut outside = chunk(0, at + 100, 6);
        assert!(w.adopt(&[outside], at + 2 * PAGE_SIZE).unwrap_err().to_string().contains("outside"));
        outside.file_offset = at + 2 * PAGE_SIZE;
        assert!(w.adopt(&[outside], at + 2 * PAGE_SIZE).is_err());
        w.adopt(&[chunk(0, at, 6), chunk(4096, at + PAGE_SIZE, 7)], at + 2 * PAGE_SIZE).unwrap();
        // Appending goes on after what was adopted.
        let c = w.append_chunk(ChunkKind::FileContents { fd_index: 0, offset: 0 }, b"xyz").unwrap();
        assert_eq!(c.file_offset, at + 2 * PAGE_SIZE);
        w.finish(meta()).unwrap();
        let r = ImageReader::open(&path).unwrap();
        r.verify_payload().unwrap();
        assert_eq!(r.chunk_data(&r.meta().chunks[1]).unwrap(), [7u8; 4096]);
        assert_eq!(r.chunk_data(&r.meta().chunks[2]).unwrap(), b"xyz");
    }

    #[test]
    fn writer_refuses_what_readers_would() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("bad.img");
        let mut w = ImageWriter::create(&path).unwrap();
        w.append_chunk(ChunkKind::Memory { region: 5, offset: 0 }, &[0u8; 10]).unwrap();
        assert_eq!(w.chunks().len(), 1);
        let e = w.finish(meta()).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("region 5"), "{e}");
        assert!(matches!(ImageReader::open(&path), Err(Error::NotAnImage { .. })));
    }

    #[test]
    fn never_created_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("l.img")).unwrap();
        assert!(ImageWriter::create(&t.path().join("l.img")).is_err());
        let d = crate::Dir::open(t.path()).unwrap();
        assert!(ImageWriter::create_in(&d, "l.img").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        ImageWriter::create_in(&d, "new.img").unwrap().finish(meta()).unwrap();
        assert!(ImageReader::open(&t.path().join("new.img")).is_ok());
    }

    #[test]
    fn short_files() {
        for len in [0, 1, 8, 63] {
            let mut v = MAGIC.to_vec();
            v.resize(len, 0);
            v.truncate(len);
            let e = parse_image(&v).unwrap_err();
            assert!(matches!(e, Error::Truncated { expected: PAGE_SIZE, .. }), "{len}: {e}");
        }
        for len in [1, 23, 31, 32, 95] {
            let mut v = SIGNATURE.to_vec();
            v.resize(len, 0);
            let e = parse_image(&v).unwrap_err();
            assert!(matches!(e, Error::Truncated { expected: PAGE_SIZE, .. }), "{len}: {e}");
        }
        assert!(matches!(parse_image(b"#!/bin"), Err(Error::NotAnImage { .. })));
        assert!(matches!(parse_image(b"DMTCP_CHECKPOINT_IMAGE_v3.0\n\0\0\0\0"), Err(Error::NotAnImage { .. })));
        assert!(matches!(parse_image(b"\x7fELF\x02\x01\x01\0\0\0\0\0"), Err(Error::NotAnImage { .. })));
    }

    #[test]
    fn directories_are_not_images() {
        let t = tempfile::tempdir().unwrap();
        let e = ImageReader::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = ImageReader::open(&t.path().join("none.img")).unwrap_err().to_string();
        assert!(e.contains("none.img: open:"), "{e}");
    }
}
