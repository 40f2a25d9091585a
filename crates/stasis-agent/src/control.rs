//! The checkpoint thread's loop: find the coordinator and obey it.
//!
//! The coordinator's address comes from the environment (`STASIS_COORD_ADDR`
//! = `unix:PATH` or `tcp:HOST:PORT`, or the older `STASIS_COORD_SOCKET`) and
//! later from the coordinator itself (`COORDINATOR addr=...`). If the
//! connection drops, the program runs on and the agent tries that address
//! again every few seconds, so a new coordinator picks the computation up.
//!
//! Whoever answers at that address must prove that it is the coordinator
//! before the agent obeys a word: over a Unix socket its uid (SO_PEERCRED)
//! must be ours; over TCP it must prove the computation's secret back
//! (stasis_proto::auth). Another user's process that takes the port after
//! the coordinator died is refused, logged once, and tried again later
//! like an absent coordinator.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

use stasis_proto::{self as proto, Message, auth};

use crate::ckpt::{self, Outcome, Request, Snapshotted};
use crate::conn_fd::Link;
use crate::{signals, sys, tree};

/// How long the program may stay stopped waiting for the coordinator's
/// next step before the agent resumes it on its own.
const STOPPED_LIMIT: Duration = Duration::from_secs(60);
/// How long a checkpoint request waits for restart to finish verifying
/// the images this process came from: within the coordinator's deadline
/// for an answer (its PHASE_LIMIT).
const VERIFY_WAIT: Duration = Duration::from_secs(30);
/// Pause between attempts to reach a coordinator that went away.
const RETRY: Duration = Duration::from_secs(2);

pub(crate) fn log(msg: &str) {
    sys::write_stderr(format!("stasis agent[{}]: {msg}\n", sys::getpid()).as_bytes());
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

fn parse_addr(s: &str) -> Option<Addr> {
    if let Some(p) = s.strip_prefix("unix:") {
        return Some(Addr::Unix(p.into()));
    }
    s.strip_prefix("tcp:").filter(|hp| hp.contains(':')).map(|hp| Addr::Tcp(hp.to_string()))
}

/// What the environment said at start-up (see `remember_environment`).
struct Environment {
    addr: Option<Addr>,
    secret: Option<Vec<u8>>,
}

static ENVIRONMENT: std::sync::OnceLock<Environment> = std::sync::OnceLock::new();

/// Reads the coordinator's address and secret from the environment, once,
/// in the constructor (before the program's main, and before it can change
/// or shadow its environment).
pub fn remember_environment() {
    let text = crate::exec::env_var("STASIS_COORD_ADDR");
    if let Some(t) = &text {
        crate::exec::remember_address(t);
    }
    let addr = text
        .and_then(|s| parse_addr(&s))
        .or_else(|| crate::exec::env_var("STASIS_COORD_SOCKET").map(|p| Addr::Unix(p.into())));
    let secret = crate::exec::env_var("STASIS_COORD_SECRET").and_then(|h| auth::from_hex(&h));
    let _ = ENVIRONMENT.set(Environment { addr, secret });
}

/// Whether this process was started under stasis.
pub fn under_stasis() -> bool {
    ENVIRONMENT.get().is_some_and(|e| e.addr.is_some())
}

/// What the agent remembers about its computation, across reconnections
/// and restarts (it lives on the checkpoint thread's stack, which is saved).
#[derive(Clone)]
struct Session {
    addr: Option<Addr>,
    secret: Option<Vec<u8>>,
    generation: u64,
    computation: u64,
    interval_s: u32,
}

/// The last published copy of the session, for a child of fork() to start
/// from (it has no checkpoint thread, hence no stack holding a Session).
/// Read only in the child, from its own copy of memory, so the parent may
/// free an old copy as soon as it publishes a new one.
static INHERITED: AtomicPtr<Session> = AtomicPtr::new(std::ptr::null_mut());

fn publish(s: &Session) {
    let new = Box::into_raw(Box::new(s.clone()));
    let old = INHERITED.swap(new, Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw above and nobody in this
        // process reads it any more (see INHERITED).
        drop(unsafe { Box::from_raw(old) });
    }
}

fn inherited() -> Option<Session> {
    let p = INHERITED.load(Ordering::Acquire);
    // SAFETY: non-null pointers in INHERITED are live boxes (see publish).
    (!p.is_null()).then(|| unsafe { (*p).clone() })
}

/// Blocks every signal in the calling thread except the checkpoint signal,
/// so that the program's signals are delivered to the program's threads.
fn block_program_signals(sig: i32) {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigdelset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Sets (or clears) how long a read on the connection may block.
fn set_read_timeout(conn: &Link, limit: Option<Duration>) {
    set_read_timeout_fd(conn.fd(), limit)
}

fn set_read_timeout_fd(fd: i32, limit: Option<Duration>) {
    let d = limit.unwrap_or_default();
    let tv = libc::timeval { tv_sec: d.as_secs() as i64, tv_usec: d.subsec_micros() as i64 };
    // SAFETY: setsockopt with a timeval on a descriptor we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

/// The agent's connection sits at a high descriptor number (`sys::dup_high`).
/// Until it is the connection, the program's calls that name it wait for
/// it (`conn_fd`). Either number may be taken by the program's dup2 in the
/// instant before: only what still holds our socket is ever closed.
fn out_of_the_way(conn: File) -> File {
    let low = conn.into_raw_fd();
    let ino = crate::conn_fd::inode(low);
    let fd = match crate::conn_fd::dup_pending(low, ino) {
        Some(high) => {
            if crate::conn_fd::inode(low) == ino {
                sys::close(low);
            }
            high
        }
        None => {
            crate::conn_fd::set_pending(low, ino);
            low
        }
    };
    // SAFETY: a number made here, owned here (see `discard`).
    unsafe { File::from_raw_fd(fd) }
}

/// Closes one of our descriptors with a plain close(2), whose EBADF (the
/// program closed it under us) is no error here, unlike a File's drop.
fn discard(f: File) {
    let fd = f.into_raw_fd();
    if crate::conn_fd::still_pending(fd) {
        sys::close(fd);
    }
    crate::conn_fd::clear_pending(fd);
}

/// The address of the coordinator at the other end of `fd`.
fn peer_addr(fd: i32) -> Option<Addr> {
    // SAFETY: a zeroed sockaddr_storage is valid; getpeername fills at most `len` bytes.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    if unsafe { libc::getpeername(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return None;
    }
    match sa.ss_family as i32 {
        libc::AF_UNIX => {
            // SAFETY: the kernel filled a sockaddr_un.
            let un = unsafe { &*(&sa as *const _ as *const libc::sockaddr_un) };
            let path: Vec<u8> = un.sun_path.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            use std::os::unix::ffi::OsStringExt;
            (!path.is_empty()).then(|| Addr::Unix(std::ffi::OsString::from_vec(path).into()))
        }
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in.
            let sin = unsafe { &*(&sa as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(Addr::Tcp(format!("{ip}:{}", u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6.
            let sin = unsafe { &*(&sa as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin.sin6_addr.s6_addr);
            Some(Addr::Tcp(format!("[{ip}]:{}", u16::from_be(sin.sin6_port))))
        }
        _ => None,
    }
}

fn addr_text(a: &Addr) -> String {
    match a {
        Addr::Unix(p) => format!("unix:{}", p.display()),
        Addr::Tcp(hp) => format!("tcp:{hp}"),
    }
}

/// In a restored process, before its program runs again: the coordinator
/// restart connected `agent_fd` to is the one to use from now on, for
/// this process and for any it forks or execs at once.
pub fn restored(agent_fd: i32) {
    // Restart's socket, at the number the image saw ours at.
    let _ = Link::adopt(agent_fd);
    // --modify-env and restart's --tmpdir, before anything tells the
    // program it was restarted.
    crate::modify_env::restored();
    if let Some(dir) = crate::signals::take_restart_tmpdir()
        && let Ok(c) = std::ffi::CString::new(dir.clone())
    {
        crate::exec::setenv_real(c"STASIS_TMPDIR", &c);
        crate::api::set_tmpdir(dir);
    }
    // [stasis api] before the program runs: dmtcp_checkpoint() returns "restarted".
    crate::api::note_restored(crate::signals::RESTORE_INFO.generation.load(Ordering::Acquire));
    crate::imagemap::restored();
    crate::stdio::restored();
    let Some(addr) = peer_addr(agent_fd) else { return };
    crate::exec::set_current(&addr_text(&addr));
    if let Some(mut s) = inherited() {
        s.addr = Some(addr);
        publish(&s);
    }
}

/// A socket of `family` at a high descriptor (see `sys::dup_high`).
fn high_socket(family: i32) -> Result<File, String> {
    // SAFETY: plain socket creation.
    let low = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if low < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `low` was just made and is owned here.
    Ok(out_of_the_way(unsafe { File::from_raw_fd(low) }))
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
fn peer_uid(sock: &File) -> Result<u32, String> {
    // SAFETY: ucred is plain data; all zeros is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    };
    if r != 0 {
        return Err(format!("cannot tell who serves it: {}", std::io::Error::last_os_error()));
    }
    Ok(cred.uid)
}

/// Refuses a Unix socket served by anyone but ourselves: whoever could put
/// a socket in our way must not be obeyed.
fn check_unix_peer(sock: &File, path: &std::path::Path) -> Result<(), String> {
    let uid = peer_uid(sock)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if uid == me {
        Ok(())
    } else {
        Err(format!("the coordinator socket {} is served by uid {uid}, not by you", path.display()))
    }
}

/// Fresh random bytes from the kernel, for our half of the handshake.
fn random_nonce() -> Result<auth::Nonce, String> {
    let mut nonce = [0u8; auth::NONCE_LEN];
    // SAFETY: getrandom writes at most `nonce.len()` bytes into `nonce`.
    let n = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    if usize::try_from(n).is_ok_and(|n| n == nonce.len()) {
        return Ok(nonce);
    }
    // An old kernel, or a seccomp filter that refuses getrandom.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce))
        .map_err(|e| format!("cannot draw a nonce: {e}"))?;
    Ok(nonce)
}

/// connect(2) of our socket to a raw `struct sockaddr`.
fn connect_raw(sock: &File, sa: &[u8]) -> Result<(), String> {
    loop {
        // SAFETY: connect reads `sa.len()` bytes of a sockaddr.
        let r = unsafe { libc::connect(sock.as_raw_fd(), sa.as_ptr() as *const libc::sockaddr, sa.len() as u32) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e.to_string());
        }
    }
}

/// `struct sockaddr_un` for `path`.
fn unix_sockaddr(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    let p = path.as_os_str().as_bytes();
    if p.len() >= 108 {
        return Err(format!("{}: path too long for a socket", path.display()));
    }
    let mut sa = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    sa.extend(p);
    sa.push(0);
    Ok(sa)
}

/// `struct sockaddr_in` or `sockaddr_in6` for `a`.
fn inet_sockaddr(a: std::net::SocketAddr) -> Vec<u8> {
    match a {
        std::net::SocketAddr::V4(v4) => {
            let mut sa = (libc::AF_INET as u16).to_ne_bytes().to_vec();
            sa.extend(v4.port().to_be_bytes());
            sa.extend(v4.ip().octets());
            sa.extend([0u8; 8]);
            sa
        }
        std::net::SocketAddr::V6(v6) => {
            let mut sa = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
            sa.extend(v6.port().to_be_bytes());
            sa.extend(v6.flowinfo().to_be_bytes());
            sa.extend(v6.ip().octets());
            sa.extend(v6.scope_id().to_ne_bytes());
            sa
        }
    }
}

/// Connects to the coordinator. The socket is made straight at a high
/// descriptor (the program may be closing and reusing low numbers right
/// now, as a shell in a child it just forked does), and raw descriptors
/// are used throughout: a socket the program closed under us must be an
/// error, not a double close.
fn connect(addr: &Addr, secret: Option<&[u8]>) -> Result<File, String> {
    match addr {
        Addr::Unix(path) => {
            let sa = unix_sockaddr(path)?;
            let sock = high_socket(libc::AF_UNIX)?;
            match connect_raw(&sock, &sa).map_err(|e| format!("{}: {e}", path.display())) {
                Ok(()) => match check_unix_peer(&sock, path) {
                    Ok(()) => Ok(sock),
                    Err(e) => {
                        discard(sock);
                        Err(e)
                    }
                },
                Err(e) => {
                    discard(sock);
                    Err(e)
                }
            }
        }
        Addr::Tcp(hp) => {
            let sa = hp
                .to_socket_addrs()
                .map_err(|e| format!("{hp}: {e}"))?
                .next()
                .ok_or_else(|| format!("{hp}: no address"))?;
            let family = if sa.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            let sock = high_socket(family)?;
            match connect_tcp(&sock, &inet_sockaddr(sa), secret, &addr_text(addr)) {
                Ok(()) => Ok(sock),
                Err(e) => {
                    discard(sock);
                    Err(e)
                }
            }
        }
    }
}

/// Connects a TCP socket (bounded: 10 s) and proves the secret to the
/// coordinator, and it to us. Errors name `addr`.
fn connect_tcp(sock: &File, sa: &[u8], secret: Option<&[u8]>, addr: &str) -> Result<(), String> {
    let limit = libc::timeval { tv_sec: 10, tv_usec: 0 };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads a timeval, then an int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &limit as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    connect_raw(sock, sa).map_err(|e| format!("{addr}: {e}"))?;
    authenticate(sock, secret, addr)
}

/// A child of fork() reaches the coordinator its parent was connected to,
/// through the socket its fork handler made (see `tree::child`).
fn connect_as_child(s: &mut Session) -> Option<File> {
    let (sock, sa) = tree::take_fork_peer()?;
    // What the parent reached; the same checks as any connection's.
    let parent = s.addr.as_ref().map_or_else(|| "the parent's coordinator".to_string(), addr_text);
    let result = if sa.get(..2) == Some(&(libc::AF_UNIX as u16).to_ne_bytes()[..]) {
        connect_raw(&sock, &sa).and_then(|()| {
            let path = match peer_addr(sock.as_raw_fd()) {
                Some(Addr::Unix(p)) => p,
                _ => PathBuf::from(&parent),
            };
            check_unix_peer(&sock, &path)
        })
    } else {
        connect_tcp(&sock, &sa, s.secret.as_deref(), &parent)
    };
    if result.is_err() {
        // The checkpoint thread tries the address itself, and says why.
        discard(sock);
        return None;
    }
    if let Some(a) = peer_addr(sock.as_raw_fd()) {
        s.addr = Some(a);
    }
    Some(sock)
}

/// Answers the coordinator's challenge on a new TCP connection, and checks
/// the coordinator's proof in return before anything else is said: an
/// impostor gets a proof it cannot use elsewhere, and nothing more.
fn authenticate(conn: &File, secret: Option<&[u8]>, addr: &str) -> Result<(), String> {
    set_read_timeout_fd(conn.as_raw_fd(), Some(Duration::from_secs(10)));
    // Byte by byte: nothing after the handshake's lines may be consumed here.
    let read_line = || -> Result<Message, String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < proto::MAX_LINE {
            match std::io::Read::read(&mut &*conn, &mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => line.push(byte[0]),
                Ok(_) => return Err(format!("{addr}: connection closed")),
                Err(e) => return Err(format!("{addr}: {e}")),
            }
        }
        Message::decode(&String::from_utf8_lossy(&line)).map_err(|e| format!("{addr}: {e}"))
    };
    let challenge = read_line()?;
    let theirs = challenge
        .get("nonce")
        .and_then(auth::nonce_from_hex)
        .filter(|_| challenge.verb == auth::CHALLENGE)
        .ok_or_else(|| format!("{addr}: the peer did not send a challenge: not a stasis coordinator"))?;
    let secret = secret.ok_or_else(|| format!("{addr}: no secret to prove (STASIS_COORD_SECRET is not set)"))?;
    let ours = random_nonce()?;
    let answer = Message::new(auth::AUTH)
        .with("nonce", auth::to_hex(&ours))
        .with("proof", auth::prove(secret, auth::Role::Client, &theirs, &ours));
    (&*conn).write_all(answer.encode().as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let reply = read_line()?;
    set_read_timeout_fd(conn.as_raw_fd(), None);
    match reply.verb.as_str() {
        proto::OK
            if reply.get("proof").is_some_and(|p| auth::verify(secret, auth::Role::Coordinator, &theirs, &ours, p)) =>
        {
            Ok(())
        }
        proto::ERROR => Err(format!("{addr} refused us: {}", reply.get("reason").unwrap_or("no reason given"))),
        _ => Err(format!(
            "the peer at {addr} did not prove the computation's secret: it is not this computation's coordinator"
        )),
    }
}

/// The program's name (its comm), read once in the constructor: reading
/// /proc/self/comm later would open a descriptor while the program runs.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Remembers the program's name; from the constructor, on its main thread.
pub fn remember_name() {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into `buf`.
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    let len = buf.iter().position(|&c| c == 0).unwrap_or(16);
    let _ = NAME.set(String::from_utf8_lossy(&buf[..len]).into_owned());
}

fn hello(s: &Session, restored: bool) -> Message {
    let name = NAME.get().map_or("", String::as_str);
    Message::new(proto::HELLO)
        .with("pid", sys::getpid())
        .with("name", name)
        .with("restored", restored as u8)
        .with("computation", format!("{:x}", s.computation))
        .with("generation", s.generation)
}

pub fn run() {
    let sig = signals::CKPT_SIGNAL.load(Ordering::Acquire);
    block_program_signals(sig);
    signals::CT_TID.store(sys::gettid(), Ordering::Release);
    // A child of fork() carries on with what its parent knew.
    let env = ENVIRONMENT.get();
    let mut s = inherited().unwrap_or_else(|| Session {
        addr: env.and_then(|e| e.addr.clone()),
        secret: env.and_then(|e| e.secret.clone()),
        generation: 0,
        computation: 0,
        interval_s: 0,
    });
    publish(&s);
    let mut conn: Option<Link> = connect_as_child(&mut s).map(|c| Link::adopt(c.into_raw_fd()));
    let mut restored = false;
    // The address last complained about: a refusal is logged once per
    // address, not every two seconds.
    let mut complained: Option<Addr> = None;
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => {
                let Some(addr) = s.addr.clone() else {
                    log("no coordinator address (STASIS_COORD_ADDR); this process is not checkpointed");
                    return;
                };
                match tree::without_fork(|| connect(&addr, s.secret.as_deref())) {
                    Ok(c) => {
                        complained = None;
                        Link::adopt(c.into_raw_fd())
                    }
                    Err(e) => {
                        if complained.as_ref() != Some(&addr) {
                            log(&format!("cannot reach the coordinator ({e}); the program runs on, retrying"));
                            complained = Some(addr);
                        }
                        std::thread::sleep(RETRY);
                        continue;
                    }
                }
            }
        };
        if !send(&c, hello(&s, restored)) {
            c.let_go();
            std::thread::sleep(RETRY);
            continue;
        }
        restored = false;
        let end = serve(&c, &mut s);
        if matches!(end, End::Restored) {
            // The connection restart gave us is to the coordinator of now.
            if let Some(a) = peer_addr(c.fd()) {
                s.addr = Some(a);
            }
        }
        publish(&s);
        match end {
            // The descriptor now holds restart's connection: greet it.
            End::Restored => {
                // The program runs again: its environment may change now.
                crate::stdio::restored_environ();
                // [stasis api] the program's hooks after a restart.
                crate::plugins::after_restart();
                restored = true;
                conn = Some(c);
            }
            End::Closed => {
                c.let_go();
                std::thread::sleep(RETRY);
            }
        }
    }
}

enum End {
    Closed,
    Restored,
}

fn send(conn: &Link, m: Message) -> bool {
    let mut w = conn;
    still_ours(conn) && w.write_all(m.encode().as_bytes()).is_ok()
}

/// Whether the connection is still the agent's; says once if the program
/// took it (with a raw system call the wrappers of `conn_fd` cannot see).
fn still_ours(conn: &Link) -> bool {
    if conn.ours() {
        return true;
    }
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !TOLD.swap(true, Ordering::AcqRel) {
        log(&format!(
            "the program closed or replaced the agent's connection (descriptor {}); connecting again",
            conn.fd()
        ));
    }
    false
}

fn failed(generation: u64, reason: &str) -> Message {
    Message::new(proto::FAILED).with("generation", generation).with("reason", reason)
}

/// Reads the next message; `None` when the connection ended or timed out
/// (`timed_out` tells which).
fn next(reader: &mut BufReader<&Link>, timed_out: &mut bool) -> Option<Message> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.buffer().is_empty() && !still_ours(reader.get_ref()) {
            return None;
        }
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => match Message::decode(&line) {
                // KILL ends the process at whatever step it comes, in the
                // middle of a checkpoint too (the checkpoint then fails,
                // and the last one stays): `dmtcp_command --kill` must not
                // wait for a checkpoint that an interval started.
                Ok(m) if m.verb == proto::KILL => {
                    let _ = sys::kill(sys::getpid(), libc::SIGKILL);
                    return Some(m);
                }
                Ok(m) => return Some(m),
                Err(_) => log(&format!("ignoring a bad line from the coordinator: {:?}", line.trim_end())),
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                *timed_out = true;
                return None;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn request(msg: &Message, s: &mut Session, conn: &Link) -> Option<Request> {
    let generation = msg.get_parsed("generation").unwrap_or(s.generation + 1);
    s.interval_s = msg.get_parsed("interval").unwrap_or(s.interval_s);
    if let Some(id) = msg.get("computation").and_then(|c| u64::from_str_radix(c, 16).ok()) {
        s.computation = id;
    }
    // Images go only where an absolute path says: a relative one would
    // depend on the program's working directory.
    let dir = msg.get("dir").filter(|d| d.starts_with('/'))?;
    Some(Request {
        generation,
        computation: s.computation,
        // `lz4` from a coordinator of the release before, which compressed
        // with it: compressing is what it asked for.
        compress: matches!(msg.get("compression"), Some("zstd" | "lz4")),
        dir: PathBuf::from(dir),
        agent_fd: conn.fd(),
        interval_s: s.interval_s,
        // In the phased protocol (SUSPEND) the image writer says WRITTEN.
        writer_reports: msg.verb == proto::SUSPEND,
        base: crate::track::Base {
            generation: msg.get_parsed("base").unwrap_or(0),
            full: msg.get("full") != Some("0"),
            track: msg.get("track") != Some("0"),
        },
    })
}

fn written(generation: u64, result: Result<Outcome, String>) -> Message {
    match result {
        Ok(Outcome::Written { image, bytes, pause }) => Message::new(proto::WRITTEN)
            .with("generation", generation)
            .with("image", image)
            .with("bytes", bytes)
            .with("pause_us", pause.as_micros()),
        Ok(Outcome::Restored { .. }) => failed(generation, "unexpected restore"),
        Err(reason) => {
            log(&format!("checkpoint {generation} failed: {reason}"));
            failed(generation, &reason)
        }
    }
}

fn serve(conn: &Link, s: &mut Session) -> End {
    let mut reader = BufReader::new(conn);
    let mut timed_out = false;
    while let Some(msg) = next(&mut reader, &mut timed_out) {
        let end = obey(conn, &mut reader, s, msg);
        publish(s);
        crate::api::set_generation(s.generation); // [stasis api]
        if let Some(end) = end {
            return end;
        }
    }
    End::Closed
}

/// Carries out one message; `Some` when the connection is done with.
fn obey(conn: &Link, reader: &mut BufReader<&Link>, s: &mut Session, msg: Message) -> Option<End> {
    {
        match msg.verb.as_str() {
            proto::CHECKPOINT => {
                let Some(req) = request(&msg, s, conn) else {
                    send(conn, failed(s.generation + 1, "no absolute dir= in the request"));
                    return None;
                };
                let g = req.generation;
                if let Err(e) = crate::imagemap::wait_verified(VERIFY_WAIT) {
                    return (!send(conn, failed(g, &e))).then_some(End::Closed);
                }
                // [stasis api] the program's hooks and critical sections first.
                before_checkpoint();
                let result = ckpt::checkpoint(req);
                if !matches!(result, Ok(Outcome::Restored { .. })) {
                    after_checkpoint();
                }
                if let Ok(Outcome::Restored { generation }) = result {
                    s.generation = generation;
                    return Some(End::Restored);
                }
                if result.is_ok() {
                    s.generation = g;
                }
                if !send(conn, written(g, result)) {
                    return Some(End::Closed);
                }
            }
            proto::SUSPEND => {
                let Some(req) = request(&msg, s, conn) else {
                    send(conn, failed(s.generation + 1, "no absolute dir= in the request"));
                    return None;
                };
                // [stasis api] the program's hooks and critical sections first.
                before_checkpoint();
                let end = phased(conn, reader, s, req);
                if !matches!(end, Some(End::Restored)) {
                    after_checkpoint();
                }
                return end;
            }
            proto::COORDINATOR => {
                // [stasis api] the coordinator counts this process now.
                crate::api::note_connected();
                if let Some(text) = msg.get("addr")
                    && let Some(a) = parse_addr(text)
                {
                    s.addr = Some(a);
                    // What the programs this process execs must use too.
                    crate::exec::set_address(text);
                }
            }
            proto::KILL => {
                let _ = sys::kill(sys::getpid(), libc::SIGKILL);
            }
            // The coordinator refuses us (another process with our pid is
            // connected): said once, since the agent keeps trying.
            proto::ERROR => {
                static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !TOLD.swap(true, Ordering::AcqRel) {
                    log(&format!(
                        "the coordinator refused this process: {}",
                        msg.get("reason").unwrap_or("no reason given")
                    ));
                }
            }
            _ => {} // RESUME with nothing suspended, or a verb from a newer coordinator
        }
    }
    None
}

/// [stasis api] Waits for the program's critical sections to end, then runs
/// its hooks before a checkpoint (api.rs, plugins.rs).
fn before_checkpoint() {
    crate::api::hold_critical_sections();
    crate::plugins::before_checkpoint();
}

/// [stasis api] The checkpoint is over, done or given up (a restored
/// process has its own: `plugins::after_restart`).
fn after_checkpoint() {
    crate::api::release_critical_sections();
    crate::plugins::after_resume();
}

/// [stasis api] A client's request to the coordinator (`COMMAND ...`) and
/// its answer, from one of the program's threads: a connection of its own,
/// with the same checks as the agent's, closed when answered. Blocks until
/// the coordinator answers (a checkpoint: once committed).
pub(crate) fn ask_coordinator(m: &Message) -> Result<Message, String> {
    let env = ENVIRONMENT.get();
    let (addr, secret) = match inherited() {
        Some(s) => (s.addr, s.secret),
        None => (env.and_then(|e| e.addr.clone()), env.and_then(|e| e.secret.clone())),
    };
    let addr = addr.ok_or("no coordinator address")?;
    let plain_socket = |family: i32| -> Result<File, String> {
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just made and is owned here.
        Ok(unsafe { File::from_raw_fd(fd) })
    };
    let sock = match &addr {
        Addr::Unix(path) => {
            let sock = plain_socket(libc::AF_UNIX)?;
            connect_raw(&sock, &unix_sockaddr(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
            check_unix_peer(&sock, path)?;
            sock
        }
        Addr::Tcp(hp) => {
            let sa = hp
                .to_socket_addrs()
                .map_err(|e| format!("{hp}: {e}"))?
                .next()
                .ok_or_else(|| format!("{hp}: no address"))?;
            let sock = plain_socket(if sa.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 })?;
            connect_tcp(&sock, &inet_sockaddr(sa), secret.as_deref(), &addr_text(&addr))?;
            sock
        }
    };
    (&sock).write_all(m.encode().as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    match BufReader::new(&sock).read_line(&mut line) {
        Ok(0) => Err("the coordinator closed the connection".into()),
        Ok(_) => Message::decode(&line).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// SUSPENDED, with the children the coordinator must also see stopped.
fn suspended(generation: u64) -> Message {
    let (live, _) = tree::children();
    // [stasis api] children that run outside (dmtcp_nocheckpoint) never join.
    let list: Vec<String> = live.iter().filter(|&&p| crate::api::may_join(p)).map(i32::to_string).collect();
    Message::new(proto::SUSPENDED).with("generation", generation).with("children", list.join(","))
}

/// A checkpoint in three steps, each waiting for the coordinator, so that
/// every process of the computation is saved at the same instant. The
/// program is never left stopped: a silent or vanished coordinator resumes
/// it. Returns `Some` when the connection ended or this is a restored process.
fn phased(conn: &Link, reader: &mut BufReader<&Link>, s: &mut Session, req: Request) -> Option<End> {
    let g = req.generation;
    // Memory restored from an image whose checksums restart is still
    // verifying must not go into a checkpoint yet (`imagemap`).
    if let Err(e) = crate::imagemap::wait_verified(VERIFY_WAIT) {
        return (!send(conn, failed(g, &e))).then_some(End::Closed);
    }
    if let Err(e) = ckpt::suspend() {
        return (!send(conn, failed(g, &e))).then_some(End::Closed);
    }
    let said = send(conn, suspended(g));
    crate::timing::mark("children");
    if !said {
        ckpt::resume();
        return Some(End::Closed);
    }
    set_read_timeout(conn, Some(STOPPED_LIMIT));
    let mut timed_out = false;
    let mut step = next(reader, &mut timed_out);
    // Until every child has joined, the coordinator may ask again: a child
    // that exited before it connected is a zombie by now, and drops out.
    while let Some(m) = step.as_ref().filter(|m| m.verb == proto::CHILDREN) {
        if m.get_parsed::<u64>("generation").is_some_and(|mg| mg != g) || !send(conn, suspended(g)) {
            break;
        }
        step = next(reader, &mut timed_out);
    }
    set_read_timeout(conn, None);
    crate::timing::mark("coord-snapshot");
    match step {
        Some(m) if m.verb == proto::SNAPSHOT => {}
        Some(_) => {
            ckpt::resume(); // RESUME (an abort) or anything else
            return None;
        }
        None => {
            ckpt::resume();
            if timed_out {
                send(conn, failed(g, "the coordinator did not go on; the program was resumed"));
                return None;
            }
            return Some(End::Closed);
        }
    }
    let pending = match ckpt::snapshot(req) {
        Ok(Snapshotted::Restored { generation }) => {
            s.generation = generation;
            return Some(End::Restored);
        }
        Ok(Snapshotted::Writing(p)) => p,
        Err(e) => {
            ckpt::resume();
            return (!send(conn, written(g, Err(e)))).then_some(End::Closed);
        }
    };
    let snapped = Message::new(proto::SNAPSHOTTED).with("generation", g).with("pause_us", pending.pause().as_micros());
    if !send(conn, snapped) {
        ckpt::resume();
        pending.cancel();
        return Some(End::Closed);
    }
    set_read_timeout(conn, Some(STOPPED_LIMIT));
    let mut timed_out = false;
    let step = next(reader, &mut timed_out);
    set_read_timeout(conn, None);
    crate::timing::mark("coord-resume");
    // `RESUME hold=1` (dmtcp_command -kc): write the image with the program
    // still stopped; the coordinator kills it once the checkpoint commits.
    let hold = matches!(&step, Some(m) if m.verb == proto::RESUME && m.get("hold") == Some("1"));
    if !hold {
        ckpt::resume();
    }
    match step {
        Some(m) if m.verb == proto::RESUME => {
            let (result, reported) = pending.finish();
            if result.is_ok() {
                s.generation = g;
            }
            let said = if reported {
                if let Err(e) = &result {
                    log(&format!("checkpoint {g} failed: {e}"));
                }
                true
            } else {
                send(conn, written(g, result))
            };
            if hold {
                return held(conn, reader, said);
            }
            (!said).then_some(End::Closed)
        }
        other => {
            pending.cancel();
            if other.is_none() && !timed_out {
                return Some(End::Closed);
            }
            (!send(conn, failed(g, "the coordinator did not go on; the program was resumed"))).then_some(End::Closed)
        }
    }
}

/// A held process, its image written: `KILL` (the checkpoint committed)
/// ends it without its running again; anything else, silence or a lost
/// connection resumes it, as every other step does.
fn held(conn: &Link, reader: &mut BufReader<&Link>, said: bool) -> Option<End> {
    if !said {
        ckpt::resume();
        return Some(End::Closed);
    }
    set_read_timeout(conn, Some(STOPPED_LIMIT));
    let mut timed_out = false;
    let step = next(reader, &mut timed_out);
    set_read_timeout(conn, None);
    if step.as_ref().is_some_and(|m| m.verb == proto::KILL) {
        let _ = sys::kill(sys::getpid(), libc::SIGKILL);
    }
    ckpt::resume();
    (step.is_none() && !timed_out).then_some(End::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("unix:/tmp/x.sock"), Some(Addr::Unix("/tmp/x.sock".into())));
        assert_eq!(parse_addr("tcp:node1:7779"), Some(Addr::Tcp("node1:7779".into())));
        assert_eq!(parse_addr("tcp:node1"), None);
        assert_eq!(parse_addr("/tmp/x.sock"), None);
    }
}
