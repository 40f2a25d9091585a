//! A checkpoint must not show through as EINTR (docs/signals.md).
//!
//! Our handler is installed with SA_RESTART, so the kernel itself restarts
//! the calls it can (read, write, wait, futex without timeout...). The
//! others come back from our signal with -EINTR: the handler looks at the
//! interrupted context and, when it sits right after a `syscall`
//! instruction with -EINTR in rax, sets it to run the call again (rip back
//! two bytes, rax the call's number; the argument registers are intact).
//! The number is not in the frame: the checkpoint thread reads it from
//! /proc/self/task/TID/syscall just before signalling the thread, and the
//! handler checks it against the frame (pc and arguments); failing that, a
//! `mov $nr, %eax` just before the `syscall` gives it.
//!
//! Calls with a relative timeout that the kernel does not update would
//! start again with their whole timeout: the libc functions that make them
//! are wrapped (`timeouts.rs`); inside such a wrapper the handler lets the
//! EINTR through (marking it ours), and the wrapper calls again with the
//! time left.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crate::signals::{MAX_THREADS, our_bit};
use crate::{sys, threads};

// ---- what each stopped thread was doing -------------------------------------

struct Blocked {
    tid: AtomicI32,
    nr: AtomicI64,
    args: [AtomicU64; 6],
    pc: AtomicU64,
}

impl Blocked {
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Blocked = Blocked {
        tid: AtomicI32::new(0),
        nr: AtomicI64::new(-1),
        args: [const { AtomicU64::new(0) }; 6],
        pc: AtomicU64::new(0),
    };
}

static BLOCKED: [Blocked; MAX_THREADS] = [Blocked::EMPTY; MAX_THREADS];
static BLOCKED_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Checkpoint thread, before a round of stops.
pub fn forget_blocked() {
    BLOCKED_COUNT.store(0, Ordering::Release);
}

/// Checkpoint thread, just before signalling `tid`: the system call it is
/// blocked in, if any.
pub fn note_blocked(tid: i32) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else { return };
    let Some((nr, args, pc)) = parse_syscall_line(&text) else { return };
    let i = BLOCKED_COUNT.load(Ordering::Acquire);
    let Some(e) = BLOCKED.get(i) else { return };
    e.nr.store(nr, Ordering::Relaxed);
    for (a, v) in e.args.iter().zip(args) {
        a.store(v, Ordering::Relaxed);
    }
    e.pc.store(pc, Ordering::Relaxed);
    e.tid.store(tid, Ordering::Relaxed);
    BLOCKED_COUNT.store(i + 1, Ordering::Release);
}

/// "NR ARG0..ARG5 SP PC" (a thread in a system call); "running" or
/// "-1 SP PC" otherwise.
fn parse_syscall_line(text: &str) -> Option<(i64, [u64; 6], u64)> {
    let mut it = text.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = hex(it.next()?)?;
    }
    let _sp = it.next()?;
    let pc = hex(it.next()?)?;
    Some((nr, args, pc))
}

fn noted(tid: i32, pc: u64, args: &[u64; 6]) -> Option<i64> {
    let n = BLOCKED_COUNT.load(Ordering::Acquire).min(MAX_THREADS);
    BLOCKED[..n].iter().rev().find(|e| e.tid.load(Ordering::Relaxed) == tid).and_then(|e| {
        let same_args = e.args.iter().zip(args).all(|(a, v)| a.load(Ordering::Relaxed) == *v);
        (e.pc.load(Ordering::Relaxed) == pc && same_args).then(|| e.nr.load(Ordering::Relaxed))
    })
}

// ---- in the handler ----------------------------------------------------------

#[derive(Clone, Copy)]
pub enum Fix {
    None,
    /// The call that failed at `rip` is to run again.
    Restart {
        rip: u64,
        nr: i64,
        args: [u64; 6],
    },
    /// Its wrapper will call again with the time left.
    Marked {
        rip: u64,
        nr: i64,
        args: [u64; 6],
    },
}

impl Fix {
    fn save(self, e: &threads::ThreadState) {
        let (kind, rip, nr, args) = match self {
            Fix::None => (0, 0, 0, [0; 6]),
            Fix::Restart { rip, nr, args } => (1, rip, nr, args),
            Fix::Marked { rip, nr, args } => (2, rip, nr, args),
        };
        e.fix[1].store(rip, Ordering::Relaxed);
        e.fix[2].store(nr as u64, Ordering::Relaxed);
        for (v, a) in e.fix[3..].iter().zip(args) {
            v.store(a, Ordering::Relaxed);
        }
        e.fix[0].store(kind, Ordering::Release);
    }

    fn take(e: &threads::ThreadState) -> Fix {
        let kind = e.fix[0].swap(0, Ordering::AcqRel);
        let rip = e.fix[1].load(Ordering::Relaxed);
        let nr = e.fix[2].load(Ordering::Relaxed) as i64;
        let mut args = [0u64; 6];
        for (a, v) in args.iter_mut().zip(&e.fix[3..]) {
            *a = v.load(Ordering::Relaxed);
        }
        match kind {
            1 => Fix::Restart { rip, nr, args },
            2 => Fix::Marked { rip, nr, args },
            _ => Fix::None,
        }
    }
}

const EINTR: i64 = -(libc::EINTR as i64);

fn regs(uc: *mut c_void) -> *mut [i64; 23] {
    // SAFETY: only the address of the kernel's ucontext's gregs is taken.
    unsafe { &raw mut (*(uc as *mut libc::ucontext_t)).uc_mcontext.gregs }
}

fn rax_rip(uc: *mut c_void) -> (i64, u64) {
    let g = regs(uc);
    // SAFETY: the kernel's ucontext for this delivery.
    unsafe { ((*g)[libc::REG_RAX as usize], (*g)[libc::REG_RIP as usize] as u64) }
}

/// Our signal interrupted the thread at `uc`: decides what becomes of the
/// call it cut short (if any). Nothing changes in the frame yet, so the
/// saved one shows the call failed: whatever a restored thread takes first
/// (the program's signal pending at the checkpoint, ours) decides then.
pub fn prepare(_sig: c_int, uc: *mut c_void) -> Fix {
    let g = regs(uc);
    let (rax, rip) = rax_rip(uc);
    if rax != EINTR {
        return Fix::None;
    }
    // SAFETY: the kernel's ucontext for this delivery.
    let args = unsafe {
        [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX, libc::REG_R10, libc::REG_R8, libc::REG_R9]
            .map(|r| (*g)[r as usize] as u64)
    };
    let tid = sys::gettid();
    if let Some(e) = threads::find(tid)
        && e.owed_at.swap(0, Ordering::AcqRel) == rip
    {
        // The program's own signal on our number just failed this call.
        e.release_if_idle();
        return Fix::None;
    }
    let Some(nr) = noted(tid, rip, &args).or_else(|| decoded(rip)) else { return Fix::None };
    if !after_syscall_instruction(rip) || owed_program_signal(uc, nr, &args) {
        return Fix::None;
    }
    let Some(e) = threads::mine() else { return Fix::None };
    let fix = if relative_timeout(nr, &args) && e.wrapper_nr.load(Ordering::Relaxed) != 0 {
        e.interrupted.store(true, Ordering::Release);
        Fix::Marked { rip, nr, args }
    } else {
        Fix::Restart { rip, nr, args }
    };
    fix.save(e);
    fix
}

/// After the checkpoint, in the live process: carries out `fix`, unless a
/// program signal that arrived meanwhile is owed the EINTR after all.
pub fn confirm(sig: c_int, uc: *mut c_void, fix: Fix) {
    if matches!(fix, Fix::None) {
        return;
    }
    if let Some(e) = threads::find(sys::gettid()) {
        Fix::take(e);
        e.release_if_idle();
    }
    apply(sig, uc, fix);
}

/// In a restored thread, as it takes our signal on leaving the restorer:
/// carries out what was decided at the checkpoint, if the frame is still
/// the failed call (a program signal taken first was owed the EINTR).
pub fn restored(sig: c_int, uc: *mut c_void) {
    let Some(e) = threads::find(sys::gettid()) else { return };
    let fix = Fix::take(e);
    e.release_if_idle();
    let (Fix::Restart { rip, .. } | Fix::Marked { rip, .. }) = fix else { return };
    if rax_rip(uc) == (EINTR, rip) {
        apply(sig, uc, fix);
    } else if let Fix::Marked { .. } = fix {
        e.interrupted.store(false, Ordering::Release);
    }
}

fn apply(sig: c_int, uc: *mut c_void, fix: Fix) {
    let g = regs(uc);
    match fix {
        Fix::None => {}
        Fix::Restart { rip, nr, args } => {
            if owed_program_signal(uc, nr, &args) {
                return;
            }
            // SAFETY: the kernel's ucontext; the thread runs the `syscall`
            // instruction again with the arguments still in its registers.
            unsafe {
                (*g)[libc::REG_RIP as usize] = rip as i64 - 2;
                (*g)[libc::REG_RAX as usize] = nr;
            }
            if sys::sigpending() & crate::progsig::bit(sig) != 0
                && let Some(e) = threads::mine()
            {
                // Taken the moment we return: if it is the program's, it
                // finds this call set to run again, and undoes that.
                e.restarted_at.store(rip - 2, Ordering::Release);
            }
        }
        Fix::Marked { nr, args, .. } => {
            if owed_program_signal(uc, nr, &args)
                && let Some(e) = threads::find(sys::gettid())
            {
                e.interrupted.store(false, Ordering::Release);
            }
        }
    }
}

fn after_syscall_instruction(rip: u64) -> bool {
    let mut b = [0u8; 2];
    // Unreadable here (no process_vm_readv): trust /proc's pc.
    !sys::read_own_memory(rip as usize - 2, &mut b) || b == [0x0f, 0x05]
}

/// `mov $nr, %eax` (b8 imm32) before the `syscall`, as glibc's wrappers
/// have it: right before it, or followed by a few moves that set the other
/// argument registers (glibc's cancellable calls). Anything not understood
/// gives None: the call then fails with EINTR rather than risk running
/// another one.
fn decoded(rip: u64) -> Option<i64> {
    const LOOK: usize = 32;
    let mut b = [0u8; LOOK];
    if !sys::read_own_memory(rip as usize - LOOK, &mut b) {
        return None;
    }
    decode_nr(&b)
}

/// `code` ends with the `syscall` instruction.
fn decode_nr(code: &[u8]) -> Option<i64> {
    let end = code.len().checked_sub(2)?;
    if code[end..] != [0x0f, 0x05] {
        return None;
    }
    // The nearest `b8` from which plain moves lead exactly to the syscall.
    (1..end.saturating_sub(4)).rev().find_map(|s| {
        let rex_before = (0x40..=0x4f).contains(&code[s - 1]);
        if code[s] != 0xb8 || rex_before {
            return None;
        }
        let mut pos = s + 5;
        for _ in 0..4 {
            if pos == end {
                let nr = u32::from_le_bytes([code[s + 1], code[s + 2], code[s + 3], code[s + 4]]);
                // x86-64 has fewer than 512 calls: anything else was no call number.
                return (nr < 512).then_some(i64::from(nr));
            }
            pos += move_not_to_eax(&code[pos..end])?;
        }
        None
    })
}

/// The length of the instruction at the start of `code` if it is a move
/// (mov, lea, mov immediate) that leaves eax alone and does not jump.
fn move_not_to_eax(code: &[u8]) -> Option<usize> {
    let mut i = 0;
    let rex = match code.first()? {
        r @ 0x40..=0x4f => {
            i += 1;
            *r
        }
        _ => 0,
    };
    let op = *code.get(i)?;
    i += 1;
    match op {
        // mov $imm32, %ecx..%edi (or %r9d..%r15d with REX.B); not with
        // REX.W (a 64-bit immediate).
        0xb9..=0xbf if rex & 0x08 == 0 => return Some(i + 4),
        0x89 | 0x8b | 0x8d | 0xc7 | 0xc6 => {}
        _ => return None,
    }
    let modrm = *code.get(i)?;
    i += 1;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    let reg_is_rax = reg == 0 && rex & 0x04 == 0;
    let rm_is_rax = md == 3 && rm == 0 && rex & 0x01 == 0;
    let writes_eax = match op {
        0x8b | 0x8d => reg_is_rax,
        _ => rm_is_rax,
    };
    if writes_eax || ((op == 0xc7 || op == 0xc6) && reg != 0) || (op == 0x8d && md == 3) {
        return None;
    }
    if md != 3 {
        if rm == 4 {
            let sib = *code.get(i)?;
            i += 1;
            if md == 0 && sib & 7 == 5 {
                i += 4;
            }
        }
        i += match (md, rm) {
            (0, 5) => 4,
            (1, _) => 1,
            (2, _) => 4,
            _ => 0,
        };
    }
    i += match op {
        0xc7 => 4,
        0xc6 => 1,
        _ => 0,
    };
    (i <= code.len()).then_some(i)
}

/// The program's signal on our number is being delivered at `uc`: if our
/// handler had just set the call there to run again, or had marked its
/// wrapper to go on, the program is owed the EINTR after all (every call we
/// restart is one that fails with EINTR under a handler); and if the call
/// failed with EINTR while our signal waits to be taken on top, ours must
/// leave it failed.
pub fn program_signal_at(sig: c_int, uc: *mut c_void) {
    let tid = sys::gettid();
    let g = regs(uc);
    // SAFETY: the kernel's ucontext for this delivery.
    let rip = unsafe { (*g)[libc::REG_RIP as usize] as u64 };
    if let Some(e) = threads::find(tid) {
        e.interrupted.store(false, Ordering::Release);
        if e.restarted_at.swap(0, Ordering::AcqRel) == rip && rip != 0 {
            // SAFETY: as above: back to the failed call.
            unsafe {
                (*g)[libc::REG_RIP as usize] = rip as i64 + 2;
                (*g)[libc::REG_RAX as usize] = EINTR;
            }
        }
        e.release_if_idle();
    }
    // SAFETY: as above (it may have just changed).
    let (rax, rip) = unsafe { ((*g)[libc::REG_RAX as usize], (*g)[libc::REG_RIP as usize] as u64) };
    if rax == EINTR
        && sys::sigpending() & crate::progsig::bit(sig) != 0
        && let Some(e) = threads::mine()
    {
        e.owed_at.store(rip, Ordering::Release);
    }
}

/// Whether the call uses a relative timeout the kernel does not update.
fn relative_timeout(nr: i64, a: &[u64; 6]) -> bool {
    match nr {
        libc::SYS_poll => a[2] as i32 > 0,
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => a[3] as i32 > 0,
        libc::SYS_nanosleep => true,
        libc::SYS_clock_nanosleep => a[1] as i32 & libc::TIMER_ABSTIME == 0,
        libc::SYS_rt_sigtimedwait | libc::SYS_semtimedop => a[2 + usize::from(nr == libc::SYS_semtimedop)] != 0,
        _ => false,
    }
}

/// Whether a program signal is pending that this thread, as it was in the
/// call, would take with a handler: the call's EINTR is then the program's.
fn owed_program_signal(uc: *mut c_void, nr: i64, a: &[u64; 6]) -> bool {
    // Every signal is blocked in our handler, so this is all of them.
    let pending = sys::sigpending() & !our_bit() & !(1 << (libc::SIGKILL - 1)) & !(1 << (libc::SIGSTOP - 1));
    if pending == 0 {
        return false;
    }
    // SAFETY: the kernel's ucontext: its mask starts with the kernel sigset.
    let mut mask = unsafe { *((&raw const (*(uc as *const libc::ucontext_t)).uc_sigmask) as *const u64) };
    // Calls that wait with a mask of their own.
    let call_mask = match nr {
        libc::SYS_rt_sigsuspend => a[0],
        libc::SYS_ppoll => a[3],
        libc::SYS_epoll_pwait => a[4],
        _ => 0,
    };
    let mut m = [0u8; 8];
    if call_mask != 0 && sys::read_own_memory(call_mask as usize, &mut m) {
        mask = u64::from_le_bytes(m);
    }
    let open = pending & !mask;
    (1..=64).filter(|s| open & (1u64 << (s - 1)) != 0).any(|s| {
        // A handler (not SIG_DFL 0, not SIG_IGN 1) would interrupt it.
        sys::kernel_handler(s).is_some_and(|h| h > 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_syscall_lines() {
        let line = "7 0x7ffd5a1c 0x1 0x3e8 0x0 0x0 0x0 0x7ffd5a00 0x7f12345678\n";
        assert_eq!(parse_syscall_line(line), Some((7, [0x7ffd5a1c, 1, 0x3e8, 0, 0, 0], 0x7f12345678)));
        assert_eq!(parse_syscall_line("running\n"), None);
        assert_eq!(parse_syscall_line("-1 0x7ffd5a00 0x401000\n"), None);
    }

    fn syscall_site(before: &[u8]) -> Vec<u8> {
        let mut v = vec![0x90u8; 32 - before.len() - 2];
        v.extend_from_slice(before);
        v.extend_from_slice(&[0x0f, 0x05]);
        v
    }

    #[test]
    fn the_call_number_is_read_from_the_code_before_the_syscall() {
        // mov $0x10e,%eax; syscall
        assert_eq!(decode_nr(&syscall_site(&[0xb8, 0x0e, 0x01, 0, 0])), Some(0x10e));
        // mov $0x10e,%eax; mov 0x1c(%rsp),%edi; syscall (glibc's pselect)
        assert_eq!(decode_nr(&syscall_site(&[0xb8, 0x0e, 0x01, 0, 0, 0x8b, 0x7c, 0x24, 0x1c])), Some(0x10e));
        // ... with mov 0x28(%rsp),%r10 and mov 0x20(%rsp),%rsi between
        let site = [0xb8, 7, 0, 0, 0, 0x4c, 0x8b, 0x54, 0x24, 0x28, 0x48, 0x8b, 0x74, 0x24, 0x20];
        assert_eq!(decode_nr(&syscall_site(&site)), Some(7));
        // mov $x,%r8d (REX.B): not eax.
        assert_eq!(decode_nr(&syscall_site(&[0x41, 0xb8, 9, 0, 0, 0])), None);
        // mov $7,%eax; mov %rdi,%rax: eax is overwritten.
        assert_eq!(decode_nr(&syscall_site(&[0xb8, 7, 0, 0, 0, 0x48, 0x89, 0xf8])), None);
        // mov $7,%eax; mov 8(%rsp),%eax
        assert_eq!(decode_nr(&syscall_site(&[0xb8, 7, 0, 0, 0, 0x8b, 0x44, 0x24, 0x08])), None);
        // no mov at all
        assert_eq!(decode_nr(&syscall_site(&[0x48, 0x89, 0xf8])), None);
    }

    #[test]
    fn relative_timeouts_are_told_from_absolute_ones() {
        assert!(relative_timeout(libc::SYS_poll, &[0, 1, 100, 0, 0, 0]));
        assert!(!relative_timeout(libc::SYS_poll, &[0, 1, (-1i32) as u32 as u64, 0, 0, 0]));
        assert!(!relative_timeout(libc::SYS_clock_nanosleep, &[1, libc::TIMER_ABSTIME as u64, 0, 0, 0, 0]));
        assert!(relative_timeout(libc::SYS_clock_nanosleep, &[1, 0, 8, 0, 0, 0]));
        assert!(relative_timeout(libc::SYS_semtimedop, &[1, 2, 1, 0x1000, 0, 0]));
        assert!(!relative_timeout(libc::SYS_semtimedop, &[1, 2, 1, 0, 0, 0]));
    }
}
