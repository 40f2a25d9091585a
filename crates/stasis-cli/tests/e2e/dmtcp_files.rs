//! Memory and files as DMTCP's own test suite exercises them: a huge
//! MAP_NORESERVE reservation and a huge PROT_NONE one (restored without
//! committing memory the program never committed), and files the program
//! only reads, saved with `--checkpoint-open-files`: made again when gone,
//! a restart refused when one differs, replaced (the one found kept) with
//! `--allow-file-overwrite` (docs/files.md).

use std::fs;
use std::path::Path;

use crate::carry_on;
use crate::support::*;
use crate::tree::tree_checkpoint_kill_restart;

/// 1 TiB MAP_NORESERVE (a few pages written) and 1 TiB PROT_NONE: both are
/// far more than memory and swap, so a restart that mapped either without
/// MAP_NORESERVE, or writable, would be refused by the kernel's overcommit
/// heuristic. The program checks its bytes and that smaps still says `nr`
/// and `---p` every step.
#[test]
fn huge_noreserve_and_prot_none_reservations_survive_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("noreserve", &Program::c("noreserve", &[]), 1, 2);
}

/// readonly.c under `launch ARGS`: checkpointed once, carried on a little,
/// killed. `after_kill` then changes its input file (in/sub/table.txt in
/// the run directory) before the restart. Returns the sandbox, the run
/// directory, the reference run, the killed run's piece and the restart.
fn checkpoint_then(
    test: &str,
    args: &[&str],
    after_kill: &dyn Fn(&Path),
) -> (Sandbox, std::path::PathBuf, Proc, Piece, Proc) {
    let sb = Sandbox::new(test);
    let prog = Program::c("readonly", &["30"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let run_dir = sb.mkdir("run");
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch_args(&sb, &prog, &sock, &ck, &run_dir, args, Out::Pipe);
    app.wait_lines(&sb, 3);
    let window = checkpoint(&sb, &sock, &mut app);
    carry_on(&sb, &mut app, window, 2);
    app.kill_computation(&sb, &run_dir);
    let piece = Piece::new(&app.label, app.lines(), vec![window]);
    after_kill(&run_dir);
    let re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    (sb, run_dir, reference, piece, re)
}

/// The input file and its directories removed after the kill: the restart
/// makes them again from the contents saved at the checkpoint, and the
/// program reads on as if nothing happened.
#[test]
fn checkpoint_open_files_makes_a_removed_read_only_file_again_with_its_directories() {
    let (sb, run_dir, reference, piece, mut re) =
        checkpoint_then("open-files-gone", &["--checkpoint-open-files"], &|run| {
            fs::remove_dir_all(run.join("in")).expect("remove in/");
        });
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{}", re.label, re.stderr_text()));
    sb.check(run_dir.join("in/sub/table.txt").is_file(), || "in/sub/table.txt was not made again".into());
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &[piece, Piece::new(&re.label, re.lines(), vec![])]);
}

/// The input file changed after the kill, no `--allow-file-overwrite`:
/// the restart is refused with one line naming the file and the option,
/// on restart's own stderr, and the file is left as the user made it.
#[test]
fn a_read_only_file_that_differs_refuses_the_restart_without_allow_file_overwrite() {
    let changed = "changed after the checkpoint\n";
    let (sb, run_dir, reference, _piece, mut re) =
        checkpoint_then("open-files-differs", &["--checkpoint-open-files"], &|run| {
            fs::write(run.join("in/sub/table.txt"), changed).expect("rewrite table.txt");
        });
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    let said = re.stderr_text();
    sb.check(!status.success(), || format!("{} should have been refused; it exited with {status}", re.label));
    sb.check(said.contains("table.txt differs") && said.contains("--allow-file-overwrite"), || {
        format!("the refusal does not name the file and the option; stderr:\n{said}")
    });
    sb.check(re.lines().is_empty(), || {
        format!("the refused restart printed on the program's stdout: {:?}", re.lines())
    });
    let now = fs::read_to_string(run_dir.join("in/sub/table.txt")).unwrap_or_default();
    sb.check(now == changed, || format!("table.txt was changed by the refused restart: {now:?}"));
    drop(finish_reference(&sb, reference));
}

/// The same change with `--allow-file-overwrite`: the saved contents
/// replace the file, the one found is kept beside it as
/// `table.txt-DATE.bk`, and the program reads on as if nothing happened.
#[test]
fn allow_file_overwrite_replaces_a_read_only_file_that_differs_and_keeps_the_one_found() {
    let changed = "changed after the checkpoint\n";
    let (sb, run_dir, reference, piece, mut re) =
        checkpoint_then("open-files-overwrite", &["--checkpoint-open-files", "--allow-file-overwrite"], &|run| {
            fs::write(run.join("in/sub/table.txt"), changed).expect("rewrite table.txt");
        });
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{}", re.label, re.stderr_text()));
    let backups: Vec<String> = fs::read_dir(run_dir.join("in/sub"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let backup = backups.iter().find(|n| n.starts_with("table.txt-") && n.ends_with(".bk"));
    sb.check(backup.is_some(), || format!("no table.txt-DATE.bk beside the replaced file: {backups:?}"));
    if let Some(b) = backup {
        let kept = fs::read_to_string(run_dir.join("in/sub").join(b)).unwrap_or_default();
        sb.check(kept == changed, || format!("{b} holds {kept:?}, not the file that was found"));
    }
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &[piece, Piece::new(&re.label, re.lines(), vec![])]);
}
