//! The image format against real files: round trips, and every kind of
//! damage giving its own clear error.

use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;
use stasis_image::*;

fn ucontext() -> Vec<u8> {
    vec![0u8; UCONTEXT_LEN]
}

fn sample_meta() -> ProcessMeta {
    ProcessMeta {
        generation: 3,
        computation_id: 77,
        pid: 4242,
        name: "prog".into(),
        cmdline: vec!["prog".into(), "arg with space".into()],
        cwd: "/tmp".into(),
        regions: vec![
            Region { start: 0x1000, end: 0x5000, prot: PROT_READ | PROT_WRITE, ..Default::default() },
            Region {
                start: 0x10000,
                end: 0x12000,
                prot: PROT_READ,
                kind: RegionKind::File {
                    path: "/lib/x.so".into(),
                    offset: 4096,
                    id: FileId { size: 9, mtime_ns: -5, inode: 3 },
                },
                name: "/lib/x.so".into(),
                ..Default::default()
            },
        ],
        threads: vec![Thread {
            tid: 4242,
            ucontext: ucontext(),
            fpstate: vec![1; 832],
            name: "prog".into(),
            ..Default::default()
        }],
        fds: vec![Fd {
            fd: 3,
            cloexec: true,
            kind: FdKind::File { path: "/tmp/d".into(), flags: 2, offset: 5, size: 9, deleted: true },
        }],
        sigactions: vec![SigAction { handler: 1, ..Default::default() }; 64],
        itimers: vec![ITimer::default(); 3],
        posix_timers: vec![PosixTimer { id: 0, clock: 1, notify: 0, signal: 34, value_ns: 5, ..Default::default() }],
        ..Default::default()
    }
}

/// Writes an image with two memory chunks and one file-contents chunk.
fn write_sample(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("a.img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[7u8; 8192]).unwrap();
    w.append_chunk(ChunkKind::FileContents { fd_index: 0, offset: 0 }, b"deleted file").unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 12288 }, &[9u8; 4096]).unwrap();
    w.finish(sample_meta()).unwrap();
    path
}

#[test]
fn write_then_read_back() {
    let t = tempfile::tempdir().unwrap();
    let path = write_sample(t.path());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let r = ImageReader::open(&path).unwrap();
    r.verify_payload().unwrap();
    let m = r.meta();
    assert_eq!(m.chunks.len(), 3);
    for c in &m.chunks {
        if let ChunkKind::Memory { .. } = c.kind {
            assert_eq!(c.file_offset % PAGE_SIZE, 0);
        }
    }
    assert_eq!(r.chunk_data(&m.chunks[1]).unwrap(), b"deleted file");
    let mut expected = sample_meta();
    expected.chunks = m.chunks.clone();
    assert_eq!(m, &expected);
    assert!(render(m).contains("tid 4242"));
    assert!(ImageWriter::create(&path).is_err(), "never overwrites an image");
}

#[test]
fn damage_gives_named_errors() {
    let t = tempfile::tempdir().unwrap();
    let path = write_sample(t.path());
    let good = std::fs::read(&path).unwrap();
    let check = |bytes: &[u8], want: &str| {
        std::fs::write(&path, bytes).unwrap();
        let err = ImageReader::open(&path).and_then(|r| r.verify_payload()).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
        assert!(err.contains("a.img"), "{err:?} should name the file");
        assert!(!err.contains('\n'));
    };
    check(b"#!/bin/sh\necho not an image\n", "not a stasis image");
    check(&[], "truncated");
    check(&good[..5000], "truncated");
    check(&good[..good.len() - 1], "truncated");
    let mut v = good.clone();
    v[8] = 99;
    check(&v, "version 99");
    let mut v = good.clone();
    v[20] ^= 1;
    check(&v, "header");
    let mut v = good.clone();
    v[4096 + 100] ^= 0xff;
    check(&v, "memory chunk 0");
    let mut v = good.clone();
    let last = v.len() - 3;
    v[last] ^= 0xff;
    check(&v, "metadata");
}

#[test]
fn a_writer_that_dies_leaves_no_valid_image() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("b.img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[1u8; 4096]).unwrap();
    drop(w);
    assert!(matches!(ImageReader::open(&path), Err(Error::NotAnImage { .. })));
}

fn arb_region_kind() -> impl Strategy<Value = RegionKind> {
    prop_oneof![
        Just(RegionKind::Anonymous),
        Just(RegionKind::Vdso),
        Just(RegionKind::Vvar),
        ("[a-z/.]{0,20}", any::<u64>(), any::<u64>(), any::<i128>(), any::<u64>()).prop_map(
            |(path, offset, size, mtime_ns, inode)| RegionKind::File {
                path,
                offset,
                id: FileId { size, mtime_ns, inode }
            }
        ),
    ]
}

fn arb_fd() -> impl Strategy<Value = Fd> {
    let kind = prop_oneof![
        (".{0,12}", any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(path, flags, offset, size, deleted)| FdKind::File { path, flags, offset, size, deleted }),
        (".{0,12}", any::<u32>()).prop_map(|(path, flags)| FdKind::Directory { path, flags }),
        (".{0,12}", any::<u32>()).prop_map(|(path, flags)| FdKind::Device { path, flags }),
        ".{0,12}".prop_map(|what| FdKind::Inherited { what }),
        Just(FdKind::Agent),
        Just(FdKind::Unsupported),
    ];
    (any::<i32>(), any::<bool>(), kind).prop_map(|(fd, cloexec, kind)| Fd { fd, cloexec, kind })
}

prop_compose! {
    fn arb_meta()(
        gaps in prop::collection::vec((1u64..64, 1u64..64, 0u8..8, any::<bool>(), any::<bool>(), arb_region_kind(), ".{0,10}"), 0..6),
        threads in prop::collection::vec((any::<i32>(), prop::collection::vec(any::<u8>(), 0..64), any::<[u64; 6]>(), ".{0,15}"), 0..4),
        fds in prop::collection::vec(arb_fd(), 0..5),
        cmdline in prop::collection::vec(".{0,10}", 0..4),
        numbers in any::<[u64; 6]>(),
        pid in any::<i32>(),
        name in ".{0,16}",
    ) -> ProcessMeta {
        let mut at = 0x1000u64;
        let regions: Vec<Region> = gaps.into_iter().map(|(gap, len, prot, shared, growsdown, kind, name)| {
            let start = at + gap * 4096;
            at = start + len * 4096;
            Region { start, end: at, prot, shared, growsdown, kind, name }
        }).collect();
        let chunks = regions.iter().enumerate().map(|(i, r)| Chunk {
            kind: ChunkKind::Memory { region: i as u32, offset: 0 },
            file_offset: 4096 * (i as u64 + 1),
            len: (r.end - r.start).min(4096),
            checksum: numbers[i % 6],
        }).collect();
        ProcessMeta {
            generation: numbers[0],
            computation_id: numbers[1],
            created_unix: numbers[2],
            pid,
            name,
            cmdline,
            mm: MmLayout { brk: numbers[3], auxv: numbers.to_vec(), ..Default::default() },
            regions,
            threads: threads.into_iter().map(|(tid, fp, w, name)| Thread {
                tid, ucontext: vec![tid as u8; UCONTEXT_LEN], fpstate: fp, fs_base: w[0], gs_base: w[1],
                clear_child_tid: w[2], robust_list: w[3], pending: w[4], rseq_addr: w[5], name, ..Default::default()
            }).collect(),
            fds,
            shared_pending: numbers[4],
            agent: AgentInfo { restore_info_addr: numbers[5], ckpt_signal: 62, interval_s: 9 },
            chunks,
            ..Default::default()
        }
    }
}

proptest! {
    #[test]
    fn meta_round_trips(meta in arb_meta()) {
        let back = decode_meta(&encode_meta(&meta)).unwrap();
        prop_assert_eq!(back, meta);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_meta(&bytes);
        let _ = parse_image(&bytes);
    }

    #[test]
    fn a_flipped_byte_never_panics_and_is_caught(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let t = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(write_sample(t.path())).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // Bytes of the header page past the header and of padding between
        // chunks carry nothing; any other change must be detected.
        let significant = i < 64 || stasis_image::parse_image(&std::fs::read(t.path().join("a.img")).unwrap())
            .map(|(_, m)| m.chunks.iter().any(|c| (c.file_offset..c.file_offset + c.len).contains(&(i as u64))) || i as u64 >= m.chunks.iter().map(|c| c.file_offset + c.len).max().unwrap_or(0).next_multiple_of(8))
            .unwrap_or(true);
        let result = parse_image(&bytes);
        if significant {
            prop_assert!(result.is_err(), "flipping bit {} of byte {} went unnoticed", bit, i);
        }
    }
}
