//! Restart: turns an image back into a running process.
//!
//! Call [`spawn_restored`] while the calling process is still
//! single-threaded: it forks the namespace init and the restored process.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitStatus;

use stasis_image::ImageReader;

/// What went wrong before the restored process could run.
#[derive(Debug)]
pub struct RestoreError(pub String);

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreError {}

/// A restored computation, running in its own namespaces.
pub struct Spawned {
    init_pid: i32,
}

impl Spawned {
    /// Pid (in the caller's namespace) of the process to signal: it forwards
    /// signals to the restored program.
    pub fn pid(&self) -> i32 {
        self.init_pid
    }

    /// Waits for the restored program and returns its exit status.
    pub fn wait(self) -> io::Result<ExitStatus> {
        todo!()
    }
}

/// Restores the process in `image` (already opened and checked), handing
/// `agent_conn` to its agent as its coordinator connection.
pub fn spawn_restored(
    image_path: &Path,
    image: &ImageReader,
    agent_conn: OwnedFd,
) -> Result<Spawned, RestoreError> {
    let _ = (image_path, image, agent_conn);
    todo!()
}
