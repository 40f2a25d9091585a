//! The Stasis checkpoint image format.
//!
//! A pure, safe crate: it reads and writes image files and checkpoint
//! directories and nothing else, so that it can be fuzzed and tested alone.
//!
//! ```text
//!  offset 0      +-------------------------------+
//!                | header (64 bytes, then zeros)  |  magic, version, where the
//!  4096          +-------------------------------+  metadata lies, checksums
//!                | payload: chunks, each starting |
//!                | on a page boundary             |  memory pages, file contents
//!                +-------------------------------+
//!                | metadata (encoded ProcessMeta) |
//!                +-------------------------------+
//! ```
//!
//! The header is written last, so a file whose writer died never carries a
//! valid header. docs/image-format.md has the byte tables.
//!
//! Safe code throughout, but for the few `*at` system calls in dirfd.rs
//! that let a checkpoint directory be worked in through its descriptor.
#![deny(unsafe_code)]

mod codec;
mod dirfd;
mod error;
mod file;
pub mod identity;
mod manifest;
pub mod model;
mod render;
pub mod savedfiles;
mod store;
mod trust;

pub use codec::{decode_meta, decode_meta_version, encode_meta};
pub use dirfd::{Dir, Stat, euid};
pub use error::{Error, Result};
pub use file::{
    Header, ImageReader, ImageWriter, MIN_COMPRESSED, ZSTD_LEVEL, compression_pays, decompress_chunk, parse_image,
    parse_image_digest, verify_chunk,
};
pub use manifest::{Digest, MANIFEST, Manifest, ManifestProcess, word};
pub use model::*;
pub use render::{render, render_header, utc};
pub use store::{CheckpointDir, Choice, Generation, PendingGeneration, Restartable, check_image, resolve_restart};
pub use trust::{open_checkpoint_dir, open_image_dir, untrusted};

/// First eight bytes of every image.
pub const MAGIC: [u8; 8] = *b"STASISIM";
/// Format version written by this build.
pub const VERSION: u32 = 8;
/// The oldest version readers accept: 6 has no `inherited` list, no zstd
/// chunks, and its writer's agent knew no memory mapped from images at
/// restart.
pub const OLDEST_VERSION: u32 = 6;
/// Alignment of the payload and of memory chunks.
pub const PAGE_SIZE: u64 = 4096;
/// Upper bound on the encoded metadata, so a hostile file cannot make a
/// reader allocate without bound.
pub const MAX_META_LEN: u64 = 256 << 20;
/// Largest chunk a reader decompresses (a bound for its buffers).
pub const MAX_CHUNK_LEN: u64 = 64 << 20;
/// Length of a thread's saved kernel ucontext.
pub const UCONTEXT_LEN: usize = codec::UCONTEXT_LEN;
