use crate::ProcessMeta;

/// What `stasis inspect` prints.
pub fn render(meta: &ProcessMeta) -> String {
    let _ = meta;
    todo!()
}
