//! Any bytes given to the metadata decoder: an error or a value, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = stasis_image::decode_meta(data) {
        // What decodes must encode back to the same bytes.
        assert_eq!(stasis_image::encode_meta(&meta), data);
        let _ = stasis_image::render(&meta);
    }
});
