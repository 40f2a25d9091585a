//! SO_REUSEADDR on the computation's TCP sockets, set by the checkpoint
//! for the restart and hidden from the program (see `FORCED`).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The TCP sockets on which the checkpoint set SO_REUSEADDR (their inodes;
/// 0: a free slot), which the program had not, and the connections
/// accepted from such a listener since (they inherit it): the getsockopt
/// and setsockopt wrappers keep showing the program the value it chose.
///
/// Why: a connection killed with its program sits in TIME_WAIT for a
/// minute, and its port can only be bound again meanwhile (by the
/// restart's listener, at once) if the connection had SO_REUSEADDR.
/// Servers that did not set it on their listener (Open MPI's PMIx server
/// among them) would make every restart soon after a kill wait that
/// minute. For a listener SO_REUSEADDR changes nothing else (a bind to
/// its port fails while it listens); on a connection it lets another
/// socket that asks for it too bind the connection's local port, as if the
/// program had set it (docs/sockets.md).
static FORCED: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];

/// Whether FORCED may hold anything (keeps accept cheap when it does not).
static ANY_FORCED: AtomicBool = AtomicBool::new(false);

fn forced(ino: u64) -> bool {
    ino != 0 && ANY_FORCED.load(Ordering::Relaxed) && FORCED.iter().any(|s| s.load(Ordering::Relaxed) == ino)
}

/// Records `ino`; false when the table is full even of open sockets.
fn remember_forced(ino: u64) -> bool {
    let put = || FORCED.iter().any(|s| s.compare_exchange(0, ino, Ordering::Relaxed, Ordering::Relaxed).is_ok());
    ANY_FORCED.store(true, Ordering::Relaxed);
    forced(ino) || put() || {
        forget_closed();
        put()
    }
}

/// Frees the slots of sockets this process no longer has open.
fn forget_closed() {
    let Ok(fds) = crate::sys::numeric_entries(c"/proc/self/fd") else { return };
    let open: Vec<u64> = fds.into_iter().map(socket_inode).filter(|&i| i != 0).collect();
    for s in &FORCED {
        let ino = s.load(Ordering::Relaxed);
        if ino != 0 && !open.contains(&ino) {
            let _ = s.compare_exchange(ino, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

fn forget_forced(ino: u64) {
    for s in &FORCED {
        let _ = s.compare_exchange(ino, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The inode of socket `fd` (0: not a socket, or no such descriptor).
fn socket_inode(fd: i32) -> u64 {
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    if ok && st.st_mode & libc::S_IFMT == libc::S_IFSOCK { st.st_ino } else { 0 }
}

/// Raw getsockopt/setsockopt of one int, not through the wrappers.
fn raw_int(fd: i32, name: i32, set: Option<i32>) -> Option<i32> {
    let mut v: libc::c_int = set.unwrap_or(0);
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = &mut v as *mut libc::c_int;
    // SAFETY: the kernel reads or writes one int at `p` (and `len`).
    let r = unsafe {
        match set {
            Some(_) => libc::syscall(libc::SYS_setsockopt, fd, libc::SOL_SOCKET, name, p, len),
            None => libc::syscall(libc::SYS_getsockopt, fd, libc::SOL_SOCKET, name, p, &mut len),
        }
    };
    (r == 0).then_some(v)
}

/// Sets SO_REUSEADDR on TCP socket `fd` (inode `id`) where the program
/// had not (see `FORCED`); nothing when the table is full.
pub fn reuse_after_kill(fd: i32, id: u64) {
    if raw_int(fd, libc::SO_REUSEADDR, None) == Some(0) && remember_forced(id) {
        raw_int(fd, libc::SO_REUSEADDR, Some(1));
    }
}

/// A connection just accepted from `listener`: where the listener's
/// SO_REUSEADDR is ours, so is the one the connection inherited. With no
/// room left to remember it, it goes back to the program's 0.
fn accepted(listener: c_int, fd: c_int) {
    if fd < 0 || !ANY_FORCED.load(Ordering::Relaxed) || !forced(socket_inode(listener)) {
        return;
    }
    if !remember_forced(socket_inode(fd)) {
        raw_int(fd, libc::SO_REUSEADDR, Some(0));
    }
}

static REAL_ACCEPT: AtomicUsize = AtomicUsize::new(0);
static REAL_ACCEPT4: AtomicUsize = AtomicUsize::new(0);

/// libc's own `name`, found once (libc's accept and accept4 are
/// cancellation points, which a raw system call is not).
fn real(cache: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let mut f = cache.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        cache.store(f, Ordering::Release);
    }
    f
}

/// # Safety
/// Same contract as libc's accept.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int {
    type Accept = unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int;
    let f = real(&REAL_ACCEPT, c"accept");
    let r = if f == 0 {
        // SAFETY: the caller's arguments, forwarded.
        unsafe { libc::syscall(libc::SYS_accept, fd, addr, len) as c_int }
    } else {
        // SAFETY: `f` is libc's accept; the caller's arguments, forwarded.
        unsafe { std::mem::transmute::<usize, Accept>(f)(fd, addr, len) }
    };
    accepted(fd, r);
    r
}

/// # Safety
/// Same contract as libc's accept4.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    type Accept4 = unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int;
    let f = real(&REAL_ACCEPT4, c"accept4");
    let r = if f == 0 {
        // SAFETY: the caller's arguments, forwarded.
        unsafe { libc::syscall(libc::SYS_accept4, fd, addr, len, flags) as c_int }
    } else {
        // SAFETY: `f` is libc's accept4; the caller's arguments, forwarded.
        unsafe { std::mem::transmute::<usize, Accept4>(f)(fd, addr, len, flags) }
    };
    accepted(fd, r);
    r
}

/// # Safety
/// Same contract as libc's getsockopt.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut libc::socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, forwarded.
    let r = unsafe { libc::syscall(libc::SYS_getsockopt, fd, level, name, value, len) } as c_int;
    if r == 0 && level == libc::SOL_SOCKET && name == libc::SO_REUSEADDR && forced(socket_inode(fd)) {
        // SAFETY: the kernel just wrote an int there (the size it reported).
        unsafe {
            if !len.is_null() && *len as usize >= std::mem::size_of::<c_int>() {
                *(value as *mut c_int) = 0;
            }
        }
    }
    r
}

/// # Safety
/// Same contract as libc's setsockopt.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: libc::socklen_t,
) -> c_int {
    if level == libc::SOL_SOCKET && name == libc::SO_REUSEADDR {
        // The program's own choice from now on.
        let ino = socket_inode(fd);
        if forced(ino) {
            forget_forced(ino);
        }
    }
    // SAFETY: the caller's arguments, forwarded.
    unsafe { libc::syscall(libc::SYS_setsockopt, fd, level, name, value, len) as c_int }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::sockopt;

    fn set(fd: i32, level: i32, name: i32, value: &[u8]) {
        // SAFETY: setsockopt reads `value.len()` bytes.
        assert_eq!(unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32) }, 0);
    }

    #[test]
    fn a_connection_accepted_from_a_listener_given_reuse_address_hides_it_too() {
        // SAFETY: plain socket calls on sockets made here, closed below.
        unsafe {
            let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(libc::bind(l, &a as *const _ as *const libc::sockaddr, len), 0);
            assert_eq!(libc::listen(l, 1), 0);
            let mut len2 = len;
            libc::getsockname(l, &mut a as *mut _ as *mut libc::sockaddr, &mut len2);
            reuse_after_kill(l, socket_inode(l));
            assert_eq!(sockopt(l, libc::SOL_SOCKET, libc::SO_REUSEADDR), Some(0));
            let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert_eq!(libc::connect(c, &a as *const _ as *const libc::sockaddr, len), 0);
            let s = accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), 0);
            assert!(s >= 0);
            assert_eq!(raw_int(s, libc::SO_REUSEADDR, None), Some(1));
            assert_eq!(sockopt(s, libc::SOL_SOCKET, libc::SO_REUSEADDR), Some(0));
            for fd in [s, c, l] {
                libc::close(fd);
            }
        }
    }

    #[test]
    fn the_reuse_address_set_for_the_restart_is_hidden_from_the_program() {
        // SAFETY: plain socket creation, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        let ino = socket_inode(fd);
        reuse_after_kill(fd, ino);
        assert_eq!(raw_int(fd, libc::SO_REUSEADDR, None), Some(1));
        assert_eq!(sockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), Some(0));
        // Once the program sets it, it reads what the program set.
        set(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32.to_ne_bytes());
        assert_eq!(sockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), Some(1));
        assert!(!forced(ino));
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
    }
}
