//! Contents of the regular files the program has open for writing (and,
//! with `--checkpoint-open-files`, of the user's own files it has open
//! read-only), kept beside the image so that restart puts each back as it
//! was at the checkpoint (docs/files.md). Runs in the image writer while the program
//! is still stopped: a copy taken after it resumes could hold writes made
//! after the checkpoint.
//!
//! Each file is kept once per generation, under a name that says which
//! state of it the copy holds (`stasis_image::savedfiles`): processes that
//! share a file find the copy already made, and a file unchanged since the
//! previous generation is hard-linked from it rather than copied again.
//! Copies are reflinks where the file system can (instant, whatever the
//! size), byte copies in the kernel (copy_file_range) otherwise: those
//! lengthen the pause, which `--save-files-limit` bounds.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use stasis_image::savedfiles::{self, FileState};
use stasis_image::{Dir, FdKind, FileSave, ProcessMeta};

use crate::sys;

/// Bytes of files one process may copy at one checkpoint.
static LIMIT: AtomicU64 = AtomicU64::new(savedfiles::DEFAULT_LIMIT);
/// The user's `:`-separated patterns of files never to keep.
static EXCLUDED: OnceLock<String> = OnceLock::new();
/// `--checkpoint-open-files`: the user's own files open read-only are kept too.
static OPEN_FILES: AtomicBool = AtomicBool::new(false);
/// `--allow-file-overwrite`, recorded in each image for restart.
static ALLOW_OVERWRITE: AtomicBool = AtomicBool::new(false);

/// A file whose last change is this recent may still change within the
/// same tick of the file-time clock: its copy is never reused.
const FRESH_NS: i128 = 100_000_000;

/// Reads the settings from the environment, at start-up. They live in the
/// agent's memory from then on, so a restart keeps them.
pub fn remember_settings() {
    if let Some(text) = crate::exec::env_var(savedfiles::LIMIT_VAR) {
        match savedfiles::parse_size(&text) {
            Some(n) => LIMIT.store(n, Ordering::Relaxed),
            None => sys::write_stderr(
                format!("stasis agent: {}={text:?} is not a size; keeping the default\n", savedfiles::LIMIT_VAR)
                    .as_bytes(),
            ),
        }
    }
    let _ = EXCLUDED.set(crate::exec::env_var(savedfiles::EXCLUDE_VAR).unwrap_or_default());
    let on = |var: &str| savedfiles::is_on(crate::exec::env_var(var).as_deref());
    OPEN_FILES.store(on(savedfiles::OPEN_FILES_VAR), Ordering::Relaxed);
    ALLOW_OVERWRITE.store(on(savedfiles::OVERWRITE_VAR), Ordering::Relaxed);
}

/// Whether the descriptor's file is one whose contents a checkpoint keeps:
/// a regular file open for writing (or, with `--checkpoint-open-files`,
/// open at all), still at its path, and not one of the kernel's (/proc,
/// /sys), which hold no contents of the program's.
pub fn wanted(kind: &FdKind) -> bool {
    let FdKind::File { path, flags, deleted: false, .. } = kind else { return false };
    (OPEN_FILES.load(Ordering::Relaxed) || !read_only(*flags))
        && path.starts_with('/')
        && !path.starts_with("/proc/")
        && !path.starts_with("/sys/")
}

fn read_only(flags: u32) -> bool {
    flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32
}

/// Keeps, in the pending generation's directory `dir`, the contents of the
/// files of `meta.fds` that [`wanted`] picks, and records in each what was
/// kept. `note` hears of each file left as it is.
pub fn save(meta: &mut ProcessMeta, dir: &Dir, note: &mut dyn FnMut(String)) -> Result<(), String> {
    let limit = LIMIT.load(Ordering::Relaxed);
    let excluded = EXCLUDED.get().map_or("", String::as_str);
    let previous = previous_generation(dir, meta.generation);
    let mut budget = limit;
    meta.allow_file_overwrite = ALLOW_OVERWRITE.load(Ordering::Relaxed);
    let me = sys::getuid();
    let mut done: Vec<((u64, u64), FileSave)> = Vec::new();
    for i in 0..meta.fds.len() {
        // The launch's stdio from outside (a batch system's output file) is
        // not the program's to keep: restart gives it restart's own.
        if !wanted(&meta.fds[i].kind) || meta.fds[i].outside_stdio.is_some() {
            continue;
        }
        let fd = meta.fds[i].fd;
        let FdKind::File { path, dev, inode, saved, flags, .. } = &mut meta.fds[i].kind else { continue };
        if let Some((_, known)) = done.iter().find(|(id, _)| *id == (*dev, *inode)) {
            *saved = known.clone();
            continue;
        }
        // A file open read-only is kept only if it is the user's own (the
        // libraries and settings of the system are not the program's), as
        // DMTCP's --checkpoint-open-files does.
        if read_only(*flags) && owner(fd) != Some(me) {
            continue;
        }
        let kept = save_one(fd, path, dir, previous.as_ref(), excluded, limit, &mut budget)?;
        if let FileSave::Left { why } = &kept {
            note(format!("{path} is not saved ({why}); a restart leaves it as it is then"));
        }
        done.push(((*dev, *inode), kept.clone()));
        *saved = kept;
    }
    Ok(())
}

fn save_one(
    fd: i32,
    path: &str,
    dir: &Dir,
    previous: Option<&Dir>,
    excluded: &str,
    limit: u64,
    budget: &mut u64,
) -> Result<FileSave, String> {
    if let Some(pattern) = savedfiles::excluded_by(excluded, path) {
        return Ok(FileSave::Left { why: format!("excluded by --no-save-file {pattern}") });
    }
    let state = file_state(fd).map_err(|e| format!("stat {path} (fd {fd}): {e}"))?;
    let fresh = sys::realtime_ns() - state.mtime_ns.max(state.ctime_ns) < FRESH_NS;
    let name = savedfiles::saved_name(&state, fresh);
    // Unchanged since the previous generation: that copy is this state.
    if !fresh
        && let Some(prev) = previous
        && prev.stat(&name).is_ok()
    {
        match dir.link_from(prev, &name, &name) {
            Ok(()) => return Ok(FileSave::Copy { name }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(FileSave::Copy { name }),
            Err(_) => {} // another file system, say: copy it
        }
    }
    if state.size > *budget {
        let why = if state.size > limit {
            format!("{} bytes, over the --save-files-limit of {limit} bytes", state.size)
        } else {
            format!("{} bytes, past what is left of the --save-files-limit of {limit} bytes", state.size)
        };
        return Ok(FileSave::Left { why });
    }
    // Our own reading descriptor: the program's may be write-only. A file
    // the user may not read (mode 0200) cannot be kept; it is left, and
    // said so, rather than fail every checkpoint.
    let mut src = match crate::collect::reopen_fd(fd) {
        Ok(f) => f,
        Err(e) => return Ok(FileSave::Left { why: format!("it cannot be read: {e}") }),
    };
    let mut copy = match dir.create_file(&name, 0o600) {
        Ok(f) => f,
        // Another process of the computation has it open too, and saved it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(FileSave::Copy { name }),
        Err(e) => return Err(format!("save {path}: create {name}: {e}")),
    };
    use std::os::fd::AsRawFd;
    if sys::ficlone(copy.as_raw_fd(), src.as_raw_fd()).is_err() {
        std::io::copy(&mut src, &mut copy).map_err(|e| format!("save {path} (fd {fd}): copy: {e}"))?;
    }
    *budget -= state.size;
    Ok(FileSave::Copy { name })
}

/// The owner of the descriptor's file.
fn owner(fd: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{fd}")).ok().map(|md| md.uid())
}

fn file_state(fd: i32) -> std::io::Result<FileState> {
    use std::os::unix::fs::MetadataExt;
    // The magic link leads to the open file itself, whatever its path now.
    let md = std::fs::metadata(format!("/proc/self/fd/{fd}"))?;
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Ok(FileState {
        dev: md.dev(),
        inode: md.ino(),
        size: md.size(),
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
    })
}

/// The newest committed generation older than `generation`, beside the
/// pending directory `dir` (`.gen-N.partial` in the checkpoint directory).
fn previous_generation(dir: &Dir, generation: u64) -> Option<Dir> {
    let parent = dir.path().parent()?;
    let names = std::fs::read_dir(parent).ok()?;
    let best = names
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            let digits = n.strip_prefix("gen-")?;
            let number: u64 =
                (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())??;
            (number < generation).then_some((number, n))
        })
        .max()?;
    Dir::open(&parent.join(best.1)).ok()
}
