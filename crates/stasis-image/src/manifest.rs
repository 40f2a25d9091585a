//! The MANIFEST of a generation: a small text file written last, whose
//! presence (with a valid checksum) is what makes a generation committed.
//!
//! ```text
//! stasis-manifest 1
//! generation 3
//! computation 9f2c...
//! created 1795512610
//! interval 60
//! process 4242 ckpt_a_4242.img a
//! checksum 0123456789abcdef
//! ```

use std::io::{Read, Write};
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::{Error, Result};

pub const MANIFEST: &str = "MANIFEST";
const FIRST_LINE: &str = "stasis-manifest 1";

/// The record that commits a generation: it is written last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub generation: u64,
    pub computation_id: u64,
    pub created_unix: u64,
    pub interval_s: u32,
    pub processes: Vec<ManifestProcess>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestProcess {
    pub pid: i32,
    pub name: String,
    /// Image file name, relative to the generation directory.
    pub image: String,
}

/// Image names and program names must fit on one line as single words.
fn word(s: &str) -> String {
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
            s.push_str(&format!("process {} {} {}\n", p.pid, word(&p.image), word(&p.name)));
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
        if lines.next() != Some(FIRST_LINE) {
            return Err(format!("not a stasis manifest (the first line is not {FIRST_LINE:?})"));
        }
        let mut m = Manifest::default();
        let mut seen = [false; 4];
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
                    want(4)?;
                    let pid = words[1].parse().map_err(|_| format!("bad pid in {line:?}"))?;
                    if !valid_image_name(words[2]) {
                        return Err(format!("bad image name in {line:?}"));
                    }
                    m.processes.push(ManifestProcess { pid, image: words[2].into(), name: words[3].into() });
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
        Ok(m)
    }

    /// Writes MANIFEST in `dir` atomically (temporary file, fsync, rename).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("MANIFEST.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(MANIFEST))
    }

    /// Reads and checks `dir/MANIFEST`.
    pub fn read_from(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_MANIFEST_LEN + 1).read_to_end(&mut bytes))
            .map_err(|source| Error::Io { path: path.clone(), op: "read", source })?;
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
                ManifestProcess { pid: 42, name: "my prog".into(), image: "ckpt_a_42.img".into() },
                ManifestProcess { pid: -1, name: String::new(), image: "b.img".into() },
            ],
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
        assert!(text.starts_with("stasis-manifest 1\ngeneration 7\ncomputation 00000000deadbeef\n"), "{text}");
        let back = Manifest::decode(&text).unwrap();
        // Names become single words; everything else is kept.
        assert_eq!(back.processes[0].name, "my_prog");
        let mut expected = m;
        expected.processes[0].name = "my_prog".into();
        assert_eq!(back, expected);
        assert_eq!(Manifest::decode(&Manifest::default().encode()).unwrap(), Manifest::default());
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
        let cases = [
            ("stasis-manifest 2\n", "first line"),
            ("stasis-manifest 1\ngeneration 1\ncomputation 1\ncreated 1\n", "no interval line"),
            ("stasis-manifest 1\ngeneration 1\ngeneration 2\n", "repeated"),
            ("stasis-manifest 1\ngeneration 1 2\n", "expected 2 words"),
            ("stasis-manifest 1\ngeneration x\n", "bad number"),
            ("stasis-manifest 1\ninterval 99999999999\n", "interval too large"),
            ("stasis-manifest 1\nprocess 1 ../x y\n", "bad image name"),
            ("stasis-manifest 1\nprocess 1 .. y\n", "bad image name"),
            ("stasis-manifest 1\nprocess 1 a.img\n", "expected 4 words"),
            ("stasis-manifest 1\nprocess x a.img y\n", "bad pid"),
            ("stasis-manifest 1\n\n", "unknown line"),
            ("stasis-manifest 1\nowner me\n", "unknown line"),
        ];
        for (body, want) in cases {
            let e = Manifest::decode(&signed(body)).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e:?} should mention {want:?}");
        }
        assert!(Manifest::decode("checksum 0000000000000000\n").is_err());
        assert!(Manifest::decode("stasis-manifest 1\nchecksum zz\n").is_err());
    }

    #[test]
    fn files() {
        let t = tempfile::tempdir().unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let m = sample();
        m.write_to(t.path()).unwrap();
        assert!(!t.path().join("MANIFEST.tmp").exists());
        assert_eq!(Manifest::read_from(t.path()).unwrap().generation, 7);
        std::fs::write(t.path().join(MANIFEST), b"\xff\xfe").unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err().to_string();
        assert!(e.ends_with("MANIFEST: invalid manifest: not UTF-8 text"), "{e}");
        std::fs::write(t.path().join(MANIFEST), m.encode().replace('7', "8")).unwrap();
        let e = Manifest::read_from(t.path()).unwrap_err().to_string();
        assert!(e.ends_with("MANIFEST: invalid manifest: checksum mismatch"), "{e}");
    }
}
