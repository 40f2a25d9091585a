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
