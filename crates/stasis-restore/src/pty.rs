//! Pseudo-terminal pairs whose master is in the computation (a program
//! that opened /dev/ptmx itself: mpirun, script, expect, a terminal
//! emulator). Restart opens a new pair once per pair, with the saved
//! settings, above every descriptor number the processes use; every
//! process inherits both ends, takes the one it held (at its number, like
//! a pipe shared between processes) and closes the rest. The slave's
//! number (N of /dev/pts/N) is whatever the kernel gives the new pair.
//!
//! A slave whose master is outside the computation (the user's terminal)
//! is not one of these: it becomes restart's own terminal (`fds`).

use std::collections::HashMap;

use stasis_image::{FdKind, ImageReader, ProcessMeta, PtyEnd};

/// The new pairs, by the slave index they had at the checkpoint.
pub struct SharedPtys {
    /// Old index to (master, slave) descriptors in this process.
    pairs: HashMap<u32, (i32, i32)>,
}

/// The indices of the pairs whose master some process holds.
fn masters_inside<'a>(metas: impl Iterator<Item = &'a ProcessMeta>) -> HashMap<u32, &'a FdKind> {
    let mut out = HashMap::new();
    for m in metas {
        for f in &m.fds {
            if let FdKind::Terminal { pty: Some(PtyEnd { master: true, index, .. }), .. } = f.kind {
                out.entry(index).or_insert(&f.kind);
            }
        }
    }
    out
}

/// Whether a terminal descriptor of the computation leads outside it (a
/// terminal that is not one end of a pair made again here): then restart
/// needs a terminal of its own to give it.
pub fn needs_outside_terminal(images: &[&ImageReader], stdin_terminal: bool) -> bool {
    let inside = masters_inside(images.iter().map(|i| i.meta()));
    // The launch's own terminal on 0-2 is restart's stdio instead, unless
    // restart runs in a terminal too.
    let outside = |f: &&stasis_image::Fd| f.outside_stdio.is_none() || stdin_terminal;
    images.iter().flat_map(|i| &i.meta().fds).filter(outside).any(|f| match f.kind {
        FdKind::Terminal { pty: Some(PtyEnd { index, .. }), .. } => !inside.contains_key(&index),
        FdKind::Terminal { .. } => true,
        _ => false,
    })
}

impl SharedPtys {
    /// Opens a new pair for every pair whose master is in the computation,
    /// at descriptors >= `min_fd`, with the master's saved settings.
    pub fn create(images: &[&ImageReader], min_fd: i32) -> Result<SharedPtys, String> {
        let mut ptys = SharedPtys { pairs: HashMap::new() };
        let mut masters: Vec<(u32, &FdKind)> = masters_inside(images.iter().map(|i| i.meta())).into_iter().collect();
        masters.sort_by_key(|(index, _)| *index);
        for (index, kind) in masters {
            match open_pair(kind, min_fd) {
                Ok(pair) => {
                    ptys.pairs.insert(index, pair);
                }
                Err(e) => {
                    ptys.close();
                    return Err(format!("make pseudo-terminal {index} again: {e}"));
                }
            }
        }
        Ok(ptys)
    }

    /// The new end for a saved one, if its pair was made again.
    pub fn get(&self, end: &PtyEnd) -> Option<i32> {
        let &(master, slave) = self.pairs.get(&end.index)?;
        Some(if end.master { master } else { slave })
    }

    /// The terminal that should be the controlling terminal of the process
    /// of `meta`: the new slave if its controlling terminal was one of these
    /// pairs' slaves, otherwise `outside` (restart's own terminal).
    pub fn controlling(&self, meta: &ProcessMeta, outside: Option<i32>) -> Option<i32> {
        let ctty = meta.fds.iter().find_map(|f| match &f.kind {
            FdKind::Terminal { controlling: true, pty, .. } => Some(pty),
            _ => None,
        });
        // (A master marked so was held by a process of the session whose
        // controlling terminal is its slave.)
        match ctty {
            Some(Some(end)) => self.pairs.get(&end.index).map(|&(_, slave)| slave).or(outside),
            _ => outside,
        }
    }

    pub fn fds(&self) -> Vec<i32> {
        self.pairs.values().flat_map(|&(m, s)| [m, s]).collect()
    }

    /// Closes this process's copies.
    pub fn close(&self) {
        for fd in self.fds() {
            // SAFETY: closing a descriptor this code opened.
            unsafe { libc::close(fd) };
        }
    }
}

/// A new master and slave (both at >= `min_fd`), the slave unlocked while
/// it is opened, then given the settings of the saved master `kind`.
fn open_pair(kind: &FdKind, min_fd: i32) -> Result<(i32, i32), String> {
    let FdKind::Terminal { termios, window, pty: Some(end), unread, .. } = kind else {
        return Err("not a pseudo-terminal master".into());
    };
    let master = open_master(end.index, min_fd)?;
    let slave = (|| {
        // SAFETY: TIOCSPTLCK reads one int; TIOCGPTPEER opens the slave of
        // this master (no path lookup: the right devpts whatever is mounted).
        let peer = unsafe {
            let unlock: libc::c_int = 0;
            if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) != 0 {
                return Err(format!("unlockpt: {}", std::io::Error::last_os_error()));
            }
            libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY)
        };
        if peer < 0 {
            return Err(format!("open the slave: {}", std::io::Error::last_os_error()));
        }
        let slave = move_high(peer, min_fd);
        // The output the master had not read yet, first in its queue.
        if !put_back(slave, unread) {
            eprintln!(
                "stasis: restart: pseudo-terminal {}: {} bytes of output not read yet at the checkpoint \
                 could not all be put back",
                end.index,
                unread.len()
            );
        }
        crate::fds::set_termios(slave, termios);
        let ws = libc::winsize { ws_row: window[0], ws_col: window[1], ws_xpixel: window[2], ws_ypixel: window[3] };
        // SAFETY: TIOCSWINSZ reads one winsize; TIOCPKT and TIOCSPTLCK one
        // int each.
        unsafe {
            if window.iter().any(|&v| v != 0) {
                libc::ioctl(slave, libc::TIOCSWINSZ, &ws);
            }
            let packet = libc::c_int::from(end.packet);
            if end.packet {
                libc::ioctl(master, libc::TIOCPKT, &packet);
            }
            // Only a later open of the slave by its path would notice.
            let lock: libc::c_int = 1;
            if end.locked {
                libc::ioctl(master, libc::TIOCSPTLCK, &lock);
            }
        }
        Ok(slave)
    })();
    match slave {
        Ok(slave) => Ok((master, slave)),
        Err(e) => {
            // SAFETY: closing the master opened above.
            unsafe { libc::close(master) };
            Err(e)
        }
    }
}

/// Most pairs held on the way to the wanted number.
const MAX_ON_THE_WAY: usize = 256;

/// A new master, of the pair numbered `want` where that number is free: a
/// program may have kept the slave's path (`ptsname`) and open it again
/// (DMTCP's pty2 test does so every step, and checks it is still its
/// controlling terminal). devpts hands out the lowest free number, so the
/// pairs opened on the way, numbered lower, are held until it comes, then
/// closed. A number some other terminal holds cannot be had: the pair gets
/// another, and restart says so.
fn open_master(want: u32, min_fd: i32) -> Result<i32, String> {
    let mut on_the_way = Vec::new();
    let got = loop {
        let master = match open_high(c"/dev/ptmx", min_fd) {
            Ok(m) => m,
            Err(e) => {
                close_all(&on_the_way);
                return Err(e);
            }
        };
        match pair_number(master) {
            Some(n) if n < want && on_the_way.len() < MAX_ON_THE_WAY => on_the_way.push(master),
            n => {
                if n != Some(want) {
                    eprintln!(
                        "stasis: restart: /dev/pts/{want} could not be had again (in use): that pseudo-terminal pair \
                         comes back as /dev/pts/{}",
                        n.map_or("?".to_string(), |n| n.to_string())
                    );
                }
                break master;
            }
        }
    };
    close_all(&on_the_way);
    Ok(got)
}

/// The number N of master `fd`'s slave, /dev/pts/N.
fn pair_number(fd: i32) -> Option<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    (unsafe { libc::ioctl(fd, libc::TIOCGPTN, &mut n) } == 0).then_some(n)
}

fn close_all(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: closing descriptors this code opened.
        unsafe { libc::close(fd) };
    }
}

/// Writes `bytes` through `slave` with output processing off (they were
/// processed once already), without blocking: false if some did not fit.
fn put_back(slave: i32, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: a zeroed termios is valid; tcgetattr fills it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid termios to write; the one set is it with
    // one flag off; F_GETFL/F_SETFL on our own descriptor.
    let flags = unsafe {
        if libc::tcgetattr(slave, &mut saved) != 0 {
            return false;
        }
        let mut raw = saved;
        raw.c_oflag &= !libc::OPOST;
        libc::tcsetattr(slave, libc::TCSANOW, &raw);
        let flags = libc::fcntl(slave, libc::F_GETFL);
        libc::fcntl(slave, libc::F_SETFL, flags | libc::O_NONBLOCK);
        flags
    };
    let mut left = bytes;
    for _ in 0..200 {
        // SAFETY: write from a buffer we own.
        let n = unsafe { libc::write(slave, left.as_ptr().cast(), left.len()) };
        if n > 0 {
            left = &left[n as usize..];
        }
        if left.is_empty() {
            break;
        }
        if n <= 0 {
            // No room yet: the line discipline moves what was written on.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // SAFETY: the flags and settings read above.
    unsafe {
        libc::fcntl(slave, libc::F_SETFL, flags);
        libc::tcsetattr(slave, libc::TCSANOW, &saved);
    }
    left.is_empty()
}

fn open_high(path: &std::ffi::CStr, min_fd: i32) -> Result<i32, String> {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(format!("open {}: {}", path.to_string_lossy(), std::io::Error::last_os_error()));
    }
    Ok(move_high(fd, min_fd))
}

/// `fd` moved to a number >= `min_fd` (left where it is if that fails).
fn move_high(fd: i32, min_fd: i32) -> i32 {
    // SAFETY: F_DUPFD and close on a descriptor we own.
    unsafe {
        let high = libc::fcntl(fd, libc::F_DUPFD, min_fd);
        if high < 0 {
            return fd;
        }
        libc::close(fd);
        high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_made_with_its_settings_and_its_unread_output_first() {
        // The settings of a new pair, with output processing and echo off.
        let (m0, s0) = open_pair(&master_record(Vec::new(), [0; 4], Vec::new()), 0).unwrap();
        // SAFETY: a zeroed termios is valid; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to write.
        assert_eq!(unsafe { libc::tcgetattr(s0, &mut t) }, 0);
        t.c_oflag &= !libc::OPOST;
        t.c_lflag &= !libc::ECHO;
        // SAFETY: termios is plain data, read as bytes.
        let termios = unsafe {
            std::slice::from_raw_parts(&t as *const libc::termios as *const u8, std::mem::size_of::<libc::termios>())
        }
        .to_vec();
        let kind = master_record(termios, [24, 80, 0, 0], b"left\r\n".to_vec());
        let (master, slave) = open_pair(&kind, 40).unwrap();
        assert!(master >= 40 && slave >= 40);
        // SAFETY: a zeroed termios and winsize are valid; the ioctls fill them.
        let (mut now, mut ws): (libc::termios, libc::winsize) = unsafe { std::mem::zeroed() };
        // SAFETY: valid buffers to write.
        unsafe {
            assert_eq!(libc::tcgetattr(slave, &mut now), 0);
            assert_eq!(libc::ioctl(slave, libc::TIOCGWINSZ, &mut ws), 0);
        }
        assert_eq!((now.c_oflag & libc::OPOST, now.c_lflag & libc::ECHO), (0, 0));
        assert_eq!((ws.ws_row, ws.ws_col), (24, 80));
        // SAFETY: write and read with buffers we own.
        let got = unsafe {
            assert_eq!(libc::write(slave, b"new\n".as_ptr().cast(), 4), 4);
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            while got.len() < 10 {
                let n = libc::read(master, buf.as_mut_ptr().cast(), buf.len());
                assert!(n > 0);
                got.extend_from_slice(&buf[..n as usize]);
            }
            got
        };
        assert_eq!(got, b"left\r\nnew\n");
        for fd in [m0, s0, master, slave] {
            // SAFETY: closing descriptors opened here.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn a_free_pair_number_is_had_again() {
        // Other programs on the machine open pairs too: a few tries.
        let kept = (0..5).any(|_| {
            // Two pairs; the higher one's number is freed, then asked for.
            let (a, b) = (open_high(c"/dev/ptmx", 0).unwrap(), open_high(c"/dev/ptmx", 0).unwrap());
            let want = pair_number(b).unwrap();
            close_all(&[b]);
            let got = open_master(want, 0).unwrap();
            let same = pair_number(got) == Some(want);
            close_all(&[a, got]);
            same
        });
        assert!(kept, "never had the freed number again");
    }

    fn master_record(termios: Vec<u8>, window: [u16; 4], unread: Vec<u8>) -> FdKind {
        FdKind::Terminal {
            flags: libc::O_RDWR as u32,
            termios,
            controlling: false,
            foreground: 0,
            window,
            pty: Some(PtyEnd { master: true, index: 0, locked: false, packet: false }),
            unread,
        }
    }
}
