//! Writes a seed corpus for both targets: a small valid image and its
//! metadata, so that the fuzzer starts from real structure.
//!
//!     cargo run --example seeds

use stasis_image::*;

fn main() {
    let meta = ProcessMeta {
        generation: 1,
        pid: 100,
        name: "seed".into(),
        cmdline: vec!["seed".into(), "-x".into()],
        regions: vec![
            Region { start: 0x1000, end: 0x3000, prot: PROT_READ | PROT_WRITE, ..Default::default() },
            Region {
                start: 0x4000,
                end: 0x5000,
                prot: PROT_READ | PROT_EXEC,
                kind: RegionKind::File { path: "/bin/seed".into(), offset: 0, id: FileId::default() },
                name: "/bin/seed".into(),
                ..Default::default()
            },
        ],
        threads: vec![Thread { tid: 100, ucontext: vec![0; UCONTEXT_LEN], name: "seed".into(), ..Default::default() }],
        fds: vec![
            Fd { fd: 0, cloexec: false, kind: FdKind::Inherited { what: "tty".into() } },
            Fd {
                fd: 3,
                cloexec: true,
                kind: FdKind::File { path: "/tmp/x".into(), flags: 2, offset: 1, size: 5, deleted: true },
            },
        ],
        sigactions: vec![SigAction::default(); 64],
        itimers: vec![ITimer::default(); 3],
        posix_timers: vec![PosixTimer { signal: 34, ..Default::default() }],
        ..Default::default()
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in ["decode_meta", "parse_image"] {
        std::fs::create_dir_all(dir.join(target)).unwrap();
    }
    let image = dir.join("parse_image").join("seed.img");
    let _ = std::fs::remove_file(&image);
    let mut w = ImageWriter::create(&image).unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[1; 100]).unwrap();
    w.append_chunk(ChunkKind::FileContents { fd_index: 1, offset: 0 }, b"hello").unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 4096 }, &[2; 4096]).unwrap();
    w.finish(meta).unwrap();
    let (_, meta) = parse_image(&std::fs::read(&image).unwrap()).unwrap();
    std::fs::write(dir.join("decode_meta").join("seed.meta"), encode_meta(&meta)).unwrap();
    println!("seeds written under {}", dir.display());
}
