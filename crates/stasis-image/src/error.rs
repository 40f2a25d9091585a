use std::fmt;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can be wrong with an image or a checkpoint directory.
/// Messages are one line, lower-case, and name the file and the problem.
#[derive(Debug)]
pub enum Error {
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    NotAnImage {
        path: PathBuf,
    },
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
    },
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    Corrupt {
        path: PathBuf,
        what: String,
    },
    Checksum {
        path: PathBuf,
        what: String,
    },
    NoCheckpoint {
        dir: PathBuf,
    },
    /// A MANIFEST that does not decode (damaged, or not one of ours).
    BadManifest {
        path: PathBuf,
        what: String,
    },
    /// The writer refused metadata that no reader would accept.
    Invalid {
        path: PathBuf,
        what: String,
    },
    /// A checkpoint that is not trusted or not consistent: `msg` is the
    /// whole line, path included.
    Refused {
        path: PathBuf,
        msg: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => write!(f, "{}: {op}: {source}", path.display()),
            Error::NotAnImage { path } => write!(f, "{}: not a stasis image (bad magic)", path.display()),
            Error::UnsupportedVersion { path, version } => write!(
                f,
                "{}: image format version {version} is not supported (this stasis reads versions {} to {})",
                path.display(),
                crate::OLDEST_READABLE_VERSION,
                crate::VERSION
            ),
            Error::Truncated { path, expected, actual } => {
                write!(f, "{}: truncated: expected {expected} bytes, found {actual}", path.display())
            }
            Error::Corrupt { path, what } => write!(f, "{}: corrupt image: {what}", path.display()),
            Error::Checksum { path, what } => write!(f, "{}: checksum mismatch in {what}", path.display()),
            Error::NoCheckpoint { dir } => write!(f, "{}: no committed checkpoint found", dir.display()),
            Error::BadManifest { path, what } => write!(f, "{}: invalid manifest: {what}", path.display()),
            Error::Invalid { path, what } => {
                write!(f, "{}: refusing to write an invalid image: {what}", path.display())
            }
            Error::Refused { msg, .. } => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// The file or directory the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::Io { path, .. }
            | Error::NotAnImage { path }
            | Error::UnsupportedVersion { path, .. }
            | Error::Truncated { path, .. }
            | Error::Corrupt { path, .. }
            | Error::Checksum { path, .. }
            | Error::BadManifest { path, .. }
            | Error::Invalid { path, .. }
            | Error::Refused { path, .. } => path,
            Error::NoCheckpoint { dir } => dir,
        }
    }

    /// Replaces the path an error names (decoders work without one).
    pub fn at(self, p: &std::path::Path) -> Error {
        let path = p.to_path_buf();
        match self {
            Error::Io { op, source, .. } => Error::Io { path, op, source },
            Error::NotAnImage { .. } => Error::NotAnImage { path },
            Error::UnsupportedVersion { version, .. } => Error::UnsupportedVersion { path, version },
            Error::Truncated { expected, actual, .. } => Error::Truncated { path, expected, actual },
            Error::Corrupt { what, .. } => Error::Corrupt { path, what },
            Error::Checksum { what, .. } => Error::Checksum { path, what },
            Error::NoCheckpoint { .. } => Error::NoCheckpoint { dir: path },
            Error::BadManifest { what, .. } => Error::BadManifest { path, what },
            Error::Invalid { what, .. } => Error::Invalid { path, what },
            Error::Refused { msg, .. } => Error::Refused { path, msg },
        }
    }
}
