//! The identity of a mapped file: what the agent records at checkpoint and
//! what restart checks before it maps the file again (`FileId`).
//!
//! Pages of a private file mapping that the program never wrote are not in
//! the image: restart maps them from the file at their offsets. Size and
//! mtime alone do not tell two builds of a program apart (a rebuild can
//! keep both, and anyone who can write a file can set its mtime back), so
//! the identity also holds the ELF build-id, the ctime and a hash of the
//! file's first pages. Reading them allocates nothing but the build-id
//! itself: the agent's image writer calls this too.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use xxhash_rust::xxh3::Xxh3;

use crate::model::FileId;

/// How much of the start of a file `FileId::head_hash` covers: the ELF
/// headers, the program headers and notes, and the first pages of code.
pub const HEAD_LEN: u64 = 64 << 10;

/// Longest build-id taken (ld writes 8 to 20 bytes; anything longer than
/// this is not a build-id anyone made).
const MAX_BUILD_ID: usize = 64;
/// Program headers and notes looked at, at most: a malformed file costs a
/// bounded number of reads.
const MAX_PHDRS: usize = 256;
const MAX_NOTES: usize = 256;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// Reads the identity of the open file `f` as it is now: its metadata,
/// its build-id and the hash of its first `HEAD_LEN` bytes.
pub fn identify(f: &File) -> io::Result<FileId> {
    let md = f.metadata()?;
    let size = md.size();
    Ok(FileId {
        size,
        mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
        inode: md.ino(),
        build_id: build_id(f, size).unwrap_or_default(),
        head_hash: head_hash(f, size)?,
    })
}

/// xxh3-64 of the first `min(size, HEAD_LEN)` bytes of `f`; a file shorter
/// than `size` says is an error (it changed while being read).
pub fn head_hash(f: &File, size: u64) -> io::Result<u64> {
    let len = size.min(HEAD_LEN);
    let mut h = Xxh3::new();
    let mut buf = [0u8; 4096];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.digest())
}

/// Reads exactly `buf.len()` bytes at `off`, within the first `size` bytes.
fn read_in(f: &File, size: u64, buf: &mut [u8], off: u64) -> Option<()> {
    let end = off.checked_add(buf.len() as u64)?;
    if end > size {
        return None;
    }
    f.read_exact_at(buf, off).ok()
}

/// The ELF build-id of `f` (`size` bytes long): the descriptor of the first
/// `NT_GNU_BUILD_ID` note named "GNU" in a `PT_NOTE` segment. None for a
/// file that is not ELF, has no such note, or is malformed in any way.
pub fn build_id(f: &File, size: u64) -> Option<Vec<u8>> {
    let mut eh = [0u8; 64];
    read_in(f, size, &mut eh[..16], 0)?;
    if eh[..4] != *b"\x7fELF" {
        return None;
    }
    let wide = match eh[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match eh[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let u16_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1]];
        u64::from(if big { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) })
    };
    let u32_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        u64::from(if big { u32::from_be_bytes(v) } else { u32::from_le_bytes(v) })
    };
    let u64_at = |b: &[u8], o: usize| {
        let (hi, lo) = if big { (u32_at(b, o), u32_at(b, o + 4)) } else { (u32_at(b, o + 4), u32_at(b, o)) };
        (hi << 32) | lo
    };
    let word_at = |b: &[u8], o32: usize, o64: usize| if wide { u64_at(b, o64) } else { u32_at(b, o32) };

    let ehdr_len = if wide { 64 } else { 52 };
    read_in(f, size, &mut eh[..ehdr_len], 0)?;
    let phoff = word_at(&eh, 0x1c, 0x20);
    let (phentsize, phnum) =
        if wide { (u16_at(&eh, 0x36), u16_at(&eh, 0x38)) } else { (u16_at(&eh, 0x2a), u16_at(&eh, 0x2c)) };
    let min_phent = if wide { 56 } else { 32 };
    if phentsize < min_phent || phnum as usize > MAX_PHDRS {
        return None;
    }
    let mut ph = [0u8; 56];
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize)?;
        read_in(f, size, &mut ph[..min_phent as usize], at)?;
        if u32_at(&ph, 0) != u64::from(PT_NOTE) {
            continue;
        }
        let (offset, filesz, align) = if wide {
            (u64_at(&ph, 8), u64_at(&ph, 32), u64_at(&ph, 48))
        } else {
            (u32_at(&ph, 4), u32_at(&ph, 16), u32_at(&ph, 28))
        };
        if let Some(id) = build_id_in_notes(f, size, offset, filesz, align, &u32_at) {
            return Some(id);
        }
    }
    None
}

/// Walks the notes of one `PT_NOTE` segment for the GNU build-id.
fn build_id_in_notes(
    f: &File,
    size: u64,
    offset: u64,
    filesz: u64,
    align: u64,
    u32_at: &dyn Fn(&[u8], usize) -> u64,
) -> Option<Vec<u8>> {
    // Notes are padded to 4 bytes, or to 8 in segments aligned so.
    let pad = if align == 8 { 8 } else { 4 };
    let end = offset.saturating_add(filesz).min(size);
    let mut at = offset;
    for _ in 0..MAX_NOTES {
        if at.checked_add(12)? > end {
            return None;
        }
        let mut nh = [0u8; 12];
        read_in(f, size, &mut nh, at)?;
        let (namesz, descsz, kind) = (u32_at(&nh, 0), u32_at(&nh, 4), u32_at(&nh, 8));
        let name_at = at + 12;
        // Name and descriptor each start aligned, counted from the segment.
        let aligned = |x: u64| offset.checked_add((x - offset).checked_next_multiple_of(pad)?);
        let desc_at = aligned(name_at.checked_add(namesz)?)?;
        let next = aligned(desc_at.checked_add(descsz)?)?;
        if desc_at.checked_add(descsz)? > end {
            return None;
        }
        if kind == u64::from(NT_GNU_BUILD_ID) && namesz == 4 {
            let mut name = [0u8; 4];
            read_in(f, size, &mut name, name_at)?;
            if name == *b"GNU\0" {
                if descsz == 0 || descsz as usize > MAX_BUILD_ID {
                    return None;
                }
                let mut id = vec![0u8; descsz as usize];
                read_in(f, size, &mut id, desc_at)?;
                return Some(id);
            }
        }
        at = next;
    }
    None
}

/// How the file found at restart compares with the one the program mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The same file.
    Same,
    /// The same contents as far as the identity tells (same size, mtime and
    /// first pages, no build-id either side), but another inode or ctime:
    /// a copy (another node, a file restored from a backup) or a file
    /// written again with its mtime put back. What differs, in words.
    Copy(String),
    /// Another file. What differs, in words.
    Changed(String),
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn time(ns: i128) -> String {
    format!("{}.{:09}", ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// The rule restart applies to a private file mapping (docs/image-format.md,
/// "Mapped files"): with a build-id, the build-id, size and first pages
/// must be equal (inode and times may differ: the same build installed on
/// another node is the same code); without one, size, mtime and first pages
/// must be equal, and a different inode or ctime makes it a `Copy`, which
/// the caller accepts only from an owner it trusts.
pub fn compare(then: &FileId, now: &FileId) -> Verdict {
    let id = |b: &[u8]| if b.is_empty() { "none".to_string() } else { hex(b) };
    if then.build_id != now.build_id {
        return Verdict::Changed(format!("build-id {} then, {} now", id(&then.build_id), id(&now.build_id)));
    }
    if then.size != now.size {
        return Verdict::Changed(format!("size {} then, {} now", then.size, now.size));
    }
    if then.build_id.is_empty() && then.mtime_ns != now.mtime_ns {
        return Verdict::Changed(format!("mtime {} then, {} now", time(then.mtime_ns), time(now.mtime_ns)));
    }
    if then.head_hash != now.head_hash {
        return Verdict::Changed(format!(
            "same size{}, other contents in the first {} KiB",
            if then.build_id.is_empty() { " and mtime" } else { " and build-id" },
            HEAD_LEN >> 10
        ));
    }
    if then.build_id.is_empty() {
        let mut what = Vec::new();
        if then.inode != now.inode {
            what.push(format!("inode {} then, {} now", then.inode, now.inode));
        }
        if then.ctime_ns != now.ctime_ns {
            what.push(format!("ctime {} then, {} now", time(then.ctime_ns), time(now.ctime_ns)));
        }
        if !what.is_empty() {
            return Verdict::Copy(what.join("; "));
        }
    }
    Verdict::Same
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        (dir, f)
    }

    /// A minimal ELF64 little-endian file: one PT_NOTE segment holding
    /// `notes`, starting right after the one program header.
    fn elf64(notes: &[u8], align: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        b[ph + 48..ph + 56].copy_from_slice(&align.to_le_bytes());
        b.extend_from_slice(notes);
        b
    }

    fn note(name: &[u8], kind: u32, desc: &[u8], pad: usize) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(pad), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(pad), 0);
        n
    }

    fn id_of(bytes: &[u8]) -> Option<Vec<u8>> {
        let (_d, f) = file_with(bytes);
        build_id(&f, bytes.len() as u64)
    }

    #[test]
    fn real_binaries_have_a_build_id() {
        // Distributions link everything with --build-id; readelf agrees
        // where it is installed.
        for path in ["/bin/true", "/bin/sh"] {
            let f = File::open(path).unwrap();
            let id = build_id(&f, f.metadata().unwrap().len()).unwrap_or_else(|| panic!("{path}: no build-id"));
            assert!((8..=MAX_BUILD_ID).contains(&id.len()), "{path}: {id:?}");
            if let Ok(out) = std::process::Command::new("readelf").args(["-n", path]).output() {
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("Build ID") {
                    assert!(text.contains(&hex(&id)), "{path}: {} not in\n{text}", hex(&id));
                }
            }
        }
    }

    #[test]
    fn notes_are_walked_past_others() {
        let id = [0xab; 20];
        let notes = [note(b"GNU\0", 5, &[1; 12], 4), note(b"XYZ\0", 3, &[2; 8], 4), note(b"GNU\0", 3, &id, 4)].concat();
        assert_eq!(id_of(&elf64(&notes, 4)), Some(id.to_vec()));
        let notes = [note(b"GNU\0", 5, &[1; 12], 8), note(b"GNU\0", 3, &id[..8], 8)].concat();
        assert_eq!(id_of(&elf64(&notes, 8)), Some(id[..8].to_vec()));
    }

    #[test]
    fn truncated_or_garbage_files_have_none() {
        let real = std::fs::read("/bin/true").unwrap();
        // Cut at every length up to the notes and beyond: never a panic,
        // and a cut file yields the real build-id or none.
        let whole = id_of(&real).unwrap();
        for len in (0..real.len().min(8192)).step_by(7) {
            let got = id_of(&real[..len]);
            assert!(got.is_none() || got.as_deref() == Some(&whole[..]), "cut at {len}");
        }
        assert_eq!(id_of(b""), None);
        assert_eq!(id_of(b"#!/bin/sh\necho hi\n"), None);
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..200 {
            let mut b = elf64(&note(b"GNU\0", 3, &[7; 20], 4), 4);
            // Random bytes over the headers and notes.
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 4 + (x as usize % (b.len() - 4));
                b[i] = (x >> 32) as u8;
            }
            let _ = id_of(&b);
        }
        // Sizes and counts that point far outside the file.
        let mut b = elf64(&note(b"GNU\0", 3, &[7; 20], 4), 4);
        b[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(id_of(&b), Some(vec![7; 20]));
        let mut b = elf64(&note(b"GNU\0", 3, &[7; 20], 4), 4);
        b[120 + 4..120 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(id_of(&b), None);
        let mut b = elf64(&[], 4);
        b[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(id_of(&b), None);
    }

    #[test]
    fn head_hash_covers_the_first_pages_only() {
        let mut a = vec![1u8; (HEAD_LEN + 10_000) as usize];
        let (_d, f) = file_with(&a);
        let h = head_hash(&f, a.len() as u64).unwrap();
        assert_eq!(h, xxhash_rust::xxh3::xxh3_64(&a[..HEAD_LEN as usize]));
        a[HEAD_LEN as usize + 5] = 2;
        let (_d2, f2) = file_with(&a);
        assert_eq!(head_hash(&f2, a.len() as u64).unwrap(), h);
        a[100] = 2;
        let (_d3, f3) = file_with(&a);
        assert_ne!(head_hash(&f3, a.len() as u64).unwrap(), h);
        // A file shorter than its recorded size changed under the reader.
        let (_d4, short) = file_with(b"abc");
        assert!(head_hash(&short, 10).is_err());
        assert_eq!(head_hash(&short, 3).unwrap(), xxhash_rust::xxh3::xxh3_64(b"abc"));
    }

    #[test]
    fn identify_reads_metadata_and_contents() {
        let f = File::open("/bin/true").unwrap();
        let id = identify(&f).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!((id.size, id.inode), (md.len(), md.ino()));
        assert_eq!(id.ctime_ns, i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()));
        assert!(!id.build_id.is_empty());
        assert_eq!(identify(&File::open("/bin/true").unwrap()).unwrap(), id);
    }

    #[test]
    fn the_restart_rule() {
        let then = FileId {
            size: 100,
            mtime_ns: 5_000_000_001,
            ctime_ns: 6_000_000_000,
            inode: 7,
            build_id: vec![0x1a, 0x2b],
            head_hash: 99,
        };
        let same = |f: &dyn Fn(&mut FileId)| {
            let mut now = then.clone();
            f(&mut now);
            compare(&then, &now)
        };
        // With a build-id: inode and times may differ (another node).
        assert_eq!(same(&|_| {}), Verdict::Same);
        assert_eq!(
            same(&|n| {
                n.inode = 8;
                n.mtime_ns = 1;
                n.ctime_ns = 2;
            }),
            Verdict::Same
        );
        assert_eq!(same(&|n| n.build_id = vec![0x3c, 0x4d]), Verdict::Changed("build-id 1a2b then, 3c4d now".into()));
        assert_eq!(same(&|n| n.build_id.clear()), Verdict::Changed("build-id 1a2b then, none now".into()));
        assert_eq!(same(&|n| n.size = 101), Verdict::Changed("size 100 then, 101 now".into()));
        assert_eq!(
            same(&|n| n.head_hash = 1),
            Verdict::Changed("same size and build-id, other contents in the first 64 KiB".into())
        );

        // Without: mtime counts, and another inode or ctime is a copy.
        let then = FileId { build_id: Vec::new(), ..then };
        let same = |f: &dyn Fn(&mut FileId)| {
            let mut now = then.clone();
            f(&mut now);
            compare(&then, &now)
        };
        assert_eq!(same(&|_| {}), Verdict::Same);
        assert_eq!(same(&|n| n.build_id = vec![1]), Verdict::Changed("build-id none then, 01 now".into()));
        assert_eq!(
            same(&|n| n.mtime_ns = 5_000_000_002),
            Verdict::Changed("mtime 5.000000001 then, 5.000000002 now".into())
        );
        assert_eq!(
            same(&|n| n.head_hash = 1),
            Verdict::Changed("same size and mtime, other contents in the first 64 KiB".into())
        );
        assert_eq!(same(&|n| n.inode = 8), Verdict::Copy("inode 7 then, 8 now".into()));
        assert_eq!(
            same(&|n| {
                n.inode = 8;
                n.ctime_ns = 6_000_000_002;
            }),
            Verdict::Copy("inode 7 then, 8 now; ctime 6.000000000 then, 6.000000002 now".into())
        );
    }
}
