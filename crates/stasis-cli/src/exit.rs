//! Leaving the way the program left: its exit code, or death by the same
//! signal, so that a shell or a batch system sees what it would have seen
//! without stasis.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How `stasis` ends.
#[derive(Debug)]
pub enum Exit {
    Code(i32),
    /// As the program did.
    Like(ExitStatus),
}

impl Exit {
    pub fn leave(self) -> ! {
        match self {
            Exit::Code(c) => std::process::exit(c),
            Exit::Like(status) => mirror(status),
        }
    }
}

fn mirror(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    let Some(sig) = status.signal() else { std::process::exit(1) };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: each call takes only plain values or pointers to locals. The
    // signal is sent to this thread (pthread_kill), not to the process, so
    // that the forwarding thread's sigwait cannot take it; no core file of
    // ours is left in place of the program's.
    unsafe {
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(sig, libc::SIG_DFL);
        libc::pthread_kill(libc::pthread_self(), sig);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    // A signal whose default action is not to die (SIGCHLD, SIGWINCH...).
    std::process::exit(128 + sig)
}
