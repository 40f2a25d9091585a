//! Where the coordinator's socket is: one rule for launch, restart and
//! command, so that they always meet.
//!
//! In order: `--coord-socket PATH`; `-p/--coord-port PORT`; the environment
//! (`STASIS_COORD_SOCKET`, then `STASIS_COORD_PORT`); port 7779. A port
//! names the socket `$STASIS_TMPDIR/stasis-UID/coord-PORT.sock` (`/tmp`
//! without STASIS_TMPDIR). Flags beat the environment, so that a command
//! typed inside a launched program (whose environment names its own
//! coordinator) can reach another one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The port used when none is given (DMTCP's default).
pub const DEFAULT_PORT: u16 = 7779;

/// How the user named the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordOpts {
    pub socket: Option<PathBuf>,
    pub port: Option<u16>,
}

/// The coordinator's socket path, absolute.
pub fn resolve(opts: &CoordOpts) -> Result<PathBuf> {
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let path = resolve_with(opts, uid, |name| std::env::var_os(name))?;
    std::path::absolute(&path).with_context(|| format!("cannot make {} absolute", path.display()))
}

fn resolve_with(opts: &CoordOpts, uid: u32, env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(p) = &opts.socket {
        return Ok(p.clone());
    }
    let port = match opts.port {
        Some(p) => p,
        None => {
            if let Some(p) = env("STASIS_COORD_SOCKET") {
                return Ok(p.into());
            }
            match env("STASIS_COORD_PORT") {
                None => DEFAULT_PORT,
                Some(v) => match v.to_str().and_then(|s| s.trim().parse().ok()) {
                    Some(p) => p,
                    None => bail!("STASIS_COORD_PORT={} is not a port number", v.to_string_lossy()),
                },
            }
        }
    };
    let base = env("STASIS_TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    Ok(socket_for_port(&base, uid, port))
}

fn socket_for_port(base: &Path, uid: u32, port: u16) -> PathBuf {
    base.join(format!("stasis-{uid}")).join(format!("coord-{port}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(opts: CoordOpts, vars: &[(&str, &str)]) -> Result<PathBuf> {
        let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
        resolve_with(&opts, 1000, |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn default_and_ports() {
        let none = CoordOpts::default();
        assert_eq!(with(none.clone(), &[]).unwrap(), p("/tmp/stasis-1000/coord-7779.sock"));
        let port = CoordOpts { port: Some(8000), ..Default::default() };
        assert_eq!(with(port.clone(), &[]).unwrap(), p("/tmp/stasis-1000/coord-8000.sock"));
        assert_eq!(
            with(none.clone(), &[("STASIS_COORD_PORT", "7001"), ("STASIS_TMPDIR", "/scratch")]).unwrap(),
            p("/scratch/stasis-1000/coord-7001.sock")
        );
        // The flag beats the environment.
        assert_eq!(
            with(port, &[("STASIS_COORD_PORT", "7001"), ("STASIS_COORD_SOCKET", "/x.sock")]).unwrap(),
            p("/tmp/stasis-1000/coord-8000.sock")
        );
        assert!(with(none, &[("STASIS_COORD_PORT", "lots")]).unwrap_err().to_string().contains("lots"));
    }

    #[test]
    fn explicit_sockets() {
        let sock = CoordOpts { socket: Some(p("/a/b.sock")), port: Some(9) };
        assert_eq!(with(sock, &[("STASIS_COORD_SOCKET", "/x.sock")]).unwrap(), p("/a/b.sock"));
        let none = CoordOpts::default();
        assert_eq!(
            with(none.clone(), &[("STASIS_COORD_SOCKET", "/x.sock"), ("STASIS_COORD_PORT", "1")]).unwrap(),
            p("/x.sock")
        );
        // Empty variables count as unset.
        assert_eq!(
            with(none, &[("STASIS_COORD_SOCKET", ""), ("STASIS_TMPDIR", "")]).unwrap(),
            p("/tmp/stasis-1000/coord-7779.sock")
        );
    }

    #[test]
    fn resolved_paths_are_absolute() {
        let rel = CoordOpts { socket: Some(p("rel.sock")), port: None };
        assert!(resolve(&rel).unwrap().is_absolute());
    }
}
