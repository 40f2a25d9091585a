//! Everyday programs that run process trees of their own: a Python
//! multiprocessing pool that also runs a shell pipeline every step
//! (tests/programs/pool.py), and `make -j2` building a small C project.
//! Each is checkpointed mid-run, killed with its whole tree, restarted, and
//! must come to the result of an uninterrupted run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use crate::tree::{AfterRestart, program_processes, tree_checkpoint_kill_restart};
use crate::{same_file, wait_until};

/// pool.py's live processes: the parent and the pool's two workers (the
/// pipeline's processes come and go each step).
const POOL_LIVE: usize = 3;

#[test]
fn python_multiprocessing_pool_and_subprocess_pipelines_survive_checkpoint_kill_restart() {
    tree_checkpoint_kill_restart("pool.py", &Program::python("pool.py", &[]), POOL_LIVE, 1);
}

/// The restored pool is checkpointed again: the pipelines started after the
/// restart (fork and exec of sh, seq, tr, ...) must join the new
/// coordinator, not the killed one.
#[test]
fn python_multiprocessing_pool_survives_two_checkpoint_kill_restart_cycles() {
    tree_checkpoint_kill_restart("pool.py-cycles", &Program::python("pool.py", &["70", "50"]), POOL_LIVE, 2);
}

// ---------------------------------------------------------------------------
// make -j2

/// The project's units besides main.c.
const UNITS: usize = 9;

/// Writes a small C project into `dir`: `UNITS` files `uN.c`, a `main.c`
/// that calls them all and prints a line per unit and a final one, and a
/// Makefile whose object rule sleeps before compiling, so that the build
/// takes a few seconds with two jobs.
///
/// The compiler runs with `-pipe`: its passes talk through pipes (which
/// the checkpoint holds, bytes in flight included) rather than through
/// temporary files, which are not part of a checkpoint (as in DMTCP): the
/// killed run, going on a moment after the checkpoint, may remove one that
/// the restarted compiler still counts on.
fn write_project(dir: &Path) {
    for i in 1..=UNITS {
        let src = format!(
            "unsigned long long u{i}(unsigned long long x)\n{{\n\tfor (int k = 0; k < {rounds}; k++) {{\n\t\tx ^= x \
             >> {shift};\n\t\tx = x * 6364136223846793005ULL + {i}ULL;\n\t}}\n\treturn x;\n}}\n",
            rounds = 1000 + 37 * i,
            shift = 20 + i,
        );
        fs::write(dir.join(format!("u{i}.c")), src).unwrap();
    }
    let mut main = String::from("#include <stdio.h>\n\n");
    for i in 1..=UNITS {
        main.push_str(&format!("unsigned long long u{i}(unsigned long long);\n"));
    }
    main.push_str("\nint main(void)\n{\n\tunsigned long long x = 42;\n");
    for i in 1..=UNITS {
        main.push_str(&format!("\tx = u{i}(x);\n\tprintf(\"u{i} %016llx\\n\", x);\n"));
    }
    main.push_str("\tprintf(\"final %016llx\\n\", x ^ 0x6d616b65ULL);\n\treturn 0;\n}\n");
    fs::write(dir.join("main.c"), main).unwrap();
    let objects: Vec<String> = (1..=UNITS).map(|i| format!("u{i}.o")).chain(["main.o".into()]).collect();
    let makefile = format!(
        "OBJS = {}\n\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n\n%.o: %.c\n\tsleep 0.3\n\tcc -O1 -pipe -c -o $@ $<\n",
        objects.join(" ")
    );
    fs::write(dir.join("Makefile"), makefile).unwrap();
}

/// The objects `make` has produced in `dir` so far.
fn objects_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "o"))
        .collect();
    v.sort();
    v
}

/// Runs `cmd` in `cwd`, with temporary files (the compiler's) in `tmp`.
fn in_build_dir(mut cmd: Command, cwd: &Path, tmp: &Path) -> Command {
    cmd.current_dir(cwd).env("TMPDIR", tmp).env("LC_ALL", "C");
    cmd
}

/// Runs the built program in `dir`; its stdout lines.
fn run_built(sb: &Sandbox, dir: &Path) -> Vec<String> {
    let exe = dir.join("prog");
    sb.check(exe.is_file(), || format!("the build left no {}", exe.display()));
    let mut p = Proc::spawn(sb, &sb.label("prog"), Command::new(&exe), Out::Pipe);
    let status = p.wait_exit(sb, QUICK_TIMEOUT);
    sb.check(status.success(), || format!("{} ({}) exited with {status}", p.label, exe.display()));
    p.lines()
}

/// `make -j2` is checkpointed once it has built an object and before it
/// links, is killed at once with its whole tree (make, the recipes' shells, sleep, the compiler's
/// processes) and restarted: it must finish the build with success, and the
/// program it built must be the one an uninterrupted build makes.
#[test]
fn make_j2_checkpointed_mid_build_finishes_the_build_after_kill_and_restart() {
    let sb = Sandbox::new("make");
    let tmp = sb.mkdir("tmp");
    let ref_dir = sb.mkdir("ref");
    write_project(&ref_dir);
    let mut make = Command::new("make");
    make.arg("-j2");
    let mut reference = Proc::spawn(&sb, &sb.label("reference"), in_build_dir(make, &ref_dir, &tmp), Out::Pipe);

    let run_dir = sb.mkdir("run");
    write_project(&run_dir);
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut launch = Command::new(stasis());
    launch.arg("launch").arg("--ckptdir").arg(&ck).arg("--coord-socket").arg(&sock).args(["--", "make", "-j2"]);
    let mut app = Proc::spawn(&sb, &sb.label("launch"), in_build_dir(launch, &run_dir, &tmp), Out::Pipe);

    let exe = run_dir.join("prog");
    wait_until(&sb, "make to build its first object", LINES_TIMEOUT, || {
        !objects_in(&run_dir).is_empty() || app.poll_exit().is_some()
    });
    sb.check(app.poll_exit().is_none(), || format!("{} exited before the checkpoint", app.label));
    checkpoint(&sb, &sock, &mut app);
    sb.check(!exe.exists() && app.poll_exit().is_none(), || {
        format!("{} linked the program before the checkpoint returned: the build is too quick for this test", app.label)
    });
    let found = program_processes(&run_dir);
    sb.check(!found.is_empty(), || format!("no process of {} runs in {}", app.label, run_dir.display()));
    // Killed at once: what the build does on disk after the checkpoint (a
    // compiler's temporary files removed, objects written) is not undone
    // by the restart, which comes back to the checkpoint's moment.
    app.kill_computation(&sb, &run_dir);
    sb.check(!exe.exists(), || format!("{} appeared although make was killed before linking", exe.display()));

    let status = reference.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("the reference build {} failed: {status}", reference.label));
    let expected = run_built(&sb, &ref_dir);
    sb.check(expected.len() == UNITS + 1 && expected.last().is_some_and(|l| l.starts_with("final ")), || {
        format!("the reference program printed {expected:?}")
    });

    let mut logs = AfterRestart::default();
    logs.watch(&app.stderr_path);
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    logs.watch(&re.stderr_path);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || {
        format!(
            "{} (make -j2 restarted mid-build) exited with {status}; make's stderr (after the restart too) is \
             {}",
            re.label,
            app.stderr_path.display()
        )
    });
    let got = run_built(&sb, &run_dir);
    sb.check(got == expected, || {
        format!("the program built across the restart prints {got:?}, the reference build's {expected:?}")
    });
    // Same compiler, flags and sources: the same bytes, objects included
    // (one being written at the checkpoint must not come out damaged).
    for name in (1..=UNITS).map(|i| format!("u{i}.o")).chain(["main.o".into(), "prog".into()]) {
        same_file(&sb, &run_dir.join(&name), &ref_dir.join(&name));
    }
    // The compilers make started after the restart were part of it.
    logs.expect_coordinator_reached(&sb);
    drop(re);
    drop(app);
}
