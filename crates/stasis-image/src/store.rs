//! Checkpoint directories: committed generations `gen-NNNNNN/` (each with a
//! MANIFEST), and `.gen-NNNNNN.partial/` while one is being written.
//!
//! A generation becomes visible only by the rename of its complete,
//! fsynced directory, so a checkpoint that dies half-way leaves the
//! previous generation as it was. Everything here is done through the
//! checkpoint directory's descriptor, opened once its owner, its mode and
//! the directories above it were checked (trust.rs): no name inside it is
//! followed through a link, and nothing is created where something is.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::dirfd::Dir;
use crate::manifest::{MANIFEST, word};
use crate::trust::untrusted;
use crate::{Digest, Error, ImageReader, Manifest, ManifestProcess, ProcessMeta, Result};

/// A checkpoint directory holding generations.
#[derive(Debug)]
pub struct CheckpointDir {
    /// Canonical.
    pub path: PathBuf,
    dir: Dir,
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
    dir: Dir,
}

/// Which generation of a checkpoint directory restart takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// The newest; refused if it is damaged.
    #[default]
    Newest,
    /// Exactly this one.
    Exactly(u64),
    /// The newest intact one, saying so if that is not the newest.
    Fallback,
}

/// What restart may restore, every check made: the images, open.
#[derive(Debug)]
pub struct Restartable {
    pub images: Vec<ImageReader>,
    /// The MANIFEST that vouches for the images (none for a lone image).
    pub manifest: Option<Manifest>,
    pub generation_dir: Option<PathBuf>,
    /// The checkpoint directory the generation belongs to.
    pub ckpt_dir: Option<PathBuf>,
    /// Said to the user: a generation other than the newest was taken.
    pub note: Option<String>,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { path: path.into(), op, source }
}

fn refused(path: &Path, msg: String) -> Error {
    Error::Refused { path: path.into(), msg }
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

/// What is wrong with a generation: `rel` names the file in it (none:
/// the directory itself), `text` is the rest of the sentence.
#[derive(Debug)]
struct Damage {
    rel: Option<String>,
    text: String,
}

impl Damage {
    fn dir(text: String) -> Damage {
        Damage { rel: None, text }
    }
    fn file(rel: &str, text: String) -> Damage {
        Damage { rel: Some(rel.into()), text }
    }
    /// The whole line, for a generation asked for by name.
    fn full(&self, gen_path: &Path) -> String {
        match &self.rel {
            Some(r) => format!("{}{}", gen_path.join(r).display(), self.text),
            None => format!("{}{}", gen_path.display(), self.text),
        }
    }
    /// In brackets after "gen-N is damaged".
    fn short(&self) -> String {
        match &self.rel {
            Some(r) => format!("{r}{}", self.text),
            None => self.text.trim_start_matches([':', ' ']).to_string(),
        }
    }
}

/// `e` without the path its message starts with.
fn after_path(e: &Error, path: &Path) -> String {
    let text = e.to_string();
    match text.strip_prefix(&*path.display().to_string()) {
        Some(rest) => rest.to_string(),
        None => format!(": {text}"),
    }
}

fn open_error(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound { " is missing".into() } else { format!(": {e}") }
}

/// Whether the image `meta` (of `size` bytes, with `digest`) is the one
/// `p` of manifest `m` lists. The error is the rest of a sentence that
/// starts with the image's path.
pub fn check_image(
    m: &Manifest,
    p: &ManifestProcess,
    meta: &ProcessMeta,
    size: u64,
    digest: Digest,
) -> std::result::Result<(), String> {
    if meta.computation_id != m.computation_id {
        return Err(format!(
            " is of computation {:016x}, but the manifest's is {:016x}: another computation's image?",
            meta.computation_id, m.computation_id
        ));
    }
    if meta.generation != m.generation {
        return Err(format!(
            " is of generation {}, but the manifest's is {}: an image of another checkpoint?",
            meta.generation, m.generation
        ));
    }
    if meta.pid != p.pid {
        return Err(format!(" is of pid {}, but the manifest lists pid {} for it", meta.pid, p.pid));
    }
    if word(&meta.name) != p.name {
        return Err(format!(" is of program {:?}, but the manifest lists {:?} for it", meta.name, p.name));
    }
    if size != p.size {
        return Err(format!(" has {size} bytes, but the manifest lists {}: cut short, or grown?", p.size));
    }
    if digest != p.digest {
        return Err(" is not the image the manifest lists (its digest differs): another checkpoint's image?".into());
    }
    Ok(())
}

impl PendingGeneration {
    /// The open directory being written.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }
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
        if fs::symlink_metadata(path).is_err() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(path, "create directory"))?;
        }
        Self::open(path)
    }

    /// Opens an existing checkpoint directory, refused unless it and the
    /// directories above it are safe from other users (trust.rs).
    pub fn open(path: &Path) -> Result<Self> {
        let (path, dir) = crate::trust::open_checkpoint_dir(path)?;
        Ok(CheckpointDir { path, dir })
    }

    /// The open directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    fn entries(&self) -> Result<Vec<(u64, bool, String)>> {
        let mut out = Vec::new();
        for name in self.dir.names().map_err(io(&self.path, "read directory"))? {
            if let Some((n, partial)) = crate::dirfd::utf8(&name).and_then(parse_name) {
                out.push((n, partial, crate::dirfd::utf8(&name).unwrap_or_default().to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Numbers of the `gen-N` entries, newest first, intact or not.
    fn committed_numbers(&self) -> Result<Vec<u64>> {
        Ok(self.entries()?.into_iter().rev().filter(|(_, partial, _)| !partial).map(|(n, ..)| n).collect())
    }

    /// Generation `number`'s directory and MANIFEST: ours, nobody else's
    /// to write, not links, and the MANIFEST valid and of that number.
    fn inspect(&self, number: u64) -> std::result::Result<(Dir, Manifest), Damage> {
        let name = committed_name(number);
        let gen_path = self.path.join(&name);
        let gdir = self.dir.open_dir(&name).map_err(|e| {
            // Another user's directory we may not even open: say whose.
            if e.raw_os_error() == Some(libc::EACCES)
                && let Ok(st) = self.dir.stat(&name)
                && let Some(why) = untrusted(&gen_path, st.uid, st.mode)
            {
                return Damage::dir(why);
            }
            Damage::dir(match e.raw_os_error() {
                Some(libc::ENOTDIR) => " is not a directory".into(),
                _ if e.kind() == std::io::ErrorKind::InvalidInput => " is a symbolic link".into(),
                _ => format!(": {e}"),
            })
        })?;
        let md = gdir.metadata().map_err(|e| Damage::dir(format!(": {e}")))?;
        if let Some(why) = untrusted(&gen_path, md.uid(), md.mode()) {
            return Err(Damage::dir(why));
        }
        let f = gdir.open_file(MANIFEST).map_err(|e| Damage::file(MANIFEST, open_error(e)))?;
        let md = f.metadata().map_err(|e| Damage::file(MANIFEST, format!(": {e}")))?;
        let path = gen_path.join(MANIFEST);
        if let Some(why) = untrusted(&path, md.uid(), md.mode()) {
            return Err(Damage::file(MANIFEST, why));
        }
        let m = Manifest::read_file(f, &path).map_err(|e| {
            Damage::file(
                MANIFEST,
                match e {
                    Error::BadManifest { what, .. } => format!(": {what}"),
                    e => after_path(&e, &path),
                },
            )
        })?;
        if m.generation != number {
            return Err(Damage::file(
                MANIFEST,
                format!(" says generation {}: the directory was renamed or swapped", m.generation),
            ));
        }
        Ok((gdir, m))
    }

    /// [`inspect`](Self::inspect), then every image the MANIFEST lists:
    /// there, ours, and the very image it lists.
    fn verify(&self, number: u64) -> std::result::Result<(Manifest, Vec<ImageReader>), Damage> {
        let (gdir, m) = self.inspect(number)?;
        if m.processes.is_empty() {
            return Err(Damage::file(MANIFEST, " lists no process".into()));
        }
        let mut images = Vec::with_capacity(m.processes.len());
        for p in &m.processes {
            let path = gdir.path().join(&p.image);
            let f = gdir.open_file(&p.image).map_err(|e| Damage::file(&p.image, open_error(e)))?;
            let md = f.metadata().map_err(|e| Damage::file(&p.image, format!(": {e}")))?;
            if let Some(why) = untrusted(&path, md.uid(), md.mode()) {
                return Err(Damage::file(&p.image, why));
            }
            let r = ImageReader::from_file(f, &path).map_err(|e| Damage::file(&p.image, after_path(&e, &path)))?;
            check_image(&m, p, r.meta(), r.len(), r.digest()).map_err(|why| Damage::file(&p.image, why))?;
            images.push(r);
        }
        // An incremental generation is only as good as those it refers to.
        for &g in &m.needs {
            let name = committed_name(g);
            let broken = match self.dir.stat(&name) {
                Err(_) => "is missing".to_string(),
                Ok(_) => match self.verify_alone(g) {
                    Ok(()) => continue,
                    Err(d) => format!("is damaged ({})", d.short()),
                },
            };
            return Err(Damage::dir(format!(": it needs {name}, which {broken}")));
        }
        Ok((m, images))
    }

    /// A needed generation: its MANIFEST and images intact (what it needs
    /// in turn is listed by whoever needs it: references are flattened).
    fn verify_alone(&self, number: u64) -> std::result::Result<(), Damage> {
        let (gdir, m) = self.inspect(number)?;
        for p in &m.processes {
            let path = gdir.path().join(&p.image);
            let f = gdir.open_file(&p.image).map_err(|e| Damage::file(&p.image, open_error(e)))?;
            let md = f.metadata().map_err(|e| Damage::file(&p.image, format!(": {e}")))?;
            if let Some(why) = untrusted(&path, md.uid(), md.mode()) {
                return Err(Damage::file(&p.image, why));
            }
            let r = ImageReader::from_file(f, &path).map_err(|e| Damage::file(&p.image, after_path(&e, &path)))?;
            check_image(&m, p, r.meta(), r.len(), r.digest()).map_err(|why| Damage::file(&p.image, why))?;
        }
        Ok(())
    }

    /// Committed generations whose MANIFEST is intact (and ours), oldest
    /// first. Damaged ones are left out: see [`restartable`](Self::restartable)
    /// for what restart says of them.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let mut out: Vec<Generation> = self
            .committed_numbers()?
            .into_iter()
            .filter(|&n| self.inspect(n).is_ok())
            .map(|number| Generation { number, path: self.path.join(committed_name(number)) })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The newest committed generation with an intact MANIFEST.
    pub fn latest(&self) -> Result<Generation> {
        self.generations()?.pop().ok_or_else(|| Error::NoCheckpoint { dir: self.path.clone() })
    }

    /// What restart restores of this directory: the newest generation
    /// (refused, naming the damage and the newest intact one, if it is
    /// damaged), exactly one, or the newest intact one.
    pub fn restartable(&self, choice: Choice) -> Result<Restartable> {
        let numbers = self.committed_numbers()?;
        let Some(&newest) = numbers.first() else { return Err(Error::NoCheckpoint { dir: self.path.clone() }) };
        let gen_path = |n: u64| self.path.join(committed_name(n));
        let done = |n: u64, (m, images): (Manifest, Vec<ImageReader>), note| Restartable {
            images,
            manifest: Some(m),
            generation_dir: Some(gen_path(n)),
            ckpt_dir: Some(self.path.clone()),
            note,
        };
        if let Choice::Exactly(n) = choice {
            if !numbers.contains(&n) {
                let have: Vec<String> = numbers.iter().rev().map(|&n| committed_name(n)).collect();
                return Err(refused(
                    &self.path,
                    format!("{} has no generation {n} (it has {})", self.path.display(), have.join(", ")),
                ));
            }
            return self.verify(n).map(|v| done(n, v, None)).map_err(|d| refused(&gen_path(n), d.full(&gen_path(n))));
        }
        let damage = match self.verify(newest) {
            Ok(v) => return Ok(done(newest, v, None)),
            Err(d) => d,
        };
        let intact = numbers[1..].iter().find_map(|&n| self.verify(n).ok().map(|v| (n, v)));
        let newest_path = gen_path(newest);
        match (choice, intact) {
            (Choice::Fallback, Some((n, v))) => {
                let note = format!(
                    "{} is damaged ({}); restarting {}, the newest intact checkpoint",
                    newest_path.display(),
                    damage.short(),
                    committed_name(n)
                );
                Ok(done(n, v, Some(note)))
            }
            (_, Some((n, _))) => Err(refused(
                &newest_path,
                format!(
                    "{} is damaged ({}); the newest intact checkpoint is {}: restart with --generation {n} or --fallback",
                    newest_path.display(),
                    damage.short(),
                    committed_name(n)
                ),
            )),
            (_, None) => Err(refused(
                &newest_path,
                format!("{} is damaged ({}), and no older checkpoint is intact", newest_path.display(), damage.short()),
            )),
        }
    }

    /// One more than any generation number seen, committed or not.
    pub fn next_number(&self) -> u64 {
        self.entries().ok().and_then(|e| e.iter().map(|(n, ..)| *n).max()).unwrap_or(0).saturating_add(1)
    }

    /// Starts writing generation `number` in a hidden partial directory.
    pub fn begin(&self, number: u64) -> Result<PendingGeneration> {
        let committed = committed_name(number);
        if self.dir.stat(&committed).is_ok() {
            let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "generation exists already");
            return Err(Error::Io { path: self.path.join(committed), op: "begin generation", source });
        }
        let name = partial_name(number);
        let path = self.path.join(&name);
        // Left by a checkpoint that died: nothing in it can be trusted.
        match self.dir.stat(&name) {
            Ok(_) => self.dir.remove_tree(&name),
            Err(_) => Ok(()),
        }
        .map_err(io(&path, "remove stale partial generation"))?;
        self.dir.mkdir(&name, 0o700).map_err(io(&path, "create directory"))?;
        let dir = self.dir.open_dir(&name).map_err(io(&path, "open"))?;
        Ok(PendingGeneration { number, path, dir })
    }

    /// Makes a pending generation the committed one: every file fsynced,
    /// the manifest written, the directory renamed (never over another),
    /// the rename fsynced.
    pub fn commit(&self, pending: PendingGeneration, manifest: &Manifest) -> Result<Generation> {
        let pdir = &pending.dir;
        for name in pdir.names().map_err(io(&pending.path, "read directory"))? {
            let Some(name) = crate::dirfd::utf8(&name) else { continue };
            let p = pending.path.join(name);
            // Only what a writer leaves; a link is not followed.
            let st = pdir.stat(name).map_err(io(&p, "stat"))?;
            if st.is_file() {
                pdir.open_file(name).and_then(|f| f.sync_all()).map_err(io(&p, "fsync"))?;
            } else if st.is_dir() {
                pdir.open_dir(name).and_then(|d| d.sync()).map_err(io(&p, "fsync"))?;
            }
        }
        manifest.write_in(pdir).map_err(io(&pending.path, "write manifest"))?;
        pdir.sync().map_err(io(&pending.path, "fsync"))?;
        let name = committed_name(pending.number);
        let path = self.path.join(&name);
        self.dir.rename_new(&partial_name(pending.number), &name).map_err(io(&path, "commit generation"))?;
        self.dir.sync().map_err(io(&self.path, "fsync"))?;
        Ok(Generation { number: pending.number, path })
    }

    /// Drops a pending generation; the committed ones are untouched.
    pub fn abort(&self, pending: PendingGeneration) -> Result<()> {
        self.dir.remove_tree(&partial_name(pending.number)).map_err(io(&pending.path, "remove partial generation"))
    }

    /// Keeps the newest `keep` intact generations (at least one), and the
    /// generations they need (`Manifest::needs`), and removes older intact
    /// ones, and partial directories older than the
    /// newest. A damaged `gen-N` is never removed: it is evidence.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let committed = self.generations()?;
        let Some(newest) = committed.last().map(|g| g.number) else { return Ok(()) };
        let cut = committed.len().saturating_sub(keep.max(1));
        // What the kept generations refer to stays with them.
        let needed: Vec<u64> =
            committed[cut..].iter().filter_map(|g| self.inspect(g.number).ok()).flat_map(|(_, m)| m.needs).collect();
        for g in committed[..cut].iter().filter(|g| !needed.contains(&g.number)) {
            let name = committed_name(g.number);
            self.dir.remove_tree(&name).map_err(io(&g.path, "remove old generation"))?;
        }
        let me = crate::dirfd::euid();
        for (n, partial, name) in self.entries()? {
            // Only partial directories of ours: what a checkpoint of ours left.
            if partial && n < newest && self.dir.stat(&name).is_ok_and(|s| s.uid == me) {
                self.dir.remove_tree(&name).map_err(io(&self.path.join(&name), "remove stale partial generation"))?;
            }
        }
        Ok(())
    }
}

/// The image `path` (its last component not a link), checked: ours,
/// nobody else's to write, a valid image.
fn open_given_image(path: &Path) -> Result<(ImageReader, PathBuf, Dir)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refused(path, format!("{}: not the name of an image file", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = fs::canonicalize(parent).map_err(io(parent, "open"))?;
    let pdir = Dir::open(&parent).map_err(io(&parent, "open"))?;
    let f = pdir.open_file(name).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput && e.to_string().contains("symbolic link") {
            refused(path, format!("{} is a symbolic link: give the image itself", path.display()))
        } else {
            Error::Io { path: path.into(), op: "open", source: e }
        }
    })?;
    let md = f.metadata().map_err(io(path, "stat"))?;
    if let Some(why) = untrusted(path, md.uid(), md.mode()) {
        return Err(refused(path, format!("{}{why}", path.display())));
    }
    Ok((ImageReader::from_file(f, path)?, parent, pdir))
}

/// Image files given one by one (the `ckpt_*.dmtcp` links at the top of a
/// checkpoint directory, or images in a generation directory): each must
/// be listed by digest in the MANIFEST of its generation next to or above
/// it, and all of that generation's must be given. An image with no
/// checkpoint directory around it stands alone.
/// The checkpoint directory of an image of generation `g` found in
/// `parent`, a directory of names of that generation (DMTCP's unique
/// checkpoint filenames, `ckpt_<computation>_<generation>/`) beside it.
fn unique_names_parent(parent: &Path, g: u64) -> Option<PathBuf> {
    let name = parent.file_name()?.to_str()?;
    let (hex, number) = name.strip_prefix("ckpt_")?.split_once('_')?;
    let named_so = hex.len() == 16
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && number.bytes().all(|b| b.is_ascii_digit())
        && number.parse::<u64>().ok() == Some(g);
    let ck = parent.parent()?;
    (named_so && fs::symlink_metadata(ck.join(committed_name(g))).is_ok_and(|m| m.is_dir())).then(|| ck.to_path_buf())
}

fn restartable_images(targets: &[PathBuf]) -> Result<Restartable> {
    // (reader, as given, its generation: checkpoint directory and number)
    type Around = Option<(PathBuf, u64)>;
    let mut given: Vec<(ImageReader, &Path, Around)> = Vec::new();
    for t in targets {
        let (r, parent, pdir) = open_given_image(t)?;
        let g = r.meta().generation;
        let around = if pdir.stat(MANIFEST).is_ok() {
            let number = parent.file_name().and_then(|n| n.to_str()).and_then(parse_name);
            let Some((n, false)) = number else {
                return Err(refused(
                    t,
                    format!(
                        "{} lies next to a MANIFEST, but {} is not named like a generation (gen-NNNNNN)",
                        t.display(),
                        parent.display()
                    ),
                ));
            };
            if n != g {
                return Err(refused(
                    t,
                    format!(
                        "{} is of generation {g} but lies in {}: an image of another checkpoint?",
                        t.display(),
                        parent.display()
                    ),
                ));
            }
            Some((parent.parent().unwrap_or(&parent).to_path_buf(), n))
        } else if pdir.stat(&committed_name(g)).is_ok() {
            Some((parent.clone(), g))
        } else if let Some(ck) = unique_names_parent(&parent, g) {
            Some((ck, g))
        } else {
            let holds_generations = pdir
                .names()
                .map_err(io(&parent, "read directory"))?
                .iter()
                .any(|n| crate::dirfd::utf8(n).and_then(parse_name).is_some());
            if holds_generations {
                return Err(refused(
                    t,
                    format!(
                        "{} is of generation {g}, but {} holds no {}: restart the checkpoint directory",
                        t.display(),
                        parent.display(),
                        committed_name(g)
                    ),
                ));
            }
            None
        };
        given.push((r, t, around));
    }
    let first = given[0].2.clone();
    for (_, t, around) in &given[1..] {
        if *around != first {
            let describe = |a: &Around| match a {
                Some((ck, n)) => ck.join(committed_name(*n)).display().to_string(),
                None => "no checkpoint directory".into(),
            };
            return Err(refused(
                t,
                format!(
                    "{} belongs to {} but {} to {}: give the images of one checkpoint (or the checkpoint directory, for its newest)",
                    given[0].1.display(),
                    describe(&first),
                    t.display(),
                    describe(around)
                ),
            ));
        }
    }
    let Some((ck_path, number)) = first else {
        return Ok(Restartable {
            images: given.into_iter().map(|g| g.0).collect(),
            manifest: None,
            generation_dir: None,
            ckpt_dir: None,
            note: None,
        });
    };
    let ck = CheckpointDir::open(&ck_path)?;
    let gen_path = ck.path.join(committed_name(number));
    let (m, _) = ck.verify(number).map_err(|d| refused(&gen_path, d.full(&gen_path)))?;
    let mut matched: Vec<Option<&Path>> = vec![None; m.processes.len()];
    for (r, t, _) in &given {
        let Some(i) = m.processes.iter().position(|p| p.digest == r.digest() && p.size == r.len()) else {
            return Err(refused(
                t,
                format!(
                    "{} is not an image {} lists (no image there has its digest): another checkpoint's image?",
                    t.display(),
                    gen_path.join(MANIFEST).display()
                ),
            ));
        };
        if let Some(other) = matched[i] {
            return Err(refused(t, format!("{} and {} are the same image", other.display(), t.display())));
        }
        matched[i] = Some(t);
    }
    let missing: Vec<String> = m
        .processes
        .iter()
        .zip(&matched)
        .filter(|(_, g)| g.is_none())
        .map(|(p, _)| format!("{} (pid {})", p.image, p.pid))
        .collect();
    if !missing.is_empty() {
        return Err(refused(
            &gen_path,
            format!(
                "{} holds {} processes, but the images given leave out {}: give them all, or the checkpoint directory",
                gen_path.display(),
                m.processes.len(),
                missing.join(", ")
            ),
        ));
    }
    Ok(Restartable {
        images: given.into_iter().map(|g| g.0).collect(),
        manifest: Some(m),
        generation_dir: Some(gen_path),
        ckpt_dir: Some(ck.path),
        note: None,
    })
}

/// What `stasis restart TARGETS` restores, every check made: image files
/// (see `restartable_images`), a generation directory, or a checkpoint
/// directory (the generation `choice` says).
pub fn resolve_restart(targets: &[PathBuf], choice: Choice) -> Result<Restartable> {
    let Some(first) = targets.first() else {
        return Err(refused(Path::new("."), "nothing to restart".into()));
    };
    let mut dirs = 0;
    for t in targets {
        if fs::metadata(t).map_err(io(t, "open"))?.is_dir() {
            dirs += 1;
        }
    }
    if dirs == 0 {
        if choice != Choice::Newest {
            return Err(refused(
                first,
                format!(
                    "--generation and --fallback choose a generation of a checkpoint directory, and {} is an image: give the directory",
                    first.display()
                ),
            ));
        }
        return restartable_images(targets);
    }
    if targets.len() > 1 {
        return Err(refused(
            first,
            "give one checkpoint directory, one generation directory, or image files, not several directories".into(),
        ));
    }
    if fs::symlink_metadata(first.join(MANIFEST)).is_ok() {
        let path = fs::canonicalize(first).map_err(io(first, "open"))?;
        let number = path.file_name().and_then(|n| n.to_str()).and_then(parse_name);
        let Some((number, false)) = number else {
            return Err(refused(
                &path,
                format!(
                    "{} holds a MANIFEST but is not named like a generation (gen-NNNNNN): restart its checkpoint directory",
                    path.display()
                ),
            ));
        };
        if let Choice::Exactly(n) = choice
            && n != number
        {
            return Err(refused(
                &path,
                format!("--generation {n} asks for another generation than {}", path.display()),
            ));
        }
        let ck = CheckpointDir::open(path.parent().unwrap_or(&path))?;
        return ck.restartable(Choice::Exactly(number));
    }
    CheckpointDir::open(first)?.restartable(choice)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{Fd, FdKind, ImageWriter, Thread, UCONTEXT_LEN};

    const COMPUTATION: u64 = 0x77;

    /// Writes a real image of process `pid` ("prog{pid}") of generation `g`
    /// in `dir`, and returns its manifest line.
    fn image(dir: &Path, pid: i32, g: u64) -> ManifestProcess {
        let name = format!("p{pid}.img");
        let path = dir.join(&name);
        let w = ImageWriter::create(&path).unwrap();
        let meta = ProcessMeta {
            pid,
            generation: g,
            computation_id: COMPUTATION,
            name: format!("prog{pid}"),
            threads: vec![Thread { tid: pid, ucontext: vec![0; UCONTEXT_LEN], ..Default::default() }],
            fds: vec![Fd { fd: 3, cloexec: false, kind: FdKind::Agent, outside_stdio: None }],
            ..Default::default()
        };
        w.finish(meta).unwrap();
        let r = ImageReader::open(&path).unwrap();
        ManifestProcess { pid, name: format!("prog{pid}"), image: name, size: r.len(), digest: r.digest() }
    }

    fn commit_pids(dir: &CheckpointDir, pids: &[i32]) -> Generation {
        let n = dir.next_number();
        let p = dir.begin(n).unwrap();
        let processes = pids.iter().map(|&pid| image(&p.path, pid, n)).collect();
        let m = Manifest { generation: n, computation_id: COMPUTATION, interval_s: 5, processes, ..Default::default() };
        dir.commit(p, &m).unwrap()
    }

    fn commit(dir: &CheckpointDir) -> Generation {
        commit_pids(dir, &[1, 2])
    }

    fn numbers(dir: &CheckpointDir) -> Vec<u64> {
        dir.generations().unwrap().iter().map(|g| g.number).collect()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn refusal(targets: &[&Path], choice: Choice) -> String {
        let targets: Vec<PathBuf> = targets.iter().map(|p| p.to_path_buf()).collect();
        resolve_restart(&targets, choice).unwrap_err().to_string()
    }

    fn restarted(targets: &[&Path], choice: Choice) -> Restartable {
        let targets: Vec<PathBuf> = targets.iter().map(|p| p.to_path_buf()).collect();
        resolve_restart(&targets, choice).unwrap()
    }

    /// Rewrites a generation's MANIFEST, checksum and all.
    fn rewrite_manifest(g: &Path, f: impl FnOnce(&mut Manifest)) {
        let mut m = Manifest::read_from(g).unwrap();
        f(&mut m);
        fs::write(g.join(MANIFEST), m.encode()).unwrap();
    }

    /// Generation `g` whose MANIFEST says it needs `needs`.
    fn commit_needing(dir: &CheckpointDir, needs: &[u64]) -> Generation {
        let n = dir.next_number();
        let p = dir.begin(n).unwrap();
        let processes = vec![image(&p.path, 1, n)];
        let m = Manifest {
            generation: n,
            computation_id: COMPUTATION,
            processes,
            needs: needs.to_vec(),
            ..Default::default()
        };
        dir.commit(p, &m).unwrap()
    }

    #[test]
    fn prune_keeps_what_kept_generations_need() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        commit_needing(&dir, &[]); // 1, full
        commit_needing(&dir, &[1]);
        commit_needing(&dir, &[1, 2]);
        dir.prune(1).unwrap();
        assert_eq!(numbers(&dir), [1, 2, 3]);
        commit_needing(&dir, &[]); // 4, full
        commit_needing(&dir, &[4]);
        dir.prune(2).unwrap();
        assert_eq!(numbers(&dir), [4, 5]);
        dir.prune(1).unwrap();
        assert_eq!(numbers(&dir), [4, 5]);
    }

    #[test]
    fn a_generation_whose_needs_are_gone_is_not_restartable() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        commit_needing(&dir, &[]);
        commit_needing(&dir, &[]);
        let g3 = commit_needing(&dir, &[1, 2]);
        assert!(dir.restartable(Choice::Newest).is_ok());
        fs::remove_dir_all(t.path().join("gen-000001")).unwrap();
        let e = dir.restartable(Choice::Exactly(3)).unwrap_err().to_string();
        assert_eq!(e, format!("{}: it needs gen-000001, which is missing", g3.path.display()));
        // Damaged, rather than gone: named too; --fallback takes generation 2.
        fs::write(t.path().join("gen-000002/p1.img"), b"junk").unwrap();
        let e = dir.restartable(Choice::Newest).unwrap_err().to_string();
        assert!(e.contains("it needs gen-000001, which is missing"), "{e}");
        let e = dir.restartable(Choice::Exactly(2)).unwrap_err().to_string();
        assert!(e.contains("p1.img"), "{e}");
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
        assert_eq!(latest.manifest().unwrap().generation, 4);
        assert_eq!(mode(&latest.path.join(MANIFEST)), 0o600);
        assert_eq!(latest.image_paths().unwrap(), [latest.path.join("p1.img"), latest.path.join("p2.img")]);
        dir.prune(2).unwrap();
        assert_eq!(numbers(&dir), [3, 4]);
        dir.prune(0).unwrap(); // never the newest
        assert_eq!(numbers(&dir), [4]);
        // Reopening finds the same state.
        assert_eq!(CheckpointDir::open(&t.path().join("a/b")).unwrap().latest().unwrap(), latest);
        let r = restarted(&[&dir.path], Choice::Newest);
        assert_eq!(r.images.len(), 2);
        assert_eq!(r.generation_dir.as_deref(), Some(latest.path.as_path()));
        assert_eq!(r.ckpt_dir.as_deref(), Some(dir.path.as_path()));
        assert_eq!(r.manifest.unwrap().interval_s, 5);
        assert!(r.note.is_none());
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
        fs::write(t.path().join("gen-000004").join(MANIFEST), "stasis-manifest 2\n").unwrap(); // bad manifest
        fs::write(t.path().join("gen-000005"), b"a file").unwrap();
        assert_eq!(dir.generations().unwrap(), std::slice::from_ref(&good));
        assert_eq!(dir.latest().unwrap(), good);
        assert_eq!(dir.next_number(), 6);
        // Restart says the newest is damaged, and which one it would take.
        let e = refusal(&[t.path()], Choice::Newest);
        let ck = dir.path.display();
        assert_eq!(
            e,
            format!(
                "{ck}/gen-000005 is damaged (is not a directory); the newest intact checkpoint is gen-000001: restart with --generation 1 or --fallback"
            )
        );
        let r = restarted(&[t.path()], Choice::Fallback);
        assert_eq!(r.generation_dir.as_deref(), Some(good.path.as_path()));
        assert_eq!(
            r.note.unwrap(),
            format!(
                "{ck}/gen-000005 is damaged (is not a directory); restarting gen-000001, the newest intact checkpoint"
            )
        );
        assert_eq!(restarted(&[t.path()], Choice::Exactly(1)).images.len(), 2);
        let e = refusal(&[t.path()], Choice::Exactly(4));
        assert_eq!(e, format!("{ck}/gen-000004/MANIFEST: the last line is not the checksum (cut short?)"));
        let e = refusal(&[t.path()], Choice::Exactly(3));
        assert_eq!(
            e,
            format!("{ck}/gen-000004/MANIFEST: the last line is not the checksum (cut short?)").replace(
                "000004/MANIFEST: the last line is not the checksum (cut short?)",
                "000003/MANIFEST is missing"
            )
        );
        let e = refusal(&[t.path()], Choice::Exactly(9));
        assert_eq!(e, format!("{ck} has no generation 9 (it has gen-000001, gen-000003, gen-000004, gen-000005)"));
        // Beginning again over a stale partial directory starts afresh.
        let again = dir.begin(2).unwrap();
        assert!(!again.path.join("a.img").exists());
        dir.abort(again).unwrap();
        assert!(!t.path().join(".gen-000002.partial").exists());
        assert_eq!(dir.latest().unwrap(), good);
        // A number that is committed already is refused, damaged or not.
        assert!(dir.begin(1).unwrap_err().to_string().contains("exists already"));
        assert!(dir.begin(3).unwrap_err().to_string().contains("exists already"));
        // The coordinator carries on past the damage, and prunes around it.
        assert_eq!(commit(&dir).number, 6);
        commit(&dir);
        dir.prune(1).unwrap();
        assert_eq!(numbers(&dir), [7]);
        for evidence in ["gen-000003", "gen-000004", "gen-000005"] {
            assert!(t.path().join(evidence).exists(), "{evidence} was removed");
        }
        assert_eq!(restarted(&[t.path()], Choice::Newest).generation_dir.unwrap(), dir.path.join("gen-000007"));
    }

    #[test]
    fn a_commit_never_replaces_a_generation() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let p = dir.begin(1).unwrap();
        // Appears meanwhile (empty: rename(2) would replace it).
        fs::create_dir(t.path().join("gen-000001")).unwrap();
        let e = dir.commit(p, &Manifest { generation: 1, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("commit generation"), "{e}");
        assert!(t.path().join("gen-000001").read_dir().unwrap().next().is_none());
    }

    #[test]
    fn inconsistent_generations_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let g1 = commit(&dir);
        let g2 = commit(&dir);
        let ck = dir.path.display().to_string();
        let damaged = |what: &str| {
            format!(
                "{ck}/gen-000002 is damaged ({what}); the newest intact checkpoint is gen-000001: restart with --generation 1 or --fallback"
            )
        };
        let check = |want: String| {
            assert_eq!(refusal(&[t.path()], Choice::Newest), want);
        };

        // Swapped: gen-2's MANIFEST says 1.
        let saved = fs::read(g2.path.join(MANIFEST)).unwrap();
        rewrite_manifest(&g2.path, |m| m.generation = 1);
        check(damaged("MANIFEST says generation 1: the directory was renamed or swapped"));
        assert_eq!(
            refusal(&[&g2.path], Choice::Newest),
            format!("{ck}/gen-000002/MANIFEST says generation 1: the directory was renamed or swapped")
        );
        fs::write(g2.path.join(MANIFEST), &saved).unwrap();

        // Another checkpoint's image in its place.
        let saved_img = fs::read(g2.path.join("p1.img")).unwrap();
        fs::copy(g1.path.join("p1.img"), g2.path.join("p1.img")).unwrap();
        check(damaged("p1.img is of generation 1, but the manifest's is 2: an image of another checkpoint?"));
        fs::write(g2.path.join("p1.img"), &saved_img).unwrap();
        restarted(&[t.path()], Choice::Newest);

        // Edited fields, checksum recomputed.
        type Edit = fn(&mut Manifest);
        let cases: [(Edit, &str); 6] = [
            (
                |m| m.computation_id = 5,
                "p1.img is of computation 0000000000000077, but the manifest's is 0000000000000005: another computation's image?",
            ),
            (|m| m.processes[0].pid = 9, "p1.img is of pid 1, but the manifest lists pid 9 for it"),
            (
                |m| m.processes[0].name = "evil".into(),
                "p1.img is of program \"prog1\", but the manifest lists \"evil\" for it",
            ),
            (|m| m.processes[0].size += 1, "p1.img has"),
            (
                |m| m.processes[0].digest.0[0] ^= 1,
                "p1.img is not the image the manifest lists (its digest differs): another checkpoint's image?",
            ),
            (|m| m.processes[1].image = "MANIFEST".into(), "MANIFEST: not a stasis image"),
        ];
        for (edit, want) in cases {
            rewrite_manifest(&g2.path, edit);
            let e = refusal(&[t.path()], Choice::Newest);
            assert!(e.starts_with(&format!("{ck}/gen-000002 is damaged ({want}")), "{e}\nshould say {want}");
            fs::write(g2.path.join(MANIFEST), &saved).unwrap();
        }
        // An image missing, then a MANIFEST of an older stasis.
        fs::remove_file(g2.path.join("p2.img")).unwrap();
        check(damaged("p2.img is missing"));
        fs::write(g2.path.join(MANIFEST), "stasis-manifest 1\n").unwrap();
        let body = "stasis-manifest 1\n";
        fs::write(
            g2.path.join(MANIFEST),
            format!("{body}checksum {:016x}\n", xxhash_rust::xxh3::xxh3_64(body.as_bytes())),
        )
        .unwrap();
        check(damaged("MANIFEST: made by an older stasis; it lists no image digests"));
        // Nothing intact at all.
        fs::write(g1.path.join(MANIFEST), "x").unwrap();
        assert_eq!(
            refusal(&[t.path()], Choice::Fallback),
            format!(
                "{ck}/gen-000002 is damaged (MANIFEST: made by an older stasis; it lists no image digests), and no older checkpoint is intact"
            )
        );
    }

    #[test]
    fn images_given_one_by_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let g1 = commit(&dir);
        let g2 = commit(&dir);
        let ck = dir.path.clone();
        // The ckpt_*.dmtcp links at the top.
        let (a, b) = (ck.join("ckpt_a.dmtcp"), ck.join("ckpt_b.dmtcp"));
        fs::hard_link(g2.path.join("p1.img"), &a).unwrap();
        fs::hard_link(g2.path.join("p2.img"), &b).unwrap();
        let r = restarted(&[&a, &b], Choice::Newest);
        assert_eq!(r.images.len(), 2);
        assert_eq!(r.generation_dir.as_deref(), Some(g2.path.as_path()));
        // Images inside the generation directory.
        restarted(&[&g2.path.join("p2.img"), &g2.path.join("p1.img")], Choice::Newest);
        // In a directory of names of their generation (DMTCP's unique
        // checkpoint filenames), beside it; not in one of another.
        for (sub, ok) in [("ckpt_0000000000000077_00002", true), ("ckpt_0000000000000077_00001", false)] {
            fs::create_dir(ck.join(sub)).unwrap();
            let (ua, ub) = (ck.join(sub).join("ckpt_a.dmtcp"), ck.join(sub).join("ckpt_b.dmtcp"));
            fs::hard_link(g2.path.join("p1.img"), &ua).unwrap();
            fs::hard_link(g2.path.join("p2.img"), &ub).unwrap();
            if ok {
                let r = restarted(&[&ua, &ub], Choice::Newest);
                assert_eq!(
                    (r.generation_dir.as_deref(), r.ckpt_dir.as_deref()),
                    (Some(g2.path.as_path()), Some(ck.as_path()))
                );
            } else {
                assert!(restarted(&[&ua, &ub], Choice::Newest).ckpt_dir.is_none());
            }
        }
        // One left out.
        let e = refusal(&[&a], Choice::Newest);
        assert_eq!(
            e,
            format!(
                "{} holds 2 processes, but the images given leave out p2.img (pid 2): give them all, or the checkpoint directory",
                g2.path.display()
            )
        );
        // The same twice.
        let e = refusal(&[&a, &g2.path.join("p1.img")], Choice::Newest);
        assert!(e.ends_with("are the same image"), "{e}");
        // An older generation's image at the top, next to the newest's.
        fs::remove_file(&b).unwrap();
        fs::hard_link(g1.path.join("p2.img"), &b).unwrap();
        let e = refusal(&[&a, &b], Choice::Newest);
        assert!(e.contains("belongs to") && e.contains("gen-000002 but") && e.contains("gen-000001"), "{e}");
        // An image of the right process and generation, not the one listed
        // (another computation's, say, renamed to fit).
        let other = tempfile::tempdir().unwrap();
        image(other.path(), 2, 2);
        fs::write(other.path().join("p2.img"), {
            let mut v = fs::read(other.path().join("p2.img")).unwrap();
            v.extend_from_slice(&[0; 8]); // another length, so another header and digest
            v
        })
        .unwrap();
        fs::remove_file(&b).unwrap();
        fs::copy(other.path().join("p2.img"), &b).unwrap();
        let e = refusal(&[&a, &b], Choice::Newest);
        assert_eq!(
            e,
            format!(
                "{} is not an image {}/MANIFEST lists (no image there has its digest): another checkpoint's image?",
                b.display(),
                g2.path.display()
            )
        );
        // An image placed in the wrong generation directory.
        fs::copy(g1.path.join("p1.img"), g2.path.join("old.img")).unwrap();
        let e = refusal(&[&g2.path.join("old.img")], Choice::Newest);
        assert_eq!(
            e,
            format!(
                "{} is of generation 1 but lies in {}: an image of another checkpoint?",
                g2.path.join("old.img").display(),
                g2.path.display()
            )
        );
        fs::remove_file(g2.path.join("old.img")).unwrap();
        // A generation that is gone.
        fs::remove_file(&b).unwrap();
        fs::hard_link(g1.path.join("p2.img"), &b).unwrap();
        dir.prune(1).unwrap();
        let e = refusal(&[&b], Choice::Newest);
        assert_eq!(
            e,
            format!(
                "{} is of generation 1, but {} holds no gen-000001: restart the checkpoint directory",
                b.display(),
                ck.display()
            )
        );
        // Not with --generation or --fallback.
        assert!(refusal(&[&a], Choice::Fallback).contains("give the directory"));
        // A lone image of ours stands alone; a link to it does not.
        let lone = tempfile::tempdir().unwrap();
        image(lone.path(), 7, 3);
        let r = restarted(&[&lone.path().join("p7.img")], Choice::Newest);
        assert!(r.manifest.is_none() && r.ckpt_dir.is_none());
        std::os::unix::fs::symlink(lone.path().join("p7.img"), lone.path().join("l.img")).unwrap();
        assert!(
            refusal(&[&lone.path().join("l.img")], Choice::Newest)
                .ends_with("is a symbolic link: give the image itself")
        );
        fs::set_permissions(lone.path().join("p7.img"), fs::Permissions::from_mode(0o666)).unwrap();
        let e = refusal(&[&lone.path().join("p7.img")], Choice::Newest);
        assert!(e.contains("is writable by other users (mode 666)"), "{e}");
    }

    #[test]
    fn foreign_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        commit(&dir);
        let g2 = commit(&dir);
        let ck = dir.path.display().to_string();
        fs::set_permissions(g2.path.join("p1.img"), fs::Permissions::from_mode(0o646)).unwrap();
        let e = refusal(&[t.path()], Choice::Newest);
        assert!(
            e.starts_with(&format!("{ck}/gen-000002 is damaged (p1.img is writable by other users (mode 646)")),
            "{e}"
        );
        fs::set_permissions(g2.path.join("p1.img"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&g2.path, fs::Permissions::from_mode(0o777)).unwrap();
        let e = refusal(&[t.path()], Choice::Newest);
        assert!(e.starts_with(&format!("{ck}/gen-000002 is damaged (is writable by other users (mode 777)")), "{e}");
        fs::set_permissions(&g2.path, fs::Permissions::from_mode(0o700)).unwrap();
        // A MANIFEST that is a link.
        let m = g2.path.join(MANIFEST);
        fs::rename(&m, t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &m).unwrap();
        let e = refusal(&[t.path()], Choice::Newest);
        assert!(e.starts_with(&format!("{ck}/gen-000002 is damaged (MANIFEST: it is a symbolic link)")), "{e}");
        fs::remove_file(&m).unwrap();
        fs::rename(t.path().join("elsewhere"), &m).unwrap();
        restarted(&[t.path()], Choice::Newest);
        if crate::euid() == 0 {
            std::os::unix::fs::chown(g2.path.join("p2.img"), Some(65534), None).unwrap();
            let e = refusal(&[t.path()], Choice::Newest);
            assert!(e.contains("(p2.img belongs to uid 65534, not to you (uid 0): another user's file?)"), "{e}");
        }
        // A checkpoint directory others can write is refused outright.
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refusal(&[t.path()], Choice::Newest).starts_with("refusing the checkpoint directory"));
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o700)).unwrap();
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
        let e = CheckpointDir::open(&t.path().join("none")).unwrap_err().to_string();
        assert!(e.contains("none: open:"), "{e}");
        let f = t.path().join("file");
        fs::write(&f, b"").unwrap();
        assert!(CheckpointDir::open(&f).unwrap_err().to_string().ends_with("it is not a directory"));
        assert!(matches!(resolve_restart(&[t.path().to_path_buf()], Choice::Newest), Err(Error::NoCheckpoint { .. })));
        let e = refusal(&[t.path(), t.path()], Choice::Newest);
        assert!(e.contains("not several directories"), "{e}");
        // A generation directory under another name.
        let dir = CheckpointDir::open(t.path()).unwrap();
        let g = commit(&dir);
        let moved = t.path().join("copy");
        fs::rename(&g.path, &moved).unwrap();
        let e = refusal(&[&moved], Choice::Newest);
        assert!(
            e.ends_with(
                "holds a MANIFEST but is not named like a generation (gen-NNNNNN): restart its checkpoint directory"
            ),
            "{e}"
        );
    }
}
