//! Incremental checkpoints (tests/programs/incremental.c: a 32 MiB buffer,
//! and a forked child's 16 MiB, of which the same 1% of the pages change
//! step after step, a few others dropped with MADV_DONTNEED now and then): the second and
//! third images hold only what changed and refer to the earlier
//! generations, every generation restarts to the uninterrupted run's
//! output, prune keeps what the kept generations need, and a full
//! checkpoint comes every `--full-every` generations.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn manifest_line(sb: &Sandbox, generation: &Path, word: &str) -> Option<String> {
    let text = fs::read_to_string(generation.join("MANIFEST"))
        .unwrap_or_else(|e| sb.fail(format!("read {}/MANIFEST: {e}", generation.display())));
    text.lines().find(|l| l.split(' ').next() == Some(word)).map(str::to_string)
}

fn image_bytes(sb: &Sandbox, generation: &Path) -> u64 {
    images_in(sb, generation).iter().map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum()
}

fn restart_generation(sb: &Sandbox, ck: &Path, g: u64) -> Proc {
    restart_args(sb, &["--generation", &g.to_string()], &sb.socket(), ck, Out::Pipe)
}

#[test]
fn incremental_checkpoints_refer_to_earlier_generations_and_each_restarts() {
    let prog = Program::c("incremental", &["150", "50", "32"]);
    let sb = Sandbox::new("incremental");
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app =
        launch_args(&sb, &prog, &sock, &ck, &sb.mkdir("run"), &["--keep", "1", "--full-every", "3"], Out::Pipe);
    let mut windows = Vec::new();
    for k in 0..3 {
        app.wait_lines(&sb, 3 + 4 * k);
        windows.push(checkpoint(&sb, &sock, &mut app));
    }
    // Generations 1 (full), 2 and 3 (incremental): all kept with --keep 1,
    // since 3 needs 1 and 2.
    let gens = committed_generations(&ck);
    let numbers: Vec<u64> = gens.iter().map(|(n, _)| *n).collect();
    sb.check(numbers == [1, 2, 3], || format!("generations {numbers:?}, expected [1, 2, 3] (3 needs 1 and 2)"));
    let full = image_bytes(&sb, &gens[0].1);
    for (n, path) in &gens[1..] {
        let bytes = image_bytes(&sb, path);
        // 1% of the pages changed, and a little of the program and agent.
        sb.check(bytes * 10 < full, || format!("generation {n} has {bytes} bytes of images, the full one {full}"));
        let needs = manifest_line(&sb, path, "needs");
        sb.check(needs.as_deref().is_some_and(|l| l.starts_with("needs 1")), || {
            format!("generation {n}'s MANIFEST: needs line {needs:?}")
        });
        for image in images_in(&sb, path) {
            let out = run_stasis(&sb, "inspect", &["inspect".as_ref(), image.as_os_str()], QUICK_TIMEOUT);
            sb.check(out.status.success() && out.stdout.contains("inherited "), || {
                format!("stasis inspect {} shows no inherited memory:\n{}{}", image.display(), out.stdout, out.stderr)
            });
        }
    }
    sb.check(manifest_line(&sb, &gens[0].1, "needs").is_none(), || "generation 1 needs another".into());
    // Kept for restarting each generation after generation 4 prunes them.
    let copy = sb.join("ck-copy");
    copy_tree(&ck, &copy).unwrap_or_else(|e| sb.fail(format!("copy {}: {e}", ck.display())));

    // Generation 4 is full (--full-every 3): 1 to 3 go (--keep 1).
    app.wait_lines(&sb, windows[2].hi + 3);
    let fourth = checkpoint(&sb, &sock, &mut app);
    let numbers: Vec<u64> = committed_generations(&ck).iter().map(|(n, _)| *n).collect();
    sb.check(numbers == [4], || format!("after the full generation 4: generations {numbers:?}, expected [4]"));
    let g4 = newest_generation(&sb, &ck);
    sb.check(manifest_line(&sb, &g4, "needs").is_none(), || "generation 4 (full) needs another".into());
    app.kill();
    let reference = finish_reference(&sb, reference);
    windows.push(fourth);

    let mut targets: Vec<(u64, PathBuf)> = (1..=3).map(|g| (g, copy.clone())).collect();
    targets.push((4, ck.clone()));
    for (g, dir) in targets {
        let mut re = restart_generation(&sb, &dir, g);
        let status = re.wait_exit(&sb, RUN_TIMEOUT);
        sb.check(status.success(), || {
            format!("{} (generation {g}) exited with {status}: {}", re.label, re.stderr_text())
        });
        verify_history(
            &sb,
            &reference,
            &[
                Piece::new(&app.label, app.lines(), vec![windows[g as usize - 1]]),
                Piece::new(&re.label, re.lines(), vec![]),
            ],
        );
    }

    // The DMTCP names at the top of the copy are generation 3's images.
    let mut dmtcp_names: Vec<PathBuf> = fs::read_dir(&copy)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dmtcp"))
        .collect();
    dmtcp_names.sort();
    sb.check(dmtcp_names.len() == 2, || format!("DMTCP names in {}: {dmtcp_names:?}", copy.display()));
    let mut cmd = Command::new(stasis());
    cmd.arg("restart").arg("--coord-socket").arg(sb.socket()).args(&dmtcp_names).current_dir(sb.path());
    let mut re = Proc::spawn(&sb, &sb.label("restart"), cmd, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} (DMTCP names) exited with {status}: {}", re.label, re.stderr_text()));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![windows[2]]), Piece::new(&re.label, re.lines(), vec![])],
    );

    // A generation an incremental one needs is gone: a clear refusal.
    fs::remove_dir_all(copy.join("gen-000001")).unwrap_or_else(|e| sb.fail(format!("remove gen-000001: {e}")));
    let out = run_stasis(
        &sb,
        "restart",
        &["restart".as_ref(), "--generation".as_ref(), "3".as_ref(), copy.as_os_str()],
        QUICK_TIMEOUT,
    );
    expect_clean_error(&sb, "restart of a generation whose base is gone", &out);
    sb.check(out.stderr.contains("gen-000001"), || format!("the refusal does not name gen-000001: {}", out.stderr));
}

/// With compression: the older images' compressed chunks that references
/// cover only in part are cut at restart.
#[test]
fn compressed_incremental_checkpoints_restart() {
    let prog = Program::c("incremental", &["200", "40", "32"]);
    let sb = Sandbox::new("incremental-lz4");
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch_args(&sb, &prog, &sock, &ck, &sb.mkdir("run"), &["--compress"], Out::Pipe);
    let mut windows = Vec::new();
    for k in 0..3 {
        app.wait_lines(&sb, 3 + 4 * k);
        windows.push(checkpoint(&sb, &sock, &mut app));
    }
    let gens = committed_generations(&ck);
    let newest = &gens.last().unwrap_or_else(|| sb.fail("no generation")).1;
    sb.check(manifest_line(&sb, newest, "needs").is_some(), || "the newest generation needs none".into());
    app.kill();
    let reference = finish_reference(&sb, reference);
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", re.label, re.stderr_text()));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![windows[2]]), Piece::new(&re.label, re.lines(), vec![])],
    );
}
