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
#[derive(Debug)]
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
/// Only the names this module writes count, so that two names never claim
/// the same number (`gen-0000001` is not generation 1).
fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (digits, partial) = match name.strip_prefix(".gen-").and_then(|r| r.strip_suffix(".partial")) {
        Some(d) => (d, true),
        None => (name.strip_prefix("gen-")?, false),
    };
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let canonical = if partial { partial_name(n) } else { committed_name(n) };
    (canonical == name).then_some((n, partial))
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
            return Err(Error::Io {
                op: "open",
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
                path,
            });
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
        self.entries().ok().and_then(|e| e.iter().map(|(n, ..)| *n).max()).unwrap_or(0).saturating_add(1)
    }

    /// Starts writing generation `number` in a hidden partial directory.
    pub fn begin(&self, number: u64) -> Result<PendingGeneration> {
        let committed = self.path.join(committed_name(number));
        if committed.exists() {
            let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "generation exists already");
            return Err(Error::Io { path: committed, op: "begin generation", source });
        }
        let path = self.path.join(partial_name(number));
        // Left by a checkpoint that died: nothing in it can be trusted.
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(_) => Ok(()),
        }
        .map_err(io(&path, "remove stale partial generation"))?;
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(io(&path, "create directory"))?;
        Ok(PendingGeneration { number, path })
    }

    /// Makes a pending generation the committed one: every file fsynced,
    /// the manifest written, the directory renamed, the rename fsynced.
    pub fn commit(&self, pending: PendingGeneration, manifest: &Manifest) -> Result<Generation> {
        for e in fs::read_dir(&pending.path).map_err(io(&pending.path, "read directory"))? {
            let e = e.map_err(io(&pending.path, "read directory"))?;
            // Only what a writer leaves: opening a FIFO would block.
            let kind = e.file_type().map_err(io(&e.path(), "stat"))?;
            if kind.is_file() || kind.is_dir() {
                let p = e.path();
                fs::File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p, "fsync"))?;
            }
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ManifestProcess;

    fn manifest(n: u64) -> Manifest {
        Manifest {
            generation: n,
            processes: vec![
                ManifestProcess { pid: 1, name: "p".into(), image: "a.img".into() },
                ManifestProcess { pid: 2, name: "q".into(), image: "b.img".into() },
            ],
            ..Default::default()
        }
    }

    fn commit(dir: &CheckpointDir) -> Generation {
        let n = dir.next_number();
        let p = dir.begin(n).unwrap();
        fs::write(p.path.join("a.img"), b"x").unwrap();
        fs::write(p.path.join("b.img"), b"y").unwrap();
        dir.commit(p, &manifest(n)).unwrap()
    }

    fn numbers(dir: &CheckpointDir) -> Vec<u64> {
        dir.generations().unwrap().iter().map(|g| g.number).collect()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("gen-000001"), Some((1, false)));
        assert_eq!(parse_name("gen-1234567"), Some((1_234_567, false)));
        assert_eq!(parse_name(".gen-000042.partial"), Some((42, true)));
        for bad in ["gen-1", "gen-0000001", "gen-00000a", "gen-+00001", "gen-000001.partial", ".gen-000001", "x"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        assert_eq!(parse_name("gen-99999999999999999999"), None);
    }

    #[test]
    fn commit_latest_prune() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(&t.path().join("a/b")).unwrap();
        assert_eq!(mode(&dir.path), 0o700);
        assert!(dir.path.is_absolute());
        assert!(matches!(dir.latest(), Err(Error::NoCheckpoint { .. })));
        assert_eq!(dir.next_number(), 1);
        for _ in 0..4 {
            commit(&dir);
        }
        let latest = dir.latest().unwrap();
        assert_eq!(latest.number, 4);
        assert_eq!(latest.path, dir.path.join("gen-000004"));
        assert_eq!(latest.manifest().unwrap(), manifest(4));
        assert_eq!(latest.image_paths().unwrap(), [latest.path.join("a.img"), latest.path.join("b.img")]);
        dir.prune(2).unwrap();
        assert_eq!(numbers(&dir), [3, 4]);
        dir.prune(0).unwrap(); // never the newest
        assert_eq!(numbers(&dir), [4]);
        // Reopening finds the same state.
        assert_eq!(CheckpointDir::open(&t.path().join("a/b")).unwrap().latest().unwrap(), latest);
    }

    #[test]
    fn partial_and_broken_generations_are_not_committed() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let good = commit(&dir);
        let pending = dir.begin(2).unwrap(); // a checkpoint that died
        assert_eq!(mode(&pending.path), 0o700);
        fs::write(pending.path.join("a.img"), b"half").unwrap();
        fs::create_dir(t.path().join("gen-000003")).unwrap(); // no manifest
        fs::create_dir(t.path().join("gen-000004")).unwrap();
        fs::write(t.path().join("gen-000004").join(MANIFEST), "stasis-manifest 1\n").unwrap(); // bad manifest
        fs::write(t.path().join("gen-000005"), b"a file").unwrap();
        assert_eq!(dir.generations().unwrap(), std::slice::from_ref(&good));
        assert_eq!(dir.latest().unwrap(), good);
        assert_eq!(dir.next_number(), 6);
        assert_eq!(resolve_restart_target(t.path()).unwrap()[0], good.path.join("a.img"));
        // Beginning again over a stale partial directory starts afresh.
        let again = dir.begin(2).unwrap();
        assert!(!again.path.join("a.img").exists());
        dir.abort(again).unwrap();
        assert!(!t.path().join(".gen-000002.partial").exists());
        assert_eq!(dir.latest().unwrap(), good);
        // A number that is committed already is refused.
        assert!(dir.begin(1).unwrap_err().to_string().contains("exists already"));
    }

    #[test]
    fn prune_removes_stale_partials_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        commit(&dir);
        let stale = dir.begin(2).unwrap();
        let g3 = commit(&dir);
        let newer = dir.begin(9).unwrap(); // could be under way
        fs::create_dir(t.path().join("gen-000004")).unwrap(); // evidence, not ours to remove
        dir.prune(1).unwrap();
        assert_eq!(dir.generations().unwrap(), [g3]);
        assert!(!stale.path.exists());
        assert!(newer.path.exists());
        assert!(t.path().join("gen-000004").exists());
        // Pruning an empty directory is fine.
        let empty = tempfile::tempdir().unwrap();
        CheckpointDir::open(empty.path()).unwrap().prune(2).unwrap();
    }

    #[test]
    fn open_errors() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("missing");
        let e = CheckpointDir::open(&missing).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: open:", missing.display())), "{e}");
        assert!(!missing.exists());
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(CheckpointDir::open(&file).unwrap_err().to_string().contains("not a directory"));
        assert!(CheckpointDir::open_or_create(&file).is_err());
        // An existing directory keeps its mode.
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o750)).unwrap();
        CheckpointDir::open_or_create(t.path()).unwrap();
        assert_eq!(mode(t.path()), 0o750);
    }

    #[test]
    fn resolve_targets() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let g = commit(&dir);
        let images = vec![g.path.join("a.img"), g.path.join("b.img")];
        assert_eq!(resolve_restart_target(&g.path).unwrap(), images);
        assert_eq!(resolve_restart_target(&t.path().join("gen-000001")).unwrap()[1], g.path.join("b.img"));
        assert_eq!(resolve_restart_target(&images[0]).unwrap(), images[..1]);
        let missing = t.path().join("missing");
        let e = resolve_restart_target(&missing).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = resolve_restart_target(empty.path()).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no committed checkpoint found", empty.path().canonicalize().unwrap().display()));
        // A generation directory whose manifest is damaged says so.
        fs::write(g.path.join(MANIFEST), "garbage\n").unwrap();
        let e = resolve_restart_target(&g.path).unwrap_err().to_string();
        assert!(e.contains("invalid manifest"), "{e}");
        assert!(matches!(resolve_restart_target(t.path()), Err(Error::NoCheckpoint { .. })));
    }
}
