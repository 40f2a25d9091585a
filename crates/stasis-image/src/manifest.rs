//! The MANIFEST of a generation: a small text file written last, whose
//! presence (with a valid checksum) is what makes a generation committed.
//!
//! ```text
//! stasis-manifest 2
//! generation 3
//! computation 9f2c...
//! created 1795512610
//! interval 60
//! process 4242 ckpt_a_4242.img a 1052672 5d41...
//! checksum 0123456789abcdef
//! ```
//!
//! Each process line carries its image's size and digest (the SHA-256 of
//! the image's header and metadata, which list every chunk with its
//! checksum), so the manifest vouches for the whole image.

use std::io::{Read, Write};
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::dirfd::Dir;
use crate::{Error, Result};

pub const MANIFEST: &str = "MANIFEST";
const FIRST_LINE: &str = "stasis-manifest 2";
const OLD_FIRST_LINE: &str = "stasis-manifest 1";

/// The SHA-256 of an image's 64-byte header followed by its metadata.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `header` (the 64 bytes at offset 0) and `meta`.
    pub fn of(header: &[u8], meta: &[u8]) -> Digest {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(header);
        h.update(meta);
        let mut out = [0u8; 32];
        out.copy_from_slice(&h.finalize());
        Digest(out)
    }

    pub fn parse(hex: &str) -> Option<Digest> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// The record that commits a generation: it is written last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub generation: u64,
    pub computation_id: u64,
    pub created_unix: u64,
    pub interval_s: u32,
    pub processes: Vec<ManifestProcess>,
    /// Earlier generations whose images this one's refer to (incremental
    /// checkpoints), ascending: they must be kept, and intact, as long as
    /// this one is. The line `needs 3 5`, absent when empty.
    pub needs: Vec<u64>,
    /// The coordinator's `--full-every`, which a restart keeps (0: not
    /// said). The line `full-every 8`, absent when 0.
    pub full_every: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestProcess {
    pub pid: i32,
    pub name: String,
    /// Image file name, relative to the generation directory.
    pub image: String,
    /// The image's length in bytes.
    pub size: u64,
    /// The image's header and metadata digest.
    pub digest: Digest,
}

/// Image names and program names must fit on one line as single words.
pub fn word(s: &str) -> String {
    s.chars().map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c }).collect()
}

/// A manifest is a few lines per process; anything much larger is not one.
const MAX_MANIFEST_LEN: u64 = 64 << 20;

/// An image name must stay inside the generation directory.
fn valid_image_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

impl Manifest {
    pub fn encode(&self) -> String {
        let mut s = format!(
            "{FIRST_LINE}\ngeneration {}\ncomputation {:016x}\ncreated {}\ninterval {}\n",
            self.generation, self.computation_id, self.created_unix, self.interval_s
        );
        for p in &self.processes {
            s.push_str(&format!("process {} {} {} {} {}\n", p.pid, word(&p.image), word(&p.name), p.size, p.digest));
        }
        if self.full_every != 0 {
            s.push_str(&format!("full-every {}\n", self.full_every));
        }
        if !self.needs.is_empty() {
            let list: Vec<String> = self.needs.iter().map(u64::to_string).collect();
            s.push_str(&format!("needs {}\n", list.join(" ")));
        }
        let sum = xxh3_64(s.as_bytes());
        s.push_str(&format!("checksum {sum:016x}\n"));
        s
    }

    /// Parses a manifest, checksum first. Strict: every field exactly
    /// once, no unknown lines, no extra words, so that damage that happens
    /// to keep the checksum line intact is still refused.
    pub fn decode(text: &str) -> std::result::Result<Self, String> {
        let text = text.strip_suffix('\n').ok_or("no final newline (cut short?)")?;
        let (body, last) = match text.rfind('\n') {
            Some(i) => (&text[..=i], &text[i + 1..]),
            None => ("", text),
        };
        let sum = last.strip_prefix("checksum ").ok_or("the last line is not the checksum (cut short?)")?;
        if sum.len() != 16 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad checksum line {last:?}"));
        }
        let sum = u64::from_str_radix(sum, 16).map_err(|_| format!("bad checksum line {last:?}"))?;
        if sum != xxh3_64(body.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        let first = lines.next();
        if first == Some(OLD_FIRST_LINE) {
            return Err("made by an older stasis; it lists no image digests".into());
        }
        if first != Some(FIRST_LINE) {
            return Err(format!("not a stasis manifest (the first line is not {FIRST_LINE:?})"));
        }
        let mut m = Manifest::default();
        let mut seen = [false; 4];
        let mut needs_seen = false;
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            let want = |n: usize| {
                if words.len() == n { Ok(()) } else { Err(format!("expected {} words in {line:?}", n)) }
            };
            let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number in {line:?}"));
            let field = match words[0] {
                "generation" => 0,
                "computation" => 1,
                "created" => 2,
                "interval" => 3,
                "process" => {
                    want(6)?;
                    let pid = words[1].parse().map_err(|_| format!("bad pid in {line:?}"))?;
                    if !valid_image_name(words[2]) || word(words[2]) != words[2] {
                        return Err(format!("bad image name in {line:?}"));
                    }
                    if word(words[3]) != words[3] {
                        return Err(format!("bad program name in {line:?}"));
                    }
                    let size = num(words[4])?;
                    let digest = Digest::parse(words[5]).ok_or_else(|| format!("bad digest in {line:?}"))?;
                    if m.processes.iter().any(|p| p.pid == pid) {
                        return Err(format!("pid {pid} listed twice"));
                    }
                    if m.processes.iter().any(|p| p.image == words[2]) {
                        return Err(format!("image {} listed twice", words[2]));
                    }
                    m.processes.push(ManifestProcess {
                        pid,
                        image: words[2].into(),
                        name: words[3].into(),
                        size,
                        digest,
                    });
                    continue;
                }
                "full-every" => {
                    want(2)?;
                    if m.full_every != 0 {
                        return Err(format!("repeated line {line:?}"));
                    }
                    m.full_every = num(words[1])?
                        .try_into()
                        .ok()
                        .filter(|&n| n != 0)
                        .ok_or_else(|| format!("bad number in {line:?}"))?;
                    continue;
                }
                "needs" => {
                    if needs_seen {
                        return Err(format!("repeated line {line:?}"));
                    }
                    needs_seen = true;
                    if words.len() < 2 {
                        return Err(format!("expected generations in {line:?}"));
                    }
                    for w in &words[1..] {
                        let g = num(w)?;
                        if g == 0 || m.needs.last().is_some_and(|&last| last >= g) {
                            return Err(format!("generations not ascending in {line:?}"));
                        }
                        m.needs.push(g);
                    }
                    continue;
                }
                _ => return Err(format!("unknown line {line:?}")),
            };
            want(2)?;
            if std::mem::replace(&mut seen[field], true) {
                return Err(format!("repeated line {line:?}"));
            }
            match field {
                0 => m.generation = num(words[1])?,
                1 => {
                    m.computation_id =
                        u64::from_str_radix(words[1], 16).map_err(|_| format!("bad computation id in {line:?}"))?
                }
                2 => m.created_unix = num(words[1])?,
                _ => m.interval_s = num(words[1])?.try_into().map_err(|_| format!("interval too large in {line:?}"))?,
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(format!("no {} line", ["generation", "computation", "created", "interval"][i]));
        }
        if m.needs.last().is_some_and(|&g| g >= m.generation) {
            return Err(format!("generation {} needs a later one", m.generation));
        }
        Ok(m)
    }

    /// Writes MANIFEST (mode 0600) in the open directory `dir` of a
    /// generation not yet committed, created afresh, fsynced: the rename
    /// of the directory is what commits it.
    pub fn write_in(&self, dir: &Dir) -> std::io::Result<()> {
        let mut f = dir.create_file(MANIFEST, 0o600)?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()
    }

    /// Reads and checks `dir/MANIFEST` (not through a link).
    pub fn read_from(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let d = Dir::open(dir).map_err(|source| Error::Io { path: dir.into(), op: "open", source })?;
        let f = d.open_file(MANIFEST).map_err(|source| Error::Io { path: path.clone(), op: "read", source })?;
        Manifest::read_file(f, &path)
    }

    /// Reads and checks a MANIFEST already open.
    pub fn read_file(f: std::fs::File, path: &Path) -> Result<Manifest> {
        let path = path.to_path_buf();
        let mut bytes = Vec::new();
        f.take(MAX_MANIFEST_LEN + 1).read_to_end(&mut bytes).map_err(|source| Error::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
        let bad = |what: String| Error::BadManifest { path: path.clone(), what };
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(bad(format!("larger than {MAX_MANIFEST_LEN} bytes")));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        Manifest::decode(text).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            generation: 7,
            computation_id: 0xdead_beef,
            created_unix: 1_795_512_610,
            interval_s: 60,
            processes: vec![
                ManifestProcess {
                    pid: 42,
                    name: "my prog".into(),
                    image: "ckpt_a_42.img".into(),
                    size: 1 << 20,
                    digest: Digest([0xab; 32]),
                },
                ManifestProcess { pid: -1, name: String::new(), image: "b.img".into(), ..Default::default() },
            ],
            ..Default::default()
        }
    }

    /// Text with a checksum line that matches it.
    fn signed(body: &str) -> String {
        format!("{body}checksum {:016x}\n", xxh3_64(body.as_bytes()))
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let text = m.encode();
        assert!(text.starts_with("stasis-manifest 2\ngeneration 7\ncomputation 00000000deadbeef\n"), "{text}");
        assert!(text.contains(&format!("\nprocess 42 ckpt_a_42.img my_prog 1048576 {}\n", "ab".repeat(32))), "{text}");
        let back = Manifest::decode(&text).unwrap();
        // Names become single words; everything else is kept.
        assert_eq!(back.processes[0].name, "my_prog");
        let mut expected = m;
        expected.processes[0].name = "my_prog".into();
        assert_eq!(back, expected);
        assert_eq!(Manifest::decode(&Manifest::default().encode()).unwrap(), Manifest::default());
    }

    #[test]
    fn needs_and_full_every() {
        let mut m = sample();
        m.processes[0].name = "my_prog".into();
        m.needs = vec![3, 5];
        m.full_every = 8;
        let text = m.encode();
        assert!(text.contains("\nfull-every 8\nneeds 3 5\n"), "{text}");
        assert_eq!(Manifest::decode(&text).unwrap(), m);
        // Absent when empty: older manifests read as before.
        assert!(!sample().encode().contains("needs"));
        let body = sample().encode();
        let body = &body[..body.rfind("checksum").unwrap()];
        for (line, want) in [
            ("needs\n", "expected generations"),
            ("needs 5 3\n", "not ascending"),
            ("needs 3 3\n", "not ascending"),
            ("needs 0\n", "not ascending"),
            ("needs 7\n", "needs a later one"),
            ("needs 3\nneeds 4\n", "repeated"),
            ("needs x\n", "bad number"),
            ("full-every 0\n", "bad number"),
            ("full-every 2\nfull-every 2\n", "repeated"),
        ] {
            let e = Manifest::decode(&signed(&format!("{body}{line}"))).unwrap_err();
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }

    #[test]
    fn damage_is_refused() {
        let text = sample().encode();
        let e = Manifest::decode(&text.replace("generation 7", "generation 8")).unwrap_err();
        assert_eq!(e, "checksum mismatch");
        for cut in 0..text.len() {
            assert!(Manifest::decode(&text[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Manifest::decode(&format!("{text}\n")).is_err());
        assert!(Manifest::decode(&format!("{text}extra\n")).is_err());
    }

    #[test]
    fn signed_nonsense_is_refused() {
        let d = "0".repeat(64);
        let cases = [
            ("stasis-manifest 3\n".to_string(), "first line"),
            ("stasis-manifest 1\ngeneration 1\n".into(), "made by an older stasis; it lists no image digests"),
            ("stasis-manifest 2\ngeneration 1\ncomputation 1\ncreated 1\n".into(), "no interval line"),
            ("stasis-manifest 2\ngeneration 1\ngeneration 2\n".into(), "repeated"),
            ("stasis-manifest 2\ngeneration 1 2\n".into(), "expected 2 words"),
            ("stasis-manifest 2\ngeneration x\n".into(), "bad number"),
            ("stasis-manifest 2\ninterval 99999999999\n".into(), "interval too large"),
            (format!("stasis-manifest 2\nprocess 1 ../x y 1 {d}\n"), "bad image name"),
            (format!("stasis-manifest 2\nprocess 1 .. y 1 {d}\n"), "bad image name"),
            ("stasis-manifest 2\nprocess 1 a.img y\n".into(), "expected 6 words"),
            (format!("stasis-manifest 2\nprocess x a.img y 1 {d}\n"), "bad pid"),
            (format!("stasis-manifest 2\nprocess 1 a.img y z {d}\n"), "bad number"),
            ("stasis-manifest 2\nprocess 1 a.img y 1 abc\n".into(), "bad digest"),
            (format!("stasis-manifest 2\nprocess 1 a.img y\tz 1 {d}\n"), "bad program name"),
            (format!("stasis-manifest 2\nprocess 1 a\u{1}.img y 1 {d}\n"), "bad image name"),
            (format!("stasis-manifest 2\nprocess 1 a.img y 1 {}\n", "A".repeat(64)), "bad digest"),
            (format!("stasis-manifest 2\nprocess 1 a.img y 1 {d}\nprocess 1 b.img y 1 {d}\n"), "pid 1 listed twice"),
            (
                format!("stasis-manifest 2\nprocess 1 a.img y 1 {d}\nprocess 2 a.img y 1 {d}\n"),
                "image a.img listed twice",
            ),
            ("stasis-manifest 2\n\n".into(), "unknown line"),
            ("stasis-manifest 2\nowner me\n".into(), "unknown line"),
        ];
        for (body, want) in cases {
            let e = Manifest::decode(&signed(&body)).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e:?} should mention {want:?}");
        }
        assert!(Manifest::decode("checksum 0000000000000000\n").is_err());
        assert!(Manifest::decode("stasis-manifest 2\nchecksum zz\n").is_err());
    }

    #[test]
    fn files() {
        let t = tempfile::tempdir().unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let m = sample();
        let d = Dir::open(t.path()).unwrap();
        m.write_in(&d).unwrap();
        assert_eq!(Manifest::read_from(t.path()).unwrap().generation, 7);
        // Never written over what is there, nor read through a link.
        assert!(m.write_in(&d).is_err());
        std::fs::rename(t.path().join(MANIFEST), t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join(MANIFEST)).unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err().to_string();
        assert!(e.ends_with("MANIFEST: read: it is a symbolic link"), "{e}");
        std::fs::remove_file(t.path().join(MANIFEST)).unwrap();
        std::fs::rename(t.path().join("real"), t.path().join(MANIFEST)).unwrap();
        std::fs::write(t.path().join(MANIFEST), b"\xff\xfe").unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err().to_string();
        assert!(e.ends_with("MANIFEST: invalid manifest: not UTF-8 text"), "{e}");
        std::fs::write(t.path().join(MANIFEST), m.encode().replace('7', "8")).unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err().to_string();
        assert!(e.ends_with("MANIFEST: invalid manifest: checksum mismatch"), "{e}");
    }
}
