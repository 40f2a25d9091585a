use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can be wrong with an image or a checkpoint directory.
/// Messages are one line, lower-case, and name the file and the problem.
#[derive(Debug)]
pub enum Error {
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    NotAnImage { path: PathBuf },
    UnsupportedVersion { path: PathBuf, version: u32 },
    Truncated { path: PathBuf, expected: u64, actual: u64 },
    Corrupt { path: PathBuf, what: String },
    Checksum { path: PathBuf, what: String },
    NoCheckpoint { dir: PathBuf },
}
