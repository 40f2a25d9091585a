//! Restart that does not wait for memory: private anonymous memory comes
//! back mapped from the image (MAP_PRIVATE), its checksums verified in the
//! background. What must hold whatever the timing: the program behaves as
//! if its memory had been read in (MADV_DONTNEED gives zeros, the next
//! checkpoint saves it whole), needs no image file once running (the
//! generation pruned or deleted), and a damaged chunk ends the computation
//! with one line naming it (or, with --verify-first, nothing runs).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// Whether the restored process of `restart` (running `exe`) has memory
/// mapped from an image of generation directory `generation`.
fn maps_from(restart: &Proc, exe: &Path, generation: &Path) -> bool {
    let deadline = Instant::now() + LINES_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(pid) = find_descendant(restart.pid(), exe) {
            let dir = generation.to_string_lossy().into_owned();
            return maps(pid).iter().any(|(_, _, name)| name.starts_with(&dir));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Restart, checkpoint twice (the second prunes the generation restarted
/// from, which the program's memory is still mapped from), kill, restart
/// from the newest, delete every generation at once: the history is the
/// uninterrupted run's.
#[test]
fn memory_mapped_from_images_survives_checkpoints_pruning_and_deletion() {
    let sb = Sandbox::new("lazy-prune");
    let prog = Program::c("single", &["70"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let w1 = checkpoint(&sb, &sock, &mut app);
    crate::carry_on(&sb, &mut app, w1, 2);
    app.kill();
    let mut pieces = vec![Piece::new(&app.label, app.lines(), vec![w1])];

    let gen1 = newest_generation(&sb, &ck);
    let sock = sb.socket();
    let mut app = restart(&sb, &sock, &ck, Out::Pipe);
    sb.check(maps_from(&app, prog.exe(), &gen1), || {
        format!("the restored process maps nothing from {}: memory was read, not mapped", gen1.display())
    });
    app.wait_lines(&sb, 2);
    let w2 = checkpoint(&sb, &sock, &mut app);
    crate::carry_on(&sb, &mut app, w2, 1);
    let w3 = checkpoint(&sb, &sock, &mut app);
    sb.check(!gen1.exists(), || format!("{} was not pruned (keep 2)", gen1.display()));
    crate::carry_on(&sb, &mut app, w3, 2);
    app.kill();
    pieces.push(Piece::new(&app.label, app.lines(), vec![w3]));

    let gen3 = newest_generation(&sb, &ck);
    let sock = sb.socket();
    let mut app = restart(&sb, &sock, &ck, Out::Pipe);
    sb.check(maps_from(&app, prog.exe(), &gen3), || format!("nothing mapped from {}", gen3.display()));
    for (_, g) in committed_generations(&ck) {
        std::fs::remove_dir_all(&g).unwrap_or_else(|e| sb.fail(format!("rm -rf {}: {e}", g.display())));
    }
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", app.label, app.stderr_text()));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
}

/// Memory restored from an image and given back with MADV_DONTNEED reads
/// zeros, as anonymous memory does (tests/programs/discard.c prints how
/// many words did not: any line that differs from the reference's fails).
#[test]
fn madvise_dontneed_on_restored_memory_gives_zeros() {
    let sb = Sandbox::new("lazy-discard");
    let prog = Program::c("discard", &["50"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 3);
    let w = checkpoint(&sb, &sock, &mut app);
    crate::carry_on(&sb, &mut app, w, 2);
    app.kill();
    let mut pieces = vec![Piece::new(&app.label, app.lines(), vec![w])];
    let generation = newest_generation(&sb, &ck);
    let mut app = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    sb.check(maps_from(&app, prog.exe(), &generation), || "nothing mapped from the image".into());
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", app.label, app.stderr_text()));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
}

/// Flips one byte in the middle of the largest memory chunk of the
/// generation's image (the manifest vouches for header and metadata only).
/// Returns the image.
fn damage_a_memory_chunk(sb: &Sandbox, generation: &Path) -> PathBuf {
    let image = images_in(sb, generation).into_iter().next().unwrap_or_else(|| sb.fail("no image"));
    let reader = stasis_image::ImageReader::open(&image).unwrap_or_else(|e| sb.fail(e));
    let chunk = *reader
        .meta()
        .chunks
        .iter()
        .filter(|c| matches!(c.kind, stasis_image::ChunkKind::Memory { .. }))
        .max_by_key(|c| c.len)
        .unwrap_or_else(|| sb.fail("the image holds no memory chunk"));
    drop(reader);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&image).unwrap_or_else(|e| sb.fail(e));
    let at = chunk.file_offset + chunk.len / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap_or_else(|e| sb.fail(e));
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap_or_else(|e| sb.fail(e));
    image
}

/// A damaged memory chunk: the default restart finds it in the background,
/// kills the restarted computation and exits non-zero naming the image
/// and the chunk; with --verify-first nothing of the program runs at all.
#[test]
fn a_damaged_chunk_is_found_and_the_restarted_computation_killed() {
    let sb = Sandbox::new("lazy-damaged");
    let prog = Program::c("single", &["400", "100"]);
    let ck = sb.join("ck");
    let sock = sb.socket();
    let run = sb.mkdir("run");
    let mut app = launch(&sb, &prog, &sock, &ck, &run, Out::Pipe);
    app.wait_lines(&sb, 3);
    checkpoint(&sb, &sock, &mut app);
    app.kill();
    let image = damage_a_memory_chunk(&sb, &newest_generation(&sb, &ck));
    let name = image.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let says_so = |stderr: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with("stasis:") && l.contains(&name) && l.contains("checksum mismatch in memory chunk"))
    };

    // With --verify-first: refused before anything runs.
    let mut first = restart_args(&sb, &["--verify-first"], &sb.socket(), &ck, Out::Pipe);
    let status = first.wait_exit(&sb, QUICK_TIMEOUT);
    sb.check(!status.success() && says_so(&first.stderr_text()), || {
        format!("restart --verify-first of a damaged image exited with {status}: {}", first.stderr_text())
    });
    sb.check(first.lines().is_empty(), || format!("the program ran: {:?}", first.lines()));

    // By default: found while it runs; the computation is killed (it may
    // have printed a few steps first: the checksum is checked beside it).
    let mut lazy = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = lazy.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(!status.success() && says_so(&lazy.stderr_text()), || {
        format!("restart of a damaged image exited with {status}: {}", lazy.stderr_text())
    });
    sb.check(!lazy.lines().iter().any(|l| l.starts_with("final ")), || "the program ran to its end".into());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_in(&run).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = processes_in(&run);
    sb.check(left.is_empty(), || {
        let list: Vec<String> = left.iter().map(|&p| describe_process(p)).collect();
        format!("processes of the damaged restart still run:\n{}", list.join("\n"))
    });
}

/// An image written compressed (LZ4) restarts: its chunks are read and
/// decompressed, nothing mapped; --verify-first restarts an intact image.
#[test]
fn an_lz4_image_restarts_and_verify_first_restarts_an_intact_image() {
    let sb = Sandbox::new("lazy-lz4");
    let prog = Program::c("discard", &["40"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch_args(&sb, &prog, &sock, &ck, &sb.mkdir("run"), &["--compress"], Out::Pipe);
    app.wait_lines(&sb, 3);
    let w = checkpoint(&sb, &sock, &mut app);
    crate::carry_on(&sb, &mut app, w, 2);
    app.kill();
    let mut pieces = vec![Piece::new(&app.label, app.lines(), vec![w])];
    let generation = newest_generation(&sb, &ck);
    let image = images_in(&sb, &generation).into_iter().next().unwrap_or_else(|| sb.fail("no image"));
    let reader = stasis_image::ImageReader::open(&image).unwrap_or_else(|e| sb.fail(e));
    sb.check(reader.meta().chunks.iter().any(|c| c.compression != stasis_image::Compression::None), || {
        "--compress wrote no compressed chunk".into()
    });
    drop(reader);
    let mut app = restart_args(&sb, &["--verify-first"], &sb.socket(), &ck, Out::Pipe);
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", app.label, app.stderr_text()));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
}

/// A version 6 image, compressed (its header says 6: the encoding is the
/// same), restarted alone from a directory of its own: its agent knows no
/// image mappings, so everything is read and verified before it runs, and
/// the history is the uninterrupted run's.
#[test]
fn a_version_6_lz4_image_is_read_not_mapped() {
    let sb = Sandbox::new("lazy-v6");
    let prog = Program::c("discard", &["40"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();
    let mut app = launch_args(&sb, &prog, &sock, &ck, &sb.mkdir("run"), &["--compress"], Out::Pipe);
    app.wait_lines(&sb, 3);
    let w = checkpoint(&sb, &sock, &mut app);
    crate::carry_on(&sb, &mut app, w, 2);
    app.kill();
    let mut pieces = vec![Piece::new(&app.label, app.lines(), vec![w])];
    let image = images_in(&sb, &newest_generation(&sb, &ck)).into_iter().next().unwrap_or_else(|| sb.fail("no image"));
    let alone = sb.mkdir("alone").join(image.file_name().unwrap_or_default());
    std::fs::copy(&image, &alone).unwrap_or_else(|e| sb.fail(e));
    let reader = stasis_image::ImageReader::open(&alone).unwrap_or_else(|e| sb.fail(e));
    let mut header = *reader.header();
    header.version = 6;
    // Version 6 metadata is version 8's without its last fields: the
    // `inherited`, `sockets_peer_shut` and `sysv_ipc` lists (empty here: a
    // first checkpoint of a program with neither; 4 bytes of count each),
    // the list of MAP_NORESERVE regions (a count and an index each: the
    // agent's own arenas are some) and `allow_file_overwrite` (1 byte).
    let meta = reader.meta();
    assert!(meta.inherited.is_empty() && meta.sockets_peer_shut.is_empty() && meta.sysv_ipc.is_empty());
    let noreserve = meta.regions.iter().filter(|r| r.noreserve).count() as u64;
    header.meta_len -= 4 + 4 + 4 + 4 + 4 * noreserve + 1;
    drop(reader);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&alone).unwrap_or_else(|e| sb.fail(e));
    let mut meta = vec![0u8; header.meta_len as usize];
    f.read_exact_at(&mut meta, header.meta_offset).unwrap_or_else(|e| sb.fail(e));
    header.meta_checksum = xxhash_rust::xxh3::xxh3_64(&meta);
    f.write_all_at(&header.encode(), 0).unwrap_or_else(|e| sb.fail(e));
    drop(f);
    let mut app = restart(&sb, &sb.socket(), &alone, Out::Pipe);
    sb.check(!maps_from(&app, prog.exe(), alone.parent().unwrap_or(&alone)), || {
        "memory of a version 6 image was mapped from it".into()
    });
    let status = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}: {}", app.label, app.stderr_text()));
    pieces.push(Piece::new(&app.label, app.lines(), vec![]));
    let reference = finish_reference(&sb, reference);
    verify_history(&sb, &reference, &pieces);
}
