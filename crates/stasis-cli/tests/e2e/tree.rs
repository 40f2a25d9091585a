//! Process trees: every process a program forks or execs belongs to the
//! computation; a restart brings the whole tree back (same pids, parents,
//! process groups and sessions, zombies still zombies, pipes between the
//! processes with their bytes in flight) and it carries on to the
//! reference's result.
//!
//! The programs check their own tree (tests/programs/tree.c, pipeline.c,
//! script.sh) and print "ok" or what differs; the harness compares their
//! output with an uninterrupted reference run, as for one process. Before
//! each restart the whole computation is killed, every process of the tree
//! and not only the launcher, and the test makes sure none survives
//! ([`Proc::kill_computation`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::carry_on;
use crate::support::*;

/// Checks that the newest generation holds an image for each of the `live`
/// processes the program keeps alive through its run (README: one image per
/// process), so a tree whose children did not join the computation is
/// reported as such rather than later as a restart gone wrong.
fn expect_images(sb: &Sandbox, ck: &Path, live: usize) {
    let generation = newest_generation(sb, ck);
    let images = images_in(sb, &generation);
    sb.check(images.len() >= live, || {
        format!(
            "{} holds {} image(s) ({:?}); the program runs {live} processes, each of which must be \
             part of the computation",
            generation.display(),
            images.len(),
            images.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect::<Vec<_>>()
        )
    });
}

/// The live processes running in `dir` but the stasis binaries (a launcher,
/// a coordinator): the program's.
pub(crate) fn program_processes(dir: &Path) -> Vec<i32> {
    let stasis = std::fs::canonicalize(stasis()).unwrap_or_else(|_| stasis().to_path_buf());
    processes_in(dir)
        .into_iter()
        .filter(|p| !std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == stasis))
        .collect()
}

/// What the processes of a restored computation write on stderr: the
/// launch's stderr file (which restored processes reopen by its path) and
/// each restart's, from where each stood when the first restart began.
#[derive(Default)]
pub(crate) struct AfterRestart {
    files: Vec<(PathBuf, usize)>,
}

impl AfterRestart {
    /// Watches `path` from its present end on (once).
    pub(crate) fn watch(&mut self, path: &Path) {
        if !self.files.iter().any(|(p, _)| p == path) {
            let len = std::fs::metadata(path).map_or(0, |m| m.len() as usize);
            self.files.push((path.to_path_buf(), len));
        }
    }

    /// Fails unless every process of the restored computation, those it
    /// started after the restart included, reached the coordinator it was
    /// restarted with: an agent that cannot reach its coordinator says so on
    /// stderr (and stays out of every later checkpoint).
    pub(crate) fn expect_coordinator_reached(&self, sb: &Sandbox) {
        let mut complaints = Vec::new();
        for (path, from) in &self.files {
            let bytes = std::fs::read(path).unwrap_or_default();
            let text = String::from_utf8_lossy(bytes.get(*from..).unwrap_or_default()).into_owned();
            for line in text.lines().filter(|l| l.contains("cannot reach the coordinator")) {
                complaints.push(format!("{}: {line}", path.file_name().unwrap_or_default().to_string_lossy()));
            }
        }
        sb.check(complaints.is_empty(), || {
            format!(
                "after a restart, process(es) of the computation could not reach its coordinator (an \
                 address from before the restart?), so they are outside it:\n{}",
                complaints.join("\n")
            )
        });
    }
}

/// Launches `prog` in `run/`, then `cycles` times: checkpoints it once it
/// has printed a few lines, lets it print a few more, kills the whole
/// computation (making sure nothing of it survives) and restarts it from the
/// checkpoint directory. Checks the history of all runs against an
/// uninterrupted reference run, that every process of a restored tree
/// reached the coordinator it was restarted with ([`AfterRestart`]), and
/// that nothing of the tree is left once the last run ended.
///
/// `live`: how many processes the program runs from its first line to well
/// past the checkpoints (the images expected, the processes the harness must
/// find and kill).
pub(crate) fn tree_checkpoint_kill_restart(test: &str, prog: &Program, live: usize, cycles: usize) {
    tree_checkpoint_kill_restart_with(test, prog, &|_| live, cycles);
}

/// Like [`tree_checkpoint_kill_restart`], for a program whose number of
/// processes changes in the course of its run: `live(last)` is how many it
/// runs at least at a moment when the last line it printed is `last` (None
/// before its first line), counting those that will still run a few steps
/// later (a checkpoint lies in the step after the last line printed when the
/// command returned, and the kill a step or so after the last line seen).
pub(crate) fn tree_checkpoint_kill_restart_with(
    test: &str,
    prog: &Program,
    live: &dyn Fn(Option<&str>) -> usize,
    cycles: usize,
) {
    let sb = Sandbox::new(test);
    let reference = start_reference(&sb, prog, &sb.mkdir("ref"));
    let run_dir = sb.mkdir("run");
    let ck = sb.join("ck");
    let mut sock = sb.socket();
    let mut app = launch(&sb, prog, &sock, &ck, &run_dir, Out::Pipe);
    let mut pieces = Vec::new();
    let mut logs = AfterRestart::default();
    for _ in 0..cycles {
        app.wait_lines(&sb, 3);
        let window = checkpoint(&sb, &sock, &mut app);
        expect_images(&sb, &ck, live(app.lines().last().map(String::as_str)));
        carry_on(&sb, &mut app, window, 3);
        let running = app.poll_exit().is_none();
        let found = program_processes(&run_dir);
        let live = live(app.lines().last().map(String::as_str));
        app.kill_computation(&sb, &run_dir);
        // The harness itself must see the tree it kills (else "nothing
        // survived" would prove nothing).
        sb.check(!running || found.len() >= live, || {
            format!(
                "{} was running, but only {} process(es) ran in {} before the kill (expected at least \
                 {live}):\n{}",
                app.label,
                found.len(),
                run_dir.display(),
                found.iter().map(|&p| describe_process(p)).collect::<Vec<_>>().join("\n")
            )
        });
        pieces.push(Piece::new(&app.label, app.lines(), vec![window]));
        logs.watch(&app.stderr_path);
        sock = sb.socket();
        app = restart(&sb, &sock, &ck, Out::Pipe);
        logs.watch(&app.stderr_path);
    }
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", app.label));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
    logs.expect_coordinator_reached(&sb);

    // The restored tree ended with its program: nothing stays behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !program_processes(&run_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = program_processes(&run_dir);
    sb.check(left.is_empty(), || {
        format!(
            "{} exited but processes of the restored tree still run:\n{}",
            app.label,
            left.iter().map(|&p| describe_process(p)).collect::<Vec<_>>().join("\n")
        )
    });
    drop(app);
}

/// tree.c's live processes: the parent, two workers, the one in its own
/// process group, the one in its own session and the exec'd /bin/sh (the
/// zombie is not counted).
const TREE_LIVE: usize = 6;

#[test]
fn process_tree_with_groups_sessions_zombie_exec_and_pipes_survives_checkpoint_kill_restart() {
    tree_checkpoint_kill_restart("tree", &Program::c("tree", &[]), TREE_LIVE, 1);
}

#[test]
fn process_tree_survives_two_checkpoint_kill_restart_cycles() {
    // Longer and steadier than the default, to leave room for two cycles.
    tree_checkpoint_kill_restart("tree-cycles", &Program::c("tree", &["100", "50"]), TREE_LIVE, 2);
}

#[test]
fn producer_relay_consumer_pipeline_with_full_pipes_survives_checkpoint_kill_restart() {
    tree_checkpoint_kill_restart("pipeline", &Program::c("pipeline", &[]), 3, 1);
}

#[test]
fn bash_script_with_pipelines_subshells_and_a_background_job_survives_checkpoint_kill_restart() {
    // Its tree changes all the time; bash itself is the one process always there.
    tree_checkpoint_kill_restart("script.sh", &Program::bash("script.sh", &[]), 1, 1);
}

/// `stasis command --kill` reaches every process of the tree, not only the
/// one the launcher started: the coordinator sends it to each of them, the
/// launcher exits and nothing of the program is left running.
#[test]
fn command_kill_ends_every_process_of_a_tree() {
    let sb = Sandbox::new("tree-kill");
    let run_dir = sb.mkdir("run");
    let sock = sb.socket();
    // Long enough that it cannot end by itself during the test.
    let prog = Program::c("tree", &["400", "100"]);
    let mut app = launch(&sb, &prog, &sock, &sb.join("ck"), &run_dir, Out::Pipe);
    app.wait_lines(&sb, 3);
    let before = program_processes(&run_dir);
    sb.check(before.len() >= TREE_LIVE, || {
        format!("only {} process(es) run in {}: {before:?}", before.len(), run_dir.display())
    });
    // A process runs a moment before its agent has said hello: the kill
    // goes to those connected when it is sent.
    crate::wait_until(&sb, "the tree's processes connected", LINES_TIMEOUT, || connected(&sb, &sock) >= TREE_LIVE);
    let out = run_stasis(
        &sb,
        "kill",
        &[Path::new("command"), Path::new("--coord-socket"), &sock, Path::new("--kill")],
        QUICK_TIMEOUT,
    );
    sb.check(out.status.success(), || format!("{} failed with {}: {}", out.label, out.status, out.stderr));
    // Every live process of the tree joined the computation, so each got
    // the kill (the children would also end by themselves once the parent
    // is gone: their pipes close).
    let reached: usize = out
        .stdout
        .trim()
        .strip_prefix("kill sent to ")
        .and_then(|rest| rest.strip_suffix(" process(es)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    sb.check(reached >= TREE_LIVE, || {
        format!("{} reached {reached} process(es), not the tree's {TREE_LIVE}: {:?}", out.label, out.stdout)
    });
    app.wait_exit(&sb, QUICK_TIMEOUT);
    // The coordinator may linger a moment (it runs in the same directory);
    // everything else must be gone.
    let deadline = Instant::now() + QUICK_TIMEOUT;
    while !program_processes(&run_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = program_processes(&run_dir);
    sb.check(left.is_empty(), || {
        format!(
            "{QUICK_TIMEOUT:?} after {}, processes of the tree still run:\n{}",
            out.label,
            left.iter().map(|&p| describe_process(p)).collect::<Vec<_>>().join("\n")
        )
    });
}
