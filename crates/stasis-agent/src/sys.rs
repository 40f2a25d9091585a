//! Raw system calls behind safe functions.
//!
//! The agent calls the kernel directly rather than through libc for two
//! reasons: these calls run inside the program's signal handlers, where
//! touching `errno` or libc locks would disturb the program, and some have
//! no libc wrapper at all (clone without atfork handlers, get_robust_list,
//! PR_GET_TID_ADDRESS). Results are `Result<usize, i32>` with the errno.

use std::arch::asm;

pub type SysResult = Result<usize, i32>;

#[inline(always)]
fn check(ret: isize) -> SysResult {
    if (-4095..0).contains(&ret) { Err(-ret as i32) } else { Ok(ret as usize) }
}

/// # Safety
/// The caller guarantees that the arguments are valid for system call `nr`
/// (pointers point to memory of the size the kernel will access).
#[inline(always)]
pub unsafe fn syscall6(nr: i64, a: [usize; 6]) -> SysResult {
    let ret: isize;
    // SAFETY: the x86_64 syscall convention; rcx and r11 are clobbered by
    // the instruction, memory validity is the caller's promise.
    unsafe {
        asm!("syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    check(ret)
}

/// A system call whose arguments are plain numbers (no memory is touched).
#[inline(always)]
fn syscall_nomem(nr: i64, a: [usize; 6]) -> SysResult {
    // SAFETY: callers only pass calls whose arguments are not pointers.
    unsafe { syscall6(nr, a) }
}

pub fn gettid() -> i32 {
    syscall_nomem(libc::SYS_gettid, [0; 6]).unwrap_or(0) as i32
}

pub fn getpid() -> i32 {
    syscall_nomem(libc::SYS_getpid, [0; 6]).unwrap_or(0) as i32
}

#[allow(dead_code)] // the agent signals with `tgsigqueueinfo` now
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> SysResult {
    syscall_nomem(libc::SYS_tgkill, [pid as usize, tid as usize, sig as usize, 0, 0, 0])
}

pub fn kill(pid: i32, sig: i32) -> SysResult {
    syscall_nomem(libc::SYS_kill, [pid as usize, sig as usize, 0, 0, 0, 0])
}

/// Sleeps while `*word == expected`, at most `timeout_ms` (0 = no limit).
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout_ms: u64) {
    let ts = libc::timespec { tv_sec: (timeout_ms / 1000) as i64, tv_nsec: ((timeout_ms % 1000) * 1_000_000) as i64 };
    let tsp = if timeout_ms == 0 { 0 } else { &ts as *const _ as usize };
    // SAFETY: `word` and `ts` live across the call.
    let _ = unsafe {
        syscall6(
            libc::SYS_futex,
            [
                word.as_ptr() as usize,
                (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
                expected as usize,
                tsp,
                0,
                0,
            ],
        )
    };
}

/// Stores `v` unless the word holds it already: in a fork child, writing a
/// page copies it, so resets that usually change nothing only read.
pub fn store_if_changed_u32(word: &std::sync::atomic::AtomicU32, v: u32) {
    use std::sync::atomic::Ordering;
    if word.load(Ordering::Relaxed) != v {
        word.store(v, Ordering::Release);
    }
}

/// As `store_if_changed_u32`.
pub fn store_if_changed_usize(word: &std::sync::atomic::AtomicUsize, v: usize) {
    use std::sync::atomic::Ordering;
    if word.load(Ordering::Relaxed) != v {
        word.store(v, Ordering::Release);
    }
}

/// The calling thread's name (PR_GET_NAME: 16 bytes, NUL-padded), as two
/// words; async-signal-safe.
pub fn thread_name() -> [u64; 2] {
    let mut name = [0u64; 2];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, which `name` holds.
    let _ = unsafe { syscall6(libc::SYS_prctl, [libc::PR_GET_NAME as usize, name.as_mut_ptr() as usize, 0, 0, 0, 0]) };
    name
}

pub fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: the kernel only uses the address as a key.
    let _ = unsafe {
        syscall6(
            libc::SYS_futex,
            [
                word.as_ptr() as usize,
                (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
                i32::MAX as usize,
                0,
                0,
                0,
            ],
        )
    };
}

pub fn mmap_anon(len: usize) -> Option<*mut u8> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh anonymous mapping touches no existing memory.
    let r = unsafe { syscall6(libc::SYS_mmap, [0, len, prot as usize, flags as usize, usize::MAX, 0]) };
    r.ok().map(|a| a as *mut u8)
}

/// Reserves address space without committing memory.
pub fn mmap_reserve(len: usize) -> Option<*mut u8> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh anonymous mapping touches no existing memory.
    let r = unsafe { syscall6(libc::SYS_mmap, [0, len, prot as usize, flags as usize, usize::MAX, 0]) };
    r.ok().map(|a| a as *mut u8)
}

/// Runs `f(arg)` on a fresh stack of `len` bytes; `f` must not return.
pub fn run_on_new_stack(len: usize, f: extern "C" fn(usize) -> !, arg: usize) -> ! {
    let Some(stack) = mmap_anon(len) else { exit_group(70) };
    let top = (stack as usize + len) & !15;
    // SAFETY: switches to a stack we own entirely and calls a function that
    // never returns, so nothing ever uses the old stack pointer again.
    unsafe {
        asm!("mov rsp, {top}", "call {f}", "ud2", top = in(reg) top, f = in(reg) f, in("rdi") arg, options(noreturn));
    }
}

/// madvise with one of the fork advices (MADV_DONTFORK, MADV_DOFORK,
/// MADV_WIPEONFORK, MADV_KEEPONFORK): they change how the range is copied
/// at fork, never its contents.
pub fn madvise_fork(start: u64, len: u64, advice: i32) -> SysResult {
    debug_assert!(matches!(
        advice,
        libc::MADV_DONTFORK | libc::MADV_DOFORK | libc::MADV_WIPEONFORK | libc::MADV_KEEPONFORK
    ));
    // SAFETY: these advices only change a flag of the mapping.
    unsafe { syscall6(libc::SYS_madvise, [start as usize, len as usize, advice as usize, 0, 0, 0]) }
}

pub fn munmap(ptr: *mut u8, len: usize) {
    // SAFETY: callers unmap only memory they mapped and no longer use.
    let _ = unsafe { syscall6(libc::SYS_munmap, [ptr as usize, len, 0, 0, 0, 0]) };
}

/// The calling thread's fs base (its TLS pointer).
pub fn fs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one u64 to the given address.
    let _ = unsafe { syscall6(libc::SYS_arch_prctl, [0x1003, &mut v as *mut u64 as usize, 0, 0, 0, 0]) };
    v
}

pub fn gs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_GS writes one u64 to the given address.
    let _ = unsafe { syscall6(libc::SYS_arch_prctl, [0x1004, &mut v as *mut u64 as usize, 0, 0, 0, 0]) };
    v
}

/// The calling thread's clear_child_tid address (set_tid_address).
pub fn tid_address() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the given address.
    let _ = unsafe { syscall6(libc::SYS_prctl, [40, &mut v as *mut u64 as usize, 0, 0, 0, 0]) };
    v
}

/// The calling thread's robust futex list (head, length).
pub fn robust_list() -> (u64, u64) {
    let (mut head, mut len): (u64, u64) = (0, 0);
    // SAFETY: get_robust_list(0, ...) writes a pointer and a size_t.
    let _ = unsafe {
        syscall6(libc::SYS_get_robust_list, [0, &mut head as *mut u64 as usize, &mut len as *mut u64 as usize, 0, 0, 0])
    };
    (head, len)
}

/// A fork that runs no atfork handlers and takes no libc locks: the child
/// is a copy-on-write snapshot that only runs agent code and then
/// `exit_group`. exit_signal 0 keeps it invisible to the program's wait()
/// and SIGCHLD handler. Returns 0 in the child, its pid in the parent.
pub fn snapshot_fork() -> SysResult {
    syscall_nomem(libc::SYS_clone, [0, 0, 0, 0, 0, 0])
}

/// Waits for a child made by `snapshot_fork`; returns its wait status.
pub fn wait_snapshot(pid: i32) -> Result<i32, i32> {
    let mut status: i32 = 0;
    loop {
        // SAFETY: wait4 writes one int to `status`.
        let r = unsafe {
            syscall6(libc::SYS_wait4, [pid as usize, &mut status as *mut i32 as usize, libc::__WALL as usize, 0, 0, 0])
        };
        match r {
            Ok(_) => return Ok(status),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The wait status of child `pid` (made by `clone_vm`) if it has ended,
/// without waiting.
pub fn wait_done(pid: i32) -> Result<Option<i32>, i32> {
    let mut status: i32 = 0;
    loop {
        // SAFETY: wait4 writes one int to `status`.
        let r = unsafe {
            syscall6(
                libc::SYS_wait4,
                [pid as usize, &mut status as *mut i32 as usize, (libc::__WALL | libc::WNOHANG) as usize, 0, 0, 0],
            )
        };
        match r {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn exit_group(code: i32) -> ! {
    loop {
        let _ = syscall_nomem(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]);
    }
}

/// rt_sigaction without libc (no sa_restorer games: the caller supplies it).
pub fn rt_sigaction_get(sig: i32) -> Result<[u64; 4], i32> {
    let mut old = [0u64; 4];
    // SAFETY: the kernel writes a 32-byte kernel sigaction into `old`.
    unsafe { syscall6(libc::SYS_rt_sigaction, [sig as usize, 0, old.as_mut_ptr() as usize, 8, 0, 0]) }?;
    Ok(old)
}

pub fn getitimer(which: i32) -> libc::itimerval {
    // SAFETY: an all-zero itimerval is valid.
    let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: getitimer writes one itimerval.
    let _ = unsafe { syscall6(libc::SYS_getitimer, [which as usize, &mut v as *mut _ as usize, 0, 0, 0, 0]) };
    v
}

/// timer_gettime for the raw kernel timer id.
pub fn timer_gettime(id: i32) -> Option<libc::itimerspec> {
    // SAFETY: an all-zero itimerspec is valid.
    let mut v: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one itimerspec.
    unsafe { syscall6(libc::SYS_timer_gettime, [id as usize, &mut v as *mut _ as usize, 0, 0, 0, 0]) }.ok()?;
    Some(v)
}

pub fn timer_getoverrun(id: i32) -> i32 {
    syscall_nomem(libc::SYS_timer_getoverrun, [id as usize, 0, 0, 0, 0, 0]).unwrap_or(0) as i32
}

/// Writes a message straight to fd 2 (for reporting from places where
/// allocation or locks are not allowed).
pub fn write_stderr(msg: &[u8]) {
    // SAFETY: write reads `msg` only.
    let _ = unsafe { syscall6(libc::SYS_write, [2, msg.as_ptr() as usize, msg.len(), 0, 0, 0]) };
    append_to_log_file(msg);
}

/// The log file the agent's messages also go to (`STASIS_LOG_FILE`,
/// DMTCP's `DMTCP_LOG_FILE`): a NUL-terminated path set once at start and
/// never freed, so that any context may read it.
static LOG_FILE: std::sync::atomic::AtomicPtr<libc::c_char> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

pub fn set_log_file(path: std::ffi::CString) {
    LOG_FILE.store(path.into_raw(), std::sync::atomic::Ordering::Release);
}

/// Appends `msg` to the log file, if there is one: raw system calls only
/// (no allocation, no lock), as write_stderr.
fn append_to_log_file(msg: &[u8]) {
    let path = LOG_FILE.load(std::sync::atomic::Ordering::Acquire);
    if path.is_null() {
        return;
    }
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
    // SAFETY: open with a NUL-terminated path that lives for good.
    let opened =
        unsafe { syscall6(libc::SYS_openat, [libc::AT_FDCWD as usize, path as usize, flags as usize, 0o600, 0, 0]) };
    let Ok(fd) = opened else { return };
    // SAFETY: write reads `msg` only.
    let _ = unsafe { syscall6(libc::SYS_write, [fd, msg.as_ptr() as usize, msg.len(), 0, 0, 0]) };
    close(fd as i32);
}

/// The numeric entries of a /proc directory (task ids, fd numbers), read
/// with getdents64 because glibc's opendir allocates with the program's
/// malloc, whose lock a stopped thread may hold.
pub fn numeric_entries(path: &std::ffi::CStr) -> Result<Vec<i32>, i32> {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe {
        syscall6(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as usize,
                path.as_ptr() as usize,
                (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as usize,
                0,
                0,
                0,
            ],
        )
    }? as i32;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let result = loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = match unsafe {
            syscall6(libc::SYS_getdents64, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0])
        } {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let mut off = 0;
        while off + 19 <= n {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name...
            let reclen = u16::from_le_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..(off + reclen).min(n)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(v) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                out.push(v);
            }
            off += reclen;
        }
    };
    // SAFETY: closing the descriptor opened above.
    let _ = unsafe { syscall6(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) };
    result.map(|()| out)
}

pub fn close(fd: i32) {
    let _ = syscall_nomem(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
}

/// Where the agent keeps the descriptors it holds while the program runs:
/// high, out of the way of the numbers programs choose themselves (a
/// shell's `exec 3>file` closes whatever fd 3 was and reuses the number).
const HIGH_FD: u64 = 900;

/// A copy of `fd` at a high number (below the soft RLIMIT_NOFILE, with
/// room to spare), close-on-exec; `fd` itself is left to the caller. None
/// when there is no such number.
pub fn dup_high(fd: i32) -> Option<i32> {
    // SAFETY: a zeroed rlimit is valid; getrlimit fills it.
    let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `l` is a valid rlimit to write.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 { l.rlim_cur } else { 1024 };
    let min = HIGH_FD.min(limit.saturating_sub(64)).max(3) as usize;
    syscall_nomem(libc::SYS_fcntl, [fd as usize, libc::F_DUPFD_CLOEXEC as usize, min, 0, 0, 0]).ok().map(|n| n as i32)
}

/// pread(2), retried on EINTR: bytes read (0 at the end).
pub fn pread(fd: i32, buf: &mut [u8], offset: u64) -> Result<usize, i32> {
    loop {
        // SAFETY: pread writes at most `buf.len()` bytes into `buf`.
        let r = unsafe {
            syscall6(libc::SYS_pread64, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), offset as usize, 0, 0])
        };
        if r != Err(libc::EINTR) {
            return r;
        }
    }
}

/// pwrite(2) of `len` bytes at address `addr` of this process, retried on
/// EINTR and short writes. The kernel reads the memory: an address that
/// cannot be read is EFAULT, never a fault here.
pub fn pwrite_from(fd: i32, addr: usize, len: usize, offset: u64) -> Result<(), i32> {
    let mut done = 0;
    while done < len {
        // SAFETY: pwrite only reads `len - done` bytes at the address, and
        // reports memory it cannot read as EFAULT.
        let r = unsafe {
            syscall6(libc::SYS_pwrite64, [fd as usize, addr + done, len - done, offset as usize + done, 0, 0])
        };
        match r {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => done += n,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts writeback of a file range without waiting for it
/// (sync_file_range with SYNC_FILE_RANGE_WRITE): the final fsync then
/// finds little left to do.
pub fn start_writeback(fd: i32, offset: u64, len: u64) {
    let _ = syscall_nomem(
        libc::SYS_sync_file_range,
        [fd as usize, offset as usize, len as usize, libc::SYNC_FILE_RANGE_WRITE as usize, 0, 0],
    );
}

/// mprotect(2) of a range this process maps (the image writer, on its own
/// copy of the program's memory: see `workers`).
pub fn mprotect(start: u64, len: u64, prot: i32) -> SysResult {
    syscall_nomem(libc::SYS_mprotect, [start as usize, len as usize, prot as usize, 0, 0, 0])
}

/// One write(2) of `msg` to `fd` (a message: best effort).
pub fn write_fd(fd: i32, msg: &[u8]) {
    // SAFETY: write reads `msg` only.
    let _ = unsafe { syscall6(libc::SYS_write, [fd as usize, msg.as_ptr() as usize, msg.len(), 0, 0, 0]) };
}

/// Puts `sig` back to its default action (in a process of the agent's
/// own, e.g. a writer's worker, that must die of a fault rather than run
/// the program's handler).
pub fn default_action(sig: i32) {
    let act = [0u64; 4]; // SIG_DFL, no flags, no restorer, empty mask
    // SAFETY: the kernel reads one 32-byte kernel sigaction from `act`.
    let _ = unsafe { syscall6(libc::SYS_rt_sigaction, [sig as usize, act.as_ptr() as usize, 0, 8, 0, 0]) };
}

pub fn getppid() -> i32 {
    syscall_nomem(libc::SYS_getppid, [0; 6]).unwrap_or(0) as i32
}

/// Asks for SIGKILL when the parent dies (PR_SET_PDEATHSIG).
pub fn kill_with_parent() {
    let _ = syscall_nomem(libc::SYS_prctl, [libc::PR_SET_PDEATHSIG as usize, libc::SIGKILL as usize, 0, 0, 0, 0]);
}

/// Starts `f(arg)` in a new process that shares this one's memory and
/// descriptor table (clone with CLONE_VM | CLONE_FILES, no exit signal,
/// so only `wait_snapshot` sees it end), on the stack ending at
/// `stack_top`. `f` must not return, and must touch neither thread-local
/// storage (it runs with this thread's) nor the allocator.
///
/// # Safety
/// `stack_top` is the 16-byte aligned end of a mapping used by nothing
/// else while the child runs, and `arg` stays valid until it exits.
pub unsafe fn clone_vm(stack_top: usize, f: extern "C" fn(usize) -> !, arg: usize) -> SysResult {
    let flags = (libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_FS) as usize;
    let ret: isize;
    // SAFETY: clone with a fresh stack: the child, with rax 0, calls `f`
    // on that stack and never comes back (r12/r13 are preserved across
    // the system call in both processes); the parent falls through.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone as isize => ret,
            in("rdi") flags, in("rsi") stack_top, in("rdx") 0usize, in("r10") 0usize, in("r8") 0usize,
            in("r12") arg, in("r13") f as usize,
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    check(ret)
}

/// Sleeps `ms` milliseconds (interrupted early by a signal: callers loop).
pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec { tv_sec: (ms / 1000) as i64, tv_nsec: ((ms % 1000) * 1_000_000) as i64 };
    // SAFETY: nanosleep reads one timespec; no remainder is asked for.
    let _ = unsafe { syscall6(libc::SYS_nanosleep, [&ts as *const libc::timespec as usize, 0, 0, 0, 0, 0]) };
}

/// A close-on-exec duplicate of `fd` at the lowest free number >= `min`.
pub fn dup_at_least(fd: i32, min: i32) -> Option<i32> {
    syscall_nomem(libc::SYS_fcntl, [fd as usize, libc::F_DUPFD_CLOEXEC as usize, min as usize, 0, 0, 0])
        .ok()
        .map(|n| n as i32)
}

/// Blocks (SIG_BLOCK) or unblocks (SIG_UNBLOCK) one signal in the calling
/// thread, without libc (whose wrapper we replace).
pub fn sigmask_one(how: i32, sig: i32) {
    let set: u64 = 1 << (sig - 1);
    // SAFETY: rt_sigprocmask reads one 8-byte kernel sigset.
    let _ = unsafe { syscall6(libc::SYS_rt_sigprocmask, [how as usize, &set as *const u64 as usize, 0, 8, 0, 0]) };
}

/// A pipe's capacity in bytes (F_GETPIPE_SZ).
pub fn pipe_size(fd: i32) -> SysResult {
    syscall_nomem(libc::SYS_fcntl, [fd as usize, libc::F_GETPIPE_SZ as usize, 0, 0, 0, 0])
}

/// The bytes waiting in the pipe that `read_end` reads from, left where
/// they are: tee(2) copies them into a private pipe as large, which is then
/// read. Fails rather than return part of them.
pub fn pipe_peek(read_end: i32) -> Result<Vec<u8>, String> {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `waiting`.
    unsafe {
        syscall6(libc::SYS_ioctl, [read_end as usize, libc::FIONREAD as usize, &raw mut waiting as usize, 0, 0, 0])
    }
    .map_err(|e| format!("FIONREAD: errno {e}"))?;
    let waiting = waiting.max(0) as usize;
    if waiting == 0 {
        return Ok(Vec::new());
    }
    let mut ends = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`.
    unsafe {
        syscall6(
            libc::SYS_pipe2,
            [ends.as_mut_ptr() as usize, (libc::O_CLOEXEC | libc::O_NONBLOCK) as usize, 0, 0, 0, 0],
        )
    }
    .map_err(|e| format!("pipe2: errno {e}"))?;
    let [r, w] = ends;
    let size = pipe_size(read_end).unwrap_or(waiting);
    let _ = syscall_nomem(libc::SYS_fcntl, [w as usize, libc::F_SETPIPE_SZ as usize, size.max(waiting), 0, 0, 0]);
    let copied =
        syscall_nomem(libc::SYS_tee, [read_end as usize, w as usize, waiting, libc::SPLICE_F_NONBLOCK as usize, 0, 0]);
    close(w);
    let mut out = vec![0u8; waiting];
    let mut got = 0;
    while let Ok(copied) = copied
        && got < copied
    {
        // SAFETY: read writes at most out.len() - got bytes at out[got..].
        match unsafe {
            syscall6(libc::SYS_read, [r as usize, out[got..].as_mut_ptr() as usize, out.len() - got, 0, 0, 0])
        } {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    close(r);
    match copied {
        Ok(_) if got == waiting => Ok(out),
        Ok(_) => Err(format!("copied {got} of the {waiting} bytes in flight")),
        Err(e) => Err(format!("tee: errno {e}")),
    }
}

/// Makes `dst` share `src`'s data blocks (ioctl FICLONE): an instant copy
/// on file systems with reflinks (btrfs, XFS); an errno where there are none.
pub fn ficlone(dst: i32, src: i32) -> SysResult {
    const FICLONE: usize = 0x4004_9409;
    syscall_nomem(libc::SYS_ioctl, [dst as usize, FICLONE, src as usize, 0, 0, 0])
}

/// CLOCK_REALTIME in nanoseconds (a file's timestamps are of this clock).
pub fn realtime_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    let _ = unsafe {
        syscall6(
            libc::SYS_clock_gettime,
            [libc::CLOCK_REALTIME as usize, &mut ts as *mut libc::timespec as usize, 0, 0, 0, 0],
        )
    };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// The kernel's siginfo for a signal queued with a value
/// (rt_tgsigqueueinfo): the `kill` member of the union.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QueuedInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    _pad: i32,
    pub pid: i32,
    pub uid: u32,
    pub value: u64,
    _rest: [u64; 12],
}

impl QueuedInfo {
    pub const fn new(signo: i32, code: i32, pid: i32, uid: u32, value: u64) -> QueuedInfo {
        QueuedInfo { signo, errno: 0, code, _pad: 0, pid, uid, value, _rest: [0; 12] }
    }
}

/// Queues `sig` with the 128-byte siginfo at `info` to thread `tid` of
/// process `pid` (any si_code is allowed inside one's own thread group).
///
/// # Safety
/// `info` points to 128 readable bytes.
pub unsafe fn tgsigqueueinfo_raw(pid: i32, tid: i32, sig: i32, info: *const u8) -> SysResult {
    // SAFETY: the kernel reads 128 bytes at `info` (caller's promise).
    unsafe { syscall6(libc::SYS_rt_tgsigqueueinfo, [pid as usize, tid as usize, sig as usize, info as usize, 0, 0]) }
}

pub fn tgsigqueueinfo(pid: i32, tid: i32, sig: i32, info: &QueuedInfo) -> SysResult {
    // SAFETY: a QueuedInfo is 128 bytes.
    unsafe { tgsigqueueinfo_raw(pid, tid, sig, info as *const QueuedInfo as *const u8) }
}

pub fn getuid() -> u32 {
    syscall_nomem(libc::SYS_getuid, [0; 6]).unwrap_or(0) as u32
}

/// Eight random bytes from the kernel (never blocks; falls back on the
/// time stamp counter mixed with the pid).
pub fn random_u64() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: getrandom writes at most 8 bytes into `v`.
    let got = unsafe {
        syscall6(libc::SYS_getrandom, [&mut v as *mut u64 as usize, 8, libc::GRND_NONBLOCK as usize, 0, 0, 0])
    };
    if got != Ok(8) || v == 0 {
        // SAFETY: rdtsc has no memory effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        v = (tsc ^ ((getpid() as u64) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    }
    v
}

/// Signals pending for this thread or its process, among those blocked now
/// (in a handler that blocks everything: all of them), as a kernel sigset.
pub fn sigpending() -> u64 {
    let mut set: u64 = 0;
    // SAFETY: rt_sigpending writes one 8-byte kernel sigset.
    let _ = unsafe { syscall6(libc::SYS_rt_sigpending, [&mut set as *mut u64 as usize, 8, 0, 0, 0, 0]) };
    set
}

/// rt_sigprocmask on kernel sigsets; returns the old mask.
pub fn sigmask_set(how: i32, set: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: reads one and writes one 8-byte kernel sigset.
    let _ = unsafe {
        syscall6(
            libc::SYS_rt_sigprocmask,
            [how as usize, &set as *const u64 as usize, &mut old as *mut u64 as usize, 8, 0, 0],
        )
    };
    old
}

/// Copies `buf.len()` bytes of this process's memory at `addr` into `buf`
/// without faulting: false where any of it is not readable.
pub fn read_own_memory(addr: usize, buf: &mut [u8]) -> bool {
    let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: process_vm_readv writes at most buf.len() bytes into `buf`
    // and reports an unreadable source as an error instead of faulting.
    let r = unsafe {
        syscall6(
            libc::SYS_process_vm_readv,
            [getpid() as usize, &local as *const _ as usize, 1, &remote as *const _ as usize, 1, 0],
        )
    };
    r == Ok(buf.len())
}

/// The raw kernel sigaction of `sig` (handler, flags, restorer, mask).
pub fn kernel_handler(sig: i32) -> Option<u64> {
    rt_sigaction_get(sig).ok().map(|a| a[0])
}

/// Takes one signal of the kernel sigset `set` pending for this thread or
/// its process out of the kernel's queue, without waiting: its number, with
/// its 128-byte siginfo in `info`; EAGAIN when none is pending.
pub fn take_pending(set: u64, info: &mut [u64; 16]) -> SysResult {
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: rt_sigtimedwait reads one kernel sigset and a timespec and
    // writes one 128-byte siginfo into `info`; a zero timeout never blocks.
    unsafe {
        syscall6(
            libc::SYS_rt_sigtimedwait,
            [&set as *const u64 as usize, info.as_mut_ptr() as usize, &zero as *const _ as usize, 8, 0, 0],
        )
    }
}
