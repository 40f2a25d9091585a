//! Files created, opened, renamed and removed relative to an open
//! directory, never through a path walked again: once a checkpoint
//! directory is checked and opened, nothing done in it can be redirected
//! by a name swapped for a symbolic link meanwhile. Every name is one
//! plain component (no `/`), and nothing is created or opened through a
//! link (`O_NOFOLLOW`, `O_EXCL`).
//!
//! The crate's only unsafe code: the raw `*at` calls, each behind a safe
//! function.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An open directory and the path it was opened by (for messages).
#[derive(Debug)]
pub struct Dir {
    file: File,
    path: PathBuf,
}

/// What `lstat` says of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub size: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// The effective uid: whose files a checkpoint may be made of.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// One path component as a C string; anything else is refused, so that a
/// name can never lead out of its directory.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(ErrorKind::InvalidInput, format!("{name:?} is not a plain file name")));
    }
    CString::new(name).map_err(|_| io::Error::new(ErrorKind::InvalidInput, "a file name with a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A link where a file or directory was expected says so, rather than
/// "too many levels of symbolic links".
fn nofollow_error(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(ErrorKind::InvalidInput, "it is a symbolic link")
    } else {
        e
    }
}

impl Dir {
    /// Opens the directory `path` names; its last component must not be
    /// a symbolic link.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let file =
            File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path).map_err(|e| {
                // O_DIRECTORY wins over O_NOFOLLOW: a link reads as ENOTDIR.
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                    nofollow_error(io::Error::from_raw_os_error(libc::ELOOP))
                } else {
                    nofollow_error(e)
                }
            })?;
        Ok(Dir { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the directory itself.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn openat(&self, name: &str, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call;
        // the descriptor returned is new and owned by nobody else.
        let fd = unsafe {
            libc::openat(self.fd(), c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode as libc::c_uint)
        };
        if fd < 0 {
            return Err(nofollow_error(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// A subdirectory, not through a link.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let file = self.openat(name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
            // O_DIRECTORY wins over O_NOFOLLOW: a link reads as ENOTDIR.
            if self.stat(name).is_ok_and(|s| s.is_symlink()) {
                nofollow_error(io::Error::from_raw_os_error(libc::ELOOP))
            } else {
                e
            }
        })?;
        Ok(Dir { file, path: self.path.join(name) })
    }

    /// Opens `name` for reading: a regular file, not through a link (a
    /// FIFO does not block the open; it is refused after).
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let f = self.openat(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(f)
    }

    /// Creates `name` for writing; fails if anything, a link included, is
    /// there already. `mode` is cut by the umask.
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        self.openat(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        check(unsafe { libc::mkdirat(self.fd(), c.as_ptr(), mode as libc::mode_t) })
    }

    /// `lstat` of an entry.
    pub fn stat(&self, name: &str) -> io::Result<Stat> {
        let c = component(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `c` is NUL-terminated and `st` is writable memory of the
        // size fstatat fills; it is read only after success.
        check(unsafe { libc::fstatat(self.fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
        // SAFETY: fstatat succeeded, so it initialised `st`.
        let st = unsafe { st.assume_init() };
        Ok(Stat { mode: st.st_mode, uid: st.st_uid, size: st.st_size as u64 })
    }

    /// Renames `from` to `to` in this directory; never replaces `to`.
    pub fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        // SAFETY: both names are NUL-terminated strings that outlive the call.
        let r = unsafe { libc::renameat2(self.fd(), f.as_ptr(), self.fd(), t.as_ptr(), libc::RENAME_NOREPLACE) };
        match check(r) {
            // A file system without RENAME_NOREPLACE: check, then rename.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if self.stat(to).is_ok() {
                    return Err(io::Error::from(ErrorKind::AlreadyExists));
                }
                self.rename(from, to)
            }
            other => other,
        }
    }

    /// Renames `from` to `to` in this directory, replacing `to`.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        // SAFETY: both names are NUL-terminated strings that outlive the call.
        check(unsafe { libc::renameat(self.fd(), f.as_ptr(), self.fd(), t.as_ptr()) })
    }

    /// Hard-links `src`'s entry `src_name` as `name` here (a link at
    /// `src_name` is linked itself, not followed).
    pub fn link_from(&self, src: &Dir, src_name: &str, name: &str) -> io::Result<()> {
        let (f, t) = (component(src_name)?, component(name)?);
        // SAFETY: both names are NUL-terminated strings that outlive the call.
        check(unsafe { libc::linkat(src.fd(), f.as_ptr(), self.fd(), t.as_ptr(), 0) })
    }

    /// Removes a file (or a link: never what it points to).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        check(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), 0) })
    }

    fn rmdir(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        check(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
    }

    /// Removes `name` and, if it is a directory, everything in it, without
    /// following any link.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        let st = self.stat(name)?;
        if !st.is_dir() {
            return self.unlink(name);
        }
        let sub = self.open_dir(name)?;
        for entry in sub.names()? {
            if let Some(n) = entry.to_str() {
                sub.remove_tree(n)?;
            } else {
                return Err(io::Error::new(ErrorKind::InvalidData, "a file name that is not UTF-8"));
            }
        }
        self.rmdir(name)
    }

    /// The names in the directory, `.` and `..` left out.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        // Listed through the descriptor: /proc/self/fd/N is this very
        // directory whatever happened to its path.
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", self.fd()));
        let list = std::fs::read_dir(&by_fd).or_else(|_| std::fs::read_dir(&self.path))?;
        let mut out = Vec::new();
        for e in list {
            out.push(e?.file_name());
        }
        Ok(out)
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// A new descriptor for the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir { file: self.file.try_clone()?, path: self.path.clone() })
    }
}

/// Whether a name from `names` is plain UTF-8 (the only names stasis writes).
pub fn utf8(name: &OsStr) -> Option<&str> {
    std::str::from_utf8(name.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_through_links() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("link")).unwrap();
        assert_eq!(d.create_file("link", 0o600).unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert!(d.open_file("link").unwrap_err().to_string().contains("symbolic link"));
        assert!(d.open_dir("link").unwrap_err().to_string().contains("symbolic link"));
        assert!(Dir::open(&t.path().join("link")).unwrap_err().to_string().contains("symbolic link"));
        assert!(d.stat("link").unwrap().is_symlink());
        d.unlink("link").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        for bad in ["", ".", "..", "a/b", "../victim"] {
            assert!(d.create_file(bad, 0o600).is_err(), "{bad:?}");
        }
        let mut f = d.create_file("new", 0o600).unwrap();
        f.write_all(b"x").unwrap();
        d.rename_new("new", "newer").unwrap();
        assert_eq!(d.rename_new("newer", "victim").unwrap_err().kind(), ErrorKind::AlreadyExists);
        d.mkdir("sub", 0o700).unwrap();
        let sub = d.open_dir("sub").unwrap();
        sub.link_from(&d, "newer", "linked").unwrap();
        sub.mkdir("deeper", 0o700).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("sub/deeper/l")).unwrap();
        let mut names: Vec<_> = sub.names().unwrap();
        names.sort();
        assert_eq!(names, ["deeper", "linked"]);
        d.remove_tree("sub").unwrap();
        assert!(!t.path().join("sub").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
