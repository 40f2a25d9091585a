//! Reaching a running coordinator, with messages that say what was tried:
//! the Unix socket on this node first, then TCP with the secret.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
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

/// What is at a target.
pub enum Outcome {
    Reached(Reached),
    /// Nothing answers there; why, in one line, for messages.
    Nobody(String),
    /// Something answers on the TCP port but will not have us, or is no
    /// coordinator: not this computation's.
    Foreign {
        host: String,
        port: u16,
        err: ClientError,
    },
}

/// Connects to the coordinator of `target`: the socket first, then TCP
/// with the secret. `Err` when the socket answers but we may not or
/// cannot talk to it.
pub fn try_reach(target: &Target, secret_dirs: &[PathBuf]) -> Result<Outcome> {
    let mut hint = "is the computation running?";
    if let Some(socket) = &target.socket {
        check_socket_dir(socket)?;
        let addr = Addr::Unix(socket.clone());
        match client::connect(&addr, None) {
            Ok(stream) => return Ok(Outcome::Reached(Reached { stream, addr, secret: None })),
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
            Ok(stream) => return Ok(Outcome::Reached(Reached { stream, addr, secret })),
            Err(ClientError::NotListening(_)) => {}
            Err(err) => return Ok(Outcome::Foreign { host: host.clone(), port: *port, err }),
        }
    }
    Ok(Outcome::Nobody(format!("no coordinator at {} ({hint})", target.describe())))
}

/// Connects to the coordinator of `target`. `Ok(Err(why))` when nothing
/// answers there (`why` says so in one line, for messages); `Err` when
/// something answers but we may not or cannot talk to it.
pub fn reach(target: &Target, secret_dirs: &[PathBuf]) -> Result<std::result::Result<Reached, String>> {
    match try_reach(target, secret_dirs)? {
        Outcome::Reached(r) => Ok(Ok(r)),
        Outcome::Nobody(why) => Ok(Err(why)),
        Outcome::Foreign { host, port, err } => Err(foreign(&host, port, err, secret_dirs)),
    }
}

/// The error for a TCP coordinator that will not have us (or is none).
pub fn foreign(host: &str, port: u16, err: ClientError, secret_dirs: &[PathBuf]) -> anyhow::Error {
    match err {
        ClientError::NoSecret => {
            let looked: Vec<String> = secret_dirs.iter().map(|d| secret::file_in(d).display().to_string()).collect();
            anyhow!(
                "the coordinator at {host}:{port} asks for the computation's secret and none was found \
                 (no STASIS_COORD_SECRET, no {}): pass --ckptdir with the checkpoint directory, or set \
                 STASIS_COORD_SECRET",
                if looked.is_empty() { secret::SECRET_FILE.to_string() } else { looked.join(", ") }
            )
        }
        ClientError::Refused(why) => anyhow!("the coordinator at {host}:{port} refused us: {why}"),
        err => anyhow::Error::new(err).context(format!("cannot reach the coordinator at {host}:{port}")),
    }
}
