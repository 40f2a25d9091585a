//! Who may have put a checkpoint where it is. A checkpoint is trusted only
//! if nobody but its owner (and root) could have written or replaced it:
//! the checkpoint directory and everything in it must be ours and not
//! writable by others, and no directory above it may let someone else
//! swap it for a directory of their own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::dirfd::{Dir, euid};
use crate::{Error, Result};

const STICKY: u32 = 0o1000;
const OTHERS_WRITE: u32 = 0o022;

fn refuse(dir: &Path, why: String) -> Error {
    Error::Refused {
        path: dir.to_path_buf(),
        msg: format!("refusing the checkpoint directory {}: {why}", dir.display()),
    }
}

/// Checks the checkpoint directory `path` and every directory above it,
/// and opens it (`O_DIRECTORY|O_NOFOLLOW`): what is checked is what is
/// opened. Returns the canonical path and the open directory.
pub fn open_checkpoint_dir(path: &Path) -> Result<(PathBuf, Dir)> {
    let canonical =
        std::fs::canonicalize(path).map_err(|source| Error::Io { path: path.into(), op: "open", source })?;
    let me = euid();
    // Above it: each directory ours or root's, and writable by nobody
    // else unless sticky (then others cannot rename or remove our entries).
    let mut child = canonical.as_path();
    while let Some(parent) = child.parent() {
        let md = std::fs::symlink_metadata(parent).map_err(|source| Error::Io {
            path: parent.into(),
            op: "stat",
            source,
        })?;
        let which = if child == canonical { "parent" } else { "ancestor" };
        if md.uid() != 0 && md.uid() != me {
            return Err(refuse(
                &canonical,
                format!(
                    "its {which} {} belongs to uid {}, who could replace it (use a directory under ones only you or root own)",
                    parent.display(),
                    md.uid()
                ),
            ));
        }
        if md.mode() & OTHERS_WRITE != 0 && md.mode() & STICKY == 0 {
            return Err(refuse(
                &canonical,
                format!(
                    "its {which} {} is writable by other users and not sticky, so they could replace it (use a directory under one only you can write)",
                    parent.display()
                ),
            ));
        }
        child = parent;
    }
    let dir = Dir::open(&canonical).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            refuse(&canonical, "it was replaced by a symbolic link while being opened".into())
        } else if e.raw_os_error() == Some(libc::ENOTDIR) {
            refuse(&canonical, "it is not a directory".into())
        } else {
            Error::Io { path: canonical.clone(), op: "open", source: e }
        }
    })?;
    let md = dir.metadata().map_err(|source| Error::Io { path: canonical.clone(), op: "stat", source })?;
    if md.uid() != me {
        return Err(refuse(
            &canonical,
            format!(
                "it belongs to uid {}, not to you (uid {me}), so its owner could replace its checkpoints (use a directory of your own)",
                md.uid()
            ),
        ));
    }
    if md.mode() & OTHERS_WRITE != 0 {
        return Err(refuse(
            &canonical,
            format!(
                "its mode is {:o}, so other users could replace its checkpoints (chmod go-w {})",
                md.mode() & 0o7777,
                canonical.display()
            ),
        ));
    }
    Ok((canonical, dir))
}

/// Why a file or directory of a checkpoint cannot be trusted, as the rest
/// of a sentence that starts with its path; None if it can.
pub fn untrusted(path: &Path, uid: u32, mode: u32) -> Option<String> {
    let me = euid();
    if uid != me {
        return Some(format!(" belongs to uid {uid}, not to you (uid {me}): another user's file?"));
    }
    if mode & OTHERS_WRITE != 0 {
        return Some(format!(
            " is writable by other users (mode {:o}), who could have replaced it (chmod go-w {})",
            mode & 0o7777,
            path.display()
        ));
    }
    None
}

/// The directory an agent is told to write its image into: a directory of
/// ours that nobody else can write (the coordinator made it so; this
/// checks again, so that no one else's directory is ever written to).
pub fn open_image_dir(path: &Path) -> std::result::Result<Dir, String> {
    let dir = Dir::open(path).map_err(|e| format!("refusing to write an image in {}: {e}", path.display()))?;
    let md = dir.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if let Some(why) = untrusted(path, md.uid(), md.mode()) {
        return Err(format!("refusing to write an image in {}: it{why}", path.display()));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    fn err(p: &Path) -> String {
        open_checkpoint_dir(p).unwrap_err().to_string()
    }

    #[test]
    fn modes_and_owners() {
        let t = tempfile::tempdir().unwrap();
        let ck = t.path().join("ck");
        fs::create_dir(&ck).unwrap();
        chmod(&ck, 0o700);
        let (canonical, _) = open_checkpoint_dir(&ck).unwrap();
        assert_eq!(canonical, fs::canonicalize(&ck).unwrap());
        chmod(&ck, 0o777);
        let e = err(&ck);
        assert_eq!(
            e,
            format!(
                "refusing the checkpoint directory {0}: its mode is 777, so other users could replace its checkpoints (chmod go-w {0})",
                canonical.display()
            )
        );
        chmod(&ck, 0o1777);
        assert!(err(&ck).contains("its mode is 1777"));
        chmod(&ck, 0o770);
        assert!(err(&ck).contains("its mode is 770"));
        chmod(&ck, 0o755);
        open_checkpoint_dir(&ck).unwrap();

        // A parent others can write.
        let inner = ck.join("inner");
        fs::create_dir(&inner).unwrap();
        chmod(&ck, 0o777);
        let e = err(&inner);
        assert_eq!(
            e,
            format!(
                "refusing the checkpoint directory {}: its parent {} is writable by other users and not sticky, so they could replace it (use a directory under one only you can write)",
                canonical.join("inner").display(),
                canonical.display()
            )
        );
        // Sticky, like /tmp: fine.
        chmod(&ck, 0o1777);
        open_checkpoint_dir(&inner).unwrap();
        chmod(&ck, 0o700);

        // A symbolic link to a good directory is followed once, then the
        // target is what is checked and opened.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&ck, &link).unwrap();
        assert_eq!(open_checkpoint_dir(&link).unwrap().0, canonical);

        // A file is not a directory.
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(err(&file).ends_with("it is not a directory"), "{}", err(&file));
    }

    #[test]
    fn owners() {
        if euid() != 0 {
            return; // only root can give a directory away
        }
        let t = tempfile::tempdir().unwrap();
        let ck = t.path().join("ck");
        fs::create_dir_all(ck.join("inner")).unwrap();
        std::os::unix::fs::chown(&ck, Some(65534), None).unwrap();
        let e = err(&ck);
        assert!(e.contains("it belongs to uid 65534, not to you (uid 0)"), "{e}");
        let e = err(&ck.join("inner"));
        assert!(e.contains("its parent") && e.contains("belongs to uid 65534, who could replace it"), "{e}");
        assert!(untrusted(&ck, 65534, 0o700).unwrap().contains("another user's file"));
        assert!(open_image_dir(&ck).unwrap_err().contains("belongs to uid 65534"));
    }

    #[test]
    fn image_dirs() {
        let t = tempfile::tempdir().unwrap();
        open_image_dir(t.path()).unwrap();
        chmod(t.path(), 0o733);
        let e = open_image_dir(t.path()).unwrap_err();
        assert!(e.contains("is writable by other users (mode 733)"), "{e}");
        chmod(t.path(), 0o700);
        let link = t.path().join("l");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        assert!(open_image_dir(&link).unwrap_err().contains("symbolic link"));
        assert_eq!(untrusted(t.path(), euid(), 0o644), None);
    }
}
