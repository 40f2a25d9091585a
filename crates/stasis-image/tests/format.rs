//! The image format against real files: round trips, every kind of damage
//! giving its own clear error, and property tests over arbitrary metadata
//! and damaged images.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use stasis_image::*;

fn sample_meta() -> ProcessMeta {
    ProcessMeta {
        generation: 3,
        computation_id: 77,
        created_unix: 1_795_512_610,
        pid: 4242,
        ppid: 1,
        name: "prog".into(),
        exe: "/usr/bin/prog".into(),
        cmdline: vec!["prog".into(), "arg with space".into()],
        cwd: "/tmp".into(),
        umask: 0o022,
        rlimits: vec![Rlimit { resource: 7, soft: 1024, hard: 4096 }],
        mm: MmLayout { start_brk: 0x5000, brk: 0x5000, auxv: vec![6, 4096, 0, 0], ..Default::default() },
        regions: vec![
            Region { start: 0x1000, end: 0x5000, prot: PROT_READ | PROT_WRITE, ..Default::default() },
            Region {
                start: 0x10000,
                end: 0x12000,
                prot: PROT_READ,
                kind: RegionKind::File {
                    path: "/lib/x.so".into(),
                    offset: 4096,
                    id: FileId {
                        size: 9,
                        mtime_ns: -5,
                        ctime_ns: 11,
                        inode: 3,
                        build_id: vec![0x1a, 0x2b],
                        head_hash: 77,
                    },
                },
                name: "/lib/x.so".into(),
                ..Default::default()
            },
        ],
        threads: vec![Thread {
            tid: 4242,
            ucontext: vec![0u8; UCONTEXT_LEN],
            fpstate: vec![1; 832],
            name: "prog".into(),
            ..Default::default()
        }],
        fds: vec![Fd {
            fd: 3,
            cloexec: true,
            kind: FdKind::File {
                path: "/tmp/d".into(),
                flags: 2,
                offset: 5,
                size: 9,
                deleted: true,
                dev: 0x803,
                inode: 77,
                saved: FileSave::None,
            },
            outside_stdio: None,
        }],
        sigactions: vec![SigAction { handler: 1, ..Default::default() }; 64],
        itimers: vec![ITimer::default(); 3],
        posix_timers: vec![PosixTimer { id: 0, clock: 1, notify: 0, signal: 34, value_ns: 5, ..Default::default() }],
        agent: AgentInfo { restore_info_addr: 0x7000_0000, ckpt_signal: 62, interval_s: 60, compress: true },
        ..Default::default()
    }
}

/// Writes an image with two memory chunks and one file-contents chunk
/// short enough that the next chunk needs padding.
fn write_sample(dir: &Path) -> PathBuf {
    let path = dir.join("a.img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[7u8; 8192]).unwrap();
    w.append_chunk(ChunkKind::FileContents { fd_index: 0, offset: 0 }, b"deleted file").unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 12288 }, &[9u8; 4096]).unwrap();
    w.finish(sample_meta()).unwrap();
    path
}

/// The sample image's bytes, written once.
fn sample_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        std::fs::read(write_sample(t.path())).unwrap()
    })
}

#[test]
fn write_then_read_back() {
    let t = tempfile::tempdir().unwrap();
    let path = write_sample(t.path());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let r = ImageReader::open(&path).unwrap();
    r.verify_payload().unwrap();
    assert_eq!(r.path(), path);
    assert_eq!(r.header().file_len(), std::fs::metadata(&path).unwrap().len());
    let m = r.meta();
    let offsets: Vec<u64> = m.chunks.iter().map(|c| c.file_offset).collect();
    assert_eq!(offsets, [4096, 12288, 16384]);
    assert_eq!(r.chunk_data(&m.chunks[0]).unwrap(), [7u8; 8192]);
    assert_eq!(r.chunk_data(&m.chunks[1]).unwrap(), b"deleted file");
    let mut buf = vec![0u8; 4096];
    r.read_chunk(&m.chunks[2], &mut buf).unwrap();
    assert_eq!(buf, [9u8; 4096]);
    let mut expected = sample_meta();
    expected.chunks = m.chunks.clone();
    assert_eq!(m, &expected);
    assert!(render(m).contains("tid 4242"));
    assert!(
        render(m).contains(
            "mapped files: 1\n  /lib/x.so\n    build-id 1a2b, size 9, mtime -1.999999995, ctime 0.000000011, inode 3, \
             head xxh3 000000000000004d\n"
        ),
        "{}",
        render(m)
    );
    assert!(render_header(r.header()).contains(&format!("image format {VERSION}")));
    assert!(ImageWriter::create(&path).is_err(), "never overwrites an image");
    assert_eq!(parse_image(&std::fs::read(&path).unwrap()).unwrap().1, r.into_meta());
}

/// Writes `bytes` as an image and returns the error that opening it and
/// checking its payload gives.
fn open_error(dir: &Path, bytes: &[u8]) -> Error {
    let path = dir.join("d.img");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, bytes).unwrap();
    let err = ImageReader::open(&path).and_then(|r| r.verify_payload()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: ", path.display())), "{text:?} should name the file first");
    assert!(!text.contains('\n'), "{text:?} is one line");
    // parse_image finds the same problem in memory.
    let mem = parse_image(bytes).unwrap_err();
    assert_eq!(std::mem::discriminant(&mem), std::mem::discriminant(&err), "{mem} / {err}");
    err
}

#[test]
fn damage_gives_named_errors() {
    let t = tempfile::tempdir().unwrap();
    let good = sample_bytes();
    let (header, meta) = parse_image(good).unwrap();
    let check = |bytes: &[u8], want: &str| {
        let e = open_error(t.path(), bytes).to_string();
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    };
    check(b"#!/bin/sh\necho not an image\n", "not a stasis image (bad magic)");
    check(b"", "truncated: expected 4096 bytes, found 0");
    check(&[0u8; 8192], "not a stasis image");

    let meta_end = header.meta_offset + header.meta_len;
    for cut in [4, 8, 31, 32, 63, 64, 95, 96, 100, 4095, 4096, 5000, 12288, header.meta_offset, meta_end - 1] {
        let e = open_error(t.path(), &good[..cut as usize]);
        assert!(matches!(e, Error::Truncated { .. }), "cut at {cut}: {e}");
        // The header (after DMTCP's 32-byte signature) ends at 96.
        if cut >= 96 {
            assert!(e.to_string().contains(&format!("expected {meta_end} bytes, found {cut}")), "{e}");
        }
    }

    let mut v = good.to_vec();
    v[32 + 8] = 99;
    check(
        &v,
        &format!("image format version 99 is not supported (this stasis reads versions {OLDEST_VERSION} to {VERSION})"),
    );
    for i in [16, 24, 40, 50, 60].map(|i| i + 32) {
        let mut v = good.to_vec();
        v[i] ^= 4;
        check(&v, "checksum mismatch in the header");
    }
    let mut v = good.to_vec();
    v[header.meta_offset as usize + 10] ^= 0x10;
    check(&v, "checksum mismatch in the metadata");
    let mut v = good.to_vec();
    v[meta_end as usize - 1] ^= 1;
    check(&v, "checksum mismatch in the metadata");

    // A damaged chunk: the image opens, and the chunk is named when read.
    let mut v = good.to_vec();
    v[4096 + 100] ^= 0xff;
    check(&v, "checksum mismatch in memory chunk 0 (region 0x1000-0x5000, 8192 bytes at 0x1000)");
    let path = t.path().join("d.img");
    let r = ImageReader::open(&path).unwrap();
    assert!(matches!(r.chunk_data(&meta.chunks[0]), Err(Error::Checksum { .. })));
    assert_eq!(r.chunk_data(&meta.chunks[2]).unwrap(), [9u8; 4096]);
    let mut v = good.to_vec();
    v[12288 + 3] ^= 1;
    check(&v, "checksum mismatch in file contents chunk 1 (descriptor 3, 12 bytes at offset 0)");
}

#[test]
fn a_writer_that_dies_leaves_no_valid_image() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("b.img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &[1u8; 4096]).unwrap();
    drop(w);
    let e = ImageReader::open(&path).unwrap_err();
    assert!(matches!(e, Error::NotAnImage { .. }), "{e}");
}

#[test]
fn large_chunks_are_checked_in_blocks() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("big.img");
    let mut meta = sample_meta();
    meta.regions.truncate(1);
    meta.regions[0].end = 0x1000 + (3 << 20);
    let data: Vec<u8> = (0..3usize << 20).map(|i| (i % 251) as u8).collect();
    let mut w = ImageWriter::create(&path).unwrap();
    w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &data).unwrap();
    w.finish(meta).unwrap();
    ImageReader::open(&path).unwrap().verify_payload().unwrap();
    // Damage in the last block of the chunk is found as well.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + (3 << 20) - 1] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = ImageReader::open(&path).unwrap().verify_payload().unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
}

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn arb_region_kind() -> impl Strategy<Value = RegionKind> {
    prop_oneof![
        Just(RegionKind::Anonymous),
        Just(RegionKind::Vdso),
        Just(RegionKind::Vvar),
        (any::<u64>(), any::<u64>(), 0u64..64).prop_map(|(dev, inode, page)| RegionKind::SharedMemory {
            dev,
            inode,
            offset: page * 4096
        }),
        (
            arb_string(),
            0u64..1 << 30,
            (any::<u64>(), any::<i128>(), any::<i128>(), any::<u64>()),
            proptest::collection::vec(any::<u8>(), 0..24),
            any::<u64>()
        )
            .prop_map(|(path, page, (size, mtime_ns, ctime_ns, inode), build_id, head_hash)| {
                RegionKind::File {
                    path,
                    offset: page * PAGE_SIZE,
                    id: FileId { size, mtime_ns, ctime_ns, inode, build_id, head_hash },
                }
            }),
    ]
}

fn arb_file_save() -> impl Strategy<Value = FileSave> {
    prop_oneof![
        Just(FileSave::None),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<i64>(), any::<i64>(), any::<bool>()).prop_map(
            |(dev, inode, size, m, c, fresh)| FileSave::Copy {
                name: stasis_image::savedfiles::saved_name(
                    &stasis_image::savedfiles::FileState { dev, inode, size, mtime_ns: m as i128, ctime_ns: c as i128 },
                    fresh
                )
            }
        ),
        arb_string().prop_map(|why| FileSave::Left { why }),
    ]
}

fn arb_fd() -> impl Strategy<Value = Fd> {
    let kind = prop_oneof![
        (
            (arb_string(), any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()),
            (any::<u64>(), any::<u64>(), arb_file_save())
        )
            .prop_map(|((path, flags, offset, size, deleted), (dev, inode, saved))| FdKind::File {
                path,
                flags,
                offset,
                size,
                deleted,
                dev,
                inode,
                saved
            }),
        (arb_string(), any::<u32>()).prop_map(|(path, flags)| FdKind::Directory { path, flags }),
        (arb_string(), any::<u32>()).prop_map(|(path, flags)| FdKind::Device { path, flags }),
        arb_string().prop_map(|what| FdKind::Inherited { what }),
        Just(FdKind::Agent),
        Just(FdKind::Unsupported),
        (any::<u64>(), any::<bool>(), any::<u32>()).prop_map(|(count, semaphore, flags)| FdKind::EventFd {
            count,
            semaphore,
            flags
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(mask, flags)| FdKind::SignalFd { mask, flags }),
        (any::<i32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(clock, flags, value_ns, interval_ns, ticks)| FdKind::TimerFd {
                clock,
                flags,
                value_ns,
                interval_ns,
                ticks
            }
        ),
        (
            any::<u32>(),
            proptest::collection::vec(
                (any::<i32>(), any::<u32>(), any::<u64>()).prop_map(|(fd, events, data)| EpollTarget {
                    fd,
                    events,
                    data
                }),
                0..4
            )
        )
            .prop_map(|(flags, targets)| FdKind::Epoll { flags, targets }),
        (any::<u64>(), any::<bool>(), any::<u32>(), any::<u32>(), arb_string(), any::<bool>()).prop_map(
            |(id, write, flags, size, fifo, peer_gone)| FdKind::Pipe { id, write, flags, size, fifo, peer_gone }
        ),
        (
            (any::<u64>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<u32>(), any::<bool>()),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<u64>(),
            proptest::collection::vec(
                (any::<(i32, i32)>(), proptest::collection::vec(any::<u8>(), 0..16))
                    .prop_map(|((level, name), value)| SockOpt { level, name, value }),
                0..3
            )
        )
            .prop_map(|((id, domain, kind, protocol, flags, listening), local, peer, peer_id, options)| {
                FdKind::Socket { id, domain, kind, protocol, flags, listening, local, peer, peer_id, options }
            }),
        (
            any::<u32>(),
            proptest::collection::vec(
                (any::<i32>(), any::<u32>(), arb_string()).prop_map(|(wd, mask, path)| InotifyWatch { wd, mask, path }),
                0..3
            ),
            any::<u32>()
        )
            .prop_map(|(flags, watches, unread)| FdKind::Inotify { flags, watches, unread }),
        (
            (any::<u64>(), arb_string(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()),
            proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20))
                    .prop_map(|(priority, data)| MqMessage { priority, data }),
                0..3
            ),
            proptest::option::of(any::<(i32, i32, i32, u64)>().prop_map(|(pid, notify, signal, value)| MqNotify {
                pid,
                notify,
                signal,
                value
            }))
        )
            .prop_map(|((id, name, flags, mode, maxmsg, msgsize), messages, notify)| {
                FdKind::MessageQueue { id, name, flags, mode, maxmsg, msgsize, messages, notify }
            }),
        (
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..60), any::<bool>(), any::<i32>()),
            any::<[u16; 4]>(),
            proptest::option::of(
                any::<(bool, u32, bool, bool)>()
                    .prop_map(|(master, index, locked, packet)| { PtyEnd { master, index, locked, packet } })
            ),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|((flags, termios, controlling, foreground), window, pty, unread)| {
                FdKind::Terminal { flags, termios, controlling, foreground, window, pty, unread }
            }),
    ];
    (any::<i32>(), any::<bool>(), kind, proptest::option::of(0u8..3))
        .prop_map(|(fd, cloexec, kind, outside_stdio)| Fd { fd, cloexec, kind, outside_stdio })
}

fn arb_thread() -> impl Strategy<Value = Thread> {
    (
        any::<i32>(),
        prop::collection::vec(any::<u8>(), UCONTEXT_LEN),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<[u64; 7]>(),
        any::<(u32, u32, u64)>(),
        arb_string(),
    )
        .prop_map(|(tid, ucontext, fpstate, w, (rseq_len, rseq_sig, pending), name)| Thread {
            tid,
            ucontext,
            fpstate,
            fs_base: w[0],
            gs_base: w[1],
            clear_child_tid: w[2],
            robust_list: w[3],
            robust_list_len: w[4],
            rseq_addr: w[5],
            rseq_len,
            rseq_sig,
            pending,
            name,
        })
}

fn arb_posix_timer() -> impl Strategy<Value = PosixTimer> {
    (any::<[i32; 6]>(), any::<[u64; 3]>()).prop_map(|(i, u)| PosixTimer {
        id: i[0],
        clock: i[1],
        notify: i[2],
        signal: i[3],
        notify_tid: i[4],
        overrun: i[5],
        sigev_value: u[0],
        interval_ns: u[1],
        value_ns: u[2],
    })
}

/// Regions laid out in order with gaps; each is (gap, length) in pages.
fn arb_regions() -> impl Strategy<Value = Vec<Region>> {
    prop::collection::vec(
        (0u64..64, 1u64..64, 0u8..8, any::<bool>(), any::<bool>(), arb_region_kind(), arb_string()),
        0..6,
    )
    .prop_map(|specs| {
        let mut at = 0x1000u64;
        specs
            .into_iter()
            .map(|(gap, len, prot, shared, growsdown, kind, name)| {
                let start = at + gap * PAGE_SIZE;
                at = start + len * PAGE_SIZE;
                Region {
                    start,
                    end: at,
                    prot,
                    shared,
                    growsdown,
                    kind,
                    name,
                    fork_advice: (gap % 4) as u8,
                    noreserve: len % 3 == 0,
                }
            })
            .collect()
    })
}

/// Raw numbers turned into a chunk that refers to an existing region or
/// descriptor and lies inside its region; None when there is nothing to
/// refer to. A compressed chunk stores any number of bytes.
fn make_chunk(raw: (bool, u32, u64, u64, u64, u64, Option<u32>), regions: &[Region], fds: usize) -> Option<Chunk> {
    let (memory, index, offset, len, file_offset, checksum, stored) = raw;
    let (kind, file_offset, data_len) = if memory {
        let region = index % u32::try_from(regions.len()).ok().filter(|&n| n > 0)?;
        let r = &regions[region as usize];
        let pages = (r.end - r.start) / PAGE_SIZE;
        let first = offset % pages;
        let room = (pages - first) * PAGE_SIZE;
        let kind = ChunkKind::Memory { region, offset: first * PAGE_SIZE };
        (kind, file_offset & !(PAGE_SIZE - 1), len % (room + 1))
    } else {
        let fd_index = index % u32::try_from(fds).ok().filter(|&n| n > 0)?;
        (ChunkKind::FileContents { fd_index, offset: offset >> 1 }, file_offset, len >> 1)
    };
    Some(match stored {
        None => Chunk { kind, file_offset, len: data_len, checksum, compression: Compression::None, data_len },
        Some(n) => Chunk {
            kind,
            file_offset,
            len: n.into(),
            checksum,
            compression: Compression::Lz4,
            data_len: data_len % (MAX_CHUNK_LEN + 1),
        },
    })
}

prop_compose! {
    fn arb_meta()(
        regions in arb_regions(),
        threads in prop::collection::vec(arb_thread(), 0..4),
        fds in prop::collection::vec(arb_fd(), 0..5),
        raw_chunks in prop::collection::vec(any::<(bool, u32, u64, u64, u64, u64, Option<u32>)>(), 0..8),
        cmdline in prop::collection::vec(arb_string(), 0..4),
        rlimits in prop::collection::vec(any::<(u32, u64, u64)>(), 0..4),
        sigactions in prop::collection::vec(any::<[u64; 4]>(), 0..=64),
        itimers in prop::collection::vec(any::<(u64, u64)>(), 0..=3),
        posix_timers in prop::collection::vec(arb_posix_timer(), 0..3),
        mm in any::<[u64; 11]>(),
        auxv in prop::collection::vec(any::<u64>(), 0..8),
        numbers in any::<[u64; 6]>(),
        ids in any::<(i32, i32, u32, i32, u32)>(),
        zombies in proptest::collection::vec(any::<(i32, i32)>(), 0..3),
        sysv_ipc in proptest::collection::vec(arb_sysv(), 0..3),
        strings in (arb_string(), arb_string(), arb_string()),
    ) -> ProcessMeta {
        let chunks = raw_chunks.into_iter().filter_map(|raw| make_chunk(raw, &regions, fds.len())).collect();
        ProcessMeta {
            generation: numbers[0],
            computation_id: numbers[1],
            created_unix: numbers[2],
            pid: ids.0,
            ppid: ids.1,
            pgid: ids.3,
            sid: ids.0,
            zombies: zombies.into_iter().map(|(pid, status)| Zombie { pid, status }).collect(),
            name: strings.0,
            exe: strings.1,
            cmdline,
            cwd: strings.2,
            umask: ids.2,
            rlimits: rlimits.into_iter().map(|(resource, soft, hard)| Rlimit { resource, soft, hard }).collect(),
            mm: MmLayout {
                start_code: mm[0], end_code: mm[1], start_data: mm[2], end_data: mm[3], start_brk: mm[4],
                brk: mm[5], start_stack: mm[6], arg_start: mm[7], arg_end: mm[8], env_start: mm[9],
                env_end: mm[10], auxv,
            },
            regions,
            threads,
            fds,
            sigactions: sigactions
                .into_iter()
                .map(|a| SigAction { handler: a[0], flags: a[1], restorer: a[2], mask: a[3] })
                .collect(),
            shared_pending: numbers[3],
            itimers: itimers.into_iter().map(|(interval_us, value_us)| ITimer { interval_us, value_us }).collect(),
            posix_timers,
            agent: AgentInfo {
                restore_info_addr: numbers[4],
                ckpt_signal: ids.3,
                interval_s: ids.4,
                compress: ids.4 % 2 == 1,
            },
            chunks,
            inherited: Vec::new(),
            sockets_peer_shut: (0..numbers[5] % 3).map(|i| numbers[5].wrapping_add(i)).collect(),
            sysv_ipc,
            allow_file_overwrite: ids.4 % 3 == 1,
        }
    }
}

/// Which bytes of the sample image carry meaning: the header, the chunks
/// and the metadata. The rest of the header page and the padding between
/// chunks do not.
fn significant(i: usize) -> bool {
    static MAP: OnceLock<Vec<bool>> = OnceLock::new();
    MAP.get_or_init(|| {
        let bytes = sample_bytes();
        let (h, m) = parse_image(bytes).unwrap();
        let mut map = vec![false; bytes.len()];
        // DMTCP's signature (32 bytes), then the header (64).
        map[..96].fill(true);
        for c in &m.chunks {
            map[c.file_offset as usize..(c.file_offset + c.len) as usize].fill(true);
        }
        map[h.meta_offset as usize..(h.meta_offset + h.meta_len) as usize].fill(true);
        map
    })[i]
}

proptest! {
    #[test]
    fn meta_round_trips(meta in arb_meta()) {
        let bytes = encode_meta(&meta);
        let back = decode_meta(&bytes).unwrap();
        prop_assert_eq!(&back, &meta);
        prop_assert!(!render(&back).is_empty());
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_meta(&bytes);
        let _ = parse_image(&bytes);
    }

    /// Damage to real metadata reaches deeper than random bytes do: it
    /// gets past the first lengths and tags.
    #[test]
    fn damaged_metadata_never_panics(
        meta in arb_meta(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_meta(&meta);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(m) = decode_meta(&bytes) {
            // What decodes is canonical: it encodes back to the same bytes.
            prop_assert_eq!(encode_meta(&m), bytes.clone());
            let _ = render(&m);
        }
        let n = cut.index(bytes.len() + 1);
        if n < bytes.len() {
            prop_assert!(decode_meta(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn a_flipped_bit_never_panics_and_is_caught(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = sample_bytes().to_vec();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let result = parse_image(&bytes);
        if significant(i) {
            prop_assert!(result.is_err(), "flipping bit {} of byte {} went unnoticed", bit, i);
        } else {
            prop_assert!(result.is_ok(), "flipping bit {} of padding byte {} gave {:?}", bit, i, result.err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Arbitrary metadata and chunks through a real file and back.
    #[test]
    fn images_round_trip_through_files(meta in arb_meta(), compress in any::<bool>()) {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("p.img");
        let mut w = ImageWriter::create(&path).unwrap();
        if compress {
            w.set_compression(Compression::Lz4);
        }
        let mut data = Vec::new();
        for (i, c) in meta.chunks.iter().enumerate() {
            // Bounded: a chunk of up to a few pages is plenty.
            let len = c.data_len.min(3 * PAGE_SIZE + 17) as usize;
            let bytes: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            w.append_chunk(c.kind, &bytes).unwrap();
            data.push(bytes);
        }
        let size = w.finish(meta.clone()).unwrap();
        let r = ImageReader::open(&path).unwrap();
        prop_assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        r.verify_payload().unwrap();
        for (c, bytes) in r.meta().chunks.iter().zip(&data) {
            prop_assert_eq!(&r.chunk_data(c).unwrap(), bytes);
        }
        let mut expected = meta;
        expected.chunks = r.meta().chunks.clone();
        prop_assert_eq!(r.meta(), &expected);
    }
}

#[test]
fn compressed_chunks_round_trip_and_random_data_stays_plain() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("c.img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.set_compression(Compression::Lz4);
    let repetitive: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let a = w.append_chunk(ChunkKind::Memory { region: 0, offset: 0 }, &repetitive).unwrap();
    let b = w.append_chunk(ChunkKind::Memory { region: 0, offset: 65536 }, &random).unwrap();
    assert_eq!(a.compression, Compression::Lz4);
    assert!(a.len < repetitive.len() as u64 / 4, "{a:?}");
    assert_eq!(a.data_len, repetitive.len() as u64);
    assert_eq!(b.compression, Compression::None);
    assert_eq!(b.file_offset % PAGE_SIZE, 0);
    let mut meta = ProcessMeta {
        regions: vec![Region { start: 0x10000, end: 0x30000, prot: PROT_READ, ..Default::default() }],
        ..Default::default()
    };
    meta.threads = vec![];
    w.finish(meta).unwrap();
    let r = ImageReader::open(&path).unwrap();
    r.verify_payload().unwrap();
    let chunks = r.meta().chunks.clone();
    assert_eq!(r.chunk_data(&chunks[0]).unwrap(), repetitive);
    assert_eq!(r.chunk_data(&chunks[1]).unwrap(), random);
    // Damage inside the compressed bytes is caught by the checksum.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[chunks[0].file_offset as usize + 10] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let r = ImageReader::open(&path).unwrap();
    assert!(r.verify_payload().is_err());
    assert!(r.chunk_data(&chunks[0]).is_err());
}

fn arb_sysv() -> impl Strategy<Value = SysvObject> {
    prop_oneof![
        (
            any::<(i32, i32, u32, u64)>(),
            proptest::collection::vec(
                (any::<i64>(), proptest::collection::vec(any::<u8>(), 0..20))
                    .prop_map(|(mtype, data)| SysvMessage { mtype, data }),
                0..3
            )
        )
            .prop_map(|((id, key, mode, qbytes), messages)| SysvObject::MessageQueue {
                id,
                key,
                mode,
                qbytes,
                messages
            }),
        (any::<(i32, i32, u32)>(), proptest::collection::vec(any::<u16>(), 0..4))
            .prop_map(|((id, key, mode), values)| SysvObject::Semaphores { id, key, mode, values }),
    ]
}
