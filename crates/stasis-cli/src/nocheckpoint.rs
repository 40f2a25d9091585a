//! `dmtcp_nocheckpoint PROGRAM [ARGS...]`: runs a program outside the
//! computation, from inside it. As DMTCP's, the program gets the LD_PRELOAD
//! the launch's caller had (`STASIS_USER_LD_PRELOAD`, which launch sets;
//! empty when there was none) in place of the one it was given, if it was
//! given one; and none of the variables that would make it join the
//! computation.
//!
//! It execs with the raw system call: the agent preloaded into this very
//! process would otherwise mend the environment back (stasis-agent's
//! `exec.rs`).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Where launch keeps its caller's LD_PRELOAD.
pub const USER_PRELOAD: &str = "STASIS_USER_LD_PRELOAD";

/// What would tie the program to the computation.
const JOINING: &[&str] =
    &["STASIS_COORD_ADDR", "STASIS_COORD_SOCKET", "STASIS_COORD_SECRET", "STASIS_OUTSIDE_STDIO", USER_PRELOAD];

/// The environment the program gets, as `NAME=VALUE` entries.
fn environment(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<OsString> {
    let vars: Vec<(OsString, OsString)> = vars.collect();
    let user = vars.iter().find(|(k, _)| k == USER_PRELOAD).map(|(_, v)| v.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for (k, v) in vars {
        if JOINING.iter().any(|j| k == *j) {
            continue;
        }
        let v = if k == "LD_PRELOAD" { user.clone() } else { v };
        let mut e = k;
        e.push("=");
        e.push(v);
        out.push(e);
    }
    out
}

/// `program` as execvp finds it.
fn find(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

fn c_string(s: &OsStr) -> CString {
    CString::new(s.as_bytes()).unwrap_or_default()
}

/// Runs the program (never returns but on failure: then 127 or 126).
pub fn run(args: &[OsString]) -> i32 {
    let Some(program) = args.get(1) else {
        eprintln!("stasis: dmtcp_nocheckpoint: usage: dmtcp_nocheckpoint PROGRAM [ARGS...]");
        return 1;
    };
    let Some(path) = find(program) else {
        eprintln!("stasis: dmtcp_nocheckpoint: {}: not found", program.to_string_lossy());
        return 127;
    };
    let argv: Vec<CString> = args[1..].iter().map(|a| c_string(a)).collect();
    let envp: Vec<CString> = environment(std::env::vars_os()).iter().map(|e| c_string(e)).collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let path = c_string(path.as_os_str());
    // SAFETY: execve with NUL-terminated strings and null-terminated arrays
    // that live across the call.
    unsafe { libc::syscall(libc::SYS_execve, path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    let e = std::io::Error::last_os_error();
    eprintln!("stasis: dmtcp_nocheckpoint: cannot run {}: {e}", program.to_string_lossy());
    if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<OsString> {
        environment(vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
    }

    #[test]
    fn the_launch_callers_preload_and_no_coordinator() {
        let agent = "/opt/stasis/libstasis_agent.so:USER_STRING";
        assert_eq!(
            env(&[("LD_PRELOAD", agent), ("STASIS_COORD_ADDR", "unix:/s"), ("HOME", "/h")]),
            ["LD_PRELOAD=", "HOME=/h"]
        );
        assert_eq!(env(&[("LD_PRELOAD", agent), (USER_PRELOAD, "libx.so")]), ["LD_PRELOAD=libx.so"]);
        assert_eq!(env(&[("HOME", "/h")]), ["HOME=/h"]);
    }
}
