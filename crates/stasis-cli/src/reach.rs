//! Reaching a running coordinator, with messages that say what was tried:
//! the Unix socket on this node first, then TCP with the secret.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use stasis_coord::client::{self, Addr, ClientError};
use stasis_coord::secret::{self, Secret};
use stasis_coord::stream::Stream;

use crate::coord_socket::Target;

/// A connection to a coordinator.
pub struct Reached {
    pub stream: Stream,
    /// The address that answered.
    pub addr: Addr,
    /// The secret proven, over TCP.
    pub secret: Option<Secret>,
}

/// The secret for a TCP coordinator: `STASIS_COORD_SECRET`, else the
/// secret file of the first of `dirs` that has one.
pub fn find_secret(dirs: &[PathBuf]) -> Result<Option<Secret>> {
    if let Some(s) = secret::from_env()? {
        return Ok(Some(s));
    }
    for d in dirs {
        if let Some(s) = secret::read(d)? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Refuses a socket whose directory others could write to: whoever can
/// replace the socket can pose as the coordinator.
fn check_socket_dir(socket: &Path) -> Result<()> {
    let Some(dir) = socket.parent() else { return Ok(()) };
    let Ok(md) = fs::symlink_metadata(dir) else { return Ok(()) };
    let me = crate::coord_socket::uid();
    let why = if md.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if md.uid() != me {
        Some(format!("it belongs to uid {}, not to us ({me})", md.uid()))
    } else if md.mode() & 0o022 != 0 {
        Some(format!("its mode is {:o}: others could replace the socket (chmod 700 it)", md.mode() & 0o7777))
    } else {
        None
    };
    match why {
        Some(why) => bail!("refusing to use the coordinator socket in {}: {why}", dir.display()),
        None => Ok(()),
    }
}

/// Connects to the coordinator of `target`. `Ok(Err(why))` when nothing
/// answers there (`why` says so in one line, for messages); `Err` when
/// something answers but we may not or cannot talk to it.
pub fn reach(target: &Target, secret_dirs: &[PathBuf]) -> Result<std::result::Result<Reached, String>> {
    let mut hint = "is the computation running?";
    if let Some(socket) = &target.socket {
        check_socket_dir(socket)?;
        let addr = Addr::Unix(socket.clone());
        match client::connect(&addr, None) {
            Ok(stream) => return Ok(Ok(Reached { stream, addr, secret: None })),
            Err(ClientError::NotListening(_)) => {
                if fs::symlink_metadata(socket).is_ok() {
                    hint = "a coordinator that died left its socket there; is the computation running?";
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach the coordinator at {}", socket.display())),
        }
    }
    if let Some((host, port)) = &target.tcp {
        let addr = Addr::Tcp { host: host.clone(), port: *port };
        let secret = find_secret(secret_dirs)?;
        match client::connect(&addr, secret.as_ref()) {
            Ok(stream) => return Ok(Ok(Reached { stream, addr, secret })),
            Err(ClientError::NotListening(_)) => {}
            Err(ClientError::NoSecret) => {
                let looked: Vec<String> =
                    secret_dirs.iter().map(|d| secret::file_in(d).display().to_string()).collect();
                bail!(
                    "the coordinator at {host}:{port} asks for the computation's secret and none was found \
                     (no STASIS_COORD_SECRET, no {}): pass --ckptdir with the checkpoint directory, or set \
                     STASIS_COORD_SECRET",
                    if looked.is_empty() { secret::SECRET_FILE.to_string() } else { looked.join(", ") }
                )
            }
            Err(ClientError::Refused(why)) => bail!("the coordinator at {host}:{port} refused us: {why}"),
            Err(e) => return Err(e).with_context(|| format!("cannot reach the coordinator at {host}:{port}")),
        }
    }
    Ok(Err(format!("no coordinator at {} ({hint})", target.describe())))
}
