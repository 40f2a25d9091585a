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

use std::io::Write;
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

    pub fn decode(text: &str) -> std::result::Result<Self, String> {
        let body_end = text.rfind("checksum ").ok_or("no checksum line")?;
        let (body, tail) = text.split_at(body_end);
        let sum = u64::from_str_radix(tail["checksum ".len()..].trim(), 16).map_err(|_| "bad checksum line")?;
        if sum != xxh3_64(body.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(FIRST_LINE) {
            return Err("not a stasis manifest (version line)".into());
        }
        let mut m = Manifest::default();
        for line in lines {
            let mut w = line.split(' ');
            let key = w.next().unwrap_or("");
            let mut next = || w.next().ok_or_else(|| format!("short line {line:?}"));
            let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number in {line:?}"));
            match key {
                "generation" => m.generation = num(next()?)?,
                "computation" => {
                    m.computation_id = u64::from_str_radix(next()?, 16).map_err(|_| format!("bad id in {line:?}"))?
                }
                "created" => m.created_unix = num(next()?)?,
                "interval" => m.interval_s = num(next()?)?.try_into().map_err(|_| "interval too large")?,
                "process" => {
                    let pid = next()?.parse().map_err(|_| format!("bad pid in {line:?}"))?;
                    let image = next()?.to_string();
                    let name = next()?.to_string();
                    if image.is_empty() || image.contains('/') || image == "." || image == ".." {
                        return Err(format!("bad image name in {line:?}"));
                    }
                    m.processes.push(ManifestProcess { pid, name, image });
                }
                _ => return Err(format!("unknown line {line:?}")),
            }
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

    pub fn read_from(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text =
            std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), op: "read", source })?;
        Manifest::decode(&text).map_err(|what| Error::Corrupt { path, what })
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
            processes: vec![ManifestProcess { pid: 42, name: "my prog".into(), image: "ckpt_a_42.img".into() }],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back.processes[0].name, "my_prog");
        assert_eq!(back.generation, 7);
        assert_eq!(back.computation_id, 0xdead_beef);
    }

    #[test]
    fn damage_is_refused() {
        let text = sample().encode();
        assert!(Manifest::decode(&text.replace("generation 7", "generation 8")).is_err());
        assert!(Manifest::decode(&text[..text.len() / 2]).is_err());
        assert!(Manifest::decode("").is_err());
        let evil = "stasis-manifest 1\nprocess 1 ../x y\n";
        let evil = format!("{evil}checksum {:016x}\n", xxh3_64(evil.as_bytes()));
        assert!(Manifest::decode(&evil).is_err());
    }
}
