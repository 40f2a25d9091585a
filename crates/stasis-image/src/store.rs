//! Checkpoint directories: committed generations `gen-NNNNNN/` (each with a
//! MANIFEST), and `.gen-NNNNNN.partial/` while one is being written.
//!
//! A generation becomes visible only by the rename of its complete,
//! fsynced directory, so a checkpoint that dies half-way leaves the
//! previous generation as it was.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::manifest::MANIFEST;
use crate::{Error, Manifest, Result};

/// A checkpoint directory holding generations.
pub struct CheckpointDir {
    pub path: PathBuf,
}

/// A committed generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: u64,
    pub path: PathBuf,
}

/// A generation being written: its directory is not yet visible as committed.
#[derive(Debug)]
pub struct PendingGeneration {
    pub number: u64,
    pub path: PathBuf,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { path: path.into(), op, source }
}

fn committed_name(n: u64) -> String {
    format!("gen-{n:06}")
}

fn partial_name(n: u64) -> String {
    format!(".gen-{n:06}.partial")
}

/// The generation number in a directory name, and whether it is partial.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    if let Some(rest) = name.strip_prefix(".gen-").and_then(|r| r.strip_suffix(".partial")) {
        return rest.parse().ok().map(|n| (n, true));
    }
    let digits = name.strip_prefix("gen-")?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(|n| (n, false)))?
}

fn fsync_dir(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(io(path, "fsync"))
}

impl Generation {
    pub fn manifest(&self) -> Result<Manifest> {
        Manifest::read_from(&self.path)
    }

    /// The images the manifest lists, as paths.
    pub fn image_paths(&self) -> Result<Vec<PathBuf>> {
        Ok(self.manifest()?.processes.iter().map(|p| self.path.join(&p.image)).collect())
    }
}

impl CheckpointDir {
    /// Opens `path`, creating it (mode 0700) with its parents if missing.
    pub fn open_or_create(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(path, "create directory"))?;
        }
        Self::open(path)
    }

    /// Opens an existing checkpoint directory.
    pub fn open(path: &Path) -> Result<Self> {
        let path = fs::canonicalize(path).map_err(io(path, "open"))?;
        if !path.is_dir() {
            return Err(Error::NoCheckpoint { dir: path });
        }
        Ok(CheckpointDir { path })
    }

    fn entries(&self) -> Result<Vec<(u64, bool, PathBuf)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.path).map_err(io(&self.path, "read directory"))? {
            let e = e.map_err(io(&self.path, "read directory"))?;
            if let Some((n, partial)) = e.file_name().to_str().and_then(parse_name) {
                out.push((n, partial, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Committed generations, oldest first. A directory without a valid
    /// MANIFEST is not committed.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, partial, path)| !partial && Manifest::read_from(path).is_ok())
            .map(|(number, _, path)| Generation { number, path })
            .collect())
    }

    /// The newest committed generation.
    pub fn latest(&self) -> Result<Generation> {
        self.generations()?.pop().ok_or_else(|| Error::NoCheckpoint { dir: self.path.clone() })
    }

    /// One more than any generation number seen, committed or not.
    pub fn next_number(&self) -> u64 {
        self.entries().ok().and_then(|e| e.iter().map(|(n, ..)| *n).max()).unwrap_or(0) + 1
    }

    /// Starts writing generation `number` in a hidden partial directory.
    pub fn begin(&self, number: u64) -> Result<PendingGeneration> {
        let path = self.path.join(partial_name(number));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io(&path, "remove stale partial generation"))?;
        }
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(io(&path, "create directory"))?;
        Ok(PendingGeneration { number, path })
    }

    /// Makes a pending generation the committed one: every file fsynced,
    /// the manifest written, the directory renamed, the rename fsynced.
    pub fn commit(&self, pending: PendingGeneration, manifest: &Manifest) -> Result<Generation> {
        for e in fs::read_dir(&pending.path).map_err(io(&pending.path, "read directory"))? {
            let p = e.map_err(io(&pending.path, "read directory"))?.path();
            fs::File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p, "fsync"))?;
        }
        manifest.write_to(&pending.path).map_err(io(&pending.path, "write manifest"))?;
        fsync_dir(&pending.path)?;
        let path = self.path.join(committed_name(pending.number));
        fs::rename(&pending.path, &path).map_err(io(&path, "commit generation"))?;
        fsync_dir(&self.path)?;
        Ok(Generation { number: pending.number, path })
    }

    /// Drops a pending generation; the committed ones are untouched.
    pub fn abort(&self, pending: PendingGeneration) -> Result<()> {
        fs::remove_dir_all(&pending.path).map_err(io(&pending.path, "remove partial generation"))
    }

    /// Keeps the newest `keep` committed generations (at least one) and
    /// removes older ones, and partial directories older than the newest.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let committed = self.generations()?;
        let Some(newest) = committed.last().map(|g| g.number) else { return Ok(()) };
        let cut = committed.len().saturating_sub(keep.max(1));
        for g in &committed[..cut] {
            fs::remove_dir_all(&g.path).map_err(io(&g.path, "remove old generation"))?;
        }
        for (n, partial, path) in self.entries()? {
            if partial && n < newest {
                fs::remove_dir_all(&path).map_err(io(&path, "remove stale partial generation"))?;
            }
        }
        Ok(())
    }
}

/// What `stasis restart PATH` restores: an image file itself, the images
/// of a generation directory, or those of a checkpoint directory's newest
/// committed generation.
pub fn resolve_restart_target(path: &Path) -> Result<Vec<PathBuf>> {
    let md = fs::metadata(path).map_err(io(path, "open"))?;
    if md.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.join(MANIFEST).is_file() {
        let number = path.file_name().and_then(|n| n.to_str()).and_then(parse_name).map_or(0, |(n, _)| n);
        return Generation { number, path: path.to_path_buf() }.image_paths();
    }
    CheckpointDir::open(path)?.latest()?.image_paths()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManifestProcess;

    fn manifest(n: u64) -> Manifest {
        Manifest {
            generation: n,
            processes: vec![ManifestProcess { pid: 1, name: "p".into(), image: "a.img".into() }],
            ..Default::default()
        }
    }

    fn commit(dir: &CheckpointDir) -> Generation {
        let n = dir.next_number();
        let p = dir.begin(n).unwrap();
        fs::write(p.path.join("a.img"), b"x").unwrap();
        dir.commit(p, &manifest(n)).unwrap()
    }

    #[test]
    fn commit_latest_prune() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(&t.path().join("a/b")).unwrap();
        assert!(matches!(dir.latest(), Err(Error::NoCheckpoint { .. })));
        for _ in 0..4 {
            commit(&dir);
        }
        assert_eq!(dir.latest().unwrap().number, 4);
        dir.prune(2).unwrap();
        let left: Vec<u64> = dir.generations().unwrap().iter().map(|g| g.number).collect();
        assert_eq!(left, vec![3, 4]);
    }

    #[test]
    fn partial_and_broken_generations_are_not_committed() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let good = commit(&dir);
        let pending = dir.begin(2).unwrap(); // a checkpoint that died
        fs::write(pending.path.join("a.img"), b"half").unwrap();
        fs::create_dir(t.path().join("gen-000003")).unwrap(); // no manifest
        assert_eq!(dir.latest().unwrap(), good);
        assert_eq!(dir.next_number(), 4);
        assert_eq!(resolve_restart_target(t.path()).unwrap(), vec![good.path.join("a.img")]);
        let again = dir.begin(2).unwrap();
        dir.abort(again).unwrap();
        assert_eq!(dir.latest().unwrap(), good);
    }

    #[test]
    fn resolve_targets() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let g = commit(&dir);
        assert_eq!(resolve_restart_target(&g.path).unwrap(), vec![g.path.join("a.img")]);
        assert_eq!(resolve_restart_target(&g.path.join("a.img")).unwrap(), vec![g.path.join("a.img")]);
        assert!(resolve_restart_target(&t.path().join("missing")).is_err());
        let empty = tempfile::tempdir().unwrap();
        let e = resolve_restart_target(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no committed checkpoint"), "{e}");
    }
}
