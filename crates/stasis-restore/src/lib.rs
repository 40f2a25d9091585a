//! Restart: turns an image back into a running process.
//!
//! Everything that can be decided or checked is done first, in this
//! process, while nothing has started: the image's checksums, the files
//! its mappings need, the vdso. Then [`spawn_restored`] clones a namespace
//! init (see `ns`), which clones the process to restore with its old pid;
//! that process reopens descriptors (`fds`), computes the restore plan and
//! jumps into the restorer blob (`plan`), which rebuilds memory and threads.
//!
//! Call [`spawn_restored`] while the calling process is still
//! single-threaded: its children run Rust code after a raw clone.

mod fds;
mod kobj;
mod layout;
mod ns;
mod plan;
mod vdso;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use stasis_image::{FdKind, ImageReader, RegionKind};

/// What went wrong before the restored process could run.
#[derive(Debug)]
pub struct RestoreError(pub String);

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreError {}

/// A restored computation, running in its own namespaces.
pub struct Spawned {
    init_pid: i32,
    status: File,
}

impl Spawned {
    /// Pid (in the caller's namespace) of the process to signal: it forwards
    /// signals to the restored program.
    pub fn pid(&self) -> i32 {
        self.init_pid
    }

    /// Waits for the restored program and returns its exit status.
    pub fn wait(mut self) -> io::Result<ExitStatus> {
        let mut st = 0;
        loop {
            // SAFETY: waitpid writes one int.
            let r = unsafe { libc::waitpid(self.init_pid, &mut st, 0) };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        let mut report = String::new();
        let _ = self.status.read_to_string(&mut report);
        let report = report.trim();
        if let Some(code) = report.strip_prefix("exit ").and_then(|c| c.parse::<i32>().ok()) {
            return Ok(ExitStatus::from_raw(code << 8));
        }
        if let Some(sig) = report.strip_prefix("signal ").and_then(|c| c.parse::<i32>().ok()) {
            return Ok(ExitStatus::from_raw(sig));
        }
        if let Some(msg) = report.strip_prefix("error ") {
            return Err(io::Error::other(msg.to_string()));
        }
        Err(io::Error::other(format!("the restore process ended unexpectedly (wait status {st:#x})")))
    }
}

/// Everything that can be checked before anything starts.
fn precheck(image: &ImageReader) -> Result<(), RestoreError> {
    let meta = image.meta();
    let err = |m: String| Err(RestoreError(m));
    if meta.threads.first().map(|t| t.tid) != Some(meta.pid) {
        return err("the image has no main thread".into());
    }
    if meta.agent.restore_info_addr == 0 {
        return err("the image was not written by the stasis agent".into());
    }
    if !Path::new(&meta.cwd).is_dir() {
        return err(format!("the working directory {} no longer exists", meta.cwd));
    }
    for r in &meta.regions {
        if let RegionKind::File { path, id, .. } = &r.kind {
            let md =
                std::fs::metadata(path).map_err(|e| RestoreError(format!("{path} (mapped by the program): {e}")))?;
            use std::os::unix::fs::MetadataExt;
            let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
            if !r.shared && (md.size() != id.size || mtime != id.mtime_ns) {
                return err(format!("{path} changed since the checkpoint; the program maps it"));
            }
        }
    }
    for f in &meta.fds {
        if let FdKind::File { path, deleted: false, .. } = &f.kind
            && !Path::new(path).exists()
        {
            return err(format!("{path} (open as fd {}) no longer exists", f.fd));
        }
    }
    vdso::check_compatible(meta, image).map_err(RestoreError)?;
    image.verify_payload().map_err(|e| RestoreError(e.to_string()))
}

/// Checks that the processes of these images can be restored side by
/// side: each is restored on its own (its own namespaces), which is right
/// for programs launched separately, and wrong for a parent and its child,
/// whose relation (and any pipe between them) would be lost.
pub fn check_restorable_together(metas: &[&stasis_image::ProcessMeta]) -> Result<(), RestoreError> {
    for m in metas {
        if let Some(parent) = metas.iter().find(|p| p.pid == m.ppid && p.pid != m.pid) {
            return Err(RestoreError(format!(
                "process {} ({}) is a child of process {} ({}): restoring process trees is not supported yet",
                m.pid, m.name, parent.pid, parent.name
            )));
        }
    }
    let mut pids: Vec<i32> = metas.iter().map(|m| m.pid).collect();
    pids.sort_unstable();
    if let Some(w) = pids.windows(2).find(|w| w[0] == w[1]) {
        return Err(RestoreError(format!("two images are of the same process {}", w[0])));
    }
    Ok(())
}

/// Restores the process in `image` (already opened and checked), handing
/// `agent_conn` to its agent as its coordinator connection.
pub fn spawn_restored(image_path: &Path, image: &ImageReader, agent_conn: OwnedFd) -> Result<Spawned, RestoreError> {
    let _ = image_path;
    precheck(image)?;
    let meta = image.meta();
    let (init_pid, status) = ns::spawn(meta.pid, || become_restored(image, agent_conn.as_raw_fd()))?;
    Ok(Spawned { init_pid, status })
}

/// Where the process being restored reports: the restart command's stderr
/// (fd 2 until the program's own descriptors replace it).
static LOG_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(2);

fn log(msg: &str) {
    let fd = LOG_FD.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: write() of a buffer we own.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// Runs in the process that becomes the restored one.
fn become_restored(image: &ImageReader, agent_conn: i32) -> ! {
    let result = prepare_and_jump(image, agent_conn);
    log(&format!("stasis: restore failed: {}\n", result.err().unwrap_or_default()));
    // SAFETY: leaving without running the caller's atexit handlers.
    unsafe { libc::_exit(125) }
}

fn prepare_and_jump(image: &ImageReader, agent_conn: i32) -> Result<(), String> {
    let meta = image.meta();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    if pid != meta.pid {
        return Err(format!("got pid {pid} instead of {}", meta.pid));
    }
    fds::write_back_shared(meta, image)?;
    let mut warnings = Vec::new();
    let helpers = fds::restore(meta, image, agent_conn, &mut |w| warnings.push(w))?;
    LOG_FD.store(helpers.log, std::sync::atomic::Ordering::Relaxed);
    for w in warnings {
        log(&format!("stasis: restart: {w}\n"));
    }
    std::env::set_current_dir(&meta.cwd).map_err(|e| format!("chdir {}: {e}", meta.cwd))?;
    // SAFETY: umask and setrlimit only change this process's settings.
    unsafe {
        libc::umask(meta.umask as libc::mode_t);
        for l in &meta.rlimits {
            let mut cur: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(l.resource as _, &mut cur) != 0 {
                continue;
            }
            let want = libc::rlimit { rlim_cur: l.soft.min(cur.rlim_max), rlim_max: l.hard.min(cur.rlim_max) };
            libc::setrlimit(l.resource as _, &want);
        }
    }
    plan::build_and_jump(meta, helpers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::ProcessMeta;

    fn meta(pid: i32, ppid: i32) -> ProcessMeta {
        ProcessMeta { pid, ppid, name: format!("p{pid}"), ..Default::default() }
    }

    #[test]
    fn unrelated_processes_restore_together_but_trees_do_not() {
        let (a, b, c) = (meta(10, 1), meta(20, 1), meta(30, 10));
        assert!(check_restorable_together(&[&a, &b]).is_ok());
        let e = check_restorable_together(&[&a, &c]).unwrap_err().to_string();
        assert!(e.contains("child of process 10"), "{e}");
        assert!(check_restorable_together(&[&a, &a]).is_err());
    }
}
