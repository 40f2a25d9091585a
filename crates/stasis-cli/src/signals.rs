//! Passing signals on to the program.
//!
//! The signals we forward are blocked in the main thread before any other
//! thread exists (so every thread inherits the mask), and one thread takes
//! them with sigwaitinfo and sends them on. The child gets the mask we
//! started with back before exec.
//!
//! Signals the terminal sends (^C, ^\, hangup) reach the program directly,
//! since it is in our process group; the kernel marks those SI_KERNEL and
//! we do not send them a second time. Job control signals (^Z) are left
//! alone, so that the shell sees stasis and the program stop together.

use std::io;

/// SLURM's preemption notice is SIGTERM (or what `--signal` names, often
/// USR1/USR2); users type ^C and ^\; HUP ends sessions.
pub const FORWARDED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// The forwarded signals, blocked in the calling thread.
pub struct Blocked {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

/// Whether `sig` is ignored (SIG_IGN) in this process: one ignored when
/// stasis started was meant to stay so (as `nohup` and `stasis job` do for
/// the processes under them), and is neither forwarded nor waited for,
/// since a blocked signal is queued even when ignored.
pub fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into a local.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Blocks the forwarded signals (those not ignored). Call before any
/// thread starts.
pub fn block() -> io::Result<Blocked> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the
    // calls only read and write the two local sets.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.into_iter().filter(|&s| !ignored(s)) {
            libc::sigaddset(&mut set, sig);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(Blocked { set, old })
    }
}

impl Blocked {
    /// For `pre_exec`: puts back the mask we started with (async-signal-safe).
    pub fn restorer(&self) -> impl Fn() -> io::Result<()> + Send + Sync + 'static {
        let old = self.old;
        move || {
            // SAFETY: sigprocmask reads one local set; it is async-signal-safe.
            let r = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
        }
    }

    /// Starts the thread that sends the blocked signals on to `pids`;
    /// SIGUSR2 goes to `on_usr2` instead, if given.
    pub fn forward_to(self, pids: Vec<i32>, on_usr2: Option<Box<dyn Fn() + Send>>) -> io::Result<()> {
        let set = self.set;
        std::thread::Builder::new().name("stasis-signals".into()).spawn(move || {
            loop {
                // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waits for one of the signals of `set`, which
                // this and every thread keep blocked.
                let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
                if sig <= 0 || !should_forward(&info, &pids) {
                    continue;
                }
                if sig == libc::SIGUSR2
                    && let Some(f) = &on_usr2
                {
                    f();
                    continue;
                }
                for &pid in &pids {
                    // SAFETY: kill only takes numbers.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        })?;
        Ok(())
    }
}

/// Everything sent by a process, except by the programs themselves; not
/// what the kernel sent (the terminal's ^C, which the program got too).
fn should_forward(info: &libc::siginfo_t, pids: &[i32]) -> bool {
    if info.si_code == libc::SI_KERNEL {
        return false;
    }
    if info.si_code > 0 {
        return true;
    }
    // SAFETY: si_code <= 0: sent by kill, sigqueue or tgkill, for which the
    // kernel fills si_pid.
    let sender = unsafe { info.si_pid() };
    !pids.contains(&sender)
}
