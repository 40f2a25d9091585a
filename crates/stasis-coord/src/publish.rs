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

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use stasis_image::{Generation, ImageReader, Manifest};

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
fn program_of(image: &Path, fallback: &str) -> String {
    ImageReader::open(image)
        .ok()
        .and_then(|r| {
            let exe = &r.meta().exe;
            let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
            Path::new(exe).file_name().map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

/// Publishes `generation` (just committed, of `manifest`) in `ckpt_dir`.
/// Returns what could not be done; the generation is committed regardless.
pub(crate) fn after_commit(ckpt_dir: &Path, generation: &Generation, manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = Vec::with_capacity(manifest.processes.len());
    for p in &manifest.processes {
        let image = generation.path.join(&p.image);
        let name = dmtcp_name(&program_of(&image, &p.name), manifest.computation_id, p.pid);
        if let Err(e) = place(&image, ckpt_dir, &name) {
            problems.push(format!("cannot put {name} in {}: {e}", ckpt_dir.display()));
        }
        names.push(name);
    }
    match fs::read_dir(ckpt_dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_dmtcp_name(&name)
                    && !names.contains(&name)
                    && let Err(err) = fs::remove_file(e.path())
                {
                    problems.push(format!("cannot remove the outdated {name}: {err}"));
                }
            }
        }
        Err(e) => problems.push(format!("cannot list {}: {e}", ckpt_dir.display())),
    }
    if let Err(e) = write_script(ckpt_dir) {
        problems.push(format!("cannot write {}: {e}", ckpt_dir.join(RESTART_SCRIPT).display()));
    }
    problems
}

/// Links (or copies) `image` to `dir/name`, replacing what is there at once.
fn place(image: &Path, dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(image, &tmp).is_err() {
        fs::copy(image, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    }
    fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Writes the restart script (mode 0755), replacing the old one at once.
pub fn write_script(dir: &Path) -> io::Result<()> {
    let path = dir.join(RESTART_SCRIPT);
    let tmp = dir.join(format!(".{RESTART_SCRIPT}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o755).open(&tmp)?;
    f.write_all(SCRIPT.as_bytes())?;
    f.sync_all()?;
    drop(f);
    // The mode given at creation is cut by the umask.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &path)
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
            m.processes.push(ManifestProcess { pid, name: format!("prog{pid}"), image });
        }
        (dir.commit(p, &m).unwrap(), m)
    }

    #[test]
    fn links_follow_the_newest_generation() {
        let t = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open_or_create(t.path()).unwrap();
        let (g1, m1) = commit(&dir, &[10, 20]);
        assert!(after_commit(&dir.path, &g1, &m1).is_empty());
        let a = dir.path.join(dmtcp_name("prog10", 0x77, 10));
        let b = dir.path.join(dmtcp_name("prog20", 0x77, 20));
        assert_eq!(fs::read_to_string(&a).unwrap(), "image of 10 in 1");
        assert!(b.is_file());

        let (g2, m2) = commit(&dir, &[10]);
        assert!(after_commit(&dir.path, &g2, &m2).is_empty());
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
}
