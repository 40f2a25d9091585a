//! The namespaces a restored process lives in.
//!
//! Restart clones an init process into a new user + pid + mount + IPC
//! namespace (allowed to unprivileged users): it maps our uid and gid to
//! themselves, makes the computation's message queues and semaphores again
//! in the IPC namespace (`ipc`),
//! mounts a /proc that shows the new pid namespace, and creates each root
//! of the computation's process tree with clone3(set_tid) so it gets back
//! its old pid (the roots create their children the same way, see
//! `tree`). Init then forwards signals to the roots, reaps orphans, and
//! reports how the roots ended.

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

/// The restored processes whose parent is outside the computation (init's
/// children), to which init forwards signals; 0 past the last.
static ROOTS: [AtomicI32; MAX_ROOTS] = [const { AtomicI32::new(0) }; MAX_ROOTS];
const MAX_ROOTS: usize = 64;

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A signal from the terminal (^C, ^\, hangup) already reaches the
    // restored program, which is in the same process group: passing it on
    // would deliver it twice. Only what a process sent is forwarded.
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if info.is_null() || unsafe { (*info).si_code } == libc::SI_KERNEL {
        return;
    }
    for root in &ROOTS {
        let pid = root.load(Ordering::Relaxed);
        if pid <= 0 {
            break;
        }
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

/// A stand-in for a process outside the computation that the restored
/// processes still name: the session leader, the process group leader and
/// the parent they had (`stasis launch`). Made with the same pids, they
/// give the program back the very getsid/getpgrp/getppid it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandIn {
    Session(i32),
    Group(i32),
    Parent(i32),
}

impl StandIn {
    fn pid(self) -> i32 {
        match self {
            StandIn::Session(p) | StandIn::Group(p) | StandIn::Parent(p) => p,
        }
    }
}

/// The stand-ins for the outside of a root with this parent, group and
/// session, outermost first; `inside` are the computation's pids. Empty
/// when the parent is not a process of its own (an orphan's parent is
/// init, and init is ours).
pub fn stand_ins(ppid: i32, pgid: i32, sid: i32, inside: &[i32]) -> Vec<StandIn> {
    let outside = |p: i32| p > 1 && !inside.contains(&p);
    if !outside(ppid) {
        return Vec::new();
    }
    let mut chain = Vec::new();
    if outside(sid) {
        chain.push(StandIn::Session(sid));
    }
    if outside(pgid) && pgid != sid {
        chain.push(StandIn::Group(pgid));
    }
    if ppid != sid && ppid != pgid {
        chain.push(StandIn::Parent(ppid));
    }
    if chain.last().map(|s| s.pid()) != Some(ppid) {
        // The parent leads a group or session only the chain's order can
        // give it (it would need to be both): keep the parent right.
        return vec![StandIn::Parent(ppid)];
    }
    chain
}

/// The processes init makes: the roots of the tree (by pid), and which of
/// them hang below the stand-ins rather than below init.
pub struct Roots<'a> {
    pub pids: &'a [i32],
    pub below_stand_ins: &'a [bool],
    pub stand_ins: &'a [StandIn],
    /// The terminal the stand-in session leader takes as its controlling one.
    pub terminal: Option<i32>,
    /// Run by init in the new namespaces before it makes any process (the
    /// IPC objects, made where the program will see them).
    pub prepare: &'a dyn Fn() -> Result<(), String>,
}

/// Clones init into new namespaces; init makes the stand-ins and clones one
/// process per root, with its pid, which runs `restore(i)` (never
/// returns). Returns init's pid and the pipe on which the outcome is
/// reported: the status of the first root that did not succeed, else
/// success, once every root has ended.
///
/// Must be called while the caller is single-threaded: the children run
/// Rust code after a raw clone.
pub fn spawn(roots: Roots<'_>, restore: impl Fn(usize)) -> Result<(i32, File), RestoreError> {
    if let Some(pid) = roots.pids.iter().find(|&&p| p <= 1) {
        return Err(RestoreError(format!("cannot restore a process whose pid was {pid}")));
    }
    if roots.pids.len() > MAX_ROOTS {
        return Err(RestoreError(format!(
            "{} unrelated processes; at most {MAX_ROOTS} can be restored",
            roots.pids.len()
        )));
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (rd, wr) = pipe()?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::SIGCHLD;
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
        init(wr, uid, gid, &roots, &restore);
    }
    drop(wr);
    Ok((r as i32, rd))
}

/// A fork-like clone3 whose child gets pid `pid` in this pid namespace
/// (which needs CAP_SYS_ADMIN there: ours, as its creator's children).
/// Returns 0 in the child and the child's pid in the parent.
pub fn clone_with_pid(pid: i32) -> Result<i32, String> {
    let mut set_tid: i64 = pid as i64;
    let mut args = [0u64; 11];
    args[4] = libc::SIGCHLD as u64; // exit_signal
    args[8] = &mut set_tid as *mut i64 as u64; // set_tid
    args[9] = 1; // set_tid_size
    // SAFETY: fork-like clone3 (flags 0, no stack) with set_tid pointing
    // at one pid_t-sized value that lives across the call.
    let child = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), std::mem::size_of_val(&args)) };
    if child < 0 {
        return Err(format!("cannot create a process with pid {pid}: {}", std::io::Error::last_os_error()));
    }
    Ok(child as i32)
}

fn report(out: &mut File, msg: &str) {
    let _ = out.write_all(msg.as_bytes());
}

fn fail(status: &mut File, msg: &str) -> ! {
    report(status, &format!("error {msg}\n"));
    // SAFETY: kill(-1) from inside the pid namespace reaches only its own
    // processes: the ones just made.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    std::process::exit(125);
}

/// Waits for `pids` (children of the caller) and returns the status of the
/// first that did not succeed, else 0. Other children are reaped on the way.
fn wait_for(pids: &[i32], status: &mut File) -> i32 {
    let mut statuses: Vec<Option<i32>> = vec![None; pids.len()];
    while statuses.iter().any(Option::is_none) {
        let mut st = 0;
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            fail(status, "lost track of the restored processes");
        }
        if let Some(i) = pids.iter().position(|&c| c == r) {
            statuses[i] = Some(st);
        }
    }
    statuses.iter().flatten().copied().find(|&st| st != 0).unwrap_or(0)
}

fn report_end(status: &mut File, st: i32) {
    if libc::WIFSIGNALED(st) {
        report(status, &format!("signal {}\n", libc::WTERMSIG(st)));
    } else {
        report(status, &format!("exit {}\n", libc::WEXITSTATUS(st)));
    }
}

/// Clones the roots `which` with their pids; returns their pids here.
fn clone_roots(status: &mut File, roots: &Roots<'_>, which: &[usize], restore: &impl Fn(usize)) -> Vec<i32> {
    let mut made = Vec::with_capacity(which.len());
    for &i in which {
        match clone_with_pid(roots.pids[i]) {
            Ok(0) => {
                restore(i);
                std::process::exit(125);
            }
            Ok(child) => made.push(child),
            Err(e) => fail(status, &e),
        }
    }
    made
}

fn init(mut status: File, uid: u32, gid: u32, roots: &Roots<'_>, restore: &impl Fn(usize)) -> ! {
    if let Err(e) = enter(uid, gid).and_then(|()| (roots.prepare)()) {
        fail(&mut status, &e);
    }
    for (slot, &pid) in ROOTS.iter().zip(roots.pids) {
        slot.store(pid, Ordering::Relaxed);
    }
    let (below, direct): (Vec<usize>, Vec<usize>) =
        (0..roots.pids.len()).partition(|&i| roots.below_stand_ins[i] && !roots.stand_ins.is_empty());
    let head = match roots.stand_ins.first() {
        Some(first) if !below.is_empty() => match clone_with_pid(first.pid()) {
            Ok(0) => stand_in(status, roots, 0, &below, restore),
            Ok(pid) => Some(pid),
            Err(e) => fail(&mut status, &e),
        },
        _ => None,
    };
    let direct = if head.is_none() { (0..roots.pids.len()).collect() } else { direct };
    let children = clone_roots(&mut status, roots, &direct, restore);
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
    // Orphans of the computation are reparented here and reaped too.
    match head {
        // The innermost stand-in reports for the roots below it.
        Some(head) => {
            wait_for(&[head], &mut status);
        }
        None => {
            let st = wait_for(&children, &mut status);
            report_end(&mut status, st);
        }
    }
    // Restart returns with the roots' status. Processes the program left
    // running in the background go on, as they did under launch (and
    // under dmtcp_restart): this namespace lives until the last of them
    // ends, with nothing of restart's held open here.
    drop(status);
    close_all_but(&[]);
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break; // ECHILD: nobody left
        }
    }
    std::process::exit(0);
}

/// Stand-in `k` of the chain: takes on its session or group, makes the
/// next one (or, innermost, the roots `below`) and waits for it.
fn stand_in(mut status: File, roots: &Roots<'_>, k: usize, below: &[usize], restore: &impl Fn(usize)) -> ! {
    let me = roots.stand_ins[k];
    // SAFETY: setsid/setpgid on ourselves, a fresh child that leads nothing.
    let made = unsafe {
        match me {
            StandIn::Session(_) => libc::setsid() >= 0,
            StandIn::Group(_) => libc::setpgid(0, 0) == 0,
            StandIn::Parent(_) => true,
        }
    };
    if !made {
        fail(&mut status, &format!("stand-in {me:?}: {}", std::io::Error::last_os_error()));
    }
    if let (StandIn::Session(_), Some(t)) = (me, roots.terminal) {
        // SAFETY: TIOCSCTTY on a terminal that is nobody's controlling one
        // yet, from a session leader without one.
        unsafe { libc::ioctl(t, libc::TIOCSCTTY, 0) };
    }
    if let Some(next) = roots.stand_ins.get(k + 1) {
        match clone_with_pid(next.pid()) {
            Ok(0) => stand_in(status, roots, k + 1, below, restore),
            Ok(pid) => {
                close_all_but(&[0, 1, 2, status.as_raw_fd()]);
                wait_for(&[pid], &mut status);
                std::process::exit(0);
            }
            Err(e) => fail(&mut status, &e),
        }
    }
    let children = clone_roots(&mut status, roots, below, restore);
    close_all_but(&[0, 1, 2, status.as_raw_fd()]);
    let st = wait_for(&children, &mut status);
    report_end(&mut status, st);
    std::process::exit(0);
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
