//! A MANIFEST and the images it vouches for, against random damage: every
//! edit of the MANIFEST (bytes, truncation, lines) and of an image's header
//! or metadata is refused, by the decoder or by the consistency checks that
//! restart makes; none is ever accepted as a different valid checkpoint, and
//! nothing panics.

use std::sync::OnceLock;

use proptest::prelude::*;
use stasis_image::*;

struct Fixture {
    manifest: Manifest,
    text: String,
    /// Each process's image bytes, in manifest order.
    images: Vec<Vec<u8>>,
}

fn meta(pid: i32, name: &str) -> ProcessMeta {
    ProcessMeta {
        generation: 4,
        computation_id: 0xfeed,
        pid,
        name: name.into(),
        threads: vec![Thread { tid: pid, ucontext: vec![0; UCONTEXT_LEN], ..Default::default() }],
        fds: vec![Fd { fd: 3, cloexec: false, kind: FdKind::Agent, outside_stdio: None }],
        ..Default::default()
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let mut manifest = Manifest { generation: 4, computation_id: 0xfeed, interval_s: 60, ..Default::default() };
        let mut images = Vec::new();
        for (pid, name) in [(10, "alpha"), (11, "beta")] {
            let path = t.path().join(format!("{name}.img"));
            let mut w = ImageWriter::create(&path).unwrap();
            w.append_chunk(ChunkKind::FileContents { fd_index: 0, offset: 0 }, name.as_bytes()).unwrap();
            w.finish(meta(pid, name)).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let (_, _, digest) = parse_image_digest(&bytes).unwrap();
            manifest.processes.push(ManifestProcess {
                pid,
                name: name.into(),
                image: format!("{name}.img"),
                size: bytes.len() as u64,
                digest,
            });
            images.push(bytes);
        }
        let text = manifest.encode();
        Fixture { manifest, text, images }
    })
}

/// What restart accepts: the manifest decodes and every image it lists is
/// the one given for that name. Returns the manifest accepted.
fn accepted(text: &str, images: &[(&str, &[u8])]) -> Option<Manifest> {
    let m = Manifest::decode(text).ok()?;
    if m.processes.is_empty() {
        return None;
    }
    for p in &m.processes {
        let (_, bytes) = images.iter().find(|(n, _)| *n == p.image)?;
        let (_, meta, digest) = parse_image_digest(bytes).ok()?;
        check_image(&m, p, &meta, bytes.len() as u64, digest).ok()?;
    }
    Some(m)
}

fn good_images(f: &Fixture) -> Vec<(&str, &[u8])> {
    f.manifest.processes.iter().zip(&f.images).map(|(p, b)| (p.image.as_str(), b.as_slice())).collect()
}

#[test]
fn the_fixture_is_accepted() {
    let f = fixture();
    assert_eq!(accepted(&f.text, &good_images(f)), Some(f.manifest.clone()));
    // Swapped images are not.
    let swapped = [("alpha.img", f.images[1].as_slice()), ("beta.img", f.images[0].as_slice())];
    assert_eq!(accepted(&f.text, &swapped), None);
}

/// An edit of a line: its index, and what to do to it.
#[derive(Debug, Clone)]
enum LineEdit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replace word `w` of the line with `s`.
    Word(usize, usize, String),
    Insert(usize, String),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        any::<usize>().prop_map(LineEdit::Delete),
        any::<usize>().prop_map(LineEdit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        (any::<usize>(), any::<usize>(), "[a-z0-9./_-]{0,20}").prop_map(|(l, w, s)| LineEdit::Word(l, w, s)),
        (any::<usize>(), "[ -~]{0,40}").prop_map(|(l, s)| LineEdit::Insert(l, s)),
    ]
}

fn apply(text: &str, e: &LineEdit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    match e {
        LineEdit::Delete(i) => {
            lines.remove(i % n);
        }
        LineEdit::Duplicate(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        LineEdit::Swap(a, b) => lines.swap(a % n, b % n),
        LineEdit::Word(i, w, s) => {
            let mut words: Vec<String> = lines[i % n].split(' ').map(str::to_string).collect();
            let k = words.len();
            words[w % k] = s.clone();
            lines[i % n] = words.join(" ");
        }
        LineEdit::Insert(i, s) => lines.insert(i % (n + 1), s.clone()),
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn manifest_byte_edits_are_refused(edits in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4)) {
        let f = fixture();
        let mut bytes = f.text.clone().into_bytes();
        for (at, x) in &edits {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Some(m) = accepted(&text, &good_images(f)) {
            prop_assert_eq!(m, f.manifest.clone());
        }
        prop_assert!(bytes == f.text.as_bytes() || accepted(&text, &good_images(f)).is_none());
    }

    #[test]
    fn manifest_truncations_are_refused(cut in any::<usize>()) {
        let f = fixture();
        let cut = cut % f.text.len();
        prop_assert!(accepted(&f.text[..cut], &good_images(f)).is_none());
    }

    #[test]
    fn manifest_line_edits_are_refused(edits in prop::collection::vec(line_edit(), 1..3)) {
        let f = fixture();
        let mut text = f.text.clone();
        for e in &edits {
            text = apply(&text, e);
        }
        match accepted(&text, &good_images(f)) {
            // Only an edit that changed nothing (a line swapped with
            // itself, a word replaced by itself) may be accepted.
            Some(m) => {
                prop_assert_eq!(&text, &f.text);
                prop_assert_eq!(m, f.manifest.clone());
            }
            None => prop_assert_ne!(&text, &f.text),
        }
    }

    #[test]
    fn image_header_and_metadata_edits_are_refused(
        which in 0usize..2,
        in_header in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4),
    ) {
        let f = fixture();
        let mut bytes = f.images[which].clone();
        let (h, _) = parse_image(&bytes).unwrap();
        let (lo, hi) = if in_header { (0, Header::LEN as usize) } else { (h.meta_offset as usize, bytes.len()) };
        for (at, x) in &edits {
            let i = lo + at % (hi - lo);
            bytes[i] ^= x;
        }
        let mut images = good_images(f);
        images[which].1 = &bytes;
        prop_assert!(accepted(&f.text, &images).is_none());
    }

    #[test]
    fn image_truncations_and_extensions_are_refused(which in 0usize..2, cut in any::<usize>(), grow in 1usize..9000) {
        let f = fixture();
        let good = &f.images[which];
        let short = &good[..cut % good.len()];
        let mut long = good.clone();
        long.resize(good.len() + grow, 0);
        for bytes in [short, long.as_slice()] {
            let mut images = good_images(f);
            images[which].1 = bytes;
            prop_assert!(accepted(&f.text, &images).is_none());
        }
    }
}
