//! The coordinator's Unix socket: a private directory, a stale-socket check,
//! and a guard that removes the socket file when the coordinator goes.
//!
//! Whoever can connect to the socket can checkpoint and kill the
//! computation. Three locks keep others out:
//!
//! - the directory: created 0700 when missing; one that exists is used only
//!   if it is a real directory (not a symbolic link), ours, and not writable
//!   by group or others, who could otherwise replace our socket with theirs
//!   and have our agents and clients talk to them;
//! - the socket file is 0600, so others cannot connect;
//! - every connection's peer credentials (SO_PEERCRED) must be our uid
//!   (`conn.rs`), whatever the modes.
//!
//! And the other way round: clients and agents check that the socket they
//! reached is served by their own uid (SO_PEERCRED again, `client.rs` and
//! the agent's `control.rs`), so a socket put in their way by someone
//! else is refused before a word is said to it.
//!
//! A directory that others may read and search (0755, as temporary
//! directories often are) is therefore accepted.

use std::fs::{self, DirBuilder};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest socket path the kernel accepts (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds the listening socket at `path` after checking its directory and
/// clearing a stale socket left by a coordinator that died.
pub(crate) fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("the socket path {} is too long ({len} bytes; at most {MAX_SOCKET_PATH})", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    private_dir(dir)?;
    clear_stale(path)?;
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", path.display())))?;
    let md = fs::symlink_metadata(path)?;
    let file = SocketFile { path: path.to_path_buf(), id: (md.dev(), md.ino()) };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok((listener, file))
}

/// Creates `dir` (mode 0700) if missing, then checks that it is a real
/// directory, ours, and closed to group and others.
fn private_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => {
            return Err(io::Error::new(e.kind(), format!("cannot create the directory {}: {e}", dir.display())));
        }
    }
    let md = fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            ErrorKind::PermissionDenied,
            format!("refusing to put the coordinator socket in {}: {why}", dir.display()),
        ))
    };
    if md.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !md.is_dir() {
        return refuse("it is not a directory".into());
    }
    let me = my_uid();
    if md.uid() != me {
        return refuse(format!("it belongs to uid {}, not to us ({me})", md.uid()));
    }
    if md.mode() & 0o022 != 0 {
        return refuse(format!("its mode is {:o}: others could replace the socket (chmod 700 it)", md.mode() & 0o7777));
    }
    Ok(())
}

/// The uid at the other end of a Unix socket (SO_PEERCRED).
pub(crate) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain data; all zeros is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Our effective uid.
pub(crate) fn my_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Removes a socket file at `path` that nobody listens on any more.
fn clear_stale(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.file_type().is_socket() {
        return Err(io::Error::new(ErrorKind::AlreadyExists, format!("{} exists and is not a socket", path.display())));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            ErrorKind::AddrInUse,
            format!("a coordinator is already listening on {}", path.display()),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot tell whether {} is in use: {e}", path.display()))),
    }
}

/// The socket file we bound; removing it leaves alone a file that another
/// coordinator has put at the same path since. Remove it while the listener
/// is still open: the open socket keeps its inode from being reused.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn remove(&self) {
        if let Ok(md) = fs::symlink_metadata(&self.path)
            && (md.dev(), md.ino()) == self.id
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("a/b/coord.sock");
        let (_l, file) = bind(&sock).unwrap();
        let mode = fs::metadata(tmp.path().join("a/b")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(sock.exists());
        drop(file);
        assert!(!sock.exists());
    }

    #[test]
    fn refuses_a_directory_others_can_write() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        fs::create_dir(&dir).unwrap();
        for mode in [0o775, 0o757, 0o1777] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = bind(&dir.join("c.sock")).unwrap_err();
            assert!(err.to_string().contains(&format!("mode is {mode:o}")), "{err}");
        }
    }

    #[test]
    fn accepts_a_readable_directory_and_makes_the_socket_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("readable");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.join("c.sock");
        let (l, _file) = bind(&sock).unwrap();
        assert_eq!(fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        let client = UnixStream::connect(&sock).unwrap();
        let (server, _) = l.accept().unwrap();
        assert_eq!(peer_uid(&server).unwrap(), my_uid());
        drop(client);
    }

    #[test]
    fn refuses_a_symlinked_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        DirBuilder::new().mode(0o700).create(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = bind(&link.join("c.sock")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn replaces_a_stale_socket_but_not_a_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("c.sock");
        drop(UnixListener::bind(&sock).unwrap()); // leaves the file, nobody listens
        let (live, _file) = bind(&sock).unwrap();
        let err = bind(&sock).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already listening"), "{err}");
        drop(live);
    }

    #[test]
    fn refuses_a_regular_file_and_a_long_path() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("c.sock");
        fs::write(&f, b"x").unwrap();
        assert!(bind(&f).unwrap_err().to_string().contains("not a socket"));
        let long = tmp.path().join("x".repeat(120));
        assert!(bind(&long).unwrap_err().to_string().contains("too long"));
    }

    #[test]
    fn remove_spares_a_successor() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("c.sock");
        // The listener stays open, as it does in the coordinator until the
        // file is removed, so its inode cannot be reused.
        let (_l, file) = bind(&sock).unwrap();
        fs::remove_file(&sock).unwrap();
        let _other = UnixListener::bind(&sock).unwrap();
        drop(file);
        assert!(sock.exists());
    }
}
