//! `stasis restart` (and `dmtcp_restart`): bring the processes of a
//! checkpoint back, joined to a coordinator (found, or started in the
//! background like launch does), and exit when all of them have.
//!
//! What may be restarted: a checkpoint directory (its newest committed
//! generation; `--generation N` for another, `--fallback` for the newest
//! intact one when the newest is damaged), a generation directory, or
//! image files, such as the `ckpt_*.dmtcp` names at the top of a
//! checkpoint directory. Everything is checked first (ownership, modes,
//! MANIFEST against directory and images: see docs/image-format.md), and
//! images given one by one must be all those of one checkpoint: restart
//! refuses rather than guess. Later
//! checkpoints go to the directory the checkpoint came from (the one that
//! holds the generation, or the `.dmtcp` files), and the interval is the
//! one the checkpoint was taken with, unless told otherwise.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use stasis_coord::client;
use stasis_image::{Choice, ImageReader};
use stasis_proto::{self as proto, Message};

use super::note;
use super::start::{self, Background, Mode};
use crate::commands::launch::write_port_file;
use crate::coord_socket::CoordOpts;
use crate::exit::Exit;
use crate::pty::Pty;
use crate::signals;
use stasis_restore::verify::{self, Gate, Verifier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOpts {
    pub coord: CoordOpts,
    pub mode: Mode,
    /// None: the interval the checkpoint was taken with.
    pub interval_s: Option<u32>,
    /// None: the checkpoint directory the images belong to.
    pub ckpt_dir: Option<PathBuf>,
    pub keep: usize,
    /// Compress images with zstd (a coordinator started here, or this one).
    pub compress: bool,
    /// None: the one the checkpoint was taken with (its MANIFEST).
    pub full_every: Option<u32>,
    pub port_file: Option<PathBuf>,
    pub coord_logfile: Option<PathBuf>,
    /// Where relative image names are; with no target, what to restart.
    pub restart_dir: Option<PathBuf>,
    pub quiet: bool,
    /// SIGUSR2 asks for a checkpoint (the DMTCP names; launch.rs).
    pub usr2_checkpoints: bool,
    /// `--debug-restart-pause N`: stop before restoring until SIGCONT.
    pub pause: Option<u8>,
    /// Each checkpoint's `.dmtcp` names in a directory of their own
    /// (DMTCP_UNIQUE_CKPT_PLUGIN=1 at restart).
    pub unique_ckpt: bool,
    /// Restart exactly this generation of the checkpoint directory.
    pub generation: Option<u64>,
    /// Restart the newest intact generation when the newest is damaged.
    pub fallback: bool,
    /// Verify every chunk before the program runs, not in the background.
    pub verify_first: bool,
    /// Checkpoint directories, generation directories, or images.
    pub targets: Vec<PathBuf>,
}

/// `--debug-restart-pause`: everything is checked and the coordinator
/// found, nothing restored yet and no process joined. Waits for SIGCONT
/// (a debugger attached by then stays attached). SIGTERM, SIGINT or
/// SIGHUP end restart there, its coordinator with it if it started one.
fn pause_for_debugger(level: u8) -> Result<()> {
    eprintln!(
        "stasis: restart paused before restoring (--debug-restart-pause {level}): attach a debugger to pid {} if \
         you like, then kill -CONT {0}",
        std::process::id()
    );
    let ending = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before
    // use; pthread_sigmask and sigwait act on this thread only, and the
    // mask is put back before returning.
    let (r, sig) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in std::iter::once(libc::SIGCONT).chain(ending) {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            bail!("cannot wait for SIGCONT: pthread_sigmask failed");
        }
        let mut sig = 0;
        let r = libc::sigwait(&set, &mut sig);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (r, sig)
    };
    if r != 0 {
        bail!("cannot wait for SIGCONT: {}", std::io::Error::from_raw_os_error(r));
    }
    if ending.contains(&sig) {
        return Err(super::WithCode(128 + sig, format!("restart ended by signal {sig} while paused")).into());
    }
    Ok(())
}

/// What `targets` name, relative ones under `restart_dir`.
fn targets_of(targets: &[PathBuf], restart_dir: Option<&Path>) -> Vec<PathBuf> {
    match restart_dir {
        None => targets.to_vec(),
        Some(d) if targets.is_empty() => vec![d.to_path_buf()],
        Some(d) => targets.iter().map(|t| if t.is_absolute() { t.clone() } else { d.join(t) }).collect(),
    }
}

/// Which generation restart takes of a checkpoint directory.
fn choice(opts: &RestartOpts) -> Choice {
    match (opts.generation, opts.fallback) {
        (Some(n), _) => Choice::Exactly(n),
        (None, true) => Choice::Fallback,
        (None, false) => Choice::Newest,
    }
}

pub fn run(opts: RestartOpts) -> Result<Exit> {
    // Every check made here (stasis-image's resolve_restart): owners and
    // modes, MANIFEST against directory and images, images against each
    // other. What is restored is what was checked: the images stay open.
    let targets = targets_of(&opts.targets, opts.restart_dir.as_deref());
    let checked = stasis_image::resolve_restart(&targets, choice(&opts)).map_err(|e| anyhow!(e))?;
    if let Some(n) = &checked.note {
        // Said even with --quiet: which checkpoint runs is not a detail.
        note(false, n);
    }
    let readers = crate::slurm::Job::from_env(&crate::cli::real_env).restart_share(checked.images)?;
    let paths: Vec<PathBuf> = readers.iter().map(|r| r.path().to_path_buf()).collect();
    if readers.is_empty() {
        bail!("{}: the checkpoint lists no image", targets[0].display());
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

    // Later checkpoints go where this one came from; a lone image's are
    // beside it.
    let origin_dir = match &checked.ckpt_dir {
        Some(d) => d.clone(),
        None => paths[0]
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", paths[0].display()))?
            .parent()
            .context("an image without a directory")?
            .to_path_buf(),
    };
    let interval = checked.manifest.as_ref().map_or(first.agent.interval_s, |m| m.interval_s);
    let ckpt_dir = match &opts.ckpt_dir {
        Some(d) => super::launch::ckpt_dir_or_cwd(Some(d))?,
        None => origin_dir.clone(),
    };
    let bg = Background {
        ckpt_dir: &ckpt_dir,
        explicit_ckpt_dir: opts.ckpt_dir.is_some(),
        interval_s: opts.interval_s.unwrap_or(interval),
        keep: opts.keep,
        // Asked for now, or by the launch (or restart) that wrote these.
        compress: opts.compress || metas.iter().any(|m| m.agent.compress),
        full_every: opts
            .full_every
            .or_else(|| checked.manifest.as_ref().map(|m| m.full_every).filter(|&n| n != 0))
            .unwrap_or(stasis_coord::DEFAULT_FULL_EVERY),
        logfile: opts.coord_logfile.as_deref(),
        quiet: opts.quiet,
    };
    let mut found = start::find_or_start(&opts.coord, opts.mode, &bg, &[ckpt_dir.clone(), origin_dir])?;
    if found.started.is_none() {
        let pids: Vec<i32> = metas.iter().map(|m| m.pid).collect();
        refuse_if_running(&found, first.computation_id, &pids)?;
    }
    if found.started.is_none()
        && let Some(i) = opts.interval_s
    {
        found.set_interval(i)?;
    }
    if opts.unique_ckpt {
        found.set_unique_names()?;
    }
    if let Some(f) = &opts.port_file {
        write_port_file(f, &found, opts.quiet)?;
    }
    if let Some(level) = opts.pause {
        pause_for_debugger(level)?;
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
    // A program that ran in a terminal comes back in one of our own: one it
    // opened itself with its master outside the computation, or the
    // launch's stdio when restart runs in a terminal too (else restart's
    // own stdio takes the launch's place). Pairs opened inside the
    // computation are made again as pairs (stasis-restore/src/pty.rs).
    // SAFETY: isatty only looks at our own descriptor 0.
    let stdin_terminal = unsafe { libc::isatty(0) } == 1;
    let in_terminal = stasis_restore::needs_terminal(&images, stdin_terminal);
    let pty = if in_terminal { Some(Pty::open().context("cannot make a terminal for the program")?) } else { None };
    // Memory comes back mapped from the images, unread: their checksums are
    // verified in the background (docs/image-format.md, "What restart
    // checks"), unless asked to before anything runs.
    let gate = if opts.verify_first { None } else { Some(Gate::new().context("cannot make a pipe")?) };
    // `--tmpdir`: the program's temporary directory from now on too (what
    // dmtcp_get_tmpdir answers), absolute as launch gives it.
    let tmpdir = match &opts.coord.tmpdir {
        Some(t) => Some(std::path::absolute(t).with_context(|| format!("cannot make {} absolute", t.display()))?),
        None => None,
    };
    let spawned = stasis_restore::spawn_computation(
        &images,
        conns,
        pty.as_ref().map(|p| &p.slave),
        gate.as_ref().map(|g| &g.read),
        tmpdir.as_ref().map(|t| t.as_os_str().as_encoded_bytes()),
    )
    .map_err(|e| anyhow!("cannot restart {}: {e}", restart_label(&paths)))?;
    let verifier = match gate {
        None => None,
        Some(Gate { read, write }) => {
            drop(read);
            let pid = spawned.pid();
            // With the earlier generations' images that incremental ones
            // refer to (spawn_computation checked they are there).
            let older = stasis_restore::memory::referenced_images(&images).map_err(|e| {
                // SAFETY: kill() of the process restart made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                anyhow!("cannot restart {}: {e}", restart_label(&paths))
            })?;
            let all: Vec<&ImageReader> = images.iter().copied().chain(older.iter()).collect();
            let v = Verifier::start(
                &all,
                VERIFY_THREADS,
                // The whole restarted computation: its namespace's init.
                // SAFETY: kill() of the process restart made.
                move |_| unsafe {
                    libc::kill(pid, libc::SIGKILL);
                },
                move || verify::open_gate(&write),
            );
            match v {
                Ok(v) => Some(v),
                Err(e) => {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    bail!("cannot start checking the images: {e}");
                }
            }
        }
    };
    drop(images);
    drop(readers);
    let relay = pty.map(Pty::relay).transpose().context("cannot relay the program's terminal")?;
    let pids = vec![spawned.pid()];
    let on_usr2 = opts.usr2_checkpoints.then(|| super::launch::checkpoint_request(&found));
    let exit = super::supervise(signals, pids, on_usr2, move || spawned.wait())
        .map(|e| super::stopped_on_request(e, &mut found));
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(found);
    // A damaged chunk ended the computation: that is what restart says.
    if let Some(damaged) = verifier.and_then(|v| if exit.is_err() { v.failure() } else { v.finish() }) {
        bail!("{damaged}; the restarted program was killed");
    }
    exit
}

/// Threads that verify the images in the background: enough to keep
/// ahead of a disk, few enough to leave the program its CPUs.
const VERIFY_THREADS: usize = 2;

/// The checkpoint named in messages: its one image, or its directory.
/// A joined coordinator whose computation is this checkpoint's and has
/// one of the processes this restart would bring back still connected:
/// restarting would run a second copy beside the first (the same pids,
/// files and connections), so it is refused. Other processes of the
/// computation may be there: each task of a SLURM step restarts its own
/// into the coordinator the first task's restart started.
fn refuse_if_running(found: &start::Found, computation_id: u64, pids: &[i32]) -> Result<()> {
    let status = found.ask(&Message::new(proto::COMMAND).with("what", "status"))?;
    let theirs = status.get("computation").and_then(|c| u64::from_str_radix(c, 16).ok());
    if theirs != Some(computation_id) {
        return Ok(());
    }
    let running: Vec<i32> = status
        .fields
        .iter()
        .filter(|(k, _)| k.starts_with("proc.") && k.ends_with(".pid"))
        .filter_map(|(_, v)| v.parse().ok())
        .filter(|p| pids.contains(p))
        .collect();
    if let Some(pid) = running.first() {
        bail!(
            "computation {computation_id:016x} is still running (process {pid}, which this checkpoint holds, is \
             connected to the coordinator at {}): restarting it would run a second copy; end it first \
             (dmtcp_command --kill, stasis command --kill)",
            found.addr
        );
    }
    Ok(())
}

fn restart_label(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        _ => paths[0].parent().map_or_else(|| paths[0].display().to_string(), |d| d.display().to_string()),
    }
}
