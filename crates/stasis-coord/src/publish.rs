//! What a committed generation leaves at the top of the checkpoint
//! directory for people and scripts used to DMTCP:
//!
//! - `ckpt_<program>_<computation>-<pid>.dmtcp` for each process of the
//!   newest generation: a hard link to its image in `gen-NNNNNN/` (a copy
//!   where the file system has no hard links), replaced atomically at each
//!   commit, so that `dmtcp_restart $DIR/ckpt_*.dmtcp` restarts the newest
//!   checkpoint. The id after the program's name stays the same for a
//!   process across checkpoints and restarts (pids are restored exactly).
//! - `dmtcp_restart_script.sh`, which restarts from the directory it lies
//!   in, wherever that is seen from: no host, port or absolute path in it.
//!
//! With DMTCP's unique checkpoint filenames asked for, each generation's
//! names go in a directory of their own instead,
//! `ckpt_<computation>_<generation>/` (DMTCP's naming), kept as long as
//! the generation is.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use stasis_image::{CheckpointDir, Dir, Generation, Manifest, ProcessMeta};

/// The restart script's name (DMTCP's).
pub const RESTART_SCRIPT: &str = "dmtcp_restart_script.sh";

const SCRIPT: &str = r#"#!/bin/sh
# Restarts the computation checkpointed in this directory from its newest
# committed checkpoint, with the checkpoint interval it had. Stasis rewrites
# this file after every checkpoint. It names no host, port or absolute path:
# it finds its own directory and takes dmtcp_restart (or stasis) from PATH,
# so it works as well in a later job on another node. Its arguments go to
# dmtcp_restart, e.g. --join-coordinator, -p PORT or -i SECONDS.
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd -P) || exit 1
if command -v dmtcp_restart >/dev/null 2>&1; then
    exec dmtcp_restart "$@" --restartdir "$here"
elif command -v stasis >/dev/null 2>&1; then
    exec stasis restart "$@" -- "$here"
fi
echo "$0: neither dmtcp_restart nor stasis is on PATH (load the stasis module first)" >&2
exit 127
"#;

/// Characters a program name may keep in an image name.
fn clean(program: &str) -> String {
    let s: String = program
        .chars()
        .map(|c| if c.is_alphanumeric() || matches!(c, '.' | '-' | '+' | '_') { c } else { '_' })
        .collect();
    if s.is_empty() { "program".into() } else { s }
}

/// The top-level name of a process's image: `ckpt_PROGRAM_ID.dmtcp`.
pub fn dmtcp_name(program: &str, computation: u64, pid: i32) -> String {
    format!("ckpt_{}_{computation:016x}-{pid}.dmtcp", clean(program))
}

/// Whether `name` is one that [`dmtcp_name`] makes.
pub fn is_dmtcp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("ckpt_").and_then(|r| r.strip_suffix(".dmtcp")) else { return false };
    let Some((_, id)) = rest.rsplit_once('_') else { return false };
    let Some((hex, pid)) = id.split_once('-') else { return false };
    hex.len() == 16
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
}

/// The program's name for an image: the executable's file name (not the
/// 15-character `comm`), as DMTCP names its images.
pub(crate) fn program_of(meta: &ProcessMeta) -> Option<String> {
    let exe = meta.exe.strip_suffix(" (deleted)").unwrap_or(&meta.exe);
    Path::new(exe).file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

/// Publishes `generation` (just committed, of `manifest`) in `ckpt_dir`.
/// `programs[i]` names the program of `manifest.processes[i]` (from its
/// image, read once when the generation was vouched for; None: its name).
/// Returns what could not be done; the generation is committed regardless.
/// Everything is done through the directory's descriptor: nothing is
/// created where something is, and no link is followed.
pub(crate) fn after_commit(
    ckpt_dir: &CheckpointDir,
    generation: &Generation,
    manifest: &Manifest,
    programs: &[Option<String>],
    unique: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let top = ckpt_dir.dir();
    let shown = ckpt_dir.path.display();
    let gen_dir = match top.open_dir(&format!("gen-{:06}", generation.number)) {
        Ok(d) => d,
        Err(e) => return vec![format!("cannot open {}: {e}", generation.path.display())],
    };
    // Where the names go: the top, or the generation's own directory.
    let own = unique.then(|| unique_dir_name(manifest.computation_id, generation.number));
    let names_dir = match &own {
        None => top.try_clone(),
        Some(sub) => match top.mkdir(sub, 0o700) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => top.open_dir(sub),
        },
    };
    let names_dir = match names_dir {
        Ok(d) => d,
        Err(e) => return vec![format!("cannot make {}: {e}", ckpt_dir.path.join(own.unwrap_or_default()).display())],
    };
    let mut names = Vec::with_capacity(manifest.processes.len());
    for (i, p) in manifest.processes.iter().enumerate() {
        let program = programs.get(i).cloned().flatten().unwrap_or_else(|| p.name.clone());
        let name = dmtcp_name(&program, manifest.computation_id, p.pid);
        if let Err(e) = place(&gen_dir, &p.image, &names_dir, &name) {
            problems.push(format!("cannot put {name} in {}: {e}", names_dir.path().display()));
        }
        names.push(name);
    }
    if own.is_some() {
        // None at the top: they would be an older generation's.
        names.clear();
    }
    match top.names() {
        Ok(entries) => {
            let me = stasis_image::euid();
            for name in entries {
                let Some(name) = name.to_str() else { continue };
                // Only the regular files of ours that an older commit left.
                let ours = top.stat(name).is_ok_and(|s| s.is_file() && s.uid == me);
                if is_dmtcp_name(name)
                    && ours
                    && !names.iter().any(|n| n == name)
                    && let Err(err) = top.unlink(name)
                {
                    problems.push(format!("cannot remove the outdated {name}: {err}"));
                }
            }
        }
        Err(e) => problems.push(format!("cannot list {shown}: {e}")),
    }
    if let Err(e) = write_script(top) {
        problems.push(format!("cannot write {}: {e}", ckpt_dir.path.join(RESTART_SCRIPT).display()));
    }
    problems
}

/// `ckpt_<computation>_<generation>`: a generation's own directory of
/// `.dmtcp` names, as DMTCP's unique checkpoint filenames name it.
pub fn unique_dir_name(computation: u64, generation: u64) -> String {
    format!("ckpt_{computation:016x}_{generation:05}")
}

/// The generation of a directory named by `unique_dir_name`.
fn unique_dir_generation(name: &str) -> Option<u64> {
    let (hex, number) = name.strip_prefix("ckpt_")?.split_once('_')?;
    let digits = |s: &str, hex: bool| {
        !s.is_empty() && s.bytes().all(|b| if hex { b.is_ascii_hexdigit() } else { b.is_ascii_digit() })
    };
    (hex.len() == 16 && digits(hex, true) && digits(number, false)).then(|| number.parse().ok()).flatten()
}

/// After pruning: the directories of names of generations no longer kept
/// go too (ours only, as everything removed here).
pub(crate) fn after_prune(ckpt_dir: &CheckpointDir) -> Vec<String> {
    let top = ckpt_dir.dir();
    let kept: Vec<u64> = ckpt_dir.generations().map(|g| g.iter().map(|g| g.number).collect()).unwrap_or_default();
    let names = match top.names() {
        Ok(n) => n,
        Err(e) => return vec![format!("cannot list {}: {e}", ckpt_dir.path.display())],
    };
    let me = stasis_image::euid();
    let mut problems = Vec::new();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let Some(n) = unique_dir_generation(name) else { continue };
        let ours = top.stat(name).is_ok_and(|s| s.is_dir() && s.uid == me);
        if ours
            && !kept.contains(&n)
            && !kept.is_empty()
            && let Err(e) = top.remove_tree(name)
        {
            problems.push(format!("cannot remove {}: {e}", ckpt_dir.path.join(name).display()));
        }
    }
    problems
}

/// A temporary name for `name` that nobody can guess in advance: with
/// O_EXCL or linkat (which never follow a link) that alone would do, but
/// a planted name would still block the publication.
fn temporary(name: &str) -> io::Result<String> {
    let mut r = [0u8; 8];
    crate::random::fill(&mut r)?;
    Ok(format!(".{name}.{}.tmp", u64::from_le_bytes(r)))
}

/// Links (or copies) `image` of `gen_dir` to `name` in `top`, replacing
/// what is there at once (a link planted there is replaced, not followed).
fn place(gen_dir: &Dir, image: &str, top: &Dir, name: &str) -> io::Result<()> {
    let tmp = temporary(name)?;
    if top.link_from(gen_dir, image, &tmp).is_err() {
        // No hard links on this file system: a copy, created afresh.
        let result = (|| {
            let mut src = gen_dir.open_file(image)?;
            let mut dst = top.create_file(&tmp, 0o600)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()
        })();
        if let Err(e) = result {
            let _ = top.unlink(&tmp);
            return Err(e);
        }
    }
    top.rename(&tmp, name).inspect_err(|_| {
        let _ = top.unlink(&tmp);
    })
}

/// Writes the restart script (mode 0755), replacing the old one at once.
fn write_script(top: &Dir) -> io::Result<()> {
    let tmp = temporary(RESTART_SCRIPT)?;
    let result = (|| {
        let mut f = top.create_file(&tmp, 0o700)?;
        f.write_all(SCRIPT.as_bytes())?;
        // The mode given at creation is cut by the umask.
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        top.rename(&tmp, RESTART_SCRIPT)
    })();
    if result.is_err() {
        let _ = top.unlink(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::{CheckpointDir, ManifestProcess};

    #[test]
    fn names() {
        let n = dmtcp_name("my prog/x", 0xabc, 42);
        assert_eq!(n, "ckpt_my_prog_x_0000000000000abc-42.dmtcp");
        assert!(is_dmtcp_name(&n));
        assert!(is_dmtcp_name("ckpt_a_b_0123456789abcdef-1.dmtcp"));
        for bad in ["ckpt_a_123-1.dmtcp", "ckpt_a_0123456789abcdef-.dmtcp", "ckpt_a.dmtcp", "x.dmtcp", "ckpt_a_1"] {
            assert!(!is_dmtcp_name(bad), "{bad}");
        }
        assert_eq!(clean(""), "program");
        assert_eq!(clean("python3.11"), "python3.11");
    }

    fn commit(dir: &CheckpointDir, pids: &[i32]) -> (Generation, Manifest) {
        let n = dir.next_number();
        let p = dir.begin(n).unwrap();
        let mut m = Manifest { generation: n, computation_id: 0x77, ..Default::default() };
        for &pid in pids {
            let image = format!("p{pid}.img");
            fs::write(p.path.join(&image), format!("image of {pid} in {n}")).unwrap();
            m.processes.push(ManifestProcess { pid, name: format!("prog{pid}"), image, ..Default::default() });
        }
        (dir.commit(p, &m).unwrap(), m)
    }

    #[test]
    fn links_follow_the_newest_generation() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let (g1, m1) = commit(&dir, &[10, 20]);
        assert!(after_commit(&dir, &g1, &m1, &[], false).is_empty());
        let a = dir.path.join(dmtcp_name("prog10", 0x77, 10));
        let b = dir.path.join(dmtcp_name("prog20", 0x77, 20));
        assert_eq!(fs::read_to_string(&a).unwrap(), "image of 10 in 1");
        assert!(b.is_file());

        let (g2, m2) = commit(&dir, &[10]);
        assert!(after_commit(&dir, &g2, &m2, &[], false).is_empty());
        assert_eq!(fs::read_to_string(&a).unwrap(), "image of 10 in 2");
        assert!(!b.exists(), "process 20 is not in generation 2");
        let script = dir.path.join(RESTART_SCRIPT);
        assert_eq!(fs::metadata(&script).unwrap().permissions().mode() & 0o777, 0o755);
        let text = fs::read_to_string(&script).unwrap();
        assert!(!text.contains(&*dir.path.to_string_lossy()), "the script names its directory:\n{text}");
        let leftovers: Vec<_> = fs::read_dir(&dir.path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn unique_names_go_in_a_directory_per_generation_kept_as_long_as_it() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let (g1, m1) = commit(&dir, &[10]);
        // Names of an earlier generation at the top go once names are unique.
        assert!(after_commit(&dir, &g1, &m1, &[], false).is_empty());
        let (g2, m2) = commit(&dir, &[10]);
        assert!(after_commit(&dir, &g2, &m2, &[], true).is_empty());
        let own = dir.path.join(unique_dir_name(0x77, 2));
        assert_eq!(own.file_name().unwrap(), "ckpt_0000000000000077_00002");
        let name = dmtcp_name("prog10", 0x77, 10);
        assert_eq!(fs::read_to_string(own.join(&name)).unwrap(), "image of 10 in 2");
        assert!(!dir.path.join(&name).exists(), "a name left at the top");
        assert_eq!(fs::metadata(&own).unwrap().permissions().mode() & 0o777, 0o700);
        // Generation 3 too; keep 1: generation 2 and its names go.
        let (g3, m3) = commit(&dir, &[10]);
        assert!(after_commit(&dir, &g3, &m3, &[], true).is_empty());
        dir.prune(1).unwrap();
        assert!(after_prune(&dir).is_empty());
        assert!(!own.exists());
        assert!(dir.path.join(unique_dir_name(0x77, 3)).join(&name).is_file());
        assert_eq!(unique_dir_generation("ckpt_0000000000000077_00003"), Some(3));
        for other in ["ckpt_77_00003", "ckpt_0000000000000077_", "ckpt_a_0000000000000077-1.dmtcp", "gen-000003"] {
            assert_eq!(unique_dir_generation(other), None, "{other}");
        }
    }

    #[test]
    fn planted_links_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(&t.path().join("ck")).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let (g1, m1) = commit(&dir, &[10]);
        let name = dmtcp_name("prog10", 0x77, 10);
        // The temporary names this module used to use, and the final ones.
        for planted in [format!(".{name}.tmp"), format!(".{RESTART_SCRIPT}.tmp"), name.clone(), RESTART_SCRIPT.into()] {
            std::os::unix::fs::symlink(&victim, dir.path.join(planted)).unwrap();
        }
        // An outdated name that is a link, not a file of ours: left alone.
        let stale = dmtcp_name("gone", 0x77, 99);
        std::os::unix::fs::symlink(&victim, dir.path.join(&stale)).unwrap();
        assert_eq!(after_commit(&dir, &g1, &m1, &[], false), Vec::<String>::new());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let published = dir.path.join(&name);
        assert!(fs::symlink_metadata(&published).unwrap().file_type().is_file());
        assert_eq!(fs::read_to_string(&published).unwrap(), "image of 10 in 1");
        let script = dir.path.join(RESTART_SCRIPT);
        assert!(fs::symlink_metadata(&script).unwrap().file_type().is_file());
        assert!(fs::symlink_metadata(dir.path.join(&stale)).unwrap().file_type().is_symlink());
    }
}
