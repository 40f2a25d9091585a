//! What the agent notes of a terminal descriptor beyond its termios: its
//! window size and, for a Unix 98 pseudo-terminal, which end of which pair
//! it is (restart makes a pair whose master is in the computation again).

use stasis_image::PtyEnd;

/// /dev/ptmx (and each devpts instance's own ptmx): char device 5:2.
const PTMX: (u32, u32) = (5, 2);
/// Unix 98 slaves, /dev/pts/N: char device 136:N.
const PTS_MAJOR: u32 = 136;

/// The window size of terminal `fd` (zeros if unknown) and, if it is a
/// pseudo-terminal end, which one.
pub fn describe(fd: i32) -> ([u16; 4], Option<PtyEnd>) {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes one.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: `w` is a valid winsize to write.
    let window = if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0 {
        [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel]
    } else {
        [0; 4]
    };
    (window, end(fd))
}

fn end(fd: i32) -> Option<PtyEnd> {
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let dev = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    if dev.0 == PTS_MAJOR {
        return Some(PtyEnd { master: false, index: dev.1, locked: false, packet: false });
    }
    if dev != PTMX {
        return None;
    }
    let index = int_ioctl(fd, libc::TIOCGPTN)?;
    Some(PtyEnd {
        master: true,
        index: index as u32,
        locked: int_ioctl(fd, libc::TIOCGPTLCK).is_some_and(|v| v != 0),
        packet: int_ioctl(fd, libc::TIOCGPKT).is_some_and(|v| v != 0),
    })
}

/// An ioctl that writes one int; None when it fails.
fn int_ioctl(fd: i32, request: libc::Ioctl) -> Option<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int to `v`.
    (unsafe { libc::ioctl(fd, request, &mut v) } == 0).then_some(v)
}

/// The most output taken from one master: more than a pseudo-terminal
/// holds (its line discipline's 4 KiB and 64 KiB of buffers).
const MAX_UNREAD: usize = 128 * 1024;
/// How long putting the output back may wait for room, in 10 ms steps.
const PUT_BACK_TRIES: u32 = 200;

/// The output the slave's side wrote that master `fd` has not read yet,
/// left where it was. A terminal cannot be peeked: the bytes are read from
/// the master, then written again through the slave, with output
/// processing off so that they come back byte for byte, all while every
/// process of the computation is stopped (nothing else reads or writes
/// the pair meanwhile; another process holding the same master waits on a
/// lock). Empty when there is nothing, or when the slave cannot be
/// reached (then nothing is taken).
pub fn unread_output(fd: i32, packet: bool) -> Vec<u8> {
    // poll first: it moves output still on its way into the master's
    // buffer, which FIONREAD then counts.
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll of one pollfd, not waiting.
    unsafe { libc::poll(&mut p, 1, 0) };
    // Nothing waiting: the slave is not even opened (which, on its last
    // close, would tell the master its other side is gone).
    if int_ioctl(fd, libc::FIONREAD).unwrap_or(0) <= 0 {
        return Vec::new();
    }
    let _lock = crate::sockets::PeekLock::take(fd);
    // SAFETY: TIOCGPTPEER opens this master's slave, a new descriptor.
    let slave = unsafe {
        libc::ioctl(fd, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
    };
    if slave < 0 {
        return Vec::new();
    }
    let taken = take_all(fd, packet);
    put_back(slave, &taken);
    crate::sys::close(slave);
    taken
}

/// Reads master `fd` until nothing is left, without blocking. In packet
/// mode each read starts with a status byte: 0 before data, which is
/// dropped (writing the data again makes it anew); a read of status alone
/// (a flush, a stop of output) cannot be made again and is dropped too.
fn take_all(fd: i32, packet: bool) -> Vec<u8> {
    // SAFETY: F_GETFL/F_SETFL on the program's descriptor; its flags are
    // put back below (the program is stopped).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Vec::new();
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < MAX_UNREAD {
        // SAFETY: read into a buffer we own, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let got = &buf[..n as usize];
        match got {
            [0, data @ ..] if packet => out.extend_from_slice(data),
            _ if packet => {}
            _ => out.extend_from_slice(got),
        }
    }
    // SAFETY: putting the program's flags back.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    out
}

/// Writes `bytes` through `slave` (non-blocking) with output processing
/// off, then puts the slave's settings back.
fn put_back(slave: i32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: a zeroed termios is valid; tcgetattr fills it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid termios to write.
    let got = unsafe { libc::tcgetattr(slave, &mut saved) } == 0;
    if got {
        let mut raw = saved;
        raw.c_oflag &= !libc::OPOST;
        // SAFETY: sets settings read just above, one flag off.
        unsafe { libc::tcsetattr(slave, libc::TCSANOW, &raw) };
    }
    let mut left = bytes;
    let mut tries = 0;
    while !left.is_empty() && tries < PUT_BACK_TRIES {
        // SAFETY: write from a buffer we own.
        let n = unsafe { libc::write(slave, left.as_ptr().cast(), left.len()) };
        if n > 0 {
            left = &left[n as usize..];
        } else {
            // No room yet: the line discipline moves what was written on.
            tries += 1;
            crate::sys::sleep_ms(10);
        }
    }
    if got {
        // SAFETY: the settings tcgetattr gave.
        unsafe { libc::tcsetattr(slave, libc::TCSANOW, &saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_some(fd: i32) -> Vec<u8> {
        let mut buf = [0u8; 256];
        // SAFETY: read into a buffer we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        buf[..n.max(0) as usize].to_vec()
    }

    #[test]
    fn output_waiting_on_a_master_is_seen_and_left_where_it_was() {
        // SAFETY: opening a new pair; the descriptors are closed below.
        let (master, slave) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0 && libc::grantpt(m) == 0 && libc::unlockpt(m) == 0);
            let s = libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            assert!(s >= 0);
            (m, s)
        };
        let end = describe(master).1.expect("a master");
        assert!(end.master && !end.locked && !end.packet);
        assert_eq!(describe(slave).1.map(|e| (e.master, e.index)), Some((false, end.index)));
        assert!(unread_output(master, false).is_empty());
        // OPOST and ONLCR are on: "\n" reaches the master as "\r\n", and
        // must not become "\r\r\n" when put back.
        // SAFETY: write from a buffer we own.
        assert_eq!(unsafe { libc::write(slave, b"one\ntwo\n".as_ptr().cast(), 8) }, 8);
        let taken = unread_output(master, false);
        assert_eq!(taken, b"one\r\ntwo\r\n");
        assert_eq!(read_some(master), b"one\r\ntwo\r\n");
        // In packet mode: the data without its status byte, and a read
        // after it gets the status byte and the data again.
        let on: libc::c_int = 1;
        // SAFETY: TIOCPKT reads one int; write from a buffer we own.
        unsafe {
            assert_eq!(libc::ioctl(master, libc::TIOCPKT, &on), 0);
            assert_eq!(libc::write(slave, b"three\n".as_ptr().cast(), 6), 6);
        }
        assert_eq!(describe(master).1.map(|e| e.packet), Some(true));
        assert_eq!(unread_output(master, true), b"three\r\n");
        assert_eq!(read_some(master), b"\0three\r\n");
        crate::sys::close(slave);
        crate::sys::close(master);
    }
}
