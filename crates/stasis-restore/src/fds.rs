//! Descriptors of the restored process, set up in it before the restorer
//! runs: files reopened at their flags and offsets, stdio handed over from
//! the restart command, the agent's coordinator connection, and restart's
//! own helpers kept above every descriptor number the program uses.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use stasis_image::{ChunkKind, FdKind, FileId, FileSave, ImageReader, ProcessMeta};

use crate::kobj;

/// Restart's own descriptors in the restored process, all >= `base`.
pub struct Helpers {
    pub base: i32,
    pub image: i32,
    pub log: i32,
    next_hint: i32,
    /// Descriptors of mapped files by (path, opened for writing), and
    /// whether the file was checked against the image's identity.
    maps: HashMap<(String, bool), (i32, bool)>,
    /// Descriptors of shared memory objects by (dev, inode).
    shm: HashMap<(u64, u64), i32>,
}

impl Helpers {
    /// One past the highest helper descriptor.
    pub fn end(&self) -> i32 {
        self.next_hint
    }

    /// A descriptor of `path` to map from, opened once per path and mode.
    /// With `id` (a private mapping, whose pages the program never wrote
    /// come from the file), the descriptor's file is checked against it:
    /// restart checked the path before anything started, and this makes
    /// sure the file mapped is still one that passed (a copy it accepted
    /// stays accepted).
    pub fn map_fd(&mut self, path: &str, write: bool, id: Option<&FileId>) -> Result<i32, String> {
        if let Some(&(fd, checked)) = self.maps.get(&(path.to_string(), write))
            && (checked || id.is_none())
        {
            return Ok(fd);
        }
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let fd = open(path, flags | libc::O_CLOEXEC)?;
        if let Some(id) = id {
            // SAFETY: `fd` was just opened and is owned here; the File is
            // turned back into the raw descriptor without closing it.
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            let checked = crate::check_mapped_file(path, id, &f);
            let fd = f.into_raw_fd();
            if let Err(e) = checked {
                close(fd);
                return Err(e);
            }
        }
        let fd = self.keep(fd)?;
        self.maps.insert((path.to_string(), write), (fd, id.is_some()));
        Ok(fd)
    }

    /// The descriptor to map shared memory object (dev, inode) from.
    pub fn shm_fd(&self, dev: u64, inode: u64) -> Result<i32, String> {
        self.shm.get(&(dev, inode)).copied().ok_or_else(|| format!("no shared memory object {dev:x}:{inode}"))
    }

    /// Moves `fd` to the helper range and returns its new number.
    pub fn keep(&mut self, fd: i32) -> Result<i32, String> {
        let new = dup_at_least(fd, self.next_hint)?;
        close(fd);
        self.next_hint = self.next_hint.max(new + 1);
        Ok(new)
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("path with a NUL byte: {s:?}"))
}

fn open(path: &str, flags: i32) -> Result<i32, String> {
    let c = cstr(path)?;
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600) };
    if fd < 0 { Err(format!("open {path}: {}", std::io::Error::last_os_error())) } else { Ok(fd) }
}

fn dup_at_least(fd: i32, min: i32) -> Result<i32, String> {
    // SAFETY: F_DUPFD on a descriptor we own.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD, min) };
    if r < 0 { Err(format!("dup fd {fd}: {}", std::io::Error::last_os_error())) } else { Ok(r) }
}

fn dup2(from: i32, to: i32) -> Result<(), String> {
    // SAFETY: dup2 between descriptors we own.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(format!("dup2 to fd {to}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this code owns.
    unsafe { libc::close(fd) };
}

/// The pipes of the computation whose two ends are both in it, made once
/// by restart (with their capacity and their bytes in flight) and inherited
/// by every process, which takes the ends it held and closes the rest.
pub struct SharedPipes {
    /// Pipe id (its inode at checkpoint time) to (read end, write end).
    ends: HashMap<u64, (i32, i32)>,
    /// The named pipes among them: one descriptor open for both, from
    /// which each process opens the end it had.
    fifos: Vec<u64>,
}

impl SharedPipes {
    /// Makes every pipe of which some image holds a read end and some image
    /// a write end, at descriptors >= `min_fd`.
    pub fn create(images: &[&ImageReader], min_fd: i32) -> Result<SharedPipes, String> {
        // (read end seen, write end seen, capacity, fifo path) per pipe, in
        // order of appearance.
        // (id, read end seen, write end seen, capacity, fifo path, the
        // other end was closed by everyone) per pipe, in order of appearance.
        let mut seen: Vec<(u64, bool, bool, u32, &str, bool)> = Vec::new();
        for image in images {
            // The launch's stdio from outside becomes restart's own.
            for f in image.meta().fds.iter().filter(|f| f.outside_stdio.is_none()) {
                let FdKind::Pipe { id, write, size, ref fifo, peer_gone, .. } = f.kind else { continue };
                match seen.iter_mut().find(|p| p.0 == id) {
                    Some(p) => {
                        p.1 |= !write;
                        p.2 |= write;
                        p.3 = p.3.max(size);
                        p.5 &= peer_gone;
                    }
                    None => seen.push((id, !write, write, size, fifo, peer_gone)),
                }
            }
        }
        let mut pipes = SharedPipes { ends: HashMap::new(), fifos: Vec::new() };
        for (id, read, write, size, fifo, peer_gone) in seen {
            // A named pipe is opened again by its path, whoever holds its
            // other end; a pipe(2) when both ends are ours, or when the other
            // end is nobody's (a reader still has bytes, then end of file).
            if fifo.is_empty() && !(read && write) && !peer_gone {
                continue; // the other end is outside the computation
            }
            let contents = pipe_contents(images, id)?;
            let mut warn = |w: String| {
                // Nothing is lost quietly: the restart log says so.
                eprintln!("stasis: restart: pipe {id}: {w}");
            };
            let made = if fifo.is_empty() {
                kobj::pipe(size, &contents, min_fd, &mut warn)
            } else {
                pipes.fifos.push(id);
                kobj::fifo(fifo, size, &contents, min_fd, &mut warn).map(|fd| (fd, fd))
            };
            match made {
                Ok((r, w)) if fifo.is_empty() && !(read && write) => {
                    // The end nobody holds any more is closed again.
                    let ends = if read {
                        close(w);
                        (r, -1)
                    } else {
                        close(r);
                        (-1, w)
                    };
                    pipes.ends.insert(id, ends);
                }
                Ok(ends) => {
                    pipes.ends.insert(id, ends);
                }
                Err(e) => {
                    pipes.close();
                    return Err(format!("make a pipe again: {e}"));
                }
            }
        }
        Ok(pipes)
    }

    fn get(&self, id: u64) -> Option<(i32, i32)> {
        self.ends.get(&id).copied()
    }

    fn fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.ends.values().flat_map(|&(r, w)| [r, w]).filter(|&fd| fd >= 0).collect();
        fds.dedup();
        fds
    }

    fn is_fifo(&self, id: u64) -> bool {
        self.fifos.contains(&id)
    }

    /// Closes this process's copies.
    pub fn close(&self) {
        let mut fds = self.fds();
        fds.sort_unstable();
        fds.dedup();
        for fd in fds {
            close(fd);
        }
    }
}

/// The bytes in flight of pipe `id`, from the first image that saved them
/// (all copies are of one instant).
fn pipe_contents(images: &[&ImageReader], id: u64) -> Result<Vec<(u64, Vec<u8>)>, String> {
    saved_contents(images, |k| matches!(k, FdKind::Pipe { id: other, .. } if *other == id))
}

/// The file-contents chunks (offset, bytes), in order, that the first image
/// holding any saved for a descriptor whose kind `is_it` picks. An object
/// several processes share is saved by each, all of one instant: any copy
/// will do.
pub fn saved_contents(images: &[&ImageReader], is_it: impl Fn(&FdKind) -> bool) -> Result<Vec<(u64, Vec<u8>)>, String> {
    for image in images {
        let meta = image.meta();
        let mut out = Vec::new();
        for c in &meta.chunks {
            if let ChunkKind::FileContents { fd_index, offset } = c.kind
                && is_it(&meta.fds[fd_index as usize].kind)
            {
                out.push((offset, image.chunk_data(c).map_err(|e| e.to_string())?));
            }
        }
        if !out.is_empty() {
            out.sort_by_key(|(o, _)| *o);
            return Ok(out);
        }
    }
    Ok(Vec::new())
}

/// What restart made for the whole computation, inherited by every process:
/// each takes what it held and closes the rest.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    pub pipes: &'a SharedPipes,
    pub shm: &'a crate::shm::SharedMemory,
    pub sockets: &'a crate::sockets::SharedSockets,
    /// The terminal that terminal descriptors become.
    pub terminal: Option<i32>,
    /// Pseudo-terminal pairs of the computation, made again.
    pub ptys: &'a crate::pty::SharedPtys,
    /// The verification gate (`verify::Gate`): kept open for `plan`.
    pub gate: Option<i32>,
    /// POSIX message queues (and System V objects), made again by init.
    pub ipc: &'a crate::ipc::Ipc,
}

/// What a descriptor that led outside the computation becomes: at 0-2 the
/// restart command's own, a pipe or socket a connection whose peer is
/// gone (None: it stays closed).
fn outside(fd: i32, what: &str, stdio: &[i32], warn: &mut dyn FnMut(String)) -> Result<Option<i32>, String> {
    match stdio.get(fd as usize) {
        Some(&from) if from >= 0 => Ok(Some(dup_at_least(from, 0)?)),
        // A pipe or socket to outside the computation cannot be saved: its
        // stand-in is a connection whose peer is gone, so the program sees
        // end of file or EPIPE, as when a peer dies, rather than a
        // descriptor that vanished.
        _ if what.starts_with("socket:") || what.starts_with("pipe:") => {
            warn(format!(
                "fd {fd} ({what}) was connected outside the computation; it comes back disconnected \
                 (reads see end of file, writes fail with EPIPE)"
            ));
            Ok(Some(kobj::disconnected().map_err(|e| format!("fd {fd}: {e}"))?))
        }
        _ => {
            warn(format!("fd {fd} ({what}) pointed outside the computation; it is closed"));
            Ok(None)
        }
    }
}

/// What a descriptor holding the launch's stdio `k` from outside becomes:
/// restart's own `k`, whatever it was (a file, a pipe, a terminal), so
/// that `stasis restart DIR > new.log` gets the output. Restart without a
/// descriptor `k` gives it /dev/null, and says so.
fn outside_stdio(fd: i32, k: u8, flags: u32, stdio: &[i32], warn: &mut dyn FnMut(String)) -> Result<i32, String> {
    match stdio.get(k as usize) {
        Some(&from) if from >= 0 => dup_at_least(from, 0),
        _ => {
            warn(format!("fd {fd} was the launch's stdio {k}, which restart has not got; it comes back as /dev/null"));
            open("/dev/null", (flags as i32) & libc::O_ACCMODE)
        }
    }
}

/// The open flags a descriptor was saved with (for /dev/null in its place).
fn saved_flags(kind: &FdKind) -> u32 {
    match kind {
        FdKind::File { flags, .. }
        | FdKind::Device { flags, .. }
        | FdKind::Pipe { flags, .. }
        | FdKind::Terminal { flags, .. }
        | FdKind::Socket { flags, .. } => *flags,
        _ => libc::O_RDWR as u32,
    }
}

/// Whether the descriptor is restart's own terminal (`fd` 0 of restart
/// here is one): a terminal from outside then comes back as the terminal
/// restart made, relayed to it, and the controlling terminal as before.
fn in_restart_terminal(f: &stasis_image::Fd, stdio: &[i32], terminal: Option<i32>) -> bool {
    // SAFETY: isatty on a descriptor we own (or -1, which it refuses).
    matches!(f.kind, FdKind::Terminal { .. }) && terminal.is_some() && unsafe { libc::isatty(stdio[0]) } == 1
}

/// Puts every saved descriptor at its number. `agent_conn` becomes the
/// agent's descriptor; pipes between processes come from `pipes`; `warn`
/// collects what could not be restored.
pub fn restore(
    meta: &ProcessMeta,
    image: &ImageReader,
    agent_conn: i32,
    shared: &Shared<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<Helpers, String> {
    let Shared { pipes, shm, sockets, terminal, ptys, gate, ipc } = *shared;
    // Contents of deleted files, read while the image's descriptor is open.
    let mut saved_contents: HashMap<i32, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for c in &meta.chunks {
        if let ChunkKind::FileContents { fd_index, offset } = c.kind {
            let fd = meta.fds[fd_index as usize].fd;
            saved_contents.entry(fd).or_default().push((offset, image.chunk_data(c).map_err(|e| e.to_string())?));
        }
    }
    let base = meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
    let mut inherited = pipes.fds();
    inherited.extend(shm.fds());
    inherited.extend(sockets.fds());
    inherited.extend(terminal);
    inherited.extend(ptys.fds());
    inherited.extend(gate);
    inherited.extend(ipc.fds());
    let base = base.max(16).max(inherited.iter().max().map_or(0, |m| m + 1));
    // Our own descriptors go above the program's first.
    let stdio: Vec<i32> = (0..3).map(|fd| dup_at_least(fd, base).unwrap_or(-1)).collect();
    let agent = dup_at_least(agent_conn, base)?;
    let image_fd = dup_at_least(image.file().as_raw_fd(), base)?;
    let log = dup_at_least(2, base)?;
    // From here on fd 2 may be the program's (or nothing): a failure must
    // still reach restart's stderr.
    crate::LOG_FD.store(log, std::sync::atomic::Ordering::Relaxed);
    let mut keep: Vec<i32> = stdio.clone();
    keep.extend([agent, image_fd, log]);
    keep.extend(&inherited);
    crate::ns::close_all_but(&keep);

    for f in &meta.fds {
        // Which descriptor a failure is about.
        let at = |e: String| format!("fd {}: {e}", f.fd);
        let tmp = match &f.kind {
            _ if let Some(k) = f.outside_stdio
                && !in_restart_terminal(f, &stdio, terminal) =>
            {
                outside_stdio(f.fd, k, saved_flags(&f.kind), &stdio, warn).map_err(at)?
            }
            FdKind::File { path, flags, offset, size, deleted, dev, inode, .. } => {
                let flags = (*flags as i32) & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
                // A file open for writing had its contents put back already
                // (`put_back_saved_files`), or is left as it is now: it is
                // never cut, which would leave it half old, half new.
                let fd = if *deleted {
                    let contents = saved_contents.get(&f.fd).map_or(&[][..], |v| v.as_slice());
                    deleted_file(contents, path, flags, *size, shm.get(*dev, *inode)).map_err(at)?
                } else {
                    open(path, flags).map_err(at)?
                };
                // SAFETY: lseek on our own descriptor.
                if unsafe { libc::lseek(fd, *offset as i64, libc::SEEK_SET) } < 0 {
                    return Err(at(format!("seek {path}: {}", std::io::Error::last_os_error())));
                }
                fd
            }
            FdKind::Directory { path, flags } | FdKind::Device { path, flags } => {
                open(path, *flags as i32).map_err(at)?
            }
            FdKind::Inherited { what } => match outside(f.fd, what, &stdio, warn)? {
                Some(fd) => fd,
                None => continue,
            },
            FdKind::Agent => dup_at_least(agent, 0)?,
            FdKind::Unsupported => {
                warn(format!("fd {} could not be saved; it is closed", f.fd));
                continue;
            }
            FdKind::EventFd { count, semaphore, flags } => {
                kobj::eventfd(*count, *semaphore, *flags).map_err(|e| format!("fd {}: eventfd: {e}", f.fd))?
            }
            FdKind::SignalFd { mask, flags } => {
                kobj::signalfd(*mask, *flags).map_err(|e| format!("fd {}: signalfd: {e}", f.fd))?
            }
            FdKind::TimerFd { clock, flags, value_ns, interval_ns, ticks } => {
                kobj::timerfd(*clock, *flags, *value_ns, *interval_ns, *ticks, &mut |w| {
                    warn(format!("fd {} (timerfd): {w}", f.fd))
                })
                .map_err(|e| format!("fd {}: timerfd: {e}", f.fd))?
            }
            // Rebuilt below, once what it watches is in place.
            FdKind::Epoll { .. } => continue,
            FdKind::Inotify { flags, watches, unread } => {
                kobj::inotify(*flags, watches, *unread, &mut |w| warn(format!("fd {} (inotify): {w}", f.fd)))
                    .map_err(|e| format!("fd {}: inotify: {e}", f.fd))?
            }
            FdKind::Pipe { id, write, flags, .. } => match pipes.get(*id) {
                // A named pipe's own end: opened again through the
                // descriptor open for both (no wait for a peer).
                Some((both, _)) if pipes.is_fifo(*id) => {
                    let mode = (*flags as i32) & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND);
                    open(&format!("/proc/self/fd/{both}"), mode).map_err(at)?
                }
                Some((r, w)) => {
                    let fd = dup_at_least(if *write { w } else { r }, 0)?;
                    // SAFETY: F_SETFL on our own descriptor; O_NONBLOCK is the flag that matters.
                    unsafe { libc::fcntl(fd, libc::F_SETFL, (*flags as i32) & libc::O_NONBLOCK) };
                    fd
                }
                None => match outside(f.fd, &format!("pipe:[{id}]"), &stdio, warn)? {
                    Some(fd) => fd,
                    None => continue,
                },
            },
            FdKind::Terminal { flags, pty: Some(end), .. } if let Some(t) = ptys.get(end) => {
                let fd = dup_at_least(t, 0)?;
                // SAFETY: F_SETFL on our own descriptor; O_NONBLOCK is the flag that matters.
                unsafe { libc::fcntl(fd, libc::F_SETFL, (*flags as i32) & libc::O_NONBLOCK) };
                fd
            }
            FdKind::Terminal { flags, termios, .. } => match terminal {
                Some(t) => {
                    let fd = dup_at_least(t, 0)?;
                    set_termios(fd, termios);
                    // SAFETY: F_SETFL on our own descriptor; O_NONBLOCK is the flag that matters.
                    unsafe { libc::fcntl(fd, libc::F_SETFL, (*flags as i32) & libc::O_NONBLOCK) };
                    fd
                }
                None => match outside(f.fd, "terminal", &stdio, warn)? {
                    Some(fd) => fd,
                    None => continue,
                },
            },
            FdKind::MessageQueue { id, flags, notify, .. } => match ipc.queue(*id) {
                Some(q) => crate::ipc::open_queue(q, *flags, notify.as_ref(), meta.pid, &mut |w| {
                    warn(format!("fd {} (message queue): {w}", f.fd))
                })
                .map_err(|e| at(format!("message queue: {e}")))?,
                None => {
                    warn(format!("fd {}: its message queue was not made again; it is closed", f.fd));
                    continue;
                }
            },
            FdKind::Socket { id, flags, .. } => match sockets.get(*id) {
                Some(s) => {
                    let fd = dup_at_least(s, 0)?;
                    // SAFETY: F_SETFL on our own descriptor; O_NONBLOCK is the flag that matters.
                    unsafe { libc::fcntl(fd, libc::F_SETFL, (*flags as i32) & libc::O_NONBLOCK) };
                    fd
                }
                None => match outside(f.fd, &format!("socket:[{id}]"), &stdio, warn)? {
                    Some(fd) => fd,
                    None => continue,
                },
            },
        };
        if tmp != f.fd {
            dup2(tmp, f.fd)?;
            close(tmp);
        }
        let fdflag = if f.cloexec { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: F_SETFD on a descriptor we just placed.
        unsafe { libc::fcntl(f.fd, libc::F_SETFD, fdflag) };
    }
    pipes.close();
    sockets.close();
    if let Some(t) = terminal {
        close(t);
    }
    ptys.close();
    // The shared memory this process maps, in the helper range (the
    // restorer maps it, then closes the range).
    let mut next_hint = image_fd.max(log) + 1;
    let mut shm_fds = HashMap::new();
    for r in &meta.regions {
        if let stasis_image::RegionKind::SharedMemory { dev, inode, .. } = r.kind
            && !shm_fds.contains_key(&(dev, inode))
        {
            let from = shm.get(dev, inode).ok_or("a shared memory object was not made")?;
            let fd = dup_at_least(from, next_hint)?;
            next_hint = fd + 1;
            shm_fds.insert((dev, inode), fd);
        }
    }
    shm.close();
    for f in &meta.fds {
        // Its open flags are always O_RDWR: nothing to carry over.
        let FdKind::Epoll { targets, .. } = &f.kind else { continue };
        let ep = kobj::epoll(targets, &mut |w| warn(format!("fd {} (epoll): {w}", f.fd)))
            .map_err(|e| format!("fd {}: epoll: {e}", f.fd))?;
        if ep != f.fd {
            dup2(ep, f.fd)?;
            close(ep);
        }
        let fdflag = if f.cloexec { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: F_SETFD on a descriptor we just placed.
        unsafe { libc::fcntl(f.fd, libc::F_SETFD, fdflag) };
    }
    for fd in stdio.into_iter().chain([agent]) {
        if fd >= 0 {
            close(fd);
        }
    }
    Ok(Helpers { base, image: image_fd, log, next_hint, maps: HashMap::new(), shm: shm_fds })
}

/// Puts saved terminal settings back (glibc's termios, as tcgetattr gave it).
pub(crate) fn set_termios(fd: i32, saved: &[u8]) {
    if saved.len() != std::mem::size_of::<libc::termios>() {
        return;
    }
    // SAFETY: a zeroed termios is valid; it is then overwritten with bytes
    // of the same size that tcgetattr produced.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: copying exactly size_of::<termios>() bytes into `t`.
    unsafe { std::ptr::copy_nonoverlapping(saved.as_ptr(), &mut t as *mut libc::termios as *mut u8, saved.len()) };
    // A process of a background group (an MPI rank under mpirun, a job of
    // a shell) would be stopped by SIGTTOU here: the kernel lets the
    // change through when the signal is blocked, as it is for the moment.
    // SAFETY: a zeroed sigset_t is valid; the calls below fill it.
    let (mut block, mut old): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset/sigaddset write the set; sigprocmask reads and
    // writes the two sets, and puts the old mask back after tcsetattr,
    // which only reads `t`.
    unsafe {
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::sigaddset(&mut block, libc::SIGTTIN);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// A file that was deleted while open comes back from its saved contents
/// as a file with no name, never at its old path (whose directories may be
/// gone too): the shared memory object restart made for it when the
/// program also mapped it MAP_SHARED (`shared`: so that the descriptor and
/// the mapping stay one file), else an unlinked file (`unlinked_file`).
/// The descriptor returned is opened again with the program's `flags`.
fn deleted_file(
    contents: &[(u64, Vec<u8>)],
    path: &str,
    flags: i32,
    size: u64,
    shared: Option<i32>,
) -> Result<i32, String> {
    let what = |e: std::io::Error| format!("deleted file {path}: {e}");
    let rw = match shared {
        Some(obj) => open(&format!("/proc/self/fd/{obj}"), libc::O_RDWR | libc::O_CLOEXEC)?,
        None => unlinked_file(path).map_err(what)?,
    };
    // SAFETY: `rw` was just opened and is owned here.
    let file = unsafe { std::fs::File::from_raw_fd(rw) };
    contents.iter().try_for_each(|(offset, data)| file.write_all_at(data, *offset)).map_err(what)?;
    file.set_len(size).map_err(what)?;
    // Its own open file description, with the program's flags (O_APPEND,
    // read-only...); `file` closes the one it was filled through. The
    // descriptor's link is a symbolic link by nature: O_NOFOLLOW, which the
    // program may have opened the file with, would refuse it.
    open(&format!("/proc/self/fd/{}", file.as_raw_fd()), flags & !libc::O_NOFOLLOW)
}

/// A new unlinked file opened for reading and writing: a memfd for a
/// memfd, else O_TMPFILE in the deleted file's directory if it still
/// exists, else in $TMPDIR or /tmp, else a memfd.
fn unlinked_file(path: &str) -> std::io::Result<i32> {
    if let Some(name) = path.strip_prefix("/memfd:") {
        return memfd(name);
    }
    let dir = std::path::Path::new(path).parent().map(|d| d.to_string_lossy().into_owned());
    let tmp = std::env::var("TMPDIR").ok().filter(|t| t.starts_with('/'));
    for d in [dir, tmp, Some("/tmp".to_string())].into_iter().flatten() {
        if let Ok(fd) = open(&d, libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) {
            return Ok(fd);
        }
    }
    memfd("stasis-deleted-file")
}

fn memfd(name: &str) -> std::io::Result<i32> {
    let c = CString::new(name.replace('\0', "")).unwrap_or_default();
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(fd) }
}

/// Puts back, once for the whole computation and before any process
/// exists, the contents that the checkpoint kept of each file open for
/// writing (`FileSave::Copy`, a file in the generation's directory), in
/// place at the file's path: the program finds the very file it had open,
/// as it was at the checkpoint. A file that was not kept is left as it is
/// now, and `warn` says so.
///
/// A file that only `--checkpoint-open-files` kept (open read-only by
/// every process) is made again if it is gone; if it is there and differs
/// from the copy, it is replaced only where the image allows it
/// (`--allow-file-overwrite`; the file found is kept as `PATH-DATE.bk`),
/// and otherwise the restart is refused, before anything was changed.
pub fn put_back_saved_files(images: &[&ImageReader], warn: &mut dyn FnMut(String)) -> Result<(), String> {
    // Every process that has the file open recorded it; any copy will do
    // (all are of one instant), and a copy wins over a process that had no
    // room left for it.
    let mut saved: Vec<Saved> = Vec::new();
    for image in images {
        for f in &image.meta().fds {
            let FdKind::File { path, flags, saved: FileSave::Copy { name }, deleted: false, .. } = &f.kind else {
                continue;
            };
            if f.outside_stdio.is_some() {
                continue; // restart's own stdio takes its place
            }
            let writes = (*flags as i32) & libc::O_ACCMODE != libc::O_RDONLY;
            match saved.iter_mut().find(|s| s.path == *path) {
                Some(s) => {
                    s.writes |= writes;
                    s.overwrite &= image.meta().allow_file_overwrite;
                }
                None => saved.push(Saved {
                    path,
                    dir: saved_copy_dir(image, name),
                    name,
                    writes,
                    overwrite: image.meta().allow_file_overwrite,
                }),
            }
        }
    }
    // Files only read: all checked before any file is touched.
    let mut backups = Vec::new();
    for s in saved.iter().filter(|s| !s.writes) {
        let same = same_as_copy(s).map_err(|e| format!("compare {} with its saved contents: {e}", s.path))?;
        match same {
            None | Some(true) => {}
            Some(false) if s.overwrite => backups.push(s.path),
            Some(false) => {
                return Err(format!(
                    "{} differs from its contents at the checkpoint, which --checkpoint-open-files saved; \
                     launch with --allow-file-overwrite to have a restart replace it, or put it back as it was",
                    s.path
                ));
            }
        }
    }
    for s in &saved {
        if backups.contains(&s.path) {
            let backup = backup_name(s.path);
            std::fs::rename(s.path, &backup).map_err(|e| format!("keep {} as {backup}: {e}", s.path))?;
            warn(format!(
                "{} differed from its contents at the checkpoint: replaced, the one found kept as {backup}",
                s.path
            ));
        } else if !s.writes && Path::new(s.path).exists() {
            continue; // the same as at the checkpoint
        }
        put_back(s.path, &s.dir, s.name).map_err(|e| format!("put back the contents of {}: {e}", s.path))?;
    }
    let mut done: Vec<&str> = saved.iter().map(|s| s.path).collect();
    for image in images {
        for f in &image.meta().fds {
            let FdKind::File { path, saved: FileSave::Left { why }, deleted: false, .. } = &f.kind else { continue };
            if f.outside_stdio.is_some() {
                continue;
            }
            if !done.contains(&path.as_str()) {
                warn(format!("{path} was not saved at the checkpoint ({why}); it is left as it is now"));
                done.push(path);
            }
        }
    }
    Ok(())
}

/// A file whose contents a checkpoint kept, and where.
struct Saved<'a> {
    path: &'a str,
    dir: std::path::PathBuf,
    name: &'a str,
    /// Open for writing by some process: always put back.
    writes: bool,
    /// Every image that has it allows replacing it (`--allow-file-overwrite`).
    overwrite: bool,
}

/// Whether the file at the saved path holds what its copy holds (None: it
/// is gone).
fn same_as_copy(s: &Saved<'_>) -> std::io::Result<Option<bool>> {
    use std::io::Read;
    let mut file = match std::fs::File::open(s.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut copy = stasis_image::Dir::open(&s.dir)?.open_file(s.name)?;
    if file.metadata()?.len() != copy.metadata()?.len() {
        return Ok(Some(false));
    }
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut file, &mut a)?;
        if read_full(&mut copy, &mut b)? != n || a[..n] != b[..n] {
            return Ok(Some(false));
        }
        if n == 0 {
            return Ok(Some(true));
        }
    }
    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}

/// Where the file found at `path` goes when a saved copy replaces it:
/// `PATH-YYYY-MM-DD-HH-MM-SS.bk` in local time, as DMTCP names it (a
/// number added if that exists already).
fn backup_name(path: &str) -> String {
    // SAFETY: time and localtime_r write only `now` and `tm`.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    let stamp = format!(
        "{path}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
    let mut name = format!("{stamp}.bk");
    let mut n = 1;
    while Path::new(&name).symlink_metadata().is_ok() {
        name = format!("{stamp}.{n}.bk");
        n += 1;
    }
    name
}

/// Where the copy `name` lies: beside the image (in its generation), or,
/// for an image restarted through its DMTCP name in the checkpoint
/// directory, in the generation directory there.
fn saved_copy_dir(image: &ImageReader, name: &str) -> std::path::PathBuf {
    let beside = image.path().parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
    let generation = beside.join(format!("gen-{:06}", image.meta().generation));
    if !beside.join(name).exists() && generation.join(name).exists() { generation } else { beside }
}

/// Overwrites the file at `path` with the copy `name` in `dir`: a reflink
/// where the file system can, else a copy in the kernel; then its length.
fn put_back(path: &str, dir: &std::path::Path, name: &str) -> std::io::Result<()> {
    let mut copy = stasis_image::Dir::open(dir)?.open_file(name)?;
    let len = copy.metadata()?.len();
    // Made again if it is gone (a journal the program deleted after the
    // checkpoint, even with its directories), with the permissions of a
    // file the program creates.
    if let Some(parent) = Path::new(path).parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(path)?;
    // SAFETY: ioctl FICLONE between two descriptors we own; the kernel
    // reads nothing else.
    let cloned = unsafe { libc::ioctl(file.as_raw_fd(), libc::FICLONE, copy.as_raw_fd()) } == 0;
    if !cloned {
        std::io::copy(&mut copy, &mut file)?;
    }
    file.set_len(len)?;
    file.sync_data()
}

/// Writes the saved contents of MAP_SHARED file mappings back into their
/// files, before they are mapped again.
pub fn write_back_shared(meta: &ProcessMeta, image: &ImageReader) -> Result<(), String> {
    for (i, r) in meta.regions.iter().enumerate() {
        let stasis_image::RegionKind::File { path, offset: file_off, .. } = &r.kind else { continue };
        let has_contents =
            meta.chunks.iter().any(|c| matches!(c.kind, ChunkKind::Memory { region, .. } if region as usize == i));
        if !r.shared || !has_contents {
            continue; // private, or never writable: the file is as it was
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("write back shared mapping of {path}: {e}"))?;
        for c in &meta.chunks {
            if let ChunkKind::Memory { region, offset } = c.kind
                && region as usize == i
            {
                let data = image.chunk_data(c).map_err(|e| e.to_string())?;
                file.write_all_at(&data, file_off + offset).map_err(|e| format!("write back {path}: {e}"))?;
            }
        }
    }
    Ok(())
}
