//! The process tree of a computation, rebuilt in its pid namespace.
//!
//! Every process is made by its own parent with clone3(set_tid), so pids
//! and parents come back as they were: init makes the roots (processes
//! whose parent was outside the computation), each of them its children,
//! and so on, zombies included (a child that exits at once with the saved
//! status and is left unreaped). Sessions and process groups follow in two
//! steps: a session or group leader sets itself up before making its
//! children, who inherit it; once every process exists, the others join
//! the groups led by another process. Then each process restores itself.
//!
//! The processes wait for each other at barriers in a shared page: all
//! made, all grouped, all ready to jump into the restorer. If one fails,
//! all give up before any restored program runs, so a computation is never
//! half restored.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use stasis_image::{FdKind, ProcessMeta};

/// How long a process waits at a barrier for the others.
const BARRIER_LIMIT: Duration = Duration::from_secs(60);

/// Who is whose parent, by index into the images.
pub struct Shape {
    pub roots: Vec<usize>,
    pub children: Vec<Vec<usize>>,
    pub pids: Vec<i32>,
}

impl Shape {
    pub fn of(metas: &[&ProcessMeta]) -> Shape {
        let pids: Vec<i32> = metas.iter().map(|m| m.pid).collect();
        let mut roots = Vec::new();
        let mut children = vec![Vec::new(); metas.len()];
        for (i, m) in metas.iter().enumerate() {
            match pids.iter().position(|&p| p == m.ppid && p != m.pid) {
                Some(parent) => children[parent].push(i),
                None => roots.push(i),
            }
        }
        Shape { roots, children, pids }
    }
}

/// Checks that the images make one computation that can be rebuilt: one
/// image per process, and no pid used twice (zombies included).
pub fn check(metas: &[&ProcessMeta]) -> Result<(), String> {
    let mut pids: Vec<(i32, String)> = Vec::new();
    for m in metas {
        pids.push((m.pid, format!("process {} ({})", m.pid, m.name)));
        for z in &m.zombies {
            pids.push((z.pid, format!("the exited child {} of process {} ({})", z.pid, m.pid, m.name)));
        }
    }
    if let Some((pid, _)) = pids.iter().find(|(p, _)| *p <= 1) {
        return Err(format!("cannot restore a process whose pid was {pid}"));
    }
    pids.sort_by_key(|(p, _)| *p);
    if let Some(w) = pids.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("{} and {} have the same pid: images of different runs?", w[0].1, w[1].1));
    }
    Ok(())
}

/// Counters shared by every process of the restore (one anonymous shared
/// page, made before the first clone; the restorer unmaps it with the rest).
pub struct Barrier {
    words: *const AtomicU32,
    count: u32,
}

// Each word: how many processes reached that barrier; the last one says
// whether some process failed.
const STEPS: usize = 3;
const FAILED: usize = STEPS;

/// The barriers, in order.
pub const MADE: usize = 0;
pub const GROUPED: usize = 1;
pub const READY: usize = 2;

impl Barrier {
    /// A barrier for `count` processes.
    pub fn new(count: usize) -> Result<Barrier, String> {
        // SAFETY: a fresh anonymous shared mapping; nothing else is there.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("map the restore barrier: {}", std::io::Error::last_os_error()));
        }
        Ok(Barrier { words: p as *const AtomicU32, count: count as u32 })
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the page holds STEPS + 1 zero-initialised u32s, mapped
        // for as long as any process uses the barrier.
        unsafe { &*self.words.add(i) }
    }

    /// Says this process failed: every process waiting gives up.
    pub fn fail(&self) {
        self.word(FAILED).store(1, Ordering::Release);
        for i in 0..STEPS {
            self.word(i).fetch_add(0, Ordering::AcqRel);
            futex_wake_all(self.word(i));
        }
    }

    /// Arrives at barrier `step` and waits for every other process; fails
    /// with [`ANOTHER_FAILED`] when one of them gave up.
    pub fn arrive(&self, step: usize) -> Result<(), String> {
        let w = self.word(step);
        let seen = w.fetch_add(1, Ordering::AcqRel) + 1;
        if seen >= self.count {
            futex_wake_all(w);
        }
        let deadline = Instant::now() + BARRIER_LIMIT;
        loop {
            if self.word(FAILED).load(Ordering::Acquire) != 0 {
                return Err(ANOTHER_FAILED.into());
            }
            let now = w.load(Ordering::Acquire);
            if now >= self.count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "waited {BARRIER_LIMIT:?} for the other processes ({now} of {} ready)",
                    self.count
                ));
            }
            futex_wait(w, now, Duration::from_millis(100));
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as i64 };
    // SAFETY: FUTEX_WAIT (shared: the word is in a MAP_SHARED page) on a
    // live u32 with a valid timespec.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec) };
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live u32.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// Session and group setup a leader does for itself before making its
/// children (who inherit them).
/// A session leader that had a controlling terminal gets `terminal` as it.
/// What a process waiting at a barrier hears when another one failed (and
/// said why itself).
pub const ANOTHER_FAILED: &str = "another process of the computation could not be restored";

pub fn lead(meta: &ProcessMeta, terminal: Option<i32>) -> Result<(), String> {
    if meta.sid == meta.pid {
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(format!("setsid: {}", std::io::Error::last_os_error()));
        }
        let had_one = meta.fds.iter().any(|f| matches!(f.kind, FdKind::Terminal { controlling: true, .. }));
        if let Some(t) = terminal.filter(|_| had_one) {
            // SAFETY: TIOCSCTTY on a terminal nobody has as controlling one.
            unsafe { libc::ioctl(t, libc::TIOCSCTTY, 0) };
        }
    } else if meta.pgid == meta.pid {
        // SAFETY: setpgid on ourselves.
        if unsafe { libc::setpgid(0, 0) } < 0 {
            return Err(format!("setpgid: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Gives the terminal back to the foreground process group it had, from a
/// process for which it was the controlling terminal.
pub fn take_foreground(meta: &ProcessMeta, terminal: i32) {
    let fg = meta.fds.iter().find_map(|f| match f.kind {
        FdKind::Terminal { controlling: true, foreground, .. } if foreground > 0 => Some(foreground),
        _ => None,
    });
    let Some(fg) = fg else { return };
    // SAFETY: SIGTTOU is blocked around tcsetpgrp, so that a process of a
    // background group is not stopped for asking; the mask is put back.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::tcsetpgrp(terminal, fg);
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// Once every process exists: join the process group led by another
/// process of the computation, if it is not the inherited one. A group
/// whose leader is not in the computation cannot be made again.
pub fn join_group(meta: &ProcessMeta, pids: &[i32], warn: &mut dyn FnMut(String)) {
    // SAFETY: getpgid(0) asks about ourselves.
    let now = unsafe { libc::getpgid(0) };
    if now == meta.pgid || meta.pgid == meta.pid {
        return;
    }
    if !pids.contains(&meta.pgid) {
        if now != 0 && meta.sid != meta.pid {
            warn(format!(
                "process {} was in process group {}, whose leader is not part of the computation; it stays in \
                 group {now}",
                meta.pid, meta.pgid
            ));
        }
        return;
    }
    // SAFETY: setpgid on ourselves, into a group of our session.
    if unsafe { libc::setpgid(0, meta.pgid) } < 0 {
        warn(format!(
            "process {} cannot join its process group {}: {}",
            meta.pid,
            meta.pgid,
            std::io::Error::last_os_error()
        ));
    }
}

/// Becomes a zombie again: exits at once as the saved status says.
pub fn exit_as(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: default disposition and an unblocked signal, sent to
        // ourselves: we die of it as the child did.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
    }
    // SAFETY: leaving without running anything of the restart program.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// Waits until the child `pid` has exited, without reaping it.
pub fn wait_exited(pid: i32) -> Result<(), String> {
    loop {
        // SAFETY: a zeroed siginfo is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with WNOWAIT leaves the child a zombie.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("wait for the exited child {pid}: {e}"));
        }
    }
}

/// Takes back the SIGCHLD that making zombies sent us, if it stayed
/// pending (it does where SIGCHLD is blocked; with the default disposition
/// the kernel drops it), unless one was pending at the checkpoint: that
/// one the restorer raises again.
pub fn forget_sigchld(meta: &ProcessMeta) {
    if meta.zombies.is_empty() || meta.shared_pending & (1 << (libc::SIGCHLD - 1)) != 0 {
        return;
    }
    // SAFETY: sigtimedwait with a zero timeout only dequeues a pending
    // SIGCHLD; it never waits.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGCHLD {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::Zombie;

    fn meta(pid: i32, ppid: i32) -> ProcessMeta {
        ProcessMeta { pid, ppid, name: format!("p{pid}"), ..Default::default() }
    }

    #[test]
    fn parents_and_roots() {
        let (a, b, c, d) = (meta(10, 1), meta(20, 10), meta(30, 20), meta(40, 7));
        let s = Shape::of(&[&c, &a, &b, &d]);
        assert_eq!(s.roots, vec![1, 3]);
        assert_eq!(s.children[1], vec![2]);
        assert_eq!(s.children[2], vec![0]);
        assert!(s.children[0].is_empty());
    }

    #[test]
    fn pids_are_one_each() {
        let (a, b) = (meta(10, 1), meta(20, 10));
        assert!(check(&[&a, &b]).is_ok());
        let e = check(&[&a, &a]).unwrap_err();
        assert!(e.contains("same pid"), "{e}");
        let mut z = meta(30, 1);
        z.zombies.push(Zombie { pid: 20, status: 0 });
        let e = check(&[&a, &b, &z]).unwrap_err();
        assert!(e.contains("exited child 20"), "{e}");
        assert!(check(&[&meta(1, 0)]).is_err());
    }

    #[test]
    fn a_barrier_lets_through_when_all_arrive() {
        let b = Barrier::new(1).unwrap();
        assert!(b.arrive(MADE).is_ok());
        let b = Barrier::new(2).unwrap();
        b.fail();
        assert!(b.arrive(GROUPED).unwrap_err().contains("could not be restored"));
    }
}
