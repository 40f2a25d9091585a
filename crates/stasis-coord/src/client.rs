//! Reaching a coordinator, for everyone who is not one: `stasis command`,
//! `stasis launch` and `stasis restart` (which hands the connection it
//! made to the restored process's agent).
//!
//! Both ends check each other before anything else is said:
//!
//! - On a Unix socket, the coordinator checks our uid, and we check its
//!   (SO_PEERCRED): a socket served by another user is refused whatever
//!   its path and modes.
//! - Over TCP the coordinator speaks first, `CHALLENGE nonce=HEX`; we
//!   prove the computation's secret for its nonce and ours, and it must
//!   prove the secret back for both before we send anything else: an
//!   impostor on the port learns nothing usable and is told nothing
//!   (stasis_proto::auth).

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use stasis_proto::{self as proto, MAX_LINE, Message, auth};

use crate::secret::Secret;
use crate::stream::Stream;

/// How long connecting and the challenge may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a coordinator listens, as agents are told it (`STASIS_COORD_ADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl Addr {
    /// `unix:PATH` or `tcp:HOST:PORT` (an IPv6 host in brackets).
    pub fn parse(s: &str) -> Option<Addr> {
        if let Some(p) = s.strip_prefix("unix:") {
            return (!p.is_empty()).then(|| Addr::Unix(p.into()));
        }
        let hp = s.strip_prefix("tcp:")?;
        let (host, port) = hp.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse().ok()?;
        (!host.is_empty()).then(|| Addr::Tcp { host: host.to_string(), port })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// Why no conversation with a coordinator could start.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody listens there: no socket file, or the connection was refused.
    NotListening(String),
    /// The coordinator asks for the secret and we have none.
    NoSecret,
    /// The coordinator refused us, saying why.
    Refused(String),
    /// The TCP peer at this address (`tcp:HOST:PORT`) did not prove the
    /// secret back: it is not the computation's coordinator.
    Impostor(String),
    /// The Unix socket at this path is served by another user (this uid).
    NotYours(PathBuf, u32),
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotListening(why) => write!(f, "nothing listens ({why})"),
            ClientError::NoSecret => {
                f.write_str("the coordinator asks for the computation's secret and none was found")
            }
            ClientError::Refused(why) => write!(f, "the coordinator refused the connection: {why}"),
            ClientError::Impostor(addr) => write!(
                f,
                "the peer at {addr} did not prove the computation's secret: it is not this computation's coordinator"
            ),
            ClientError::NotYours(path, uid) => {
                write!(f, "the coordinator socket {} is served by uid {uid}, not by you", path.display())
            }
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

fn absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
}

/// Connects to the coordinator at `addr` and makes sure it is ours: a Unix
/// socket must be served by our own uid; over TCP, we answer the
/// challenge with `secret` and the coordinator must prove it back. The
/// stream is then ready for `HELLO` or `COMMAND`.
pub fn connect(addr: &Addr, secret: Option<&Secret>) -> Result<Stream, ClientError> {
    match addr {
        Addr::Unix(path) => match UnixStream::connect(path) {
            Ok(s) => {
                let uid = crate::socket::peer_uid(&s).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: cannot tell who serves it: {e}", path.display()))
                })?;
                if uid != crate::socket::my_uid() {
                    return Err(ClientError::NotYours(path.clone(), uid));
                }
                Ok(Stream::Unix(s))
            }
            Err(e) if absent(&e) => Err(ClientError::NotListening(format!("{}: {e}", path.display()))),
            Err(e) => Err(ClientError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))),
        },
        Addr::Tcp { host, port } => {
            let stream = Stream::Tcp(connect_tcp(host, *port)?);
            prove(&stream, secret, addr)?;
            Ok(stream)
        }
    }
}

fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ClientError::Io(io::Error::new(e.kind(), format!("cannot resolve {host}: {e}"))))?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if absent(&e) => Err(ClientError::NotListening(format!("{host}:{port}: {e}"))),
        Some(e) => Err(ClientError::Io(io::Error::new(e.kind(), format!("{host}:{port}: {e}")))),
        None => Err(ClientError::Io(io::Error::new(ErrorKind::NotFound, format!("{host} has no address")))),
    }
}

/// Reads one line, byte by byte: nothing after it may be consumed, since
/// the stream may be handed on (to a restored agent) afterwards.
fn read_line_exact(stream: &Stream) -> io::Result<Message> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&*stream).read(&mut byte) {
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the coordinator closed the connection")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_LINE => return Err(io::Error::new(ErrorKind::InvalidData, "line too long")),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(io::Error::new(ErrorKind::TimedOut, "the coordinator did not answer in time"));
            }
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8(line).map_err(|_| io::Error::new(ErrorKind::InvalidData, "not UTF-8"))?;
    Message::decode(&text).map_err(|e| io::Error::new(ErrorKind::InvalidData, e.to_string()))
}

/// Answers the coordinator's challenge, and checks its proof in return.
fn prove(stream: &Stream, secret: Option<&Secret>, addr: &Addr) -> Result<(), ClientError> {
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let challenge = read_line_exact(stream)?;
    if challenge.verb == proto::ERROR {
        return Err(ClientError::Refused(challenge.get("reason").unwrap_or("no reason given").to_string()));
    }
    let theirs = challenge
        .get("nonce")
        .and_then(auth::nonce_from_hex)
        .filter(|_| challenge.verb == auth::CHALLENGE)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "the peer is not a stasis coordinator"))?;
    let Some(secret) = secret else {
        return Err(ClientError::NoSecret);
    };
    let mut ours = [0u8; auth::NONCE_LEN];
    crate::random::fill(&mut ours)?;
    let answer = Message::new(auth::AUTH)
        .with("nonce", auth::to_hex(&ours))
        .with("proof", auth::prove(&secret.bytes, auth::Role::Client, &theirs, &ours));
    (&*stream).write_all(answer.encode().as_bytes())?;
    let reply = read_line_exact(stream)?;
    stream.set_read_timeout(None)?;
    match reply.verb.as_str() {
        proto::OK => {
            let proven = reply
                .get("proof")
                .is_some_and(|p| auth::verify(&secret.bytes, auth::Role::Coordinator, &theirs, &ours, p));
            if proven { Ok(()) } else { Err(ClientError::Impostor(addr.to_string())) }
        }
        proto::ERROR => Err(ClientError::Refused(reply.get("reason").unwrap_or("no reason given").to_string())),
        _ => Err(ClientError::Impostor(addr.to_string())),
    }
}

/// Sends one request and reads its one-line answer (`OK` or `ERROR`).
pub fn ask(stream: &Stream, request: &Message) -> io::Result<Message> {
    (&*stream).write_all(request.encode().as_bytes())?;
    let reply = read_line_exact(stream)?;
    if reply.verb != proto::OK && reply.verb != proto::ERROR {
        return Err(io::Error::new(ErrorKind::InvalidData, format!("unexpected answer {}", reply.verb)));
    }
    Ok(reply)
}

/// Whether `host` names this machine: a loopback address, or an address
/// of one of its interfaces (one we can bind to).
pub fn is_local_host(host: &str) -> bool {
    if host.is_empty() || host == "localhost" {
        return true;
    }
    if hostname().is_some_and(|h| h == host || h.split('.').next() == Some(host)) {
        return true;
    }
    let Ok(addrs) = (host, 0).to_socket_addrs() else { return false };
    addrs.map(|a| a.ip()).any(|ip| ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|h| !h.is_empty())
}

/// The address to tell agents that reached us over TCP at `local`.
pub(crate) fn tcp_addr_for(local: SocketAddr) -> Addr {
    let host = match local.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    };
    Addr::Tcp { host, port: local.port() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for s in ["unix:/tmp/a b.sock", "tcp:node1:7779", "tcp:[::1]:80", "tcp:10.0.0.1:1"] {
            assert_eq!(Addr::parse(s).unwrap().to_string(), s);
        }
        for bad in ["unix:", "tcp:node1", "tcp::1", "tcp:h:port", "/tmp/x.sock", "tcp:h:70000"] {
            assert_eq!(Addr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_hosts() {
        assert!(is_local_host("localhost"));
        assert!(is_local_host("127.0.0.1"));
        assert!(is_local_host(""));
        assert!(!is_local_host("192.0.2.1")); // TEST-NET-1, never ours
    }
}
