//! The vdso and vvar areas. The program holds pointers into its vdso
//! (glibc caches the addresses of clock_gettime and friends), so the
//! restorer moves this kernel's vdso, and the vvar areas it reads with
//! fixed offsets, to where the image had them. That only works if this
//! kernel's vdso is the same code: checked before anything starts.

use stasis_image::{ChunkKind, ImageReader, ProcessMeta, RegionKind};
use stasis_plan::Move;

use crate::layout;

#[derive(Debug, Clone)]
pub struct VdsoArea {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

fn is_vdso_name(n: &str) -> bool {
    n == "[vdso]" || n.starts_with("[vvar")
}

/// This process's vdso and vvar areas.
pub fn current() -> Result<Vec<VdsoArea>, String> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("read /proc/self/maps: {e}"))?;
    let entries = stasis_procfs::parse_smaps(&text).ok_or("cannot parse /proc/self/maps")?;
    Ok(entries
        .into_iter()
        .filter(|e| is_vdso_name(&e.name))
        .map(|e| VdsoArea { start: e.start, end: e.end, name: e.name })
        .collect())
}

fn saved(meta: &ProcessMeta) -> Vec<(usize, &stasis_image::Region)> {
    meta.regions.iter().enumerate().filter(|(_, r)| matches!(r.kind, RegionKind::Vdso | RegionKind::Vvar)).collect()
}

/// Checks that the saved vdso can be replaced by this kernel's.
pub fn check_compatible(meta: &ProcessMeta, image: &ImageReader) -> Result<(), String> {
    let saved = saved(meta);
    if saved.is_empty() {
        return Ok(());
    }
    let cur = current()?;
    let incompatible = || {
        "this kernel's vdso differs from the checkpointed one (restarting on a different kernel is not supported yet)"
            .to_string()
    };
    if cur.len() != saved.len() {
        return Err(incompatible());
    }
    let cur_vdso = cur.iter().find(|a| a.name == "[vdso]").ok_or_else(incompatible)?;
    let saved_vdso = saved.iter().find(|(_, r)| r.name == "[vdso]").ok_or_else(incompatible)?.1;
    for a in &cur {
        let (_, s) = saved.iter().find(|(_, r)| r.name == a.name).ok_or_else(incompatible)?;
        let same_size = s.end - s.start == a.end - a.start;
        let same_place = s.start.wrapping_sub(saved_vdso.start) == a.start.wrapping_sub(cur_vdso.start);
        if !same_size || !same_place {
            return Err(incompatible());
        }
    }
    let vdso_index = saved.iter().find(|(_, r)| r.name == "[vdso]").map(|(i, _)| *i).unwrap_or(usize::MAX);
    for c in &meta.chunks {
        if let ChunkKind::Memory { region, offset } = c.kind
            && region as usize == vdso_index
        {
            let data = image.chunk_data(c).map_err(|e| e.to_string())?;
            let len = (cur_vdso.end - cur_vdso.start).saturating_sub(offset).min(data.len() as u64) as usize;
            // SAFETY: the vdso is mapped readable in every process for its
            // lifetime; we read `len` bytes inside it.
            let here = unsafe { std::slice::from_raw_parts((cur_vdso.start + offset) as *const u8, len) };
            if here != &data[..len] {
                return Err(incompatible());
            }
        }
    }
    Ok(())
}

/// What the restorer keeps while unmapping (this kernel's areas) and the
/// moves that put them where the image had them: first all to a free
/// place, then to their targets, so no move lands on an area not yet moved.
pub fn plan_moves(
    meta: &ProcessMeta,
    cur: &[VdsoArea],
    blob: u64,
    blob_len: u64,
) -> Result<(Vec<Move>, Vec<Move>), String> {
    let saved = saved(meta);
    if saved.is_empty() || cur.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let keep: Vec<Move> = cur.iter().map(|a| Move { from: a.start, to: a.start, len: a.end - a.start }).collect();
    let lo = cur.iter().map(|a| a.start).min().unwrap_or(0);
    let hi = cur.iter().map(|a| a.end).max().unwrap_or(0);
    let already = cur.iter().all(|a| saved.iter().any(|(_, r)| r.name == a.name && r.start == a.start));
    if already {
        return Ok((keep, Vec::new()));
    }
    let mut occupied: Vec<(u64, u64)> = meta.regions.iter().map(|r| (r.start, r.end)).collect();
    occupied.push((lo, hi));
    occupied.push((blob, blob + blob_len));
    let temp = *layout::gaps(&occupied, hi - lo).first().ok_or("no room to move the vdso")?;
    let mut moves = Vec::new();
    for a in cur {
        moves.push(Move { from: a.start, to: temp + (a.start - lo), len: a.end - a.start });
    }
    for a in cur {
        let (_, s) = saved.iter().find(|(_, r)| r.name == a.name).ok_or("vdso areas differ")?;
        moves.push(Move { from: temp + (a.start - lo), to: s.start, len: a.end - a.start });
    }
    Ok((keep, moves))
}
