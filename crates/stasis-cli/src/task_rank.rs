//! Which SLURM task a checkpointed process belongs to, for `srun -n N
//! stasis restart DIR`: each task restarts the processes of its own rank.
//!
//! The rank is the `SLURM_PROCID` of the process's environment as the
//! image holds it: the environment block (between `env_start` and
//! `env_end`, the kernel's mm fields) is in the saved memory. So the
//! images carry the rank without a field of their own, and a checkpoint
//! taken before this existed carries it too. A process with none (not
//! started by srun) counts as task 0's.

use stasis_image::{ChunkKind, ImageReader};

/// The `SLURM_PROCID` in the saved environment of the image's process.
pub fn rank_of(image: &ImageReader) -> Option<u32> {
    let env = saved_environment(image)?;
    env.split(|&b| b == 0).find_map(|var| {
        let value = var.strip_prefix(b"SLURM_PROCID=")?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// The bytes of the environment block, from the saved memory (what of it
/// lies in one saved chunk).
fn saved_environment(image: &ImageReader) -> Option<Vec<u8>> {
    let meta = image.meta();
    let (start, end) = (meta.mm.env_start, meta.mm.env_end);
    if start == 0 || end <= start {
        return None;
    }
    let region = meta.regions.iter().position(|r| r.start <= start && start < r.end)?;
    let region_start = meta.regions[region].start;
    for chunk in &meta.chunks {
        let ChunkKind::Memory { region: r, offset } = chunk.kind else { continue };
        let from = region_start + offset;
        if r as usize != region || start < from || start >= from + chunk.data_len {
            continue;
        }
        let data = image.chunk_data(chunk).ok()?;
        let lo = (start - from) as usize;
        let hi = ((end - from) as usize).min(data.len());
        return Some(data[lo..hi].to_vec());
    }
    None
}

/// The images of task `rank`'s processes, of all those of a checkpoint
/// taken in a step of several tasks.
pub fn images_of_task(images: Vec<ImageReader>, rank: u32) -> Vec<ImageReader> {
    images.into_iter().filter(|i| rank_of(i).unwrap_or(0) == rank).collect()
}
