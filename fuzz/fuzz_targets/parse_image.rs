//! Any bytes given as a whole image file: an error or a value, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

fn u64_at(v: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(v[at..at + 8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let _ = stasis_image::parse_image(data);
    // The bytes as one stored chunk of each kind, decompressed into a
    // buffer of the length the first two bytes say.
    if let [a, b, rest @ ..] = data {
        let mut out = vec![0u8; usize::from(u16::from_le_bytes([*a, *b]))];
        for c in [stasis_image::Compression::Lz4, stasis_image::Compression::Zstd] {
            let _ = stasis_image::decompress_chunk(c, rest, &mut out);
        }
    }

    // Almost every mutation stops at a checksum. Sign the bytes again
    // (metadata checksum, then header checksum) so that the checks behind
    // them are fuzzed too.
    if data.len() < 64 {
        return;
    }
    let mut v = data.to_vec();
    let (offset, len) = (u64_at(&v, 32), u64_at(&v, 40));
    if let Some(meta) =
        offset.checked_add(len).filter(|&end| end <= v.len() as u64).map(|end| &v[offset as usize..end as usize])
    {
        let sum = xxh3_64(meta);
        v[48..56].copy_from_slice(&sum.to_le_bytes());
    }
    let sum = xxh3_64(&v[..56]);
    v[56..64].copy_from_slice(&sum.to_le_bytes());
    if let Ok((header, meta)) = stasis_image::parse_image(&v) {
        let _ = stasis_image::render(&meta);
        let _ = stasis_image::render_header(&header);
    }
});
