use std::path::PathBuf;

/// A checkpoint directory holding generations.
pub struct CheckpointDir {
    pub path: PathBuf,
}

/// A committed generation.
pub struct Generation {
    pub number: u64,
    pub path: PathBuf,
}

/// A generation being written: its directory is not yet visible as committed.
pub struct PendingGeneration {
    pub number: u64,
    pub path: PathBuf,
}
