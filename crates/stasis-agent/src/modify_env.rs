//! DMTCP's `--modify-env`: a restarted program sees the variables that
//! `dmtcp_env.txt` in its checkpoint directory sets or removes, so that a
//! computation restarted elsewhere can learn what differs there (DISPLAY,
//! a scratch directory). The changes are made before the program runs
//! again, so its first `getenv` after the restart already sees them.
//!
//! The launch marks the program with `STASIS_MODIFY_ENV=1`; the directory
//! is the launch's (`STASIS_CKPT_DIR`), where `dmtcp_restart` also finds
//! the images of a computation restarted in place.

use std::ffi::CString;
use std::path::Path;

/// The file, in the checkpoint directory.
pub const FILE: &str = "dmtcp_env.txt";

/// One line of the file.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Set(String, String),
    Remove(String),
}

/// The changes `text` lists: `NAME=value` sets NAME, `NAME` alone removes
/// it; blank lines and lines starting with `#` are skipped. A name that
/// cannot be one (empty, or with a NUL) is an error naming its line.
pub fn parse(text: &str) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value)),
            None => (line.trim(), None),
        };
        if name.is_empty() || name.contains('\0') || name.contains(char::is_whitespace) {
            return Err(format!("line {}: {line:?} names no variable", n + 1));
        }
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(format!("line {}: the value of {name} holds a NUL byte", n + 1));
        }
        out.push(match value {
            Some(v) => Change::Set(name.to_string(), v.to_string()),
            None => Change::Remove(name.to_string()),
        });
    }
    Ok(out)
}

/// In a restored process, before its program runs again (no other thread
/// of the program runs: setenv is safe).
pub fn restored() {
    if std::env::var_os("STASIS_MODIFY_ENV").is_none_or(|v| v != "1") {
        return;
    }
    let Some(dir) = std::env::var_os("STASIS_CKPT_DIR") else {
        crate::control::log(
            "--modify-env: no checkpoint directory known (STASIS_CKPT_DIR); the environment is left as it was",
        );
        return;
    };
    let path = Path::new(&dir).join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // No file: nothing to change, as under DMTCP.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            crate::control::log(&format!(
                "--modify-env: cannot read {}: {e}; the environment is left as it was",
                path.display()
            ));
            return;
        }
    };
    let changes = match parse(&text) {
        Ok(c) => c,
        Err(e) => {
            crate::control::log(&format!("--modify-env: {}: {e}; the environment is left as it was", path.display()));
            return;
        }
    };
    for c in changes {
        match c {
            Change::Set(name, value) => {
                if let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) {
                    crate::exec::setenv_real(&name, &value);
                }
            }
            Change::Remove(name) => {
                if let Ok(name) = CString::new(name) {
                    // SAFETY: a NUL-terminated name; no other thread of the
                    // program runs yet.
                    unsafe { libc::unsetenv(name.as_ptr()) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_removes_and_skips() {
        let text = "# a comment\nDISPLAY=:1\n\nSCRATCH = /tmp/x=y\r\nOLD\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                Change::Set("DISPLAY".into(), ":1".into()),
                Change::Set("SCRATCH".into(), " /tmp/x=y".into()),
                Change::Remove("OLD".into()),
            ]
        );
        assert_eq!(parse("EMPTY=\n").unwrap(), [Change::Set("EMPTY".into(), String::new())]);
    }

    #[test]
    fn a_line_that_names_nothing_is_refused() {
        assert!(parse("=x\n").unwrap_err().contains("line 1"));
        assert!(parse("A=1\nTWO WORDS\n").unwrap_err().contains("line 2"));
    }
}
