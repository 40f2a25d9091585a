//! Files a program has open for writing come back as they were at the
//! checkpoint (docs/files.md): SQLite databases in both journal modes, a
//! file rewritten in place, an append-only log; a file over the size limit
//! is left as it is, and said so; an open file whose path and directories
//! were removed comes back from its saved contents, still one file with its
//! shared mapping. Each is checkpointed, killed and restarted twice and
//! must print what an uninterrupted run prints.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::carry_on;
use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart;

/// Whether python3 has its sqlite3 module; if not, says the test did not run.
fn have_sqlite() -> bool {
    let ok = Command::new("/usr/bin/python3").args(["-c", "import sqlite3"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("not run: python3's sqlite3 missing");
    }
    ok
}

/// WAL mode: the database, its write-ahead log and the log's index (which
/// SQLite also maps MAP_SHARED), all rewritten after each checkpoint.
#[test]
fn sqlite_in_wal_mode_survives_two_checkpoint_kill_restart_cycles() {
    if have_sqlite() {
        tree_checkpoint_kill_restart("sqlite-wal", &Program::python("sqlite_loop.py", &["wal"]), 1, 2);
    }
}

/// Rollback-journal mode: pages of the database rewritten in place, the
/// journal made and deleted by each transaction.
#[test]
fn sqlite_in_rollback_journal_mode_survives_two_checkpoint_kill_restart_cycles() {
    if have_sqlite() {
        tree_checkpoint_kill_restart("sqlite-delete", &Program::python("sqlite_loop.py", &["delete"]), 1, 2);
    }
}

/// Records overwritten at the same offsets after the checkpoint, and an
/// O_APPEND log: the program checks the file against its memory every
/// step, and the log line by line at the end.
#[test]
fn a_file_rewritten_in_place_and_an_append_only_log_survive_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("rewrite", &Program::c("rewrite", &[]), 1, 2);
}

/// An open file whose path and directories were removed (x/d1/d2/f, then
/// `rm -r x`), also mapped MAP_SHARED: it comes back from its saved
/// contents with no path, and the descriptor and the mapping stay one file.
#[test]
fn a_deleted_file_in_deleted_directories_survives_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("gone", &Program::c("gone", &[]), 1, 2);
}

/// A file over `--save-files-limit` is not saved: the checkpoint says so on
/// the program's stderr, the restart on its own, and the restart leaves the
/// file as the killed run left it (longer than at the checkpoint), not cut
/// back into a state that never was. The files under the limit still come
/// back exactly (the program checks them).
#[test]
fn a_file_over_the_size_limit_is_left_as_it_is_and_said_so() {
    left_as_it_is(
        "save-limit",
        &["--save-files-limit", "64K", "--no-save-file", "*/never-such-file"],
        "over the --save-files-limit",
    );
}

/// The same for a file excluded with `--no-save-file`.
#[test]
fn an_excluded_file_is_left_as_it_is_and_said_so() {
    left_as_it_is(
        "save-excluded",
        &["--no-save-file", "/no/such/*", "--no-save-file", "*/big.b?n"],
        "excluded by --no-save-file */big.b?n",
    );
}

/// rewrite.c with a 128 KiB big.bin that `flags` keep from being saved:
/// `why` is what the checkpoint and the restart say of it.
fn left_as_it_is(test: &str, flags: &[&str], why: &str) {
    let sb = Sandbox::new(test);
    let prog = Program::c("rewrite", &["40", "-1", "131072"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut cmd = Command::new(stasis());
    cmd.arg("launch")
        .args(flags)
        .arg("--ckptdir")
        .arg(&ck)
        .arg("--coord-socket")
        .arg(&sock)
        .arg("--")
        .args(&prog.argv)
        .current_dir(&run_dir);
    let mut app = Proc::spawn(&sb, &sb.label("launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    let window = checkpoint(&sb, &sock, &mut app);
    let big = run_dir.join("big.bin");
    let at_checkpoint = file_len(&big);
    carry_on(&sb, &mut app, window, 3);
    app.kill_computation(&sb, &run_dir);
    let said = app.stderr_text();
    sb.check(said.contains("big.bin is not saved (") && said.contains(why), || {
        format!("the checkpoint did not say that big.bin is not saved ({why}); the program's stderr:\n{said}")
    });
    sb.check(!said.contains("data.bin is not saved"), || format!("data.bin should be saved:\n{said}"));
    let at_kill = file_len(&big);
    sb.check(at_kill > at_checkpoint, || format!("big.bin did not grow after the checkpoint ({at_checkpoint} bytes)"));

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{}", re.label, re.stderr_text()));
    let said = re.stderr_text();
    sb.check(said.contains("big.bin was not saved at the checkpoint") && said.contains(why), || {
        format!("the restart did not name big.bin as left untouched; its stderr:\n{said}")
    });
    // Never cut back: what the killed run wrote is still there, and the
    // restored run appended to it.
    let at_end = file_len(&big);
    sb.check(at_end > at_kill, || format!("big.bin has {at_end} bytes after the restart, {at_kill} at the kill"));
    let reference = finish_reference(&sb, reference);
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&re.label, re.lines(), vec![])],
    );
}

/// Each generation holds the copies it needs: a file unchanged between two
/// checkpoints (still.bin, written once at the start) is one copy
/// hard-linked into both, and removing the older generation leaves the
/// newer one whole: a restart from it brings every file back.
#[test]
fn an_unchanged_file_is_linked_from_the_previous_generation() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new("save-link");
    let prog = Program::c("rewrite", &["12", "600"]);
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    // Full checkpoints only: the newer generation must stand alone once
    // the older one is removed (an incremental one would need it).
    let mut cmd = Command::new(stasis());
    cmd.arg("launch")
        .arg("--ckptdir")
        .arg(&ck)
        .arg("--coord-socket")
        .arg(&sock)
        .args(["--full-every", "1", "--"])
        .args(&prog.argv)
        .current_dir(&run_dir);
    let mut app = Proc::spawn(&sb, &sb.label("launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 2);
    checkpoint(&sb, &sock, &mut app);
    app.wait_lines(&sb, 3);
    checkpoint(&sb, &sock, &mut app);
    let still = fs::metadata(run_dir.join("still.bin")).unwrap_or_else(|e| sb.fail(format!("still.bin: {e}")));
    app.kill_computation(&sb, &run_dir);
    let gens = committed_generations(&ck);
    sb.check(gens.len() == 2, || format!("expected two generations, found {gens:?}"));
    let prefix = format!("file-{:x}-{}-", still.dev(), still.ino());
    let copy_in = |g: &Path| {
        fs::read_dir(g).into_iter().flatten().flatten().find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    };
    let (a, b) = (copy_in(&gens[0].1), copy_in(&gens[1].1));
    sb.check(a.is_some() && b.is_some(), || format!("a copy of still.bin ({prefix}...) is missing: {a:?} {b:?}"));
    let (a, b) = (a.unwrap().metadata().unwrap(), b.unwrap().metadata().unwrap());
    sb.check(a.ino() == b.ino() && a.nlink() == 2, || {
        format!(
            "still.bin's copies are not one file linked twice (inodes {} {}, links {})",
            a.ino(),
            b.ino(),
            a.nlink()
        )
    });
    fs::remove_dir_all(&gens[0].1).unwrap_or_else(|e| sb.fail(format!("remove {}: {e}", gens[0].1.display())));
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{}", re.label, re.stderr_text()));
    let lines = re.lines();
    sb.check(lines.iter().all(|l| !l.contains("MISMATCH")) && lines.iter().any(|l| l == "log ok (12 lines)"), || {
        format!("the restart from the newer generation alone did not bring the files back: {lines:?}")
    });
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A descriptor that cannot be opened again once the processes are being
/// made (input.dat, open read-only, replaced by a Unix socket after the
/// kill: it exists, so the checks before anything starts pass, but
/// opening it fails): the restart fails with one line naming the file, on
/// restart's own stderr, never on the program's stdout that the process
/// had already taken back.
#[test]
fn a_failure_while_descriptors_are_restored_is_said_on_restarts_stderr() {
    let sb = Sandbox::new("fd-failure");
    let prog = Program::c("files", &[]);
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &run_dir, Out::Pipe);
    app.wait_lines(&sb, 2);
    checkpoint(&sb, &sock, &mut app);
    app.kill_computation(&sb, &run_dir);
    let input = run_dir.join("input.dat");
    fs::remove_file(&input).unwrap_or_else(|e| sb.fail(format!("remove {}: {e}", input.display())));
    let _socket = std::os::unix::net::UnixListener::bind(&input)
        .unwrap_or_else(|e| sb.fail(format!("bind {}: {e}", input.display())));
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    let (out, err) = (re.stdout_text(), re.stderr_text());
    sb.check(!status.success(), || format!("{} should have failed; stderr:\n{err}", re.label));
    sb.check(err.contains("input.dat") && err.contains("failed"), || {
        format!("{}'s stderr does not name input.dat:\n{err}", re.label)
    });
    sb.check(!out.contains("input.dat"), || format!("the failure went to the program's stdout:\n{out}"));
}
