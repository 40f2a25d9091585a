use crate::{ProcessMeta, Result};

/// Encodes the metadata section.
pub fn encode_meta(meta: &ProcessMeta) -> Vec<u8> {
    let _ = meta;
    todo!()
}

/// Decodes the metadata section; never panics, whatever the bytes.
pub fn decode_meta(bytes: &[u8]) -> Result<ProcessMeta> {
    let _ = bytes;
    todo!()
}
