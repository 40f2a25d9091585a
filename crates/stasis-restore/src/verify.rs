//! Checking the chunks' checksums while the restored program already runs.
//!
//! Memory mapped from an image is read by the kernel on first touch, where
//! nothing of ours sees it, so the chunks are checked in the background
//! instead: [`Verifier`] reads every chunk of every image once (a few
//! threads, through the page cache the mappings use too) and reports the
//! first damaged one. Restart kills the computation on that report and
//! opens the gate (`Gate`) on success; a restored agent answers no
//! checkpoint request before the gate is open, so no checkpoint of
//! unverified memory can commit.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use stasis_image::{ChunkKind, ImageReader, ProcessMeta};

/// Blocks read at once: large enough for sequential reads, small enough
/// for two threads' buffers not to matter.
const BLOCK: usize = 1 << 20;

/// The descriptors that tell restored agents their images are verified:
/// the read end goes to every restored process; a byte written to the
/// write end makes it readable for all of them.
pub struct Gate {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl Gate {
    pub fn new() -> std::io::Result<Gate> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both were just made and are owned by nobody else.
        unsafe {
            use std::os::fd::FromRawFd;
            Ok(Gate { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) })
        }
    }
}

/// One image to check: its open file (the one restart checked and
/// restored from), its name for messages, and its chunks.
struct Job {
    file: File,
    path: PathBuf,
    meta: ProcessMeta,
}

/// The background check of a restart's images.
pub struct Verifier {
    threads: Vec<JoinHandle<()>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Verifier {
    /// Starts `threads` threads that check every memory chunk of `images`
    /// (descriptor contents were checked as restart read them). On the
    /// first damaged chunk `on_failure` runs once with its one-line
    /// description; when all are good, `on_success` runs.
    pub fn start(
        images: &[&ImageReader],
        threads: usize,
        on_failure: impl Fn(&str) + Send + Sync + 'static,
        on_success: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Verifier> {
        let mut jobs = Vec::new();
        for i in images {
            jobs.push(Job { file: i.file().try_clone()?, path: i.path().to_path_buf(), meta: i.meta().clone() });
        }
        let work: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| {
                job.meta
                    .chunks
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c.kind, ChunkKind::Memory { .. }))
                    .map(move |(c, _)| (j, c))
            })
            .collect();
        let shared = Arc::new((jobs, work, AtomicUsize::new(0), AtomicBool::new(false)));
        let failure = Arc::new(Mutex::new(None));
        let on_failure = Arc::new(on_failure);
        let left = Arc::new(AtomicUsize::new(threads.max(1)));
        let on_success = Arc::new(Mutex::new(Some(on_success)));
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            let (shared, failure, on_failure, left, on_success) =
                (shared.clone(), failure.clone(), on_failure.clone(), left.clone(), on_success.clone());
            handles.push(std::thread::Builder::new().name("stasis-verify".into()).spawn(move || {
                let (jobs, work, next, failed) = &*shared;
                let mut buf = vec![0u8; BLOCK];
                while !failed.load(Ordering::Acquire) {
                    let Some(&(j, c)) = work.get(next.fetch_add(1, Ordering::AcqRel)) else { break };
                    let job = &jobs[j];
                    if let Err(msg) = check_chunk(job, c, &mut buf) {
                        if !failed.swap(true, Ordering::AcqRel) {
                            // Recorded before the computation is ended, so
                            // that whoever sees it end finds the reason.
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
                            on_failure(&msg);
                        }
                        break;
                    }
                }
                if left.fetch_sub(1, Ordering::AcqRel) == 1
                    && !failed.load(Ordering::Acquire)
                    && let Some(f) = on_success.lock().unwrap_or_else(|e| e.into_inner()).take()
                {
                    f();
                }
            })?);
        }
        Ok(Verifier { threads: handles, failure })
    }

    /// The damaged chunk found, if any, once every thread has ended.
    pub fn finish(self) -> Option<String> {
        for t in self.threads {
            let _ = t.join();
        }
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The damaged chunk found so far, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Checks chunk `c` of `job` against its checksum, streaming; the error
/// names the chunk as stasis-image's own checks do.
fn check_chunk(job: &Job, c: usize, buf: &mut [u8]) -> Result<(), String> {
    stasis_image::verify_chunk(&job.file, &job.path, &job.meta, c, buf).map_err(|e| e.to_string())
}

/// Opens the gate: every restored agent may checkpoint from now on.
pub fn open_gate(write: &OwnedFd) {
    // SAFETY: write() of one byte from a local buffer.
    unsafe { libc::write(write.as_raw_fd(), b"v".as_ptr().cast(), 1) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::{Chunk, Compression};

    #[test]
    fn chunks_are_named_as_stasis_image_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.img");
        std::fs::write(&path, vec![7u8; 8192 + 4096]).unwrap();
        let c = Chunk {
            kind: ChunkKind::Memory { region: 0, offset: 0x1000 },
            file_offset: 8192,
            len: 4096,
            checksum: 0,
            compression: Compression::None,
            data_len: 4096,
        };
        let meta = ProcessMeta {
            regions: vec![stasis_image::Region { start: 0x1000, end: 0x5000, ..Default::default() }],
            chunks: vec![c],
            ..Default::default()
        };
        let job = Job { file: File::open(&path).unwrap(), path: path.clone(), meta };
        let e = check_chunk(&job, 0, &mut [0u8; 1024]).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: checksum mismatch in memory chunk 0 (region 0x1000-0x5000, 4096 bytes at 0x2000)",
                path.display()
            )
        );
    }
}
