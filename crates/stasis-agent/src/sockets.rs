//! Sockets, as the checkpoint sees them: what kind, which addresses, which
//! peer, and the bytes waiting to be read. Restart pairs them up across the
//! computation's processes.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use stasis_image::{FdKind, SockOpt};

/// The options a program can set that matter after a restart, for a
/// socket of `domain` and `kind` (docs/sockets.md says which are left out
/// and why).
fn wanted(domain: i32, kind: i32) -> Vec<(i32, i32)> {
    use libc::*;
    let mut w = vec![
        (SOL_SOCKET, SO_REUSEADDR),
        (SOL_SOCKET, SO_REUSEPORT),
        (SOL_SOCKET, SO_KEEPALIVE),
        (SOL_SOCKET, SO_BROADCAST),
        (SOL_SOCKET, SO_OOBINLINE),
        (SOL_SOCKET, SO_DONTROUTE),
        (SOL_SOCKET, SO_LINGER),
        (SOL_SOCKET, SO_RCVBUF),
        (SOL_SOCKET, SO_SNDBUF),
        (SOL_SOCKET, SO_RCVLOWAT),
        (SOL_SOCKET, SO_RCVTIMEO),
        (SOL_SOCKET, SO_SNDTIMEO),
        (SOL_SOCKET, SO_PRIORITY),
        (SOL_SOCKET, SO_TIMESTAMP),
        (SOL_SOCKET, SO_TIMESTAMPNS),
    ];
    if domain == AF_UNIX {
        w.push((SOL_SOCKET, SO_PASSCRED));
        return w;
    }
    if domain == AF_INET {
        w.extend([(IPPROTO_IP, IP_TOS), (IPPROTO_IP, IP_TTL), (IPPROTO_IP, IP_MTU_DISCOVER), (IPPROTO_IP, IP_RECVERR)]);
        if kind == SOCK_DGRAM {
            w.extend([(IPPROTO_IP, IP_PKTINFO), (IPPROTO_IP, IP_MULTICAST_TTL), (IPPROTO_IP, IP_MULTICAST_LOOP)]);
        }
    } else {
        w.extend([
            (IPPROTO_IPV6, IPV6_V6ONLY),
            (IPPROTO_IPV6, IPV6_TCLASS),
            (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
            (IPPROTO_IPV6, IPV6_RECVERR),
        ]);
        if kind == SOCK_DGRAM {
            w.extend([
                (IPPROTO_IPV6, IPV6_RECVPKTINFO),
                (IPPROTO_IPV6, IPV6_MULTICAST_HOPS),
                (IPPROTO_IPV6, IPV6_MULTICAST_LOOP),
            ]);
        }
    }
    if kind == SOCK_STREAM {
        w.extend([
            (IPPROTO_TCP, TCP_NODELAY),
            (IPPROTO_TCP, TCP_CORK),
            (IPPROTO_TCP, TCP_KEEPIDLE),
            (IPPROTO_TCP, TCP_KEEPINTVL),
            (IPPROTO_TCP, TCP_KEEPCNT),
            (IPPROTO_TCP, TCP_USER_TIMEOUT),
            (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
            (IPPROTO_TCP, TCP_CONGESTION),
        ]);
    }
    w
}

/// The options of socket `fd` that differ from a new socket's of the same
/// kind: only what the program (or a connection) changed is set again.
/// `connected` (or listening) buffer sizes beyond what setsockopt can ask
/// are the kernel's own tuning of a TCP connection, not the program's.
fn options(fd: i32, domain: i32, kind: i32, protocol: i32, connected: bool) -> Vec<SockOpt> {
    // SAFETY: plain socket creation, closed below.
    let fresh = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    let mut out = Vec::new();
    for (level, name) in wanted(domain, kind) {
        let Some(mut value) = sockopt_bytes(fd, level, name) else { continue };
        if fresh >= 0 && sockopt_bytes(fresh, level, name).as_ref() == Some(&value) {
            continue;
        }
        if level == libc::SOL_SOCKET && (name == libc::SO_RCVBUF || name == libc::SO_SNDBUF) {
            let Some(doubled) = int_of(&value) else { continue };
            let limit = if name == libc::SO_RCVBUF { "rmem_max" } else { "wmem_max" };
            if connected && kind == libc::SOCK_STREAM && doubled > 2 * core_limit(limit) {
                continue;
            }
            // The kernel doubles what it is given: set back what the program
            // asked, so that getsockopt reads the same.
            value = (doubled / 2).to_ne_bytes().to_vec();
        }
        out.push(SockOpt { level, name, value });
    }
    if fresh >= 0 {
        // SAFETY: closing the socket made above.
        unsafe { libc::close(fresh) };
    }
    out
}

fn int_of(value: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// /proc/sys/net/core/`name` (the most an unprivileged setsockopt gets).
fn core_limit(name: &str) -> i32 {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992)
}

/// An option's value as getsockopt gives it (at most 64 bytes: an int, a
/// struct, a congestion control name).
fn sockopt_bytes(fd: i32, level: i32, name: i32) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`.
    let r = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return None;
    }
    let mut v = buf[..(len as usize).min(buf.len())].to_vec();
    if level == libc::IPPROTO_TCP && name == libc::TCP_CONGESTION {
        // A name, padded with NULs: setsockopt wants the name alone.
        v.truncate(v.iter().position(|&b| b == 0).unwrap_or(v.len()));
    }
    Some(v)
}

fn sockopt(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, name, &mut v as *mut libc::c_int as *mut c_void, &mut len) };
    (r == 0).then_some(v)
}

/// getsockname or getpeername, as raw bytes (empty when there is none).
fn address(fd: i32, peer: bool) -> Vec<u8> {
    // SAFETY: a zeroed sockaddr_storage is valid; the call fills `len` bytes.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut sa as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: both calls write at most `len` bytes at `p`.
    let r = unsafe { if peer { libc::getpeername(fd, p, &mut len) } else { libc::getsockname(fd, p, &mut len) } };
    if r != 0 {
        return Vec::new();
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: the kernel wrote `len` bytes of `sa`.
    let bytes = unsafe { std::slice::from_raw_parts(&sa as *const _ as *const u8, len) };
    // An unnamed Unix socket is just its family.
    if bytes.len() <= 2 && sa.ss_family == libc::AF_UNIX as u16 { Vec::new() } else { bytes.to_vec() }
}

/// Describes socket `fd` (inode `id`); `unix_peers` maps Unix socket
/// inodes to their peers'.
pub fn describe(fd: i32, id: u64, flags: u32, unix_peers: &[(u64, u64)]) -> Option<FdKind> {
    let domain = sockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let kind = sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = sockopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    if !matches!(domain, libc::AF_UNIX | libc::AF_INET | libc::AF_INET6) {
        return None; // netlink, packet...: not restorable
    }
    let listening = sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    let peer_id =
        if domain == libc::AF_UNIX { unix_peers.iter().find(|(s, _)| *s == id).map_or(0, |(_, p)| *p) } else { 0 };
    let connected = !address(fd, true).is_empty();
    let options = options(fd, domain, kind, protocol, listening || connected);
    if domain != libc::AF_UNIX && kind == libc::SOCK_STREAM && (connected || listening) {
        reuse_after_kill(fd, id);
    }
    Some(FdKind::Socket {
        id,
        domain,
        kind,
        protocol,
        flags,
        listening,
        local: address(fd, false),
        peer: address(fd, true),
        peer_id,
        options,
    })
}

// ---- SO_REUSEADDR for the restart ----------------------------------------------------

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
static ANY_FORCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
fn reuse_after_kill(fd: i32, id: u64) {
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

static REAL_ACCEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static REAL_ACCEPT4: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// libc's own `name`, found once (libc's accept and accept4 are
/// cancellation points, which a raw system call is not).
fn real(cache: &std::sync::atomic::AtomicUsize, name: &std::ffi::CStr) -> usize {
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

/// The peer of every Unix socket of this network namespace, by inode, from
/// a NETLINK_SOCK_DIAG dump (allowed to any user).
pub fn unix_peers() -> Result<Vec<(u64, u64)>, String> {
    // SAFETY: plain socket creation.
    let nl = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if nl < 0 {
        return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
    }
    let result = dump(nl);
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(nl) };
    result
}

fn dump(nl: i32) -> Result<Vec<(u64, u64)>, String> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_PEER: u32 = 4;
    // struct nlmsghdr, then struct unix_diag_req.
    let mut req = Vec::with_capacity(40);
    req.extend(40u32.to_ne_bytes());
    req.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend(((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // seq
    req.extend(0u32.to_ne_bytes()); // pid
    req.extend([libc::AF_UNIX as u8, 0, 0, 0]); // family, protocol, pad
    req.extend(u32::MAX.to_ne_bytes()); // every state
    req.extend(0u32.to_ne_bytes()); // any inode
    req.extend(UDIAG_SHOW_PEER.to_ne_bytes());
    req.extend([0u8; 8]); // cookie
    // SAFETY: send reads `req.len()` bytes of `req`.
    if unsafe { libc::send(nl, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
    }
    let mut peers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(nl, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("netlink recv: {e}"));
        }
        if n == 0 {
            return Err("netlink: the dump ended early".into());
        }
        let part = stasis_procfs::parse_unix_diag(&buf[..n as usize]);
        peers.extend(part.peers);
        if let Some(e) = part.error {
            return Err(format!("sock_diag: errno {e}"));
        }
        if part.done {
            return Ok(peers);
        }
    }
}

/// The bytes waiting to be read on a stream socket, left where they are.
pub fn peek(fd: i32) -> Result<Vec<u8>, String> {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut waiting) } != 0 {
        return Err(format!("FIONREAD: {}", std::io::Error::last_os_error()));
    }
    let waiting = waiting.max(0) as usize;
    if waiting == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; waiting];
    // SAFETY: recv writes at most `waiting` bytes into buf.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), waiting, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(format!("peek: {}", std::io::Error::last_os_error()));
    }
    if n as usize != waiting {
        return Err(format!("peeked {n} of the {waiting} bytes waiting"));
    }
    Ok(buf)
}

/// The messages waiting on a datagram or seqpacket socket, left where they
/// are: with a peek offset (SO_PEEK_OFF) each peek moves to the next one.
/// The socket is the program's: its peek offset is put back after (the
/// program is stopped meanwhile).
pub fn peek_messages(fd: i32) -> Result<Vec<Vec<u8>>, String> {
    // The peek offset belongs to the socket, which other processes of the
    // computation may hold too, their writers peeking it at this very
    // moment: one at a time, through a lock file named by the socket.
    let _lock = PeekLock::take(fd);
    peek_messages_locked(fd)
}

/// An exclusive flock on /dev/shm/.stasis-peek-UID-INODE (or in /tmp),
/// removed when dropped.
struct PeekLock {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl PeekLock {
    fn take(fd: i32) -> PeekLock {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino()).unwrap_or(0);
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let path = std::path::PathBuf::from(format!("{dir}/.stasis-peek-{uid}-{ino}"));
        // The holder removes the file before it lets go: a waiter that then
        // gets the lock of a removed file tries again.
        for _ in 0..100 {
            let open = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path);
            let Ok(f) = open else { break };
            // SAFETY: flock on our own descriptor; waits for the other writers.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            let same = std::fs::metadata(&path).ok().map(|m| m.ino()) == f.metadata().ok().map(|m| m.ino());
            if same {
                return PeekLock { file: Some(f), path };
            }
        }
        PeekLock { file: None, path }
    }
}

impl Drop for PeekLock {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = std::fs::remove_file(&self.path);
            drop(f);
        }
    }
}

fn peek_messages_locked(fd: i32) -> Result<Vec<Vec<u8>>, String> {
    const MAX_MESSAGES: usize = 4096;
    let old = sockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    let set = |v: libc::c_int| {
        // SAFETY: setsockopt reads one int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                &v as *const libc::c_int as *const c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        }
    };
    if set(0) != 0 {
        return Err(format!("SO_PEEK_OFF: {}", std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut result = Ok(());
    while out.len() < MAX_MESSAGES {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                result = Err(format!("peek: {e}"));
            }
            break;
        }
        if n == 0 {
            break; // an empty message (or the end): nothing more to tell apart
        }
        out.push(buf[..n as usize].to_vec());
    }
    set(old);
    result.map(|()| out)
}

/// Bytes a TCP socket sent that its peer has not taken in yet (no room
/// there): they cannot be read back, so a checkpoint must not go on.
pub fn unsent(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) } != 0 {
        return 0;
    }
    n.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(fd: i32, level: i32, name: i32, value: &[u8]) {
        // SAFETY: setsockopt reads `value.len()` bytes.
        assert_eq!(unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32) }, 0);
    }

    fn saved(options: &[SockOpt], level: i32, name: i32) -> Option<Vec<u8>> {
        options.iter().find(|o| o.level == level && o.name == name).map(|o| o.value.clone())
    }

    #[test]
    fn only_changed_options_are_saved_and_buffer_sizes_as_asked() {
        // SAFETY: plain socket creation, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return; // no IPv6 here
        }
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &1i32.to_ne_bytes());
        set(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &30000i32.to_ne_bytes());
        let linger = libc::linger { l_onoff: 1, l_linger: 7 };
        // SAFETY: linger is plain data.
        let linger_bytes: [u8; 8] = unsafe { std::mem::transmute(linger) };
        set(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger_bytes);
        set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, &77i32.to_ne_bytes());
        let options = options(fd, libc::AF_INET6, libc::SOCK_STREAM, 0, false);
        assert_eq!(saved(&options, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), Some(1i32.to_ne_bytes().to_vec()));
        assert_eq!(saved(&options, libc::SOL_SOCKET, libc::SO_RCVBUF), Some(30000i32.to_ne_bytes().to_vec()));
        assert_eq!(saved(&options, libc::SOL_SOCKET, libc::SO_LINGER), Some(linger_bytes.to_vec()));
        assert_eq!(saved(&options, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), Some(77i32.to_ne_bytes().to_vec()));
        // Defaults are left out.
        assert_eq!(saved(&options, libc::SOL_SOCKET, libc::SO_KEEPALIVE), None);
        assert_eq!(saved(&options, libc::IPPROTO_TCP, libc::TCP_NODELAY), None);
        assert_eq!(saved(&options, libc::SOL_SOCKET, libc::SO_SNDBUF), None);
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
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
