//! Any text given to the MANIFEST decoder: an error or a manifest, never a
//! panic; what decodes survives encoding and decoding again unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = stasis_image::Manifest::decode(text) {
        assert_eq!(stasis_image::Manifest::decode(&m.encode()).as_ref(), Ok(&m));
    }
});
