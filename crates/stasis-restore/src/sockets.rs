//! Sockets of the computation, made again by restart before the processes
//! (like pipes, see `fds::SharedPipes`) and inherited by all of them:
//!
//! - a connected pair whose two ends are both in the computation: a Unix
//!   pair (matched by the kernel's peer inode) comes back as a socketpair,
//!   a TCP connection (matched by its addresses) as a new loopback
//!   connection between the same addresses; each end gets back the bytes
//!   it had not read, sent by the other end;
//! - a listening socket: bound to its address again and listening;
//! - a socket bound but not connected (UDP, Unix datagram): bound again.
//!
//! A connected socket whose peer is outside the computation is not made
//! here: `fds` gives it a disconnected stand-in.

use std::collections::HashMap;
use std::ffi::c_void;

use stasis_image::{FdKind, ImageReader, SockOpt};

/// One socket of the computation, as first seen in the images.
struct Seen<'a> {
    id: u64,
    domain: i32,
    kind: i32,
    protocol: i32,
    listening: bool,
    local: &'a [u8],
    peer: &'a [u8],
    peer_id: u64,
    options: &'a [SockOpt],
    /// The working directory of a process that holds it (relative Unix
    /// socket paths are relative to it).
    cwd: &'a str,
}

pub struct SharedSockets {
    fds: HashMap<u64, i32>,
}

fn err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor this code made.
    unsafe { libc::close(fd) };
}

fn new_socket(domain: i32, kind: i32, protocol: i32) -> Result<i32, String> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 { Err(err("socket")) } else { Ok(fd) }
}

/// Sets an int option; whether the kernel took it.
fn set_int(fd: i32, level: i32, name: i32, value: libc::c_int) -> bool {
    // SAFETY: setsockopt reads one int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    r == 0
}

fn is_reuse_addr(o: &SockOpt) -> bool {
    o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR
}

/// Sets the saved options on a new socket before it is bound or connected
/// (IPV6_V6ONLY and SO_REUSEPORT decide what bind allows; buffer sizes, the
/// window scale a connection agrees on), with SO_REUSEADDR on whatever the
/// program chose: its killed connections may sit in TIME_WAIT on the very
/// address. `settle` puts the program's SO_REUSEADDR back once bound. A
/// failure leaves the default, with a warning.
fn prepare(fd: i32, options: &[SockOpt], id: u64, warn: &mut dyn FnMut(String)) {
    for o in options.iter().filter(|o| !is_reuse_addr(o) && !already(fd, o)) {
        // SAFETY: setsockopt reads `o.value.len()` bytes of `o.value`.
        let r = unsafe { libc::setsockopt(fd, o.level, o.name, o.value.as_ptr().cast(), o.value.len() as u32) };
        if r != 0 {
            warn(format!(
                "socket {id}: option {}/{} comes back with its default ({})",
                o.level,
                o.name,
                std::io::Error::last_os_error()
            ));
        }
    }
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
}

/// Whether `fd` already has option `o` (an accepted end inherits its
/// listener's: IPV6_V6ONLY then cannot be set again, even to the same).
fn already(fd: i32, o: &SockOpt) -> bool {
    let mut now = [0u8; 64];
    let mut len = now.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `now`.
    let r = unsafe { libc::getsockopt(fd, o.level, o.name, now.as_mut_ptr().cast(), &mut len) };
    r == 0 && now.get(..len as usize) == Some(&o.value[..])
}

/// The program's own SO_REUSEADDR, once the socket is bound.
fn settle(fd: i32, options: &[SockOpt]) {
    let program = options
        .iter()
        .find(|o| is_reuse_addr(o))
        .and_then(|o| Some(i32::from_ne_bytes(o.value.get(..4)?.try_into().ok()?)))
        .unwrap_or(0);
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, program);
}

/// The saved options of `s` on a socket made without them.
fn apply(fd: i32, s: &Seen<'_>, warn: &mut dyn FnMut(String)) {
    prepare(fd, s.options, s.id, warn);
    settle(fd, s.options);
}

/// A new socket with the saved options of `s` (see `prepare`).
fn socket_like(s: &Seen<'_>, warn: &mut dyn FnMut(String)) -> Result<i32, String> {
    let fd = new_socket(s.domain, s.kind, s.protocol)?;
    prepare(fd, s.options, s.id, warn);
    Ok(fd)
}

fn bind(fd: i32, addr: &[u8]) -> Result<(), String> {
    // SAFETY: bind reads `addr.len()` bytes of a sockaddr.
    if unsafe { libc::bind(fd, addr.as_ptr() as *const libc::sockaddr, addr.len() as u32) } != 0 {
        return Err(err("bind"));
    }
    Ok(())
}

fn connect(fd: i32, addr: &[u8]) -> Result<(), String> {
    loop {
        // SAFETY: connect reads `addr.len()` bytes of a sockaddr.
        if unsafe { libc::connect(fd, addr.as_ptr() as *const libc::sockaddr, addr.len() as u32) } == 0 {
            return Ok(());
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(err("connect"));
        }
    }
}

/// The path of a Unix socket address that names a file (None: unnamed or
/// abstract).
fn unix_path(addr: &[u8]) -> Option<&[u8]> {
    let path = addr.get(2..)?;
    if path.first().is_none_or(|&c| c == 0) {
        return None;
    }
    Some(path.split(|&c| c == 0).next().unwrap_or(path))
}

/// Runs `f` from `cwd` when `addr` names a relative path (relative socket
/// paths are the program's, relative to its working directory), then goes
/// back to where restart was.
fn from_dir<R>(addr: &[u8], cwd: &str, f: impl FnOnce() -> R) -> R {
    let relative = unix_path(addr).is_some_and(|p| p.first() != Some(&b'/'));
    let here = std::env::current_dir().ok();
    let moved = relative && std::env::set_current_dir(cwd).is_ok();
    let r = f();
    if moved && let Some(here) = here {
        let _ = std::env::set_current_dir(here);
    }
    r
}

/// Binds a Unix socket where it was, from `cwd` for a relative path, after
/// removing the socket file its dead predecessor left.
fn bind_unix(fd: i32, addr: &[u8], cwd: &str) -> Result<(), String> {
    from_dir(addr, cwd, || bind_unix_here(fd, addr))
}

fn bind_unix_here(fd: i32, addr: &[u8]) -> Result<(), String> {
    if let Some(path) = unix_path(addr) {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::FileTypeExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
    }
    bind(fd, addr)
}

/// Connects to a Unix socket address, from `cwd` for a relative path.
fn connect_unix(fd: i32, addr: &[u8], cwd: &str) -> Result<(), String> {
    from_dir(addr, cwd, || connect(fd, addr))
}

/// Binds `fd` to `addr` the way its family wants.
fn bind_as(s: &Seen<'_>, fd: i32, addr: &[u8]) -> Result<(), String> {
    if s.domain == libc::AF_UNIX { bind_unix(fd, addr, s.cwd) } else { bind(fd, addr) }
}

/// How long TCP keeps a closed connection in TIME_WAIT on Linux (60 s),
/// and a margin.
const TIME_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(65);

/// How long a port held by other sockets (a listener among them) may take
/// to be let go: a restart at once after a kill can come while the killed
/// processes' descriptors are still being closed.
const CLOSING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds a server's address (a listener's, or the accepting end of a
/// connection). SO_REUSEADDR lets it past the connections the kill left in
/// TIME_WAIT when the program had set it on them too; when it had not,
/// the kernel keeps the port until they end (at most a minute): restart
/// waits for that, saying so, rather than fail. A port a live socket holds
/// fails after a moment (`CLOSING_GRACE`).
fn bind_server(s: &Seen<'_>, fd: i32, warn: &mut dyn FnMut(String)) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut told = false;
    loop {
        let r = bind_as(s, fd, s.local);
        let in_use = std::io::Error::last_os_error().raw_os_error() == Some(libc::EADDRINUSE);
        let Some(port) = inet_port(s.local).filter(|_| r.is_err() && in_use) else { return r };
        let states = tcp_states(port);
        let closing = !states.is_empty() && states.iter().all(|&st| CLOSING_STATES.contains(&st));
        let limit = if closing { TIME_WAIT_LIMIT } else { CLOSING_GRACE };
        if start.elapsed() > limit {
            let names: Vec<&str> = states.iter().map(|&st| state_name(st)).collect();
            return r.map_err(|e| format!("{e} (port {port}: sockets in {})", names.join(", ")));
        }
        if closing && !told {
            warn(format!(
                "socket {}: port {port} is held by the killed program's connections closing (made without \
                 SO_REUSEADDR); waiting for the kernel to let it go (at most a minute)",
                s.id
            ));
            told = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(if closing { 200 } else { 50 }));
    }
}

/// TCP states of a connection on its way out, which the kernel ends by
/// itself within about a minute: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE,
/// LAST_ACK, CLOSING (include/net/tcp_states.h).
const CLOSING_STATES: [u8; 6] = [4, 5, 6, 7, 9, 11];

fn state_name(st: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(st as usize).copied().unwrap_or("?")
}

/// The port of an IPv4 or IPv6 address.
fn inet_port(addr: &[u8]) -> Option<u16> {
    let family = i32::from(u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]));
    let port = u16::from_be_bytes([*addr.get(2)?, *addr.get(3)?]);
    (family == libc::AF_INET || family == libc::AF_INET6).then_some(port)
}

/// The states of the TCP sockets of this network namespace on local port
/// `port`.
fn tcp_states(port: u16) -> Vec<u8> {
    let mut states = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        states.extend(tcp_states_on(&std::fs::read_to_string(table).unwrap_or_default(), port));
    }
    states
}

/// The states of the sockets of a /proc/net/tcp table bound to local port
/// `port` ("sl local_address rem_address st ...", addresses as
/// HEXADDR:HEXPORT).
fn tcp_states_on(table: &str, port: u16) -> Vec<u8> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace().skip(1);
            let local = cols.next()?;
            let st = cols.nth(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port).then(|| u8::from_str_radix(st, 16).ok()).flatten()
        })
        .collect()
}

/// Same address family and port, and either the same address or `listener`
/// bound to every address.
fn serves(listener: &[u8], addr: &[u8]) -> bool {
    if listener.len() != addr.len() || listener.len() < 4 || listener[..4] != addr[..4] {
        return false;
    }
    let (l, a) = match u16::from_ne_bytes([addr[0], addr[1]]) as i32 {
        libc::AF_INET if addr.len() >= 8 => (&listener[4..8], &addr[4..8]),
        libc::AF_INET6 if addr.len() >= 24 => (&listener[8..24], &addr[8..24]),
        _ => return listener == addr,
    };
    l == a || l.iter().all(|&b| b == 0)
}

/// `addr` with port 0: any free port on the same address.
fn any_port(addr: &[u8]) -> Vec<u8> {
    let mut a = addr.to_vec();
    if a.len() >= 4 {
        a[2] = 0;
        a[3] = 0;
    }
    a
}

impl SharedSockets {
    /// Makes every socket of the images that restart can make, at
    /// descriptors >= `min_fd`. `warn` tells what comes back other than it was.
    pub fn create(images: &[&ImageReader], min_fd: i32, warn: &mut dyn FnMut(String)) -> Result<SharedSockets, String> {
        let mut made = SharedSockets { fds: HashMap::new() };
        let result = made.make_all(images, min_fd, warn);
        if result.is_err() {
            made.close();
        }
        result.map(|()| made)
    }

    fn keep(&mut self, id: u64, fd: i32, min_fd: i32) -> Result<(), String> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we made.
        let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min_fd) };
        close(fd);
        if moved < 0 {
            return Err(err("move a socket"));
        }
        self.fds.insert(id, moved);
        Ok(())
    }

    fn make_all(&mut self, images: &[&ImageReader], min_fd: i32, warn: &mut dyn FnMut(String)) -> Result<(), String> {
        let mut seen: Vec<Seen<'_>> = Vec::new();
        // Sockets whose peer had shut down writing (images of version 8).
        let peer_shut: Vec<u64> = images.iter().flat_map(|i| i.meta().sockets_peer_shut.iter().copied()).collect();
        for image in images {
            let meta = image.meta();
            // The launch's stdio from outside becomes restart's own.
            for f in meta.fds.iter().filter(|f| f.outside_stdio.is_none()) {
                if let FdKind::Socket { id, domain, kind, protocol, listening, local, peer, peer_id, options, .. } =
                    &f.kind
                    && !seen.iter().any(|s| s.id == *id)
                {
                    seen.push(Seen {
                        id: *id,
                        domain: *domain,
                        kind: *kind,
                        protocol: *protocol,
                        listening: *listening,
                        local,
                        peer,
                        peer_id: *peer_id,
                        options,
                        cwd: &meta.cwd,
                    });
                }
            }
        }
        // Listeners first: TCP connections are made again through them.
        let mut listeners: Vec<(usize, i32)> = Vec::new();
        for (i, s) in seen.iter().enumerate().filter(|(_, s)| s.listening) {
            let fd = socket_like(s, warn)?;
            // listen checks the port again: SO_REUSEADDR stays on till then.
            // SAFETY: listen on our socket.
            let r = bind_server(s, fd, warn)
                .and_then(|()| if unsafe { libc::listen(fd, 128) } == 0 { Ok(()) } else { Err(err("listen")) });
            settle(fd, s.options);
            if let Err(e) = r {
                close(fd);
                return Err(format!("listening socket {}: {e}", s.id));
            }
            listeners.push((i, fd));
        }
        let mut paired = vec![false; seen.len()];
        // Bound sockets keep SO_REUSEADDR on until every socket is made:
        // two connections a listener accepted share its port, and the
        // second one's listener of the moment binds it while the first
        // holds it (it then gets the program's value, `settle`).
        let mut unsettled: Vec<usize> = Vec::new();
        // Datagram sockets to connect once every socket is bound.
        let mut later: Vec<usize> = Vec::new();
        for i in 0..seen.len() {
            let s = &seen[i];
            if s.listening || paired[i] {
                continue;
            }
            let dgram = s.kind == libc::SOCK_DGRAM;
            let unnamed = |x: &Seen<'_>| unix_path(x.local).is_none() && x.local.get(2).is_none_or(|&c| c != 0);
            let peer = if s.domain == libc::AF_UNIX && (!dgram || unnamed(s)) {
                // A datagram pair of unnamed sockets is a socketpair; named
                // datagram sockets are bound, then connected, below.
                seen.iter().position(|t| s.peer_id != 0 && t.id == s.peer_id && (!dgram || unnamed(t)))
            } else if s.kind == libc::SOCK_STREAM && !s.peer.is_empty() {
                seen.iter().position(|t| !t.listening && t.local == s.peer && t.peer == s.local)
            } else {
                None
            };
            match peer {
                Some(j) if j != i && !paired[j] => {
                    let t = &seen[j];
                    // The server's end is the one a listener's address
                    // serves (or, for Unix, one with a name); an unnamed
                    // Unix pair is a socketpair.
                    let via = |x: &Seen<'_>| {
                        let by = |l: &Seen<'_>| {
                            if x.domain == libc::AF_UNIX { l.local == x.local } else { serves(l.local, x.local) }
                        };
                        listeners.iter().find(|(l, _)| by(&seen[*l])).map(|(_, fd)| *fd)
                    };
                    let named = |x: &Seen<'_>| x.domain == libc::AF_UNIX && unix_path(x.local).is_some();
                    let (a, b) = if let Some(l) = via(s) {
                        let (client, server) = stream_pair(t, s, Some(l), warn)?;
                        (server, client)
                    } else if let Some(l) = via(t) {
                        stream_pair(s, t, Some(l), warn)?
                    } else if s.domain != libc::AF_UNIX || named(t) {
                        stream_pair(s, t, None, warn)?
                    } else if named(s) {
                        let (client, server) = stream_pair(t, s, None, warn)?;
                        (server, client)
                    } else {
                        unix_pair(s)?
                    };
                    // Accepted ends got their listener's options, socketpairs
                    // none: each gets its own (again, for the one made with them).
                    prepare(a, s.options, s.id, warn);
                    prepare(b, t.options, t.id, warn);
                    unsettled.extend([i, j]);

                    if s.kind == libc::SOCK_STREAM {
                        fill(a, &contents(images, seen[j].id)?.concat(), s.id, warn);
                        fill(b, &contents(images, s.id)?.concat(), seen[j].id, warn);
                    } else {
                        for m in contents(images, seen[j].id)? {
                            send_message(a, None, &m, seen[j].id, warn);
                        }
                        for m in contents(images, s.id)? {
                            send_message(b, None, &m, s.id, warn);
                        }
                    }
                    // A half-closed connection: the end that had shut down
                    // writing does so again, after what its peer had not
                    // read (which then reads end of file after it).
                    if peer_shut.contains(&seen[j].id) {
                        shut_write(a);
                    }
                    if peer_shut.contains(&s.id) {
                        shut_write(b);
                    }
                    self.keep(s.id, a, min_fd)?;
                    self.keep(seen[j].id, b, min_fd)?;
                    paired[i] = true;
                    paired[j] = true;
                }
                // A Unix stream or seqpacket socket whose peer was closed.
                _ if s.domain == libc::AF_UNIX && !dgram && s.peer_id == 0 && !s.peer.is_empty() => {
                    let fd = orphan(s, &contents(images, s.id)?, warn)?;
                    self.keep(s.id, fd, min_fd)?;
                }
                // A stream connected to outside the computation.
                _ if !dgram && (!s.peer.is_empty() || s.peer_id != 0) => {}
                _ => {
                    let fd = socket_like(s, warn)?;
                    if !s.local.is_empty()
                        && let Err(e) = bind_as(s, fd, s.local)
                    {
                        warn(format!("socket {} comes back unbound ({e})", s.id));
                    }
                    unsettled.push(i);
                    self.keep(s.id, fd, min_fd)?;
                    if dgram && !s.peer.is_empty() {
                        later.push(i);
                    }
                }
            }
        }
        for i in unsettled {
            if let Some(&fd) = self.fds.get(&seen[i].id) {
                settle(fd, seen[i].options);
            }
        }
        for i in later {
            let s = &seen[i];
            let fd = self.fds[&s.id];
            let r = if s.domain == libc::AF_UNIX { connect_unix(fd, s.peer, s.cwd) } else { connect(fd, s.peer) };
            if let Err(e) = r {
                warn(format!("socket {} comes back not connected to its peer ({e})", s.id));
            }
        }
        // The messages a bound Unix datagram socket had not read come back
        // from a socket of the moment (their senders cannot be made again).
        for s in seen.iter().filter(|s| s.domain == libc::AF_UNIX && s.kind == libc::SOCK_DGRAM) {
            let msgs = contents(images, s.id)?;
            if msgs.is_empty() || !self.fds.contains_key(&s.id) || s.local.len() <= 2 {
                continue;
            }
            let sender = new_socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0)?;
            from_dir(s.local, s.cwd, || {
                for m in &msgs {
                    send_message(sender, Some(s.local), m, s.id, warn);
                }
            });
            close(sender);
        }
        for (i, fd) in listeners {
            self.keep(seen[i].id, fd, min_fd)?;
        }
        Ok(())
    }

    pub fn get(&self, id: u64) -> Option<i32> {
        self.fds.get(&id).copied()
    }

    pub fn fds(&self) -> Vec<i32> {
        self.fds.values().copied().collect()
    }

    /// Closes this process's copies.
    pub fn close(&self) {
        for &fd in self.fds.values() {
            close(fd);
        }
    }
}

fn unix_pair(s: &Seen<'_>) -> Result<(i32, i32), String> {
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into `pair`.
    if unsafe { libc::socketpair(libc::AF_UNIX, s.kind | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } != 0 {
        return Err(err("socketpair"));
    }
    Ok((pair[0], pair[1]))
}

/// A connected Unix socket like `s` whose peer is gone: one end of a new
/// pair, given `unread` (the bytes, or messages, `s` had not read) by the
/// other end, which is then closed. Reads get them, then end of file;
/// writes fail with EPIPE, as before the checkpoint.
fn orphan(s: &Seen<'_>, unread: &[Vec<u8>], warn: &mut dyn FnMut(String)) -> Result<i32, String> {
    let (mine, other) = unix_pair(s)?;
    apply(mine, s, warn);
    if s.kind == libc::SOCK_STREAM {
        fill(other, &unread.concat(), s.id, warn);
    } else {
        for m in unread {
            send_message(other, None, m, s.id, warn);
        }
    }
    close(other);
    Ok(mine)
}

/// A new connection from `client`'s address to `server`'s, accepted
/// through `via` (the computation's own listener) or a listener of the
/// moment at the server's address. Returns (client end, server end).
fn stream_pair(
    client: &Seen<'_>,
    server: &Seen<'_>,
    via: Option<i32>,
    warn: &mut dyn FnMut(String),
) -> Result<(i32, i32), String> {
    let temporary = match via {
        Some(_) => None,
        None => {
            let l = socket_like(server, warn)?;
            // SAFETY: listen on our socket.
            let r = bind_server(server, l, warn)
                .and_then(|()| if unsafe { libc::listen(l, 1) } == 0 { Ok(()) } else { Err(err("listen")) });
            if let Err(e) = r {
                close(l);
                return Err(format!("connection {}: cannot take its server's address again: {e}", server.id));
            }
            Some(l)
        }
    };
    let listener = via.or(temporary).unwrap_or(-1);
    let result = (|| {
        let c = connected_client(client, server, warn)?;
        // SAFETY: accept on our listener, addresses not wanted.
        let s = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if s < 0 {
            close(c);
            return Err(err("accept"));
        }
        Ok((c, s))
    })();
    if let Some(l) = temporary {
        close(l);
        // A listener of the moment leaves no socket file behind.
        if server.domain == libc::AF_UNIX
            && let Some(path) = unix_path(server.local)
        {
            use std::os::unix::ffi::OsStrExt;
            from_dir(server.local, server.cwd, || std::fs::remove_file(std::ffi::OsStr::from_bytes(path)).ok());
        }
    }
    result
}

/// IP_LOCAL_PORT_RANGE (Linux 6.3): the ports a connect may pick from.
const IP_LOCAL_PORT_RANGE: i32 = 51;

/// `client`'s end of a connection to `server`, connected from its old
/// address where it can be had.
///
/// A TCP client's old port is often held by its own killed predecessor in
/// TIME_WAIT. bind refuses it unless that one had SO_REUSEADDR, but
/// connect may take the port over from a TIME_WAIT connection to the same
/// place (net.ipv4.tcp_tw_reuse, on for loopback by default) once
/// tcp_tw_reuse_delay (1 s) has passed since its last packet; and it does
/// so only for a port that connect itself picked (as it had for the
/// predecessor, usually). So connect picks the port, from a range of that
/// one port; then bind is tried; both again for a few seconds. Past that
/// the connection gets another port, with a warning.
fn connected_client(client: &Seen<'_>, server: &Seen<'_>, warn: &mut dyn FnMut(String)) -> Result<i32, String> {
    let to_server = |c: i32| {
        if server.domain == libc::AF_UNIX {
            connect_unix(c, server.local, server.cwd)
        } else {
            connect(c, server.local)
        }
    };
    let fail = |c: i32, e: String| {
        close(c);
        format!("connection {}: {e}", client.id)
    };
    let port = inet_port(client.local).filter(|_| client.domain != libc::AF_UNIX);
    let Some(port) = port else {
        // Unix: bound again when it had a name of its own.
        let c = socket_like(client, warn)?;
        if unix_path(client.local).is_some()
            && let Err(e) = bind_as(client, c, client.local)
        {
            warn(format!("connection {}: its old address is taken ({e}); it gets another", client.id));
        }
        return to_server(c).map(|()| c).map_err(|e| fail(c, e));
    };
    let start = std::time::Instant::now();
    let delay = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse_delay")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1000);
    let limit = std::time::Duration::from_millis(delay + 2000);
    let last = loop {
        let mut busy = false;
        // connect picks the old port.
        let c = socket_like(client, warn)?;
        set_int(c, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        if set_int(c, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, (u32::from(port) << 16 | u32::from(port)) as i32) {
            let r = bind(c, &any_port(client.local)).and_then(|()| to_server(c));
            if r.is_ok() {
                set_int(c, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 0);
                set_int(c, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, 0);
                return Ok(c);
            }
            busy |= std::io::Error::last_os_error().raw_os_error() == Some(libc::EADDRNOTAVAIL);
        }
        close(c);
        // bind takes it.
        let c = socket_like(client, warn)?;
        let e = match bind(c, client.local) {
            Ok(()) => return to_server(c).map(|()| c).map_err(|e| fail(c, e)),
            Err(e) => e,
        };
        busy |= std::io::Error::last_os_error().raw_os_error() == Some(libc::EADDRINUSE);
        close(c);
        if !busy || start.elapsed() > limit {
            break e;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    warn(format!("connection {}: its old address is taken ({last}); it gets another", client.id));
    let c = socket_like(client, warn)?;
    let _ = bind(c, &any_port(client.local));
    to_server(c).map(|()| c).map_err(|e| fail(c, e))
}

/// What socket `id` had not read, from the first image that saved it: its
/// chunks in order (for a datagram or seqpacket socket, one message each).
fn contents(images: &[&ImageReader], id: u64) -> Result<Vec<Vec<u8>>, String> {
    let parts = crate::fds::saved_contents(images, |k| matches!(k, FdKind::Socket { id: other, .. } if *other == id))?;
    Ok(parts.into_iter().map(|(_, d)| d).collect())
}

/// Sends one message from `from` (to `dest`, or its peer), for socket `to`.
fn send_message(from: i32, dest: Option<&[u8]>, msg: &[u8], to: u64, warn: &mut dyn FnMut(String)) {
    let (addr, len) = dest.map_or((std::ptr::null(), 0), |d| (d.as_ptr() as *const libc::sockaddr, d.len() as u32));
    // SAFETY: sendto reads the message and, when given, the address.
    let n = unsafe {
        libc::sendto(from, msg.as_ptr().cast(), msg.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, addr, len)
    };
    if n < 0 || n as usize != msg.len() {
        warn(format!("socket {to}: a message of {} bytes it had not read could not be put back", msg.len()));
    }
}

fn shut_write(fd: i32) {
    // SAFETY: shutdown on a socket this code made.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Sends `bytes` from `from`, for its peer (socket `to`) to read.
fn fill(from: i32, bytes: &[u8], to: u64, warn: &mut dyn FnMut(String)) {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: send reads from a live buffer.
        let n = unsafe {
            libc::send(from, bytes[done..].as_ptr().cast(), bytes.len() - done, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n <= 0 {
            warn(format!(
                "socket {to}: {} of its {} unread bytes could not be put back",
                bytes.len() - done,
                bytes.len()
            ));
            return;
        }
        done += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut a = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        a.extend(port.to_be_bytes());
        a.extend(ip);
        a.extend([0u8; 8]);
        a
    }

    #[test]
    fn a_listener_on_any_address_serves_loopback() {
        assert!(serves(&inet([0, 0, 0, 0], 80), &inet([127, 0, 0, 1], 80)));
        assert!(serves(&inet([127, 0, 0, 1], 80), &inet([127, 0, 0, 1], 80)));
        assert!(!serves(&inet([127, 0, 0, 1], 81), &inet([127, 0, 0, 1], 80)));
        assert!(!serves(&inet([127, 0, 0, 2], 80), &inet([127, 0, 0, 1], 80)));
        assert_eq!(any_port(&inet([127, 0, 0, 1], 80)), inet([127, 0, 0, 1], 0));
    }

    #[test]
    fn tcp_table_states_by_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1234 1
   1: 0100007F:1F90 0100007F:D3A2 06 00000000:00000000 03:00001234 00000000     0        0 0 3
   2: 0100007F:D3A2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 99 1\n";
        assert_eq!(tcp_states_on(table, 8080), vec![0x0a, 0x06]);
        assert_eq!(tcp_states_on(table, 0xd3a2), vec![0x01]);
        assert!(tcp_states_on(table, 1).is_empty());
        assert_eq!(inet_port(&inet([127, 0, 0, 1], 8080)), Some(8080));
    }

    #[test]
    fn closing_states_are_those_of_connections_on_their_way_out() {
        let closing: Vec<&str> = CLOSING_STATES.iter().map(|&st| state_name(st)).collect();
        assert_eq!(closing, ["FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "LAST_ACK", "CLOSING"]);
        assert_eq!(state_name(0x0a), "LISTEN");
        assert_eq!(state_name(0x08), "CLOSE_WAIT");
        assert_eq!(state_name(99), "?");
    }

    #[test]
    fn unix_paths() {
        let mut named = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        named.extend(b"srv.sock\0");
        assert_eq!(unix_path(&named), Some(&b"srv.sock"[..]));
        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend(b"\0hidden");
        assert_eq!(unix_path(&abs), None);
    }
}
