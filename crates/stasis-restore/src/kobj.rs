//! Kernel objects without a path, made again from what the image says:
//! eventfd, signalfd, timerfd, epoll. Each function returns a new
//! descriptor (at the lowest free number) that the caller moves into place.

use std::io;

use stasis_image::{EpollTarget, InotifyWatch};

/// `_IOW('T', 0, u64)`: sets a timerfd's count of unread expirations
/// (kernels built with CONFIG_CHECKPOINT_RESTORE, as distributions' are).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

fn check(r: libc::c_int) -> io::Result<i32> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// The open flag that all four creation calls take under its own name.
fn nonblock(flags: u32) -> libc::c_int {
    (flags as libc::c_int) & libc::O_NONBLOCK
}

fn close(fd: i32) {
    // SAFETY: closes a descriptor this module just made.
    unsafe { libc::close(fd) };
}

pub fn eventfd(count: u64, semaphore: bool, flags: u32) -> io::Result<i32> {
    let mut efd_flags = nonblock(flags);
    if semaphore {
        efd_flags |= libc::EFD_SEMAPHORE;
    }
    // SAFETY: eventfd takes plain integers.
    let fd = check(unsafe { libc::eventfd(0, efd_flags) })?;
    // The initial value is 32 bits; a write sets all 64 (up to 2^64 - 2,
    // which is as far as a counter goes).
    if count > 0 {
        let bytes = count.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n != 8 {
            let e = io::Error::last_os_error();
            close(fd);
            return Err(e);
        }
    }
    Ok(fd)
}

fn sigset(mask: u64) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset and sigaddset only write
    // into the local set (sigaddset refuses numbers it does not know).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..=64 {
            if mask & (1 << (sig - 1)) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
        set
    }
}

pub fn signalfd(mask: u64, flags: u32) -> io::Result<i32> {
    let set = sigset(mask);
    // SAFETY: `set` is a valid sigset_t for the duration of the call.
    check(unsafe { libc::signalfd(-1, &set, nonblock(flags)) })
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

/// A timerfd armed with the time that was left at the checkpoint, so that
/// it expires as late as it would have, with its period; ticks not read by
/// then are given back where the kernel allows it (else `warn` says they
/// are lost).
pub fn timerfd(
    clock: i32,
    flags: u32,
    value_ns: u64,
    interval_ns: u64,
    ticks: u64,
    warn: &mut dyn FnMut(String),
) -> io::Result<i32> {
    // SAFETY: timerfd_create takes plain integers.
    let fd = check(unsafe { libc::timerfd_create(clock, nonblock(flags)) })?;
    // A periodic timer that expired and was not read yet shows no time
    // left: the kernel moves it on only when it is read. Its next expiry
    // is a period on.
    let value_ns = if value_ns == 0 { interval_ns } else { value_ns };
    if value_ns > 0 {
        let spec = libc::itimerspec { it_interval: timespec(interval_ns), it_value: timespec(value_ns) };
        // SAFETY: `spec` is valid for the call; the old value is not asked for.
        if let Err(e) = check(unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) }) {
            close(fd);
            return Err(e);
        }
    }
    if ticks > 0 {
        // SAFETY: the ioctl reads one u64 from a live variable.
        if let Err(e) = check(unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &ticks) }) {
            warn(format!("{ticks} expirations not read before the checkpoint are lost ({e})"));
        }
    }
    Ok(fd)
}

/// An epoll instance watching `targets` again, which must already be at
/// their numbers. A target that cannot be watched (a descriptor restored
/// closed) is left out, with a warning.
pub fn epoll(targets: &[EpollTarget], warn: &mut dyn FnMut(String)) -> io::Result<i32> {
    // SAFETY: epoll_create1 takes a plain integer (close-on-exec is set by
    // the caller, like every descriptor's).
    let ep = check(unsafe { libc::epoll_create1(0) })?;
    for t in targets {
        let mut ev = libc::epoll_event { events: t.events, u64: t.data };
        // SAFETY: `ev` is valid for the call; both descriptors are ours.
        if let Err(e) = check(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, t.fd, &mut ev) }) {
            warn(format!("fd {} is no longer watched ({e})", t.fd));
        }
    }
    Ok(ep)
}

/// A pipe of `size` bytes (0: the default) holding `contents`, its two
/// ends (read, write) at `min` or above. Fails rather than lose bytes.
pub fn pipe(size: u32, contents: &[(u64, Vec<u8>)], min: i32, warn: &mut dyn FnMut(String)) -> io::Result<(i32, i32)> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`.
    check(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    let moved = ends.map(|fd| {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we just made.
        let to = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
        close(fd);
        to
    });
    let [r, w] = moved;
    let fail = |e: io::Error| {
        for fd in moved.into_iter().filter(|&fd| fd >= 0) {
            close(fd);
        }
        Err(e)
    };
    if r < 0 || w < 0 {
        return fail(io::Error::last_os_error());
    }
    // SAFETY: F_SETPIPE_SZ takes a plain integer.
    if size > 0 && unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, size as libc::c_int) } < 0 {
        warn(format!("capacity {size} not granted ({})", io::Error::last_os_error()));
    }
    if let Err(e) = put_in_flight(w, contents) {
        return fail(io::Error::other(format!(
            "the {} bytes in flight do not fit in it ({e})",
            contents.iter().map(|(_, b)| b.len()).sum::<usize>()
        )));
    }
    // Blocking again; the caller sets each end's own flags.
    for fd in [r, w] {
        // SAFETY: F_SETFL on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
    }
    Ok((r, w))
}

/// A stream socket whose peer is closed: reading it gives end of file,
/// writing it EPIPE (and SIGPIPE, as for any broken connection).
/// An inotify instance with `watches` again, each with its old watch
/// descriptor: the kernel numbers watches 1, 2, 3... and never reuses a
/// number, so a number that was removed is taken by a watch of a file of
/// our own, removed again at once. Events not read at the checkpoint are
/// gone (`unread` bytes: the log says so).
pub fn inotify(flags: u32, watches: &[InotifyWatch], unread: u32, warn: &mut dyn FnMut(String)) -> io::Result<i32> {
    // SAFETY: inotify_init1 takes plain flags.
    let fd = check(unsafe { libc::inotify_init1((flags as i32) & (libc::O_NONBLOCK | libc::O_CLOEXEC)) })?;
    if unread > 0 {
        warn(format!("{unread} bytes of events not read at the checkpoint are lost"));
    }
    let mut fillers: Option<std::path::PathBuf> = None;
    let mut next = 1;
    let result = (|| {
        for w in watches {
            if w.path.is_empty() {
                warn(format!("watch {} was added before the agent knew its path; it is gone", w.wd));
                continue;
            }
            while next < w.wd {
                // A filler takes the number, then gives it up.
                let dir = match &fillers {
                    Some(d) => d.clone(),
                    None => {
                        let d = std::env::temp_dir().join(format!("stasis-inotify-{}", std::process::id()));
                        std::fs::create_dir_all(&d)?;
                        fillers = Some(d.clone());
                        d
                    }
                };
                let file = dir.join(next.to_string());
                std::fs::write(&file, b"")?;
                let wd = add_watch(fd, &file.to_string_lossy(), libc::IN_ATTRIB)?;
                // SAFETY: removing the watch just added.
                unsafe { libc::inotify_rm_watch(fd, wd) };
                next = wd + 1;
            }
            let wd = add_watch(fd, &w.path, w.mask)
                .or_else(|_| add_watch(fd, &w.path, w.mask & libc::IN_ALL_EVENTS))
                .map_err(|e| io::Error::new(e.kind(), format!("watch {} on {}: {e}", w.wd, w.path)))?;
            if wd != w.wd {
                warn(format!("watch on {} comes back as {wd}, not {}", w.path, w.wd));
            }
            next = wd + 1;
        }
        Ok(())
    })();
    if let Some(d) = fillers {
        let _ = std::fs::remove_dir_all(d);
        // The fillers' IN_IGNORED events are ours, not the program's.
        let mut buf = [0u8; 4096];
        // SAFETY: F_GETFL/F_SETFL and non-blocking reads into a live buffer,
        // on the instance just made; its flags are put back.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
    }
    match result {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

fn add_watch(fd: i32, path: &str, mask: u32) -> io::Result<i32> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::other(format!("{path:?}: a NUL byte")))?;
    // SAFETY: inotify_add_watch with a NUL-terminated path.
    check(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) })
}

/// The named pipe at `path`, opened for reading and writing (which waits for
/// no peer), at a descriptor >= `min`, with `contents` in flight.
pub fn fifo(
    path: &str,
    size: u32,
    contents: &[(u64, Vec<u8>)],
    min: i32,
    warn: &mut dyn FnMut(String),
) -> io::Result<i32> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::other(format!("{path:?}: a NUL byte")))?;
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("open the named pipe {path}: {e}")));
    }
    // SAFETY: F_DUPFD_CLOEXEC on the descriptor just opened.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    close(fd);
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETPIPE_SZ takes a plain integer.
    if size > 0 && unsafe { libc::fcntl(moved, libc::F_SETPIPE_SZ, size as libc::c_int) } < 0 {
        warn(format!("capacity {size} not granted ({})", io::Error::last_os_error()));
    }
    if let Err(e) = put_in_flight(moved, contents) {
        let total: usize = contents.iter().map(|(_, b)| b.len()).sum();
        warn(format!("{total} bytes in flight could not be put back ({e})"));
    }
    Ok(moved)
}

/// Writes the saved bytes in flight, in the order of their offsets, into a
/// pipe's write end (non-blocking: a pipe too small is an error).
fn put_in_flight(w: i32, contents: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let mut parts: Vec<&(u64, Vec<u8>)> = contents.iter().collect();
    parts.sort_by_key(|(offset, _)| *offset);
    for (_, bytes) in parts {
        let mut done = 0;
        while done < bytes.len() {
            // SAFETY: writes from a live buffer to our pipe.
            let n = unsafe { libc::write(w, bytes[done..].as_ptr().cast(), bytes.len() - done) };
            if n <= 0 {
                return Err(io::Error::last_os_error());
            }
            done += n as usize;
        }
    }
    Ok(())
}

pub fn disconnected() -> io::Result<i32> {
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into `pair`.
    check(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) })?;
    close(pair[1]);
    Ok(pair[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_u64(fd: i32) -> io::Result<u64> {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
        if n == 8 { Ok(u64::from_ne_bytes(b)) } else { Err(io::Error::last_os_error()) }
    }

    #[test]
    fn an_eventfd_comes_back_with_its_count() {
        let fd = eventfd(u64::from(u32::MAX) + 5, false, libc::O_NONBLOCK as u32).unwrap();
        assert_eq!(read_u64(fd).unwrap(), u64::from(u32::MAX) + 5);
        assert_eq!(read_u64(fd).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        close(fd);
        let fd = eventfd(2, true, 0).unwrap();
        assert_eq!(read_u64(fd).unwrap(), 1);
        close(fd);
    }

    #[test]
    fn a_timerfd_keeps_its_unread_ticks_and_period() {
        let mut warnings = Vec::new();
        let fd =
            timerfd(libc::CLOCK_MONOTONIC, 0, 3_600_000_000_000, 1_000_000_000, 3, &mut |w| warnings.push(w)).unwrap();
        let flags = libc::O_NONBLOCK;
        // SAFETY: F_SETFL on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        // Either the ticks are back, or the caller was told they are lost.
        match read_u64(fd) {
            Ok(n) => assert_eq!((n, warnings.len()), (3, 0)),
            Err(e) => assert!(e.kind() == io::ErrorKind::WouldBlock && warnings.len() == 1, "{e} {warnings:?}"),
        }
        // SAFETY: itimerspec is plain data.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: `cur` is a valid itimerspec to fill.
        assert_eq!(unsafe { libc::timerfd_gettime(fd, &mut cur) }, 0);
        assert_eq!(cur.it_interval.tv_sec, 1);
        assert!(cur.it_value.tv_sec > 3500, "{}", cur.it_value.tv_sec);
        close(fd);
    }

    #[test]
    fn an_expired_periodic_timerfd_runs_on() {
        // Expired, not read: the image shows no time left.
        let fd = timerfd(libc::CLOCK_MONOTONIC, 0, 0, 7_000_000_000, 0, &mut |_| {}).unwrap();
        // SAFETY: itimerspec is plain data.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: `cur` is a valid itimerspec to fill.
        assert_eq!(unsafe { libc::timerfd_gettime(fd, &mut cur) }, 0);
        assert_eq!(cur.it_interval.tv_sec, 7);
        assert!(cur.it_value.tv_sec >= 6, "{}", cur.it_value.tv_sec);
        close(fd);
        // A one-shot timer that is not armed stays so.
        let fd = timerfd(libc::CLOCK_MONOTONIC, 0, 0, 0, 0, &mut |_| {}).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::timerfd_gettime(fd, &mut cur) }, 0);
        assert_eq!((cur.it_value.tv_sec, cur.it_value.tv_nsec), (0, 0));
        close(fd);
    }

    #[test]
    fn a_pipe_comes_back_with_its_bytes_in_order() {
        let contents = vec![(3, b"def".to_vec()), (0, b"abc".to_vec())];
        let (r, w) = pipe(65536, &contents, 50, &mut |w| panic!("{w}")).unwrap();
        assert!(r >= 50 && w >= 50);
        let mut buf = [0u8; 16];
        // SAFETY: reads into a live buffer.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n as usize], b"abcdef");
        close(r);
        close(w);
        // More than a pipe can hold is an error, not a loss.
        let big = vec![(0, vec![7u8; 8 << 20])];
        assert!(pipe(0, &big, 0, &mut |_| {}).is_err());
    }

    #[test]
    fn a_disconnected_stand_in_reads_eof_and_refuses_writes() {
        let fd = disconnected().unwrap();
        let mut b = [0u8; 4];
        // SAFETY: reads into a live buffer.
        assert_eq!(unsafe { libc::read(fd, b.as_mut_ptr().cast(), 4) }, 0);
        // SAFETY: MSG_NOSIGNAL: EPIPE without SIGPIPE for this test.
        let n = unsafe { libc::send(fd, b.as_ptr().cast(), 4, libc::MSG_NOSIGNAL) };
        assert_eq!((n, io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EPIPE)));
        close(fd);
    }

    #[test]
    fn epoll_watches_its_targets_again_and_skips_closed_ones() {
        let efd = eventfd(1, false, 0).unwrap();
        let mut warnings = Vec::new();
        let targets = [
            EpollTarget { fd: efd, events: libc::EPOLLIN as u32, data: 77 },
            EpollTarget { fd: 100_000, events: libc::EPOLLIN as u32, data: 1 },
        ];
        let ep = epoll(&targets, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event.
        assert_eq!(unsafe { libc::epoll_wait(ep, &mut ev, 1, 1000) }, 1);
        assert_eq!({ ev.u64 }, 77);
        close(ep);
        close(efd);
    }
}
