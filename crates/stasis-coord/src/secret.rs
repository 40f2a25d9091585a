//! The computation's secret, which every TCP connection to the coordinator
//! must prove (stasis_proto::auth). It lives in the checkpoint directory,
//! in a file only its owner may read, or in the environment, which wins:
//! whoever can read the checkpoint directory can read the images anyway,
//! and the images hold everything the secret protects.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stasis_image::Dir;
use stasis_proto::auth;

/// The secret's file, in the checkpoint directory.
pub const SECRET_FILE: &str = ".stasis-coord-secret";
/// The secret as hex, for processes that cannot read the checkpoint directory.
pub const SECRET_ENV: &str = "STASIS_COORD_SECRET";
/// Random bytes in a new secret.
const SECRET_LEN: usize = 32;

/// A secret and where it came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub bytes: Vec<u8>,
    pub origin: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(from {})", self.origin)
    }
}

impl Secret {
    pub fn hex(&self) -> String {
        auth::to_hex(&self.bytes)
    }
}

/// The secret in `STASIS_COORD_SECRET`, if set.
pub fn from_env() -> io::Result<Option<Secret>> {
    match std::env::var(SECRET_ENV) {
        Ok(v) if !v.trim().is_empty() => parse(v.trim(), SECRET_ENV).map(Some),
        _ => Ok(None),
    }
}

fn parse(hex: &str, origin: &str) -> io::Result<Secret> {
    match auth::from_hex(hex) {
        Some(bytes) if bytes.len() >= 16 => Ok(Secret { bytes, origin: origin.to_string() }),
        _ => Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("{origin} does not hold a secret (at least 32 hexadecimal digits)"),
        )),
    }
}

pub fn file_in(ckpt_dir: &Path) -> PathBuf {
    ckpt_dir.join(SECRET_FILE)
}

/// Reads the secret file of `ckpt_dir`, if there is one. Refuses a file
/// that is a link, not ours, or that others may read: what is checked is
/// the file opened (O_NOFOLLOW, then fstat).
pub fn read(ckpt_dir: &Path) -> io::Result<Option<Secret>> {
    let path = file_in(ckpt_dir);
    let refuse = |why: String| Err(io::Error::new(ErrorKind::PermissionDenied, format!("{}: {why}", path.display())));
    let dir = match Dir::open(ckpt_dir) {
        Ok(d) => d,
        // No directory yet (a launch that will make it): no secret in it.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot open {}: {e}", ckpt_dir.display()))),
    };
    let mut f = match dir.open_file(SECRET_FILE) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == ErrorKind::InvalidInput => return refuse(format!("{e}; remove it")),
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))),
    };
    let md = f.metadata()?;
    let me = stasis_image::euid();
    if md.uid() != me {
        return refuse(format!("belongs to uid {}, not to us ({me})", md.uid()));
    }
    if md.mode() & 0o077 != 0 {
        return refuse(format!("others may read it (mode {:o}; chmod 600 it)", md.mode() & 0o7777));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    parse(text.trim(), &path.display().to_string()).map(Some)
}

/// The coordinator's secret: the environment's, else the checkpoint
/// directory's, created (mode 0600, O_EXCL|O_NOFOLLOW) if missing.
pub fn load_or_create(ckpt_dir: &Path) -> io::Result<Secret> {
    if let Some(s) = from_env()? {
        return Ok(s);
    }
    if let Some(s) = read(ckpt_dir)? {
        return Ok(s);
    }
    let path = file_in(ckpt_dir);
    let mut bytes = vec![0u8; SECRET_LEN];
    crate::random::fill(&mut bytes)?;
    let text = format!("{}\n", auth::to_hex(&bytes));
    let dir = Dir::open(ckpt_dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", ckpt_dir.display())))?;
    match dir.create_file(SECRET_FILE, 0o600) {
        Ok(mut f) => {
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
            Ok(Secret { bytes, origin: path.display().to_string() })
        }
        // Another coordinator made it first (or a link is there: read refuses it).
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read(ckpt_dir)?.ok_or_else(|| io::Error::new(ErrorKind::NotFound, format!("{} vanished", path.display())))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_then_read_back() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read(t.path()).unwrap(), None);
        // Not from the environment in this test process.
        if from_env().unwrap().is_some() {
            return;
        }
        let s = load_or_create(t.path()).unwrap();
        assert_eq!(s.bytes.len(), SECRET_LEN);
        let path = file_in(t.path());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read(t.path()).unwrap().unwrap().bytes, s.bytes);
        assert_eq!(load_or_create(t.path()).unwrap().bytes, s.bytes);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(t.path()).unwrap_err().to_string();
        assert!(e.contains("others may read it"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "zz\n").unwrap();
        assert!(read(t.path()).unwrap_err().to_string().contains("does not hold a secret"));
    }

    #[test]
    fn links_are_refused_not_followed() {
        if from_env().unwrap().is_some() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "0123456789abcdef0123456789abcdef\n").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, file_in(t.path())).unwrap();
        let e = read(t.path()).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(load_or_create(t.path()).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "0123456789abcdef0123456789abcdef\n");
    }
}
