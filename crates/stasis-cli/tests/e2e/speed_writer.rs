//! The image writer: memory written straight from the writer's copy by
//! parallel workers (tests/programs/bigmem.c: zero, random and repetitive
//! pages, and a region the program made unreadable), and zstd chunks.
//!
//! `compressed_checkpoints_restart` restarts zstd chunks, which needs
//! restart's decompression of them (issue 11, the restore side): it fails
//! until that lands. The others need nothing more.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// `stasis launch [--compress] -- bigmem` with `STASIS_WRITER_THREADS`
/// set (the restarted process keeps its environment, hence the number).
fn launch_bigmem(sb: &Sandbox, prog: &Program, sock: &Path, ck: &Path, compress: bool, threads: &str) -> Proc {
    let mut cmd = Command::new(stasis());
    cmd.arg("launch");
    if compress {
        cmd.arg("--compress");
    }
    cmd.arg("--ckptdir")
        .arg(ck)
        .arg("--coord-socket")
        .arg(sock)
        .arg("--")
        .args(&prog.argv)
        .env("STASIS_WRITER_THREADS", threads)
        .current_dir(sb.mkdir("run"));
    Proc::spawn(sb, &sb.label("launch"), cmd, Out::Pipe)
}

/// `stasis inspect --verify` of every image of the newest generation:
/// each must pass; returns their outputs.
fn inspect_verified(sb: &Sandbox, ck: &Path) -> Vec<String> {
    images_in(sb, &newest_generation(sb, ck))
        .iter()
        .map(|image| {
            let args = ["inspect".as_ref(), "--verify".as_ref(), image.as_os_str()];
            let out = run_stasis(sb, "inspect", &args, QUICK_TIMEOUT);
            sb.check(out.status.success(), || format!("inspect --verify {}: {}", image.display(), out.stderr));
            sb.check(out.stdout.contains("payload: every checksum matches"), || out.stdout.clone());
            out.stdout
        })
        .collect()
}

/// The number just before `what` in a line of inspect's output
/// ("... 12 chunks compressed").
fn count_before(text: &str, what: &str) -> Option<usize> {
    text.split(what).next().and_then(|head| head.rsplit(' ').next()).and_then(|n| n.parse().ok())
}

/// Checkpoint, kill, restart, twice, then the run finishes: the whole
/// history is the uninterrupted run's.
fn cycles(test: &str, compress: bool, threads: &str) -> Sandbox {
    let sb = Sandbox::new(test);
    let prog = Program::c("bigmem", &["40", "60"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let mut sock = sb.socket();
    let mut app = launch_bigmem(&sb, &prog, &sock, &ck, compress, threads);
    let mut pieces = Vec::new();
    for _ in 0..2 {
        app.wait_lines(&sb, 3);
        let window = checkpoint(&sb, &sock, &mut app);
        crate::carry_on(&sb, &mut app, window, 2);
        app.kill();
        inspect_verified(&sb, &ck);
        pieces.push(Piece::new(&app.label, app.lines(), vec![window]));
        sock = sb.socket();
        app = restart(&sb, &sock, &ck, Out::Pipe);
    }
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}", app.label));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
    sb
}

/// Four workers write 48 MiB of mixed pages and a PROT_NONE region: every
/// byte comes back, twice.
#[test]
fn parallel_writer_saves_every_page_through_two_cycles() {
    drop(cycles("writer4", false, "4"));
}

/// The same with one worker (the writer alone): the path every machine
/// with one CPU takes.
#[test]
fn single_worker_writer_saves_every_page() {
    drop(cycles("writer1", false, "1"));
}

/// A compressed checkpoint stores the repetitive chunks as zstd frames and
/// the random ones as they are; every chunk checks and decompresses.
#[test]
fn compressed_images_hold_zstd_chunks_that_verify() {
    let sb = Sandbox::new("zstdimg");
    let prog = Program::c("bigmem", &["60", "60"]);
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch_bigmem(&sb, &prog, &sock, &ck, true, "3");
    app.wait_lines(&sb, 3);
    checkpoint(&sb, &sock, &mut app);
    app.kill();
    for text in inspect_verified(&sb, &ck) {
        let totals = text.lines().find(|l| l.starts_with("totals: ")).unwrap_or_default();
        let compressed = count_before(totals, " chunks compressed").unwrap_or(0);
        let chunks = count_before(totals, " chunks (").unwrap_or(0);
        sb.check(compressed > 0 && compressed < chunks, || {
            format!("expected some chunks compressed and some not ({compressed} of {chunks}):\n{text}")
        });
    }
}

/// A zstd-compressed checkpoint restarts, twice, with the history of an
/// uninterrupted run. NEEDS the restore side's zstd decompression (issue
/// 11, w2): fails before it lands.
#[test]
fn compressed_checkpoints_restart() {
    drop(cycles("zstdrestart", true, "2"));
}
