//! Where the coordinator is: one rule for launch, restart, command and the
//! coordinator itself, so that they always meet. docs/protocol.md ("Where
//! the coordinator is") has the rule for people; this module applies it.
//!
//! The coordinator is *named* by any of `--coord-socket PATH`,
//! `-h/--coord-host`, `-p/--coord-port`, or the environment
//! (`STASIS_COORD_ADDR`/`STASIS_COORD_SOCKET`, the address a launched
//! program gets; `STASIS_COORD_HOST`/`STASIS_COORD_PORT`, and under the
//! DMTCP names `DMTCP_COORD_HOST`/`DMTCP_COORD_PORT`). Flags come before
//! the environment, so that a command typed inside a launched program can
//! still reach another coordinator. (cli.rs and dmtcp.rs fold flags and
//! environment into [`CoordOpts`].)
//!
//! Named, a port is the Unix socket `TMPDIR/stasis-UID/coord-PORT.sock`
//! on this node and a TCP port, which other nodes reach with the
//! computation's secret. A coordinator started here listens on TCP only
//! then, bound to the named host's address (127.0.0.1 when only a port is
//! named), never on every interface.
//!
//! Not named, launch and restart give the computation a coordinator of its
//! own on the socket of its checkpoint directory,
//! `TMPDIR/stasis-UID/ckpt-HASH.sock`, and no TCP: nobody else's
//! coordinator, on the default port or anywhere, can capture or block the
//! launch, and two computations that would checkpoint into one directory
//! meet there (the second is refused). Port 7779's socket is only looked
//! at to join a coordinator started by hand (`--join-coordinator`), and by
//! `stasis command` last.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use stasis_coord::client::{self, Addr};
use xxhash_rust::xxh3::xxh3_64;

/// The port used when one is asked for without a number, and the one
/// whose socket `--join-coordinator` and `stasis command` look at last
/// (DMTCP's default).
pub const DEFAULT_PORT: u16 = 7779;

/// How the user named the coordinator: flags and environment, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordOpts {
    /// An exact address: `--coord-socket`, or (with neither -h nor -p)
    /// the environment's `STASIS_COORD_ADDR` / `STASIS_COORD_SOCKET`.
    pub addr: Option<Addr>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Where the per-user socket directory goes (None: /tmp).
    pub tmpdir: Option<PathBuf>,
    /// `stasis command --ckptdir DIR` with no coordinator named by a flag:
    /// the coordinator of that checkpoint directory's socket.
    pub ckpt_dir: Option<PathBuf>,
}

impl CoordOpts {
    /// Whether a coordinator is named (a checkpoint directory, or where
    /// the socket directory goes, does not name one).
    pub fn named(&self) -> bool {
        self.addr.is_some() || self.host.is_some() || self.port.is_some()
    }
}

/// Where to look for (or put) a coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Unix socket on this node, tried first.
    pub socket: Option<PathBuf>,
    /// TCP, tried next (or only, for another host). Port 0 is never tried.
    pub tcp: Option<(String, u16)>,
    /// Where a coordinator started here listens on TCP: the host whose
    /// address it binds, and the port (0: a free one). None: no TCP.
    pub listen: Option<(String, u16)>,
    /// Whether the coordinator would be on this node.
    pub local: bool,
    /// Where the per-user socket directory goes, for a coordinator started here.
    pub tmpdir: Option<PathBuf>,
    /// The checkpoint directory whose socket this is, if it is one.
    pub ckpt_dir: Option<PathBuf>,
    /// The port whose socket this is, when the port was not named (the
    /// default port, for joining a coordinator started by hand).
    pub default_port: bool,
}

impl Target {
    /// For messages: where it is.
    pub fn describe(&self) -> String {
        match (&self.socket, &self.tcp) {
            (Some(s), None) => match (&self.ckpt_dir, self.default_port) {
                (Some(d), _) => format!("{}, the socket of {}", s.display(), d.display()),
                (None, true) => format!("{}, port {DEFAULT_PORT}'s socket", s.display()),
                (None, false) => s.display().to_string(),
            },
            (None, Some((h, p))) => format!("{h}:{p}"),
            (Some(s), Some((h, p))) => format!("port {p} ({} or {h}:{p})", s.display()),
            (None, None) => format!("port {}", self.listen.as_ref().map_or(0, |l| l.1)),
        }
    }

    /// Whether it was named exactly (`--coord-socket`), so that there is
    /// nothing to tell about where it is.
    pub fn exact_socket(&self) -> bool {
        self.tcp.is_none() && self.ckpt_dir.is_none() && !self.default_port && self.listen.is_none()
    }
}

/// This user's uid.
pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The per-user directory of coordinator sockets.
fn socket_dir(tmpdir: Option<&Path>, uid: u32) -> PathBuf {
    tmpdir.unwrap_or(Path::new("/tmp")).join(format!("stasis-{uid}"))
}

/// The Unix socket of a port on this node.
pub fn socket_for_port(tmpdir: Option<&Path>, uid: u32, port: u16) -> PathBuf {
    socket_dir(tmpdir, uid).join(format!("coord-{port}.sock"))
}

/// 16 hex digits naming a checkpoint directory (its canonical path).
pub fn ckpt_hash(canonical_dir: &Path) -> String {
    format!("{:016x}", xxh3_64(canonical_dir.as_os_str().as_bytes()))
}

/// The Unix socket of a checkpoint directory's own coordinator.
pub fn socket_for_ckpt_dir(tmpdir: Option<&Path>, uid: u32, canonical_dir: &Path) -> PathBuf {
    socket_dir(tmpdir, uid).join(format!("ckpt-{}.sock", ckpt_hash(canonical_dir)))
}

/// The canonical path of a checkpoint directory that may not exist yet:
/// its deepest existing ancestor resolved (links, `..`), the rest added as
/// written, so that the name stays the same once the directory is made.
pub fn canonical_dir(dir: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return Ok(out);
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => bail!("cannot resolve the checkpoint directory {}", dir.display()),
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// Applies the rule to `opts` as named; with nothing named, port 7779's
/// socket only (what `stasis command` tries last).
fn resolve_with(opts: &CoordOpts, uid: u32, is_local: impl Fn(&str) -> bool) -> Result<Target> {
    let tmpdir = opts.tmpdir.as_deref();
    let base = Target {
        socket: None,
        tcp: None,
        listen: None,
        local: true,
        tmpdir: opts.tmpdir.clone(),
        ckpt_dir: None,
        default_port: false,
    };
    match &opts.addr {
        Some(Addr::Unix(p)) => {
            // A port named too: a coordinator started here also listens on TCP.
            let listen = opts.port.map(|port| (opts.host.clone().unwrap_or_else(loopback), port));
            return Ok(Target { socket: Some(absolute(p)?), listen, ..base });
        }
        Some(Addr::Tcp { host, port }) => {
            let local = is_local(host);
            let socket = local.then(|| socket_for_port(tmpdir, uid, *port));
            let tcp = Some((host.clone(), *port));
            return Ok(Target { socket, tcp: tcp.clone(), listen: tcp, local, ..base });
        }
        None => {}
    }
    if !opts.named() {
        let socket = absolute(&socket_for_port(tmpdir, uid, DEFAULT_PORT))?;
        return Ok(Target { socket: Some(socket), default_port: true, ..base });
    }
    let port = opts.port.unwrap_or(DEFAULT_PORT);
    let local = opts.host.as_deref().is_none_or(&is_local);
    let socket = match (local && port != 0).then(|| socket_for_port(tmpdir, uid, port)) {
        Some(s) => Some(absolute(&s)?),
        None => None,
    };
    let host = opts.host.clone().unwrap_or_else(loopback);
    let tcp = (port != 0).then(|| (host.clone(), port));
    Ok(Target { socket, tcp, listen: Some((host, port)), local, ..base })
}

fn loopback() -> String {
    "127.0.0.1".to_string()
}

/// The socket of a checkpoint directory's own coordinator, as a target.
fn private_target(opts: &CoordOpts, uid: u32, canonical_dir: &Path) -> Result<Target> {
    Ok(Target {
        socket: Some(absolute(&socket_for_ckpt_dir(opts.tmpdir.as_deref(), uid, canonical_dir))?),
        tcp: None,
        listen: None,
        local: true,
        tmpdir: opts.tmpdir.clone(),
        ckpt_dir: Some(canonical_dir.to_path_buf()),
        default_port: false,
    })
}

/// Where launch and restart look for their coordinator, and start one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A coordinator is named: join it there, or start one there.
    Named(Target),
    /// Nothing named: the checkpoint directory's own socket (a coordinator
    /// answering there checkpoints into the same directory); `join_too`,
    /// port 7779's socket, is for `--join-coordinator` only.
    Private { own: Target, join_too: Target },
}

/// The plan for a computation that checkpoints into `canonical_dir`.
pub fn plan(opts: &CoordOpts, canonical_dir: &Path) -> Result<Plan> {
    plan_with(opts, canonical_dir, uid(), client::is_local_host)
}

fn plan_with(opts: &CoordOpts, canonical_dir: &Path, uid: u32, is_local: impl Fn(&str) -> bool) -> Result<Plan> {
    if opts.named() {
        return Ok(Plan::Named(resolve_with(opts, uid, is_local)?));
    }
    let own = private_target(opts, uid, canonical_dir)?;
    let join_too = resolve_with(&CoordOpts { tmpdir: opts.tmpdir.clone(), ..Default::default() }, uid, is_local)?;
    Ok(Plan::Private { own, join_too })
}

/// Where `stasis command` looks, in order, until one answers: what is
/// named; else the coordinator of `--ckptdir` (`ckpt_dir`, canonical);
/// else that of the current directory (`cwd`, canonical), then port 7779's
/// socket.
pub fn command_targets(opts: &CoordOpts, ckpt_dir: Option<&Path>, cwd: Option<&Path>) -> Result<Vec<Target>> {
    command_targets_with(opts, ckpt_dir, cwd, uid(), client::is_local_host)
}

fn command_targets_with(
    opts: &CoordOpts,
    ckpt_dir: Option<&Path>,
    cwd: Option<&Path>,
    uid: u32,
    is_local: impl Fn(&str) -> bool,
) -> Result<Vec<Target>> {
    if opts.named() {
        return Ok(vec![resolve_with(opts, uid, is_local)?]);
    }
    if let Some(d) = ckpt_dir {
        return Ok(vec![private_target(opts, uid, d)?]);
    }
    let mut out = Vec::new();
    if let Some(d) = cwd {
        out.push(private_target(opts, uid, d)?);
    }
    out.push(resolve_with(opts, uid, is_local)?);
    Ok(out)
}

/// What a coordinator run by itself (`stasis coordinator`) listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// An explicit socket; None: the one of the port (the TCP port
    /// actually bound, for port 0).
    pub socket: Option<PathBuf>,
    /// TCP: the address (an IP, or a host to resolve) and the port.
    pub tcp: Option<(String, u16)>,
    /// The port whose socket it is, when there is no TCP (7779 by default).
    pub port: u16,
}

/// TCP only when asked: a port (flag or environment), a host (the
/// environment's `STASIS_COORD_HOST`...) or `--listen ADDRESS`. The
/// address bound is `listen`, else the host's, else 127.0.0.1.
pub fn listening(opts: &CoordOpts, listen: Option<IpAddr>) -> Listening {
    let socket = match &opts.addr {
        Some(Addr::Unix(p)) => Some(p.clone()),
        _ => None,
    };
    let asked = opts.port.is_some() || opts.host.is_some() || listen.is_some();
    let port = opts.port.unwrap_or(DEFAULT_PORT);
    let host = match (listen, &opts.host) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(h)) => h.clone(),
        (None, None) => loopback(),
    };
    Listening { socket, tcp: asked.then_some((host, port)), port }
}

/// The address of this node that `host` names, to bind a TCP listener to
/// (an IPv4 one first).
pub fn bind_ip(host: &str) -> Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    if host == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}, the host to listen on"))?
        .map(|a| a.ip())
        .collect();
    let ours = |ip: &IpAddr| ip.is_loopback() || UdpSocket::bind(SocketAddr::new(*ip, 0)).is_ok();
    let mut mine: Vec<IpAddr> = addrs.into_iter().filter(ours).collect();
    mine.sort_by_key(|ip| !ip.is_ipv4());
    match mine.first() {
        Some(ip) => Ok(*ip),
        None => bail!("{host} is not an address of this node: a coordinator listens only on this node's addresses"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_local(h: &str) -> bool {
        h == "localhost" || h == "here"
    }

    fn with(opts: CoordOpts) -> Target {
        resolve_with(&opts, 1000, is_local).unwrap()
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn hashed(dir: &str) -> PathBuf {
        p(&format!("/tmp/stasis-1000/ckpt-{}.sock", ckpt_hash(Path::new(dir))))
    }

    #[test]
    fn ports_named() {
        let t = with(CoordOpts { port: Some(8000), tmpdir: Some(p("/scratch")), ..Default::default() });
        assert_eq!(t.socket, Some(p("/scratch/stasis-1000/coord-8000.sock")));
        assert_eq!(t.tcp, Some(("127.0.0.1".to_string(), 8000)));
        // Only a port named: a coordinator started here binds loopback.
        assert_eq!(t.listen, Some(("127.0.0.1".to_string(), 8000)));
        assert!(t.local && !t.default_port && !t.exact_socket());
        // Port 0: a coordinator started here picks one; nothing to join.
        let t = with(CoordOpts { port: Some(0), ..Default::default() });
        assert_eq!((t.socket, t.tcp, t.listen), (None, None, Some(("127.0.0.1".to_string(), 0))));
    }

    #[test]
    fn nothing_named_is_the_default_ports_socket_only() {
        let t = with(CoordOpts::default());
        assert_eq!(t.socket, Some(p("/tmp/stasis-1000/coord-7779.sock")));
        // Never TCP 7779: whoever holds it is nobody we asked for.
        assert_eq!((t.tcp, t.listen, t.default_port), (None, None, true));
        assert!(!CoordOpts { tmpdir: Some(p("/t")), ckpt_dir: Some(p("/ck")), ..Default::default() }.named());
    }

    #[test]
    fn hosts() {
        let t = with(CoordOpts { host: Some("here".into()), port: Some(9), ..Default::default() });
        assert_eq!(t.socket, Some(p("/tmp/stasis-1000/coord-9.sock")));
        assert_eq!(t.tcp, Some(("here".to_string(), 9)));
        // The named host's address is the one bound.
        assert_eq!(t.listen, Some(("here".to_string(), 9)));
        let t = with(CoordOpts { host: Some("node7".into()), ..Default::default() });
        assert_eq!((t.socket, t.local), (None, false));
        assert_eq!(t.tcp, Some(("node7".to_string(), 7779)));
    }

    #[test]
    fn exact_addresses() {
        let t = with(CoordOpts { addr: Some(Addr::Unix(p("/a/b.sock"))), ..Default::default() });
        assert_eq!((t.socket.as_deref(), &t.tcp, &t.listen), (Some(Path::new("/a/b.sock")), &None, &None));
        assert!(t.exact_socket());
        let t = with(CoordOpts { addr: Some(Addr::Unix(p("/a/b.sock"))), port: Some(9), ..Default::default() });
        assert_eq!((t.tcp, t.listen), (None, Some(("127.0.0.1".to_string(), 9))));
        let tcp = Addr::Tcp { host: "node7".into(), port: 7000 };
        let t = with(CoordOpts { addr: Some(tcp), ..Default::default() });
        assert_eq!((t.socket, t.tcp), (None, Some(("node7".to_string(), 7000))));
        let rel = with(CoordOpts { addr: Some(Addr::Unix(p("rel.sock"))), ..Default::default() });
        assert!(rel.socket.unwrap().is_absolute());
    }

    #[test]
    fn a_checkpoint_directory_names_its_own_socket() {
        let h = ckpt_hash(Path::new("/x/ck"));
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h, ckpt_hash(Path::new("/x/ck2")));
        assert_eq!(
            socket_for_ckpt_dir(Some(Path::new("/t")), 7, Path::new("/x/ck")),
            p(&format!("/t/stasis-7/ckpt-{h}.sock"))
        );
    }

    #[test]
    fn launch_with_nothing_named_gets_a_private_coordinator() {
        let Plan::Private { own, join_too } =
            plan_with(&CoordOpts::default(), Path::new("/x/ck"), 1000, is_local).unwrap()
        else {
            panic!()
        };
        assert_eq!(own.socket, Some(hashed("/x/ck")));
        // No TCP at all, to try or to listen on.
        assert_eq!((own.tcp, own.listen), (None, None));
        assert_eq!(own.ckpt_dir, Some(p("/x/ck")));
        assert_eq!(join_too.socket, Some(p("/tmp/stasis-1000/coord-7779.sock")));
        assert_eq!((join_too.tcp, join_too.listen), (None, None));
        // The tmpdir rule holds for both.
        let opts = CoordOpts { tmpdir: Some(p("/scratch")), ..Default::default() };
        let Plan::Private { own, join_too } = plan_with(&opts, Path::new("/x/ck"), 5, is_local).unwrap() else {
            panic!()
        };
        assert!(own.socket.unwrap().starts_with("/scratch/stasis-5"));
        assert!(join_too.socket.unwrap().starts_with("/scratch/stasis-5"));
    }

    #[test]
    fn launch_with_something_named_goes_there() {
        for opts in [
            CoordOpts { port: Some(7779), ..Default::default() },
            CoordOpts { host: Some("here".into()), ..Default::default() },
            CoordOpts { addr: Some(Addr::Unix(p("/s.sock"))), ..Default::default() },
            CoordOpts { addr: Some(Addr::Tcp { host: "n".into(), port: 1 }), ..Default::default() },
        ] {
            let Plan::Named(t) = plan_with(&opts, Path::new("/x/ck"), 1000, is_local).unwrap() else {
                panic!("{opts:?}")
            };
            assert_eq!(t, with(opts));
        }
    }

    #[test]
    fn command_looks_in_order() {
        let t = |opts: CoordOpts, ck: Option<&str>, cwd: Option<&str>| {
            command_targets_with(&opts, ck.map(Path::new), cwd.map(Path::new), 1000, is_local).unwrap()
        };
        // Named first, even with --ckptdir (then only where the secret is).
        let v = t(CoordOpts { port: Some(8), ..Default::default() }, Some("/ck"), Some("/w"));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].socket, Some(p("/tmp/stasis-1000/coord-8.sock")));
        // --ckptdir: that directory's socket only.
        let v = t(CoordOpts::default(), Some("/ck"), Some("/w"));
        assert_eq!(v.iter().map(|t| t.socket.clone().unwrap()).collect::<Vec<_>>(), [hashed("/ck")]);
        // Else the current directory's, then port 7779's socket.
        let v = t(CoordOpts::default(), None, Some("/w"));
        let sockets: Vec<PathBuf> = v.iter().map(|t| t.socket.clone().unwrap()).collect();
        assert_eq!(sockets, [hashed("/w"), p("/tmp/stasis-1000/coord-7779.sock")]);
        assert!(v.iter().all(|t| t.tcp.is_none()));
    }

    #[test]
    fn a_coordinator_listens_on_tcp_only_when_asked() {
        let l = listening(&CoordOpts::default(), None);
        assert_eq!((l.socket, l.tcp, l.port), (None, None, 7779));
        let l = listening(&CoordOpts { port: Some(0), ..Default::default() }, None);
        assert_eq!(l.tcp, Some(("127.0.0.1".to_string(), 0)));
        let l = listening(&CoordOpts { port: Some(7000), host: Some("node1".into()), ..Default::default() }, None);
        assert_eq!(l.tcp, Some(("node1".to_string(), 7000)));
        let l = listening(&CoordOpts { host: Some("node1".into()), ..Default::default() }, None);
        assert_eq!(l.tcp, Some(("node1".to_string(), 7779)));
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let l = listening(&CoordOpts { host: Some("node1".into()), ..Default::default() }, Some(ip));
        assert_eq!(l.tcp, Some(("10.0.0.5".to_string(), 7779)));
        let l = listening(&CoordOpts { addr: Some(Addr::Unix(p("/s"))), ..Default::default() }, None);
        assert_eq!((l.socket, l.tcp), (Some(p("/s")), None));
    }

    #[test]
    fn canonical_directories() {
        let t = tempfile_dir();
        let made = t.join("a");
        std::fs::create_dir(&made).unwrap();
        std::os::unix::fs::symlink(&made, t.join("link")).unwrap();
        // Through a link, with a trailing slash, and not yet made.
        assert_eq!(canonical_dir(&t.join("link/")).unwrap(), made);
        assert_eq!(canonical_dir(&t.join("link/new/deeper")).unwrap(), made.join("new/deeper"));
        assert_eq!(canonical_dir(&t.join("link/new/../b")).unwrap(), made.join("b"));
        std::fs::remove_dir_all(&t).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(format!("stasis-coord-socket-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(bind_ip("127.0.0.1").unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(bind_ip("localhost").unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(bind_ip("::1").unwrap(), "::1".parse::<IpAddr>().unwrap());
    }
}
