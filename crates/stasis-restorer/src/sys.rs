//! System calls and the memory functions the compiler expects, without libc.
#![allow(clippy::missing_safety_doc)]

use core::arch::asm;
use core::sync::atomic::AtomicU32;

use stasis_plan::{Itimerval, KernelSigaction, PrctlMmMap};

pub const SYS_CLONE3: isize = 435;
pub const SIG_SETMASK: i32 = 2;
pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const MAP_SHARED: u32 = 1;
pub const MAP_FIXED: u32 = 0x10;
pub const MADV_DONTFORK: i32 = 10;
pub const RLIMIT_NOFILE: i32 = 7;
pub const MADV_WIPEONFORK: i32 = 18;
pub const ARCH_SET_GS: i32 = 0x1001;
pub const ARCH_SET_FS: i32 = 0x1002;
pub const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
pub const PR_SET_NAME: i32 = 15;
pub const CLONE_VM: u64 = 0x100;
pub const CLONE_FS: u64 = 0x200;
pub const CLONE_FILES: u64 = 0x400;
pub const CLONE_SIGHAND: u64 = 0x800;
pub const CLONE_THREAD: u64 = 0x10000;
pub const CLONE_SYSVSEM: u64 = 0x40000;
pub const CLONE_SETTLS: u64 = 0x80000;
pub const CLONE_CHILD_CLEARTID: u64 = 0x200000;

#[repr(C)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

#[inline(always)]
fn sc(nr: isize, a: [u64; 6]) -> isize {
    let ret: isize;
    // SAFETY: the raw syscall instruction; every caller below passes
    // arguments that are valid for its call (pointers to live memory).
    unsafe {
        asm!("syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

pub fn write(fd: i32, buf: &[u8]) -> isize {
    sc(1, [fd as u64, buf.as_ptr() as u64, buf.len() as u64, 0, 0, 0])
}
pub fn close(fd: i32) -> isize {
    sc(3, [fd as u64, 0, 0, 0, 0, 0])
}
pub fn mmap(addr: u64, len: u64, prot: u32, flags: u32, fd: i32, off: u64) -> isize {
    sc(9, [addr, len, prot as u64, flags as u64, fd as i64 as u64, off])
}
pub fn mprotect(addr: u64, len: u64, prot: u32) -> isize {
    sc(10, [addr, len, prot as u64, 0, 0, 0])
}
pub fn setrlimit(resource: i32, limit: &[u64; 2]) -> isize {
    sc(160, [resource as u64, limit.as_ptr() as u64, 0, 0, 0, 0])
}
pub fn madvise(addr: u64, len: u64, advice: i32) -> isize {
    sc(28, [addr, len, advice as u64, 0, 0, 0])
}
pub fn munmap(addr: u64, len: u64) -> isize {
    sc(11, [addr, len, 0, 0, 0, 0])
}
pub fn rt_sigaction(sig: i32, act: &KernelSigaction) -> isize {
    sc(13, [sig as u64, act as *const _ as u64, 0, 8, 0, 0])
}
pub fn rt_sigprocmask(how: i32, set: &u64) -> isize {
    sc(14, [how as u64, set as *const u64 as u64, 0, 8, 0, 0])
}
pub fn pread(fd: i32, addr: u64, len: u64, off: u64) -> isize {
    sc(17, [fd as u64, addr, len, off, 0, 0])
}
pub fn mremap_fixed(from: u64, len: u64, to: u64) -> isize {
    // MREMAP_MAYMOVE | MREMAP_FIXED
    sc(25, [from, len, len, 3, to, 0])
}
pub fn setitimer(which: i32, v: &Itimerval) -> isize {
    sc(38, [which as u64, v as *const _ as u64, 0, 0, 0, 0])
}
pub fn getpid() -> i32 {
    sc(39, [0; 6]) as i32
}
pub fn kill(pid: i32, sig: i32) -> isize {
    sc(62, [pid as u64, sig as u64, 0, 0, 0, 0])
}
pub fn prctl(option: i32, arg: u64) -> isize {
    sc(157, [option as u64, arg, 0, 0, 0, 0])
}
pub fn prctl_mm_map(m: &PrctlMmMap) -> isize {
    // PR_SET_MM, PR_SET_MM_MAP
    sc(157, [35, 14, m as *const _ as u64, core::mem::size_of::<PrctlMmMap>() as u64, 0, 0])
}
pub fn arch_prctl(code: i32, addr: u64) -> isize {
    sc(158, [code as u64, addr, 0, 0, 0, 0])
}
pub fn futex_wait(word: &AtomicU32, val: u32) {
    // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
    sc(202, [word.as_ptr() as u64, 128, val as u64, 0, 0, 0]);
}
pub fn futex_wake(word: &AtomicU32) {
    // FUTEX_WAKE | FUTEX_PRIVATE_FLAG
    sc(202, [word.as_ptr() as u64, 129, i32::MAX as u64, 0, 0, 0]);
}
pub fn timer_create(clock: i32, sev: &[u64; 8], id: &mut i32) -> isize {
    sc(222, [clock as u64, sev.as_ptr() as u64, id as *mut i32 as u64, 0, 0, 0])
}
pub fn timer_settime(id: i32, spec: &[i64; 4]) -> isize {
    sc(223, [id as u64, 0, spec.as_ptr() as u64, 0, 0, 0])
}
pub fn exit_group(code: i32) -> ! {
    loop {
        sc(231, [code as u64, 0, 0, 0, 0, 0]);
    }
}
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> isize {
    sc(234, [pid as u64, tid as u64, sig as u64, 0, 0, 0])
}
pub fn set_robust_list(head: u64, len: u64) -> isize {
    sc(273, [head, len, 0, 0, 0, 0])
}
pub fn rseq(addr: u64, len: u32, sig: u32) -> isize {
    sc(334, [addr, len as u64, 0, sig as u64, 0, 0])
}

// The compiler may emit calls to these; `rep` string instructions cannot be
// turned back into calls to themselves.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's memcpy contract.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        // SAFETY: forward copy is correct when dst does not start inside src.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag, restored after.
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's memset contract.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller's memcmp contract: both are readable for n bytes.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
