//! Files open for writing whose contents a checkpoint keeps beside its
//! images (docs/files.md): how the copies are named, and the user's
//! settings for which files are kept.
//!
//! A copy's name says which state of which file it holds: device, inode,
//! size, mtime and ctime. The next checkpoint finds an unchanged file's copy
//! in the previous generation by that name alone and hard-links it, so each
//! generation holds every copy it needs and pruning an older one takes
//! nothing from a newer one.

/// Prefix of every saved copy's name in a generation's directory.
pub const PREFIX: &str = "file-";
/// Suffix of a copy taken while the file's timestamps were too recent to
/// tell a later write from this state: never reused by the next checkpoint.
pub const FRESH: &str = "-new";

/// Default of `--save-files-limit`: bytes of files one process may save at
/// one checkpoint.
pub const DEFAULT_LIMIT: u64 = 1 << 30;

/// Environment variable holding the limit (bytes, or with K, M, G, T).
pub const LIMIT_VAR: &str = "STASIS_SAVE_FILES_LIMIT";
/// Environment variable holding the excluded patterns, separated by `:`.
pub const EXCLUDE_VAR: &str = "STASIS_NO_SAVE_FILE";
/// Environment variable (`1`) of `--checkpoint-open-files`: files open
/// read-only (the user's own) are saved too.
pub const OPEN_FILES_VAR: &str = "STASIS_CKPT_OPEN_FILES";
/// Environment variable (`1`) of `--allow-file-overwrite`: at restart, a
/// file saved by `--checkpoint-open-files` replaces one that differs.
pub const OVERWRITE_VAR: &str = "STASIS_ALLOW_FILE_OVERWRITE";

/// Whether an environment variable of an on/off setting says on: set,
/// and not empty nor `0` (DMTCP's variables are on when merely set).
pub fn is_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// The state of a file that identifies its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// The name of the copy of a file in `state`; `fresh` when its timestamps
/// are too close to now to rule out a write in the same clock tick.
pub fn saved_name(state: &FileState, fresh: bool) -> String {
    let FileState { dev, inode, size, mtime_ns, ctime_ns } = *state;
    format!("{PREFIX}{dev:x}-{inode}-{size}-{mtime_ns}-{ctime_ns}{}", if fresh { FRESH } else { "" })
}

/// Whether `name` is one [`saved_name`] makes (a plain name in the
/// generation's directory, nothing that leads elsewhere).
pub fn is_saved_name(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() < 200
            && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'n' || b == b'e' || b == b'w')
    })
}

/// A size in bytes: digits, optionally followed by K, M, G or T (powers of
/// 1024, an optional trailing `B` or `iB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let t = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let (digits, shift) = match t.chars().last()? {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Shell-like pattern match on a whole path: `*` matches any run of
/// characters (`/` included), `?` any one character.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), path.chars().collect());
    // Classic iterative match with one backtrack point for the last `*`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The first of the `:`-separated `patterns` that `path` matches.
pub fn excluded_by<'a>(patterns: &'a str, path: &str) -> Option<&'a str> {
    patterns.split(':').filter(|p| !p.is_empty()).find(|p| glob_match(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1K"), Some(1024));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("3gb"), Some(3 << 30));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.log", "/tmp/a/b.log"));
        assert!(glob_match("/scratch/*", "/scratch/x/y"));
        assert!(glob_match("/a/?.db", "/a/x.db"));
        assert!(!glob_match("/a/?.db", "/a/xy.db"));
        assert!(!glob_match("*.log", "/tmp/b.log2"));
        assert!(glob_match("*", ""));
        assert_eq!(excluded_by("/x/*::*.tmp", "/y/z.tmp"), Some("*.tmp"));
        assert_eq!(excluded_by("", "/y/z.tmp"), None);
    }

    #[test]
    fn names() {
        let st = FileState { dev: 0x803, inode: 12, size: 4096, mtime_ns: 1_700_000_000_123_456_789, ctime_ns: -5 };
        let n = saved_name(&st, false);
        assert!(is_saved_name(&n), "{n}");
        assert!(is_saved_name(&saved_name(&st, true)));
        assert!(!is_saved_name("file-../x"));
        assert!(!is_saved_name("file-"));
        assert!(!is_saved_name("ckpt_a_1.img"));
        assert_ne!(n, saved_name(&FileState { size: 4097, ..st }, false));
    }
}
