//! Any bytes given as a whole image file: an error or a value, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stasis_image::parse_image(data);
});
