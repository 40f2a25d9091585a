//! Where the coordinator is: one rule for launch, restart, command and the
//! coordinator itself, so that they always meet.
//!
//! In order:
//!
//! 1. `--coord-socket PATH`: that Unix socket, nothing else;
//! 2. `-h/--coord-host HOST` and `-p/--coord-port PORT` (flags);
//! 3. the environment a launched program gets from stasis:
//!    `STASIS_COORD_ADDR` (`unix:PATH` or `tcp:HOST:PORT`), or the older
//!    `STASIS_COORD_SOCKET`;
//! 4. host and port from the environment (`STASIS_COORD_HOST`,
//!    `STASIS_COORD_PORT`; `DMTCP_COORD_HOST`, `DMTCP_COORD_PORT` first
//!    under the DMTCP names), else this host and port 7779.
//!
//! A port names a Unix socket on this node,
//! `$STASIS_TMPDIR/stasis-UID/coord-PORT.sock` (`/tmp` without it), which
//! local processes use, and a TCP port, which other nodes use with the
//! computation's secret. A host that is this node's is reached through the
//! socket first. Flags come before the environment so that a command typed
//! inside a launched program can still reach another coordinator. (The
//! parsing in cli.rs and dmtcp.rs folds flags and environment into
//! [`CoordOpts`]; this module only applies the rule.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use stasis_coord::client::{self, Addr};

/// The port used when none is given (DMTCP's default).
pub const DEFAULT_PORT: u16 = 7779;

/// How the user named the coordinator: flags and environment, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordOpts {
    /// An exact address: `--coord-socket`, or (with neither -h nor -p)
    /// the environment's `STASIS_COORD_ADDR` / `STASIS_COORD_SOCKET`.
    pub addr: Option<Addr>,
    pub host: Option<String>,
    /// None: 7779.
    pub port: Option<u16>,
    /// Where the per-user socket directory goes (None: /tmp).
    pub tmpdir: Option<PathBuf>,
}

/// Where to look for (or put) the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Unix socket on this node, tried first.
    pub socket: Option<PathBuf>,
    /// TCP, tried next (or only, for another host). Port 0 is never tried.
    pub tcp: Option<(String, u16)>,
    /// The port a coordinator started here would listen on; None: Unix
    /// socket only (an explicit `--coord-socket`).
    pub port: Option<u16>,
    /// Whether the coordinator would be on this node.
    pub local: bool,
    /// Where the per-user socket directory goes, for a coordinator started here.
    pub tmpdir: Option<PathBuf>,
}

impl Target {
    /// For messages: what was tried.
    pub fn describe(&self) -> String {
        match (&self.socket, &self.tcp) {
            (Some(s), None) => s.display().to_string(),
            (None, Some((h, p))) => format!("{h}:{p}"),
            (Some(s), Some((h, p))) => format!("port {p} ({} or {h}:{p})", s.display()),
            (None, None) => format!("port {}", self.port.unwrap_or(0)),
        }
    }
}

/// This user's uid.
pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The Unix socket of a port on this node.
pub fn socket_for_port(tmpdir: Option<&Path>, uid: u32, port: u16) -> PathBuf {
    tmpdir.unwrap_or(Path::new("/tmp")).join(format!("stasis-{uid}")).join(format!("coord-{port}.sock"))
}

/// Applies the rule to `opts`.
pub fn resolve(opts: &CoordOpts) -> Result<Target> {
    resolve_with(opts, uid(), client::is_local_host)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

fn resolve_with(opts: &CoordOpts, uid: u32, is_local: impl Fn(&str) -> bool) -> Result<Target> {
    let tmpdir = opts.tmpdir.as_deref();
    match &opts.addr {
        Some(Addr::Unix(p)) => {
            let socket = Some(absolute(p)?);
            return Ok(Target { socket, tcp: None, port: opts.port, local: true, tmpdir: opts.tmpdir.clone() });
        }
        Some(Addr::Tcp { host, port }) => {
            let local = is_local(host);
            let socket = local.then(|| socket_for_port(tmpdir, uid, *port));
            let tcp = Some((host.clone(), *port));
            return Ok(Target { socket, tcp, port: Some(*port), local, tmpdir: opts.tmpdir.clone() });
        }
        None => {}
    }
    let port = opts.port.unwrap_or(DEFAULT_PORT);
    let local = opts.host.as_deref().is_none_or(&is_local);
    let socket = (local && port != 0).then(|| socket_for_port(tmpdir, uid, port));
    let host = opts.host.clone().unwrap_or_else(|| "127.0.0.1".to_string());
    let tcp = (port != 0).then_some((host, port));
    let socket = match socket {
        Some(s) => Some(absolute(&s)?),
        None => None,
    };
    Ok(Target { socket, tcp, port: Some(port), local, tmpdir: opts.tmpdir.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(opts: CoordOpts) -> Target {
        resolve_with(&opts, 1000, |h| h == "localhost" || h == "here").unwrap()
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn default_and_ports() {
        let t = with(CoordOpts::default());
        assert_eq!(t.socket, Some(p("/tmp/stasis-1000/coord-7779.sock")));
        assert_eq!(t.tcp, Some(("127.0.0.1".to_string(), 7779)));
        assert_eq!((t.port, t.local), (Some(7779), true));
        let t = with(CoordOpts { port: Some(8000), tmpdir: Some(p("/scratch")), ..Default::default() });
        assert_eq!(t.socket, Some(p("/scratch/stasis-1000/coord-8000.sock")));
        // Port 0: a coordinator started here picks one; nothing to join.
        let t = with(CoordOpts { port: Some(0), ..Default::default() });
        assert_eq!((t.socket, t.tcp, t.port), (None, None, Some(0)));
    }

    #[test]
    fn hosts() {
        let t = with(CoordOpts { host: Some("here".into()), port: Some(9), ..Default::default() });
        assert_eq!(t.socket, Some(p("/tmp/stasis-1000/coord-9.sock")));
        assert_eq!(t.tcp, Some(("here".to_string(), 9)));
        let t = with(CoordOpts { host: Some("node7".into()), ..Default::default() });
        assert_eq!((t.socket, t.local), (None, false));
        assert_eq!(t.tcp, Some(("node7".to_string(), 7779)));
    }

    #[test]
    fn exact_addresses() {
        let t = with(CoordOpts { addr: Some(Addr::Unix(p("/a/b.sock"))), port: Some(9), ..Default::default() });
        assert_eq!((t.socket, t.tcp, t.port), (Some(p("/a/b.sock")), None, Some(9)));
        let tcp = Addr::Tcp { host: "node7".into(), port: 7000 };
        let t = with(CoordOpts { addr: Some(tcp), ..Default::default() });
        assert_eq!((t.socket, t.tcp), (None, Some(("node7".to_string(), 7000))));
        let rel = resolve(&CoordOpts { addr: Some(Addr::Unix(p("rel.sock"))), ..Default::default() }).unwrap();
        assert!(rel.socket.unwrap().is_absolute());
    }
}
