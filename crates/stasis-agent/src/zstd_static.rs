//! zstd compression without the allocator.
//!
//! The image writer is a raw-clone child of the program and must not call
//! libc's malloc (a stopped program thread may hold its lock), so each
//! compressor lives in a workspace mapped for it alone
//! (`ZSTD_initStaticCCtx`): zstd never allocates with a static context,
//! it fails instead. Contexts are made before the writer's workers start
//! and each is used by one worker only.

use zstd_sys as z;

use crate::sys;

/// Largest input a compressor takes: a chunk.
pub const MAX_INPUT: usize = 4 << 20;

pub struct StaticZstd {
    cctx: *mut z::ZSTD_CCtx,
}

impl StaticZstd {
    /// A compressor for inputs of up to `MAX_INPUT` bytes at
    /// `stasis_image::ZSTD_LEVEL`; None if its workspace cannot be mapped.
    pub fn new() -> Option<StaticZstd> {
        // SAFETY: pure functions of their arguments.
        let size = unsafe {
            let params = z::ZSTD_getCParams(stasis_image::ZSTD_LEVEL, MAX_INPUT as u64, 0);
            z::ZSTD_estimateCCtxSize_usingCParams(params)
        };
        // mmap'd memory is page aligned (zstd wants 8).
        let workspace = sys::mmap_anon(size)?;
        // SAFETY: the workspace is ours, `size` bytes, never unmapped while
        // the compressor lives (the writer exits without freeing it).
        let cctx = unsafe { z::ZSTD_initStaticCCtx(workspace.cast(), size) };
        (!cctx.is_null()).then_some(StaticZstd { cctx })
    }

    /// `src` compressed into `dst` (one zstd frame): its length, or None if
    /// it does not fit (or `src` is over `MAX_INPUT`).
    pub fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        if src.len() > MAX_INPUT {
            return None;
        }
        // SAFETY: the context is ours alone (`&mut self`); zstd reads
        // `src.len()` bytes of `src` and writes at most `dst.len()` to `dst`.
        let n = unsafe {
            z::ZSTD_compressCCtx(
                self.cctx,
                dst.as_mut_ptr().cast(),
                dst.len(),
                src.as_ptr().cast(),
                src.len(),
                stasis_image::ZSTD_LEVEL,
            )
        };
        // SAFETY: a pure function of its argument.
        (unsafe { z::ZSTD_isError(n) } == 0).then_some(n)
    }
}

/// Room for the compressed form of `len` bytes, whatever they are.
pub fn bound(len: usize) -> usize {
    // SAFETY: a pure function of its argument.
    unsafe { z::ZSTD_compressBound(len) }
}

// SAFETY: the context is only ever used through `&mut`, by one worker at
// a time; it holds no pointer to thread-local state.
unsafe impl Send for StaticZstd {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut z = StaticZstd::new().unwrap();
        let data: Vec<u8> = (0..MAX_INPUT).map(|i| (i % 251) as u8).collect();
        let mut out = vec![0u8; bound(data.len())];
        let n = z.compress(&data, &mut out).unwrap();
        assert!(n < data.len() / 8);
        let mut back = vec![0u8; data.len()];
        stasis_image::decompress_chunk(stasis_image::Compression::Zstd, &out[..n], &mut back).unwrap();
        assert_eq!(back, data);
        // Used again: the context resets itself.
        let n2 = z.compress(&data[..8192], &mut out).unwrap();
        let mut back = vec![0u8; 8192];
        stasis_image::decompress_chunk(stasis_image::Compression::Zstd, &out[..n2], &mut back).unwrap();
        assert_eq!(back, data[..8192]);
        assert!(z.compress(&data, &mut out[..10]).is_none());
    }
}
