//! Which open files are the computation's stdio from outside: the
//! descriptors 0, 1 and 2 its first process got from whoever launched it
//! (a terminal, a batch system's output file, a pipe to `tee`), and that
//! every process of the computation holding the same open file shares.
//!
//! Restart gives them restart's own 0-2 rather than reopening them
//! (docs/architecture.md, *A restart*), and a checkpoint neither saves
//! their contents (`savefiles`) nor peeks into them (`collect`).
//!
//! They are known by identity (device and inode, as fstat gives them),
//! recorded by the first process of the computation in its constructor and
//! handed down in `STASIS_OUTSIDE_STDIO` ("dev:inode" for 0, 1 and 2,
//! comma-separated, `-` for none): children of fork() inherit the agent's
//! memory, programs started by exec read the variable (kept in the
//! environments they are given: `exec::mended`). A process that moves its
//! stdout elsewhere (dup2 onto 1) simply holds it no more; one that passes
//! it to a new number still holds it there.
//!
//! After a restart the computation's outside is restart's stdio: each
//! process learns its identity from the descriptors that held the old one
//! (`restored`), so that the next checkpoint recognises it in turn.

use std::ffi::CString;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The variable that hands the identities down to programs exec'd.
pub const VAR: &str = "STASIS_OUTSIDE_STDIO";

/// (device, inode) of outside stdio k; inode 0: none known.
static DEV: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static INODE: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// The descriptor that held outside stdio k at the last checkpoint (-1:
/// none). It is part of the agent's memory, so a restored process finds it.
static HELD_AT: [AtomicI32; 3] = [AtomicI32::new(-1), AtomicI32::new(-1), AtomicI32::new(-1)];

fn identity(fd: i32) -> Option<(u64, u64, u32)> {
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino, st.st_mode))
}

/// In the constructor: takes the identities from the environment, or, in
/// the first process of a computation (no variable yet), from its own 0-2,
/// and publishes them for the programs it will exec.
pub fn remember_at_start() {
    let inherited = crate::exec::env_var(VAR);
    let ids = match &inherited {
        Some(text) => parse(text),
        None => [0, 1, 2].map(|fd| identity(fd).map_or((0, 0), |(d, i, _)| (d, i))),
    };
    for (k, (dev, inode)) in ids.into_iter().enumerate() {
        DEV[k].store(dev, Ordering::Relaxed);
        INODE[k].store(inode, Ordering::Relaxed);
    }
    publish(inherited.is_none());
}

/// "dev:inode,dev:inode,dev:inode" (or `-`) into three identities.
fn parse(text: &str) -> [(u64, u64); 3] {
    let mut out = [(0, 0); 3];
    for (k, part) in text.split(',').take(3).enumerate() {
        if let Some((d, i)) = part.split_once(':')
            && let (Ok(d), Ok(i)) = (d.parse(), i.parse())
        {
            out[k] = (d, i);
        }
    }
    out
}

fn render() -> String {
    (0..3)
        .map(|k| match INODE[k].load(Ordering::Relaxed) {
            0 => "-".to_string(),
            i => format!("{}:{i}", DEV[k].load(Ordering::Relaxed)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Hands the identities to the exec wrappers and, with `environ`, to what
/// libc starts from it (system, popen). `environ` only from the
/// constructor or while the program runs (setenv takes libc's lock).
fn publish(environ: bool) {
    let value = render();
    crate::exec::set_stdio_entry(&format!("{VAR}={value}"));
    if environ && let (Ok(name), Ok(value)) = (CString::new(VAR), CString::new(value)) {
        crate::exec::setenv_real(&name, &value);
    }
}

/// At a checkpoint, before descriptors are listed.
pub fn begin_listing() {
    for h in &HELD_AT {
        h.store(-1, Ordering::Relaxed);
    }
}

/// Which outside stdio (0, 1, 2) descriptor `fd` holds, given its fstat
/// `dev`, `inode` and `mode`: at 0-2 the one of its own number first. A
/// character device that is no terminal (/dev/null) counts only at its
/// own number: the program opens those itself all the time, and reopening
/// one by its path gives the same thing anyway.
pub fn which(fd: i32, dev: u64, inode: u64, mode: u32, terminal: bool) -> Option<u8> {
    let is =
        |k: usize| inode != 0 && INODE[k].load(Ordering::Relaxed) == inode && DEV[k].load(Ordering::Relaxed) == dev;
    let device = mode & libc::S_IFMT == libc::S_IFCHR && !terminal;
    let k = if (0..3).contains(&fd) && is(fd as usize) {
        fd as usize
    } else if device {
        return None;
    } else {
        (0..3).find(|&k| is(k))?
    };
    let _ = HELD_AT[k].compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed);
    Some(k as u8)
}

/// In a restored process, before its program runs: restart gave the
/// descriptors that held outside stdio k its own k, which is the outside
/// from now on.
pub fn restored() {
    for k in 0..3 {
        let held = HELD_AT[k].load(Ordering::Relaxed);
        let (dev, inode) = if held >= 0 { identity(held).map_or((0, 0), |(d, i, _)| (d, i)) } else { (0, 0) };
        DEV[k].store(dev, Ordering::Relaxed);
        INODE[k].store(inode, Ordering::Relaxed);
    }
    publish(false);
}

/// Once a restored program runs again: `environ` learns them too.
pub fn restored_environ() {
    crate::tree::without_fork(|| publish(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_prefers_its_own_number_and_devices_count_only_there() {
        // stdout and stderr one file (`> log 2>&1`), stdin /dev/null.
        let ids = [(1, 10), (2, 20), (2, 20)];
        for (k, (d, i)) in ids.into_iter().enumerate() {
            DEV[k].store(d, Ordering::Relaxed);
            INODE[k].store(i, Ordering::Relaxed);
        }
        begin_listing();
        let file = libc::S_IFREG;
        assert_eq!(which(2, 2, 20, file, false), Some(2));
        assert_eq!(which(1, 2, 20, file, false), Some(1));
        assert_eq!(which(7, 2, 20, file, false), Some(1), "elsewhere: the first stdio it is");
        assert_eq!(which(5, 2, 21, file, false), None);
        let device = libc::S_IFCHR;
        assert_eq!(which(0, 1, 10, device, false), Some(0));
        assert_eq!(which(4, 1, 10, device, false), None, "/dev/null opened by the program");
        assert_eq!(which(4, 1, 10, device, true), Some(0), "a terminal counts anywhere");
        assert_eq!(HELD_AT.each_ref().map(|h| h.load(Ordering::Relaxed)), [0, 1, 2]);
    }

    #[test]
    fn identities_round_trip() {
        assert_eq!(parse("5:7,-,9:11"), [(5, 7), (0, 0), (9, 11)]);
        assert_eq!(parse("garbage"), [(0, 0); 3]);
        assert_eq!(parse(""), [(0, 0); 3]);
    }
}
