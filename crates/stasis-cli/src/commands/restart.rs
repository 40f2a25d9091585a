//! `stasis restart` (and `dmtcp_restart`): bring the processes of a
//! checkpoint back, joined to a coordinator (found, or started in the
//! background like launch does), and exit when all of them have.
//!
//! What may be restarted: a checkpoint directory (its newest committed
//! generation), a generation directory, or image files, such as the
//! `ckpt_*.dmtcp` names at the top of a checkpoint directory. Images given
//! one by one must all be of the same checkpoint: restart refuses images
//! of different generations or computations rather than guess. Later
//! checkpoints go to the directory the checkpoint came from (the one that
//! holds the generation, or the `.dmtcp` files), and the interval is the
//! one the checkpoint was taken with, unless told otherwise.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use stasis_coord::client;
use stasis_image::{FdKind, ImageReader, MANIFEST, Manifest};

use super::start::{self, Background, Mode};
use super::supervise;
use crate::commands::launch::write_port_file;
use crate::coord_socket::CoordOpts;
use crate::exit::Exit;
use crate::pty::Pty;
use crate::signals;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOpts {
    pub coord: CoordOpts,
    pub mode: Mode,
    /// None: the interval the checkpoint was taken with.
    pub interval_s: Option<u32>,
    /// None: the checkpoint directory the images belong to.
    pub ckpt_dir: Option<PathBuf>,
    pub keep: usize,
    /// Compress images with LZ4 (a coordinator started here, or this one).
    pub compress: bool,
    pub port_file: Option<PathBuf>,
    pub coord_logfile: Option<PathBuf>,
    /// Where relative image names are; with no target, what to restart.
    pub restart_dir: Option<PathBuf>,
    pub quiet: bool,
    /// Checkpoint directories, generation directories, or images.
    pub targets: Vec<PathBuf>,
}

/// The image files that `targets` name.
fn images_of(targets: &[PathBuf], restart_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let targets: Vec<PathBuf> = match restart_dir {
        None => targets.to_vec(),
        Some(d) if targets.is_empty() => vec![d.to_path_buf()],
        Some(d) => targets.iter().map(|t| if t.is_absolute() { t.clone() } else { d.join(t) }).collect(),
    };
    let mut images = Vec::new();
    for t in &targets {
        let found = stasis_image::resolve_restart_target(t)?;
        if found.is_empty() {
            bail!("{}: the checkpoint lists no image", t.display());
        }
        images.extend(found);
    }
    Ok(images)
}

/// Where an image came from: its checkpoint directory, and the interval
/// its checkpoint was taken with.
fn origin(image: &Path, generation: u64, image_interval: u32) -> Result<(PathBuf, u32)> {
    let image = image.canonicalize().with_context(|| format!("cannot resolve {}", image.display()))?;
    let parent = image.parent().context("an image without a directory")?.to_path_buf();
    if parent.join(MANIFEST).is_file() {
        // Inside a generation directory.
        let manifest = Manifest::read_from(&parent)?;
        let dir = parent.parent().map_or_else(|| parent.clone(), Path::to_path_buf);
        return Ok((dir, manifest.interval_s));
    }
    // A ckpt_*.dmtcp at the top of the checkpoint directory, or a lone image.
    let gen_dir = parent.join(format!("gen-{generation:06}"));
    let interval = Manifest::read_from(&gen_dir).map_or(image_interval, |m| m.interval_s);
    Ok((parent, interval))
}

pub fn run(opts: RestartOpts) -> Result<Exit> {
    let paths = images_of(&opts.targets, opts.restart_dir.as_deref())?;
    let mut readers = Vec::with_capacity(paths.len());
    for p in &paths {
        readers.push(ImageReader::open(p).map_err(|e| anyhow!(e))?);
    }
    let first = readers[0].meta();
    for (p, r) in paths.iter().zip(&readers).skip(1) {
        let m = r.meta();
        if m.computation_id != first.computation_id {
            bail!(
                "{} and {} are images of different computations ({:016x} and {:016x}): restart one computation at a time",
                paths[0].display(),
                p.display(),
                first.computation_id,
                m.computation_id
            );
        }
        if m.generation != first.generation {
            bail!(
                "{} is of checkpoint {} but {} of checkpoint {}: give the images of one checkpoint (or the \
                 checkpoint directory, for its newest)",
                paths[0].display(),
                first.generation,
                p.display(),
                m.generation
            );
        }
    }
    let metas: Vec<_> = readers.iter().map(ImageReader::meta).collect();
    stasis_restore::check_computation(&metas).map_err(|e| anyhow!(e))?;

    let (origin_dir, interval) = origin(&paths[0], first.generation, first.agent.interval_s)?;
    let ckpt_dir = match &opts.ckpt_dir {
        Some(d) => super::launch::ckpt_dir_or_cwd(Some(d))?,
        None => origin_dir.clone(),
    };
    let bg = Background {
        ckpt_dir: &ckpt_dir,
        explicit_ckpt_dir: opts.ckpt_dir.is_some(),
        interval_s: opts.interval_s.unwrap_or(interval),
        keep: opts.keep,
        compress: opts.compress,
        logfile: opts.coord_logfile.as_deref(),
        quiet: opts.quiet,
    };
    let found = start::find_or_start(&opts.coord, opts.mode, &bg, &[ckpt_dir.clone(), origin_dir])?;
    if found.started.is_none()
        && let Some(i) = opts.interval_s
    {
        found.set_interval(i)?;
    }
    if let Some(f) = &opts.port_file {
        write_port_file(f, &found, opts.quiet)?;
    }
    // One connection per process, made here: each restored agent finds
    // its own at the descriptor it had, and greets the coordinator on it.
    let mut conns = Vec::with_capacity(paths.len());
    for _ in &paths {
        let stream = client::connect(&found.addr, found.secret.as_ref())
            .with_context(|| format!("cannot reach the coordinator at {}", found.addr))?;
        conns.push(OwnedFd::from(stream));
    }

    // No thread may exist yet: spawn_restored clones and runs Rust code in
    // the children. The signal mask is inherited, and undone, by them.
    let signals = signals::block().context("cannot block signals")?;
    let images: Vec<&ImageReader> = readers.iter().collect();
    // A program that ran in a terminal comes back in one of our own.
    let in_terminal = images.iter().any(|i| i.meta().fds.iter().any(|f| matches!(f.kind, FdKind::Terminal { .. })));
    let pty = if in_terminal { Some(Pty::open().context("cannot make a terminal for the program")?) } else { None };
    let spawned = stasis_restore::spawn_computation(&images, conns, pty.as_ref().map(|p| &p.slave))
        .map_err(|e| anyhow!("cannot restart {}: {e}", restart_label(&paths)))?;
    drop(images);
    drop(readers);
    let relay = pty.map(Pty::relay).transpose().context("cannot relay the program's terminal")?;
    let pids = vec![spawned.pid()];
    let exit = supervise(signals, pids, move || spawned.wait());
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(found);
    exit
}

/// The checkpoint named in messages: its one image, or its directory.
fn restart_label(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        _ => paths[0].parent().map_or_else(|| paths[0].display().to_string(), |d| d.display().to_string()),
    }
}
