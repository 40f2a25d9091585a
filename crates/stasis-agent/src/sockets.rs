//! Sockets, as the checkpoint sees them: what kind, which addresses, which
//! peer, and the bytes waiting to be read. Restart pairs them up across the
//! computation's processes.

use std::ffi::c_void;

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

pub(crate) fn sockopt(fd: i32, level: i32, name: i32) -> Option<i32> {
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

/// Whether a Unix stream or seqpacket socket is connected (getpeername
/// answers) though the kernel names no peer inode: its peer was closed, and
/// what it had sent may still wait to be read, before end of file.
fn peer_closed(fd: i32) -> bool {
    // SAFETY: a zeroed sockaddr_storage is valid; getpeername fills `len` bytes.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes at `sa`.
    unsafe { libc::getpeername(fd, &mut sa as *mut libc::sockaddr_storage as *mut libc::sockaddr, &mut len) == 0 }
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
    let mut peer = address(fd, true);
    if domain == libc::AF_UNIX && kind != libc::SOCK_DGRAM && peer_id == 0 && peer.is_empty() && peer_closed(fd) {
        // Connected to an unnamed socket that is gone: its family alone
        // says so (restart makes it again as a connection whose peer
        // closed, docs/sockets.md).
        peer = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    }
    let connected = !peer.is_empty();
    let options = options(fd, domain, kind, protocol, listening || connected);
    if domain != libc::AF_UNIX && kind == libc::SOCK_STREAM && (connected || listening) {
        crate::reuse_addr::reuse_after_kill(fd, id);
    }
    Some(FdKind::Socket {
        id,
        domain,
        kind,
        protocol,
        flags,
        listening,
        local: address(fd, false),
        peer,
        peer_id,
        options,
    })
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
pub(crate) struct PeekLock {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl PeekLock {
    pub(crate) fn take(fd: i32) -> PeekLock {
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

/// Whether the peer of connected stream or seqpacket socket `fd` has shut
/// down writing (or closed): its reader gets end of file once the bytes
/// waiting are read. poll reports POLLRDHUP for both TCP and Unix sockets.
pub fn peer_shut_down(fd: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: poll reads and writes one pollfd; a zero timeout never blocks.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 1 && p.revents & libc::POLLRDHUP != 0
}

/// `SIOCOUTQNSD` (linux/sockios.h): bytes of a TCP socket's send queue not
/// sent yet. `SIOCOUTQ` counts those not acknowledged yet as well, among
/// them bytes a loopback peer already holds (it acknowledges them later,
/// or with its answer: a stopped peer's delayed ACK) and a FIN.
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

fn ioctl_int(fd: i32, request: libc::c_ulong) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests used here write one int.
    (unsafe { libc::ioctl(fd, request, &mut n) } == 0).then_some(n.max(0) as usize)
}

/// Bytes a TCP socket holds that it has not sent at all: held back by
/// Nagle or TCP_CORK (`push` sends them), or by a peer whose receive buffer
/// is full. Bytes sent and not yet acknowledged are not counted: on
/// loopback they are in the peer's receive queue already, where its own
/// checkpoint saves them.
pub fn unsent(fd: i32) -> usize {
    ioctl_int(fd, SIOCOUTQNSD).unwrap_or(0)
}

/// Bytes sent and not acknowledged yet, plus those not sent.
fn unacknowledged(fd: i32) -> usize {
    ioctl_int(fd, libc::TIOCOUTQ).unwrap_or(0)
}

fn set_int(fd: i32, level: i32, name: i32, v: libc::c_int) -> bool {
    // SAFETY: setsockopt reads one int.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        ) == 0
    }
}

/// Sends what Nagle's algorithm or TCP_CORK holds back on `fd`, leaving
/// both options as the program set them: turning TCP_NODELAY on, or
/// TCP_CORK off, pushes the pending segments out at once.
fn push(fd: i32) {
    use libc::{IPPROTO_TCP, TCP_CORK, TCP_NODELAY};
    if sockopt(fd, IPPROTO_TCP, TCP_CORK) == Some(1) && set_int(fd, IPPROTO_TCP, TCP_CORK, 0) {
        set_int(fd, IPPROTO_TCP, TCP_CORK, 1);
    }
    if sockopt(fd, IPPROTO_TCP, TCP_NODELAY) == Some(0) && set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1) {
        set_int(fd, IPPROTO_TCP, TCP_NODELAY, 0);
    }
}

/// The connected TCP sockets among this process's descriptors.
fn tcp_connections() -> Vec<i32> {
    let Ok(fds) = crate::sys::numeric_entries(c"/proc/self/fd") else { return Vec::new() };
    fds.into_iter()
        .filter(|&fd| {
            matches!(sockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
                && sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
                && sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(0)
                && !address(fd, true).is_empty()
        })
        .collect()
}

/// How long phase 1 waits for the bytes a process sent to reach its peers.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Phase 1, the program's threads stopped: sends what the process's TCP
/// connections hold back (Nagle, TCP_CORK) and waits a moment for their
/// peers to acknowledge it, so that every byte written is in a receive
/// queue, where the receiver's checkpoint (phase 2, once every process of
/// the computation is through phase 1) peeks it. Bytes a full receive
/// buffer holds back stay unsent; the checkpoint saves them from the send
/// queue where it can (`send_queue`).
pub fn flush_tcp() {
    let fds: Vec<i32> = tcp_connections().into_iter().filter(|&fd| unacknowledged(fd) > 0).collect();
    if fds.is_empty() {
        return;
    }
    for &fd in &fds {
        push(fd);
    }
    let deadline = std::time::Instant::now() + FLUSH_WAIT;
    while fds.iter().any(|&fd| unacknowledged(fd) > 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
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

    fn pair(kind: i32) -> [i32; 2] {
        let mut p = [0; 2];
        // SAFETY: socketpair writes two descriptors.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, p.as_mut_ptr()) }, 0);
        p
    }

    fn close(fd: i32) {
        // SAFETY: closing a descriptor of the test's own.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn a_unix_socket_whose_peer_closed_is_told_from_an_unconnected_one() {
        for kind in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET] {
            let [a, b] = pair(kind);
            assert!(peer_closed(a) && !peer_shut_down(a));
            // SAFETY: shutdown on the test's socket.
            unsafe { libc::shutdown(b, libc::SHUT_WR) };
            assert!(peer_shut_down(a), "a half-closed connection");
            close(b);
            assert!(peer_closed(a), "still connected to its gone peer");
            assert!(peer_shut_down(a));
            close(a);
            // SAFETY: plain socket creation.
            let lone = unsafe { libc::socket(libc::AF_UNIX, kind, 0) };
            assert!(!peer_closed(lone));
            close(lone);
        }
    }

    #[test]
    fn bytes_a_loopback_peer_holds_unread_are_not_counted_as_unsent() {
        // SAFETY: plain socket calls on the test's own sockets.
        unsafe {
            let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            let p = &mut a as *mut libc::sockaddr_in as *mut libc::sockaddr;
            assert_eq!(libc::bind(l, p, len), 0);
            assert_eq!(libc::listen(l, 1), 0);
            assert_eq!(libc::getsockname(l, p, &mut len), 0);
            let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert_eq!(libc::connect(c, p, len), 0);
            let s = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
            assert!(s >= 0);
            assert_eq!(libc::write(c, b"x".as_ptr().cast(), 1), 1);
            // In the peer's queue, whether acknowledged yet or not.
            for _ in 0..100 {
                if ioctl_int(s, libc::FIONREAD) == Some(1) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(unsent(c), 0);
            assert_eq!(peek(s).unwrap(), b"x");
            assert!(tcp_connections().contains(&c) && !tcp_connections().contains(&l));
            flush_tcp();
            assert_eq!(unacknowledged(c), 0, "acknowledged within the flush's wait");
            libc::shutdown(c, libc::SHUT_WR);
            for _ in 0..100 {
                if peer_shut_down(s) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(peer_shut_down(s) && !peer_shut_down(c));
            for fd in [l, c, s] {
                libc::close(fd);
            }
        }
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
}
