//! Restart: turns an image back into a running process.
//!
//! Everything that can be decided or checked is done first, in this
//! process, while nothing has started: the images' checksums, the files
//! their mappings need, the vdso. Then [`spawn_computation`] makes the
//! pipes the processes share and clones a namespace init (see `ns`), which
//! clones the roots of the process tree with their old pids; each process
//! makes its own children (`tree`), and once all exist, reopens its
//! descriptors (`fds`), computes its restore plan and jumps into the
//! restorer blob (`plan`), which rebuilds memory and threads.
//!
//! Call [`spawn_computation`] while the calling process is still
//! single-threaded: its children run Rust code after a raw clone.

mod fds;
mod ipc;
mod kobj;
mod layout;
pub mod memory;
mod ns;
mod plan;
mod pty;
mod shm;
mod sockets;
mod tree;
mod vdso;
pub mod verify;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use stasis_image::identity::{self, Verdict};
use stasis_image::{FdKind, FileId, ImageReader, RegionKind};

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
    /// Background processes the program left may run on after it (in
    /// their namespace, under its init), as they would have without stasis.
    pub fn wait(self) -> io::Result<ExitStatus> {
        // One line, written when the roots have ended.
        let mut report = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&self.status), &mut report);
        let mut st = 0;
        if report.is_empty() {
            // No report: init ended without one; its status says how.
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
        }
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

/// Whether an image's memory chunks must be verified before its process
/// runs: asked for, or an image whose agent cannot wait for restart's
/// background check (written before version 7) and gets no image mappings.
pub fn verify_first(image: &ImageReader, asked: bool) -> bool {
    asked || image.header().version < 7
}

/// Everything that can be checked before anything starts. The memory
/// chunks' checksums are checked here only with `verify_first`; otherwise
/// restart checks them in the background (`verify`).
fn precheck(image: &ImageReader, verify_first: bool) -> Result<(), RestoreError> {
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
    // Pages of private file mappings that the program never wrote come
    // from the file: it must be the one mapped (shared mappings are saved
    // whole and written back, or read what the file holds now).
    let mut checked: Vec<&str> = Vec::new();
    for r in &meta.regions {
        let RegionKind::File { path, id, .. } = &r.kind else { continue };
        if r.shared {
            std::fs::metadata(path).map_err(|e| RestoreError(format!("{path} (mapped by the program): {e}")))?;
            continue;
        }
        if checked.contains(&path.as_str()) {
            continue;
        }
        checked.push(path);
        let f = File::open(path).map_err(|e| RestoreError(format!("{path} (mapped by the program): {e}")))?;
        if let Some(what) = check_mapped_file(path, id, &f).map_err(RestoreError)? {
            accept_copy(path, &what, &f)?;
        }
    }
    for f in &meta.fds {
        // /proc paths are of the restored processes' own /proc, inside
        // their pid namespace: opened there.
        // A file whose contents were saved is made again from them (an
        // SQLite journal that the killed run deleted after the checkpoint).
        if let FdKind::File { path, deleted: false, saved, .. } = &f.kind
            && !matches!(saved, stasis_image::FileSave::Copy { .. })
            && !path.starts_with("/proc/")
            && !Path::new(path).exists()
        {
            return err(format!("{path} (open as fd {}) no longer exists", f.fd));
        }
        if let FdKind::Inotify { watches, .. } = &f.kind
            && let Some(w) = watches.iter().find(|w| !w.path.is_empty() && !Path::new(&w.path).exists())
        {
            return err(format!("{} (watched by inotify on fd {}) no longer exists", w.path, f.fd));
        }
    }
    vdso::check_compatible(meta, image).map_err(RestoreError)?;
    // The earlier generations an incremental image refers to: there,
    // checked against their MANIFESTs, and verified with it when asked.
    let older = memory::older_images(image)?;
    if verify_first {
        image.verify_payload().map_err(|e| RestoreError(e.to_string()))?;
        for o in &older {
            o.verify_payload().map_err(|e| RestoreError(e.to_string()))?;
        }
    }
    Ok(())
}

/// Compares the file `f` found at `path` with the identity the image holds
/// for it (the rule: `stasis_image::identity::compare`). Ok(None): the
/// same file; Ok(Some(what)): the same size, mtime and first pages and no
/// build-id, but another inode or ctime (`what`), which the caller decides
/// on; Err: another file, in one line.
pub(crate) fn check_mapped_file(path: &str, then: &FileId, f: &File) -> Result<Option<String>, String> {
    let now = identity::identify(f).map_err(|e| format!("{path} (mapped by the program): {e}"))?;
    match identity::compare(then, &now) {
        Verdict::Same => Ok(None),
        Verdict::Copy(what) => Ok(Some(what)),
        Verdict::Changed(what) => {
            Err(format!("{path} changed since the checkpoint ({what}): restart needs the same file"))
        }
    }
}

/// A file with no build-id that matches by size, mtime and first pages but
/// is another inode or was changed since (ctime): a copy on another node, a
/// reinstalled package, or the file written again with its mtime put back.
/// Its pages past the first ones cannot be compared, so it is taken only
/// when nobody but the user or root could have made it so: owned by one of
/// them and not writable by group or others. A note says so.
fn accept_copy(path: &str, what: &str, f: &File) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let md = f.metadata().map_err(|e| RestoreError(format!("{path} (mapped by the program): {e}")))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let why_not = if md.uid() != 0 && md.uid() != me {
        format!("it is owned by uid {}", md.uid())
    } else if md.mode() & 0o022 != 0 {
        format!("group or others can write it (mode {:o})", md.mode() & 0o7777)
    } else {
        // On restart's stderr even once the program's descriptors are in
        // place (`Helpers::map_fd` checks files then).
        log(&format!(
            "stasis: restart: note: {path} is not the very file the program mapped ({what}) but has its size, \
             mtime and first {} KiB and only you or root can write it: using it\n",
            identity::HEAD_LEN >> 10
        ));
        return Ok(());
    };
    Err(RestoreError(format!(
        "{path} may have changed since the checkpoint ({what}; it has no build-id and {why_not}): restart needs \
         the same file"
    )))
}

/// Checks that the images can be restored together as one computation:
/// one image per process, each pid once.
pub fn check_computation(metas: &[&stasis_image::ProcessMeta]) -> Result<(), RestoreError> {
    tree::check(metas).map_err(RestoreError)
}

/// Raises this process's soft limit of open files to its hard limit.
fn raise_open_files_limit() {
    // SAFETY: getrlimit and setrlimit read and write one local rlimit.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Whether the computation had a terminal that restart must give it one of
/// its own for: one that is not a pseudo-terminal whose master is in the
/// computation too (those are made again as pairs).
pub fn needs_terminal(images: &[&ImageReader], stdin_terminal: bool) -> bool {
    pty::needs_outside_terminal(images, stdin_terminal)
}

/// Restores the computation in `images` (already opened), all of it in one
/// new pid namespace, handing `agent_conns[i]` to the agent of image `i`
/// as its coordinator connection.
///
/// `terminal`, when given, is the terminal (a pseudo-terminal's slave) that
/// the processes' terminal descriptors become: the controlling terminal of
/// their session, with the foreground process group they had.
///
/// `gate`: None to verify every image's memory chunks before anything
/// runs; otherwise the read end of `verify::Gate`, which the restored
/// agents wait on before any checkpoint while restart verifies in the
/// background (images for which `verify_first` holds are verified first
/// anyway).
///
/// `tmpdir`: the program's temporary directory as restart was told it
/// (`--tmpdir`), for the agents to put in `STASIS_TMPDIR`.
pub fn spawn_computation(
    images: &[&ImageReader],
    agent_conns: Vec<OwnedFd>,
    terminal: Option<&OwnedFd>,
    gate: Option<&OwnedFd>,
    tmpdir: Option<&[u8]>,
) -> Result<Spawned, RestoreError> {
    for image in images {
        precheck(image, verify_first(image, gate.is_none()))
            .map_err(|e| RestoreError(format!("process {}: {e}", image.meta().pid)))?;
    }
    let metas: Vec<&stasis_image::ProcessMeta> = images.iter().map(|i| i.meta()).collect();
    tree::check(&metas).map_err(RestoreError)?;
    let shape = tree::Shape::of(&metas);
    if shape.roots.is_empty() {
        return Err(RestoreError("no process of the checkpoint has its parent outside it".into()));
    }
    // Pipes between processes are made here, above every descriptor
    // number any process uses, and inherited by all of them.
    let min_fd = metas.iter().flat_map(|m| m.fds.iter().map(|f| f.fd + 1)).max().unwrap_or(0).max(16);
    // A program may use numbers up to its soft limit (1023 under the usual
    // 1024): restart's own go above, up to the hard limit. Each process
    // gets its saved limits back before it runs (`restore_process`).
    raise_open_files_limit();
    // Files open for writing get their contents at the checkpoint back
    // before any process could see them.
    fds::put_back_saved_files(images, &mut |w| eprintln!("stasis: restart: {w}")).map_err(RestoreError)?;
    let pipes = fds::SharedPipes::create(images, min_fd).map_err(RestoreError)?;
    let shm = shm::SharedMemory::create(images, min_fd).map_err(|e| {
        pipes.close();
        RestoreError(e)
    })?;
    let socks =
        sockets::SharedSockets::create(images, min_fd, &mut |w| eprintln!("stasis: restart: {w}")).map_err(|e| {
            pipes.close();
            shm.close();
            RestoreError(e)
        })?;
    let ptys = pty::SharedPtys::create(images, min_fd).map_err(|e| {
        pipes.close();
        shm.close();
        socks.close();
        RestoreError(e)
    })?;
    // Made by init, in the computation's new IPC namespace.
    let ipc = ipc::Ipc::new(images);
    let barrier = tree::Barrier::new(images.len()).map_err(RestoreError)?;
    let conns: Vec<i32> = agent_conns.iter().map(AsRawFd::as_raw_fd).collect();
    let terminal = terminal.map(AsRawFd::as_raw_fd);
    // Above every number a program uses, like the objects above: each
    // process keeps it through its descriptors' restore (`fds`).
    let gate = match gate {
        // SAFETY: F_DUPFD_CLOEXEC of a descriptor the caller holds.
        Some(g) => match unsafe { libc::fcntl(g.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min_fd) } {
            // SAFETY: just made, owned here (closed once the processes have it).
            fd if fd >= 0 => Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
            _ => {
                pipes.close();
                shm.close();
                socks.close();
                ptys.close();
                return Err(RestoreError(format!("the verification pipe: {}", io::Error::last_os_error())));
            }
        },
        None => None,
    };
    let gate_fd = gate.as_ref().map(AsRawFd::as_raw_fd);
    let ctx = Ctx {
        images,
        shape: &shape,
        shared: fds::Shared {
            pipes: &pipes,
            shm: &shm,
            sockets: &socks,
            terminal,
            ptys: &ptys,
            gate: gate_fd,
            ipc: &ipc,
        },
        barrier: &barrier,
        conns: &conns,
        gate: gate_fd,
        tmpdir,
    };
    let root_pids: Vec<i32> = shape.roots.iter().map(|&i| shape.pids[i]).collect();
    // The first root's outside (its launcher, group and session) comes
    // back as stand-ins, for it and for the roots launched beside it.
    let first = metas[shape.roots[0]];
    let stand_ins = ns::stand_ins(first.ppid, first.pgid, first.sid, &shape.pids);
    let below: Vec<bool> = shape.roots.iter().map(|&i| metas[i].ppid == first.ppid).collect();
    let prepare = || ipc.create(min_fd);
    let roots =
        ns::Roots { pids: &root_pids, below_stand_ins: &below, stand_ins: &stand_ins, terminal, prepare: &prepare };
    let spawned = ns::spawn(roots, |i| member(&ctx, shape.roots[i]));
    pipes.close();
    shm.close();
    socks.close();
    ptys.close();
    drop(gate);
    drop(agent_conns);
    let (init_pid, status) = spawned?;
    Ok(Spawned { init_pid, status })
}

/// What every process of the restore shares (inherited across its clones).
struct Ctx<'a> {
    images: &'a [&'a ImageReader],
    shape: &'a tree::Shape,
    shared: fds::Shared<'a>,
    barrier: &'a tree::Barrier,
    conns: &'a [i32],
    /// The read end of `verify::Gate`, when restart verifies in the background.
    gate: Option<i32>,
    /// Restart's `--tmpdir`, for the agents (`plan::build_and_jump`).
    tmpdir: Option<&'a [u8]>,
}

/// Where the process being restored reports: the restart command's stderr
/// (fd 2 until the program's own descriptors replace it).
static LOG_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(2);

fn log(msg: &str) {
    let fd = LOG_FD.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: write() of a buffer we own.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// Runs in the process that becomes the restored process of image `i`.
/// A failure is said on restart's stderr, naming the process, the step
/// and the reason, before the process ends with 125 (which restart
/// returns): never nothing.
fn member(ctx: &Ctx<'_>, i: usize) -> ! {
    // A bug here must not print on the program's stderr (fd 2 is the
    // program's once its descriptors are in place), nor end otherwise.
    std::panic::set_hook(Box::new(|info| log(&format!("stasis: restart: internal error: {info}\n"))));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| become_restored(ctx, i)))
        .unwrap_or_else(|_| Err("an internal error (above)".into()));
    ctx.barrier.fail();
    let why = result.err().unwrap_or_default();
    // The one that failed says why; the others only that they gave up.
    if why != tree::ANOTHER_FAILED {
        let meta = ctx.images[i].meta();
        log(&format!("stasis: restart: restoring process {} ({}) failed: {why}\n", meta.pid, meta.name));
    }
    // SAFETY: leaving without running the caller's atexit handlers.
    unsafe { libc::_exit(125) }
}

/// `Err` with the step that failed in front of its reason.
fn step<T>(what: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| if e == tree::ANOTHER_FAILED { e } else { format!("{what}: {e}") })
}

/// Makes this process's children (and zombies), waits for the whole tree,
/// then turns into the saved process. Returns only on failure.
fn become_restored(ctx: &Ctx<'_>, i: usize) -> Result<(), String> {
    let image = ctx.images[i];
    let meta = image.meta();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    if pid != meta.pid {
        return Err(format!("making the process: got pid {pid} instead of {}", meta.pid));
    }
    // Its controlling terminal: a pseudo-terminal of the computation made
    // again, or restart's own.
    let ctty = ctx.shared.ptys.controlling(meta, ctx.shared.terminal);
    step("taking its session or process group", tree::lead(meta, ctty))?;
    for &c in &ctx.shape.children[i] {
        if step("making its children", ns::clone_with_pid(ctx.shape.pids[c]))? == 0 {
            member(ctx, c);
        }
    }
    for z in &meta.zombies {
        let child = step("making its zombie children", ns::clone_with_pid(z.pid))?;
        if child == 0 {
            tree::exit_as(z.status);
        }
        step("making its zombie children", tree::wait_exited(child))?;
    }
    step("waiting for the other processes", ctx.barrier.arrive(tree::MADE))?;
    let mut warnings = Vec::new();
    tree::join_group(meta, &ctx.shape.pids, &mut |w| warnings.push(w));
    step("waiting for the other processes", ctx.barrier.arrive(tree::GROUPED))?;
    if let Some(t) = ctty {
        tree::take_foreground(meta, t);
    }
    tree::forget_sigchld(meta);
    prepare_and_jump(image, ctx.conns[i], ctx, warnings, &|| {
        step("waiting for the other processes", ctx.barrier.arrive(tree::READY))
    })
}

fn prepare_and_jump(
    image: &ImageReader,
    agent_conn: i32,
    ctx: &Ctx<'_>,
    mut warnings: Vec<String>,
    ready: &dyn Fn() -> Result<(), String>,
) -> Result<(), String> {
    let meta = image.meta();
    step("writing back its shared file mappings", fds::write_back_shared(meta, image))?;
    let helpers = step(
        "reopening its descriptors",
        fds::restore(meta, image, agent_conn, &ctx.shared, &mut |w| warnings.push(w)),
    )?;
    LOG_FD.store(helpers.log, std::sync::atomic::Ordering::Relaxed);
    for w in warnings {
        log(&format!("stasis: restart: process {} ({}): {w}\n", meta.pid, meta.name));
    }
    std::env::set_current_dir(&meta.cwd).map_err(|e| format!("entering its working directory {}: {e}", meta.cwd))?;
    // SAFETY: umask and setrlimit only change this process's settings.
    unsafe {
        libc::umask(meta.umask as libc::mode_t);
        // RLIMIT_NOFILE last, by the restorer, just before restart's own
        // descriptors (above the program's) are closed (`plan`).
        for l in meta.rlimits.iter().filter(|l| l.resource != libc::RLIMIT_NOFILE) {
            let mut cur: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(l.resource as _, &mut cur) != 0 {
                continue;
            }
            let want = libc::rlimit { rlim_cur: l.soft.min(cur.rlim_max), rlim_max: l.hard.min(cur.rlim_max) };
            libc::setrlimit(l.resource as _, &want);
        }
    }
    step("preparing its memory", plan::build_and_jump(image, ctx.gate, ctx.tmpdir, helpers, ready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn identity_of(path: &Path) -> FileId {
        identity::identify(&File::open(path).unwrap()).unwrap()
    }

    /// Rewrites `path` as a new file with `bytes`, its old mtime and `mode`.
    fn replace(path: &Path, bytes: &[u8], mode: u32) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn check(path: &Path, then: &FileId) -> Result<Option<String>, String> {
        let p = path.to_str().unwrap();
        let f = File::open(path).unwrap();
        let r = check_mapped_file(p, then, &f)?;
        if let Some(what) = &r {
            accept_copy(p, what, &f).map_err(|e| e.0)?;
        }
        Ok(r)
    }

    #[test]
    fn an_elf_file_is_judged_by_its_build_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("true");
        let bytes = std::fs::read("/bin/true").unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let then = identity_of(&path);
        assert!(!then.build_id.is_empty());
        assert_eq!(check(&path, &then), Ok(None));
        // The same build as a new file, even group-writable: accepted.
        replace(&path, &bytes, 0o775);
        assert_eq!(check(&path, &then), Ok(None));
        // Another build-id, same size and mtime: refused, naming both.
        let mut other = bytes.clone();
        let id_at = other.windows(then.build_id.len()).position(|w| w == then.build_id.as_slice()).unwrap();
        other[id_at] ^= 1;
        replace(&path, &other, 0o755);
        let e = check(&path, &then).unwrap_err();
        let mut now_id = then.build_id.clone();
        now_id[0] ^= 1;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            e,
            format!(
                "{} changed since the checkpoint (build-id {} then, {} now): restart needs the same file",
                path.display(),
                hex(&then.build_id),
                hex(&now_id)
            )
        );
    }

    #[test]
    fn a_file_without_build_id_needs_its_first_pages_and_a_trusted_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let then = identity_of(&path);
        assert!(then.build_id.is_empty());
        assert_eq!(check(&path, &then), Ok(None));
        // Same size and mtime, other first pages: refused.
        let mut other = bytes.clone();
        other[10] ^= 1;
        replace(&path, &other, 0o644);
        let e = check(&path, &then).unwrap_err();
        assert!(
            e.ends_with("(same size and mtime, other contents in the first 64 KiB): restart needs the same file"),
            "{e}"
        );
        // A copy (another inode, or the inode number reused but another
        // ctime) of one's own that nobody else can write: taken, as on
        // another node.
        replace(&path, &bytes, 0o644);
        let what = check(&path, &then).unwrap().unwrap();
        assert!(what.starts_with("inode ") || what.starts_with("ctime "), "{what}");
        // The same copy writable by others: refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check(&path, &then).unwrap_err();
        assert!(e.contains("it has no build-id and group or others can write it (mode 666)"), "{e}");
        assert!(e.starts_with(&format!("{} may have changed since the checkpoint (", path.display())), "{e}");
        // Another size: refused whoever owns it.
        replace(&path, &bytes[..5000], 0o644);
        let e = check(&path, &then).unwrap_err();
        assert!(e.contains("(size 100000 then, 5000 now)"), "{e}");
    }
}
