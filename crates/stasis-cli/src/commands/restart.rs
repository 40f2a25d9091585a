//! `stasis restart`: bring a checkpointed process back under a new
//! coordinator in this process, and exit as it does.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use stasis_coord::CoordConfig;
use stasis_image::{ImageReader, Manifest};

use super::{bind_coordinator, supervise};
use crate::coord_socket::{self, CoordOpts};
use crate::exit::Exit;
use crate::signals;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOpts {
    pub coord: CoordOpts,
    /// None: the interval the checkpoint was taken with.
    pub interval_s: Option<u32>,
    /// None: the checkpoint directory the image belongs to.
    pub ckpt_dir: Option<PathBuf>,
    pub keep: usize,
    /// A checkpoint directory, a generation directory, or an image.
    pub target: PathBuf,
}

pub fn run(opts: RestartOpts) -> Result<Exit> {
    let images = stasis_image::resolve_restart_target(&opts.target)?;
    let image = match images.as_slice() {
        [one] => one.clone(),
        [] => bail!("{}: the checkpoint lists no image", opts.target.display()),
        several => bail!(
            "restarting several processes is not supported yet ({} images in {})",
            several.len(),
            opts.target.display()
        ),
    };
    let reader = ImageReader::open(&image)?;
    let meta = reader.meta();
    let origin = Origin::of(&image);

    let ckpt_dir = match (opts.ckpt_dir, &origin) {
        (Some(d), _) => d,
        (None, Some(o)) => o.ckpt_dir.clone(),
        (None, None) => std::env::current_dir().context("cannot tell the current directory")?,
    };
    let mut cfg = CoordConfig::new(coord_socket::resolve(&opts.coord)?, ckpt_dir);
    cfg.interval_s = opts.interval_s.or(origin.as_ref().map(|o| o.manifest.interval_s)).unwrap_or(0);
    cfg.keep = opts.keep;
    cfg.computation_id =
        [origin.as_ref().map_or(0, |o| o.manifest.computation_id), meta.computation_id].into_iter().find(|&id| id != 0);
    let mut coord = bind_coordinator(cfg)?;
    let (ours, theirs) = UnixStream::pair().context("cannot create the agent's connection")?;
    coord.adopt_agent(ours);

    // No thread may exist yet: spawn_restored clones and runs Rust code in
    // the children. The signal mask is inherited, and undone, by them.
    let signals = signals::block().context("cannot block signals")?;
    let spawned = stasis_restore::spawn_restored(&image, &reader, theirs.into())
        .map_err(|e| anyhow!("cannot restart {}: {e}", image.display()))?;
    drop(reader);
    let pid = spawned.pid();
    supervise(coord, signals, pid, move || spawned.wait())
}

/// The committed generation an image belongs to, if it lies in one.
struct Origin {
    manifest: Manifest,
    /// The directory that holds the generation.
    ckpt_dir: PathBuf,
}

impl Origin {
    fn of(image: &Path) -> Option<Origin> {
        let generation = image.parent()?;
        let manifest = Manifest::read_from(generation).ok()?;
        let generation = generation.canonicalize().ok()?;
        Some(Origin { manifest, ckpt_dir: generation.parent()?.to_path_buf() })
    }
}
