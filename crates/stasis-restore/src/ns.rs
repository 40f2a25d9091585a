//! The namespaces a restored process lives in.
//!
//! Restart clones an init process into a new user + pid + mount namespace
//! (allowed to unprivileged users): it maps our uid and gid to themselves,
//! mounts a /proc that shows the new pid namespace, and creates the process
//! to restore with clone3(set_tid) so it gets back its old pid. Init then
//! forwards signals to it and reports how it ended.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::RestoreError;

/// Signals init passes on to the restored program (SLURM's preemption
/// notice is SIGTERM; users type ^C and ^\).
const FORWARDED: [i32; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCONT,
    libc::SIGALRM,
];

static TARGET: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A signal from the terminal (^C, ^\, hangup) already reaches the
    // restored program, which is in the same process group: passing it on
    // would deliver it twice. Only what a process sent is forwarded.
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if info.is_null() || unsafe { (*info).si_code } == libc::SI_KERNEL {
        return;
    }
    let pid = TARGET.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn pipe() -> Result<(File, File), RestoreError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(RestoreError(format!("pipe: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: both descriptors are new and owned here.
    Ok(unsafe { (File::from(OwnedFd::from_raw_fd(fds[0])), File::from(OwnedFd::from_raw_fd(fds[1]))) })
}

/// Clones init into new namespaces; init clones the process with pid
/// `pid`, which runs `restore` (never returns). Returns init's pid and
/// the pipe on which init reports the outcome.
///
/// Must be called while the caller is single-threaded: the children run
/// Rust code after a raw clone.
pub fn spawn(pid: i32, restore: impl FnOnce()) -> Result<(i32, File), RestoreError> {
    if pid <= 1 {
        return Err(RestoreError(format!("cannot restore a process whose pid was {pid}")));
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (rd, wr) = pipe()?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD;
    // SAFETY: a fork-like clone (no new stack, no shared memory); the
    // child only runs `init` and never returns into the caller.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(RestoreError(format!(
            "cannot create user and pid namespaces: {e} (restart needs unprivileged user namespaces; \
             check /proc/sys/user/max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns)"
        )));
    }
    if r == 0 {
        drop(rd);
        init(wr, uid, gid, pid, restore);
    }
    drop(wr);
    Ok((r as i32, rd))
}

fn report(out: &mut File, msg: &str) {
    let _ = out.write_all(msg.as_bytes());
}

fn init(mut status: File, uid: u32, gid: u32, pid: i32, restore: impl FnOnce()) -> ! {
    if let Err(e) = enter(uid, gid) {
        report(&mut status, &format!("error {e}\n"));
        std::process::exit(125);
    }
    let mut set_tid: i64 = pid as i64;
    let mut args = [0u64; 11];
    args[4] = libc::SIGCHLD as u64; // exit_signal
    args[8] = &mut set_tid as *mut i64 as u64; // set_tid
    args[9] = 1; // set_tid_size
    // SAFETY: fork-like clone3 (flags 0, no stack) with set_tid pointing
    // at one pid_t-sized value that lives across the call.
    let child = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), std::mem::size_of_val(&args)) };
    if child < 0 {
        let e = std::io::Error::last_os_error();
        report(&mut status, &format!("error cannot create a process with pid {pid}: {e}\n"));
        std::process::exit(125);
    }
    if child == 0 {
        drop(status);
        restore();
        std::process::exit(125);
    }
    TARGET.store(child as i32, Ordering::Relaxed);
    // SAFETY: installing a handler that only calls kill, and unblocking
    // the signals the caller may have blocked before cloning us.
    unsafe {
        for sig in FORWARDED {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = forward as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    close_all_but(&[0, 1, 2, status.as_raw_fd()]);
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            report(&mut status, "error lost track of the restored process\n");
            std::process::exit(125);
        }
        if r as i64 == child {
            if libc::WIFSIGNALED(st) {
                report(&mut status, &format!("signal {}\n", libc::WTERMSIG(st)));
            } else {
                report(&mut status, &format!("exit {}\n", libc::WEXITSTATUS(st)));
            }
            std::process::exit(0);
        }
    }
}

/// Makes this process at home in its new namespaces.
fn enter(uid: u32, gid: u32) -> Result<(), String> {
    let write = |path: &str, text: String| std::fs::write(path, text).map_err(|e| format!("write {path}: {e}"));
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/setgroups", "deny\n".into())?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;
    let c = |s: &str| CString::new(s).unwrap_or_default();
    // SAFETY: mount with valid NUL-terminated strings (or null where allowed).
    unsafe {
        if libc::mount(
            std::ptr::null(),
            c("/").as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!("make mounts private: {}", std::io::Error::last_os_error()));
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(c("proc").as_ptr(), c("/proc").as_ptr(), c("proc").as_ptr(), flags, std::ptr::null()) != 0 {
            return Err(format!("mount /proc for the new pid namespace: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Closes every descriptor except `keep`.
pub fn close_all_but(keep: &[i32]) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closing a descriptor nobody else in this process uses.
            unsafe { libc::close(fd) };
        }
    }
}
