//! The restorer: executes a `Plan` inside the process being restored.
//!
//! Entered with rdi = address of the plan and rsp on a stack inside the
//! restorer's own area. It unmaps everything else, moves the vdso into
//! place, maps and fills the saved memory, restores process-wide state,
//! recreates the threads with their old tids, and has every thread return
//! into the program through rt_sigreturn on its saved signal frame.
//!
//! Nothing here may fail silently: a failed step is reported on the plan's
//! log descriptor and the process exits with status 125, as no half-restored
//! program may run.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use stasis_plan::{KernelSigaction, Move, Plan, ThreadPlan, TimerPlan};

mod sys;
use sys::*;

/// Top of the user address space on x86_64 with 4-level paging.
const TASK_TOP: u64 = 0x7fff_ffff_f000;
const PAGE: u64 = 4096;
/// Exit status of a process whose restore failed.
const FAILED: i32 = 125;

static PLAN: AtomicU64 = AtomicU64::new(0);

fn plan() -> &'static Plan {
    // SAFETY: set once by restorer_main before any thread can call this;
    // the plan lives in the restorer's area for the process's lifetime.
    unsafe { &*(PLAN.load(Ordering::Acquire) as *const Plan) }
}

fn slice<T>(s: stasis_plan::Slice) -> &'static [T] {
    if s.len == 0 {
        return &[];
    }
    // SAFETY: restart wrote `len` records of type T at `addr`, in our area.
    unsafe { core::slice::from_raw_parts(s.addr as *const T, s.len as usize) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(b"internal error", 0)
}

/// Reports `what` (and an errno) on restart's stderr, naming the process,
/// and ends it (restart returns the status).
fn fail(what: &[u8], err: isize) -> ! {
    let fd = {
        let p = PLAN.load(Ordering::Acquire);
        // SAFETY: as in plan(); 2 if the plan is not known yet.
        if p == 0 { 2 } else { unsafe { (*(p as *const Plan)).log_fd } }
    };
    let mut buf = [0u8; 200];
    let mut n = 0;
    let mut put = |buf: &mut [u8; 200], part: &[u8]| {
        for &b in part {
            if n < buf.len() - 24 {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(&mut buf, b"stasis: restart: restoring process ");
    let mut pid = [0u8; 20];
    let len = fmt_u64(&mut pid, getpid() as u64);
    put(&mut buf, &pid[..len]);
    put(&mut buf, b" failed: in the restorer: ");
    put(&mut buf, what);
    put(&mut buf, b": errno ");
    n += fmt_u64(&mut buf[n..], (-err) as u64);
    buf[n] = b'\n';
    write(fd, &buf[..=n]);
    exit_group(FAILED)
}

fn fmt_u64(out: &mut [u8], mut v: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = 0;
    loop {
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        i += 1;
        if v == 0 {
            break;
        }
    }
    for j in 0..i {
        out[j] = tmp[i - 1 - j];
    }
    i
}

fn check(what: &[u8], r: isize) -> isize {
    if r < 0 && r > -4096 { fail(what, r) } else { r }
}

/// The entry point; see the module comment.
///
/// # Safety
/// Called only by restart's jump, with a valid plan in the restorer area.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn restorer_main(plan_addr: u64) -> ! {
    PLAN.store(plan_addr, Ordering::Release);
    let p = plan();
    if p.magic != stasis_plan::PLAN_MAGIC {
        fail(b"plan check", 0);
    }
    let all: u64 = !0;
    check(b"block signals", rt_sigprocmask(SIG_SETMASK, &all));

    unmap_everything_else(p);
    for m in &p.moves[..p.n_moves as usize] {
        let r = mremap_fixed(m.from, m.len, m.to);
        if r as u64 != m.to {
            fail(b"moving the vdso", r);
        }
    }
    map_memory(p);

    for poke in slice::<stasis_plan::Poke>(p.pokes) {
        // SAFETY: restart checked that each poke lands in a restored,
        // writable region (the agent's RestoreInfo block).
        unsafe { core::ptr::write_volatile(poke.addr as *mut u64, poke.value) };
    }
    if p.mm_map.auxv != 0 {
        let mut mm = p.mm_map;
        if prctl_mm_map(&mm) < 0 {
            // Without the executable's descriptor it may still work.
            mm.exe_fd = u32::MAX;
            let _ = prctl_mm_map(&mm);
        }
    }
    for sig in 1..=64u64 {
        if p.sigaction_set & (1 << (sig - 1)) != 0 {
            let act: &KernelSigaction = &p.sigactions[(sig - 1) as usize];
            check(b"rt_sigaction", rt_sigaction(sig as i32, act));
        }
    }

    let threads = slice::<ThreadPlan>(p.threads);
    for t in threads.iter().skip(1) {
        create_thread(t);
    }
    restore_timers(p, slice::<TimerPlan>(p.timers));
    for (which, it) in p.itimers.iter().enumerate() {
        if it.value_sec != 0 || it.value_usec != 0 {
            check(b"setitimer", setitimer(which as i32, it));
        }
    }
    let pid = getpid();
    for sig in 1..=64 {
        if p.shared_pending & (1 << (sig - 1)) != 0 {
            let _ = kill(pid, sig);
        }
    }
    // The program's limit of open files while the log (restart's stderr,
    // among the descriptors closed next) can still say it failed: a lower
    // limit than descriptors already open is allowed.
    if p.set_open_files_limit != 0 {
        check(b"setrlimit(RLIMIT_NOFILE)", setrlimit(RLIMIT_NOFILE, &p.open_files_limit));
    }
    for fd in p.close_from..p.close_to {
        let _ = close(fd);
    }
    let go = go_word(p);
    go.store(1, Ordering::Release);
    futex_wake(go);
    finish_thread(&threads[0], true)
}

fn go_word(p: &Plan) -> &AtomicU32 {
    // SAFETY: `go` is a properly aligned u32 inside the plan, which lives
    // as long as the restorer; all access to it goes through this atomic.
    unsafe { AtomicU32::from_ptr(&p.go as *const u32 as *mut u32) }
}

fn unmap_everything_else(p: &Plan) {
    let mut keep = [Move::default(); 5];
    let mut n = 0;
    keep[n] = Move { from: p.blob_start, to: 0, len: p.blob_end - p.blob_start };
    n += 1;
    for k in &p.keep[..p.n_keep as usize] {
        keep[n] = *k;
        n += 1;
    }
    // Insertion sort by address: at most five entries.
    for i in 1..n {
        let mut j = i;
        while j > 0 && keep[j - 1].from > keep[j].from {
            keep.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut cursor = PAGE;
    for k in &keep[..n] {
        if k.from > cursor {
            check(b"munmap", munmap(cursor, k.from - cursor));
        }
        cursor = cursor.max(k.from + k.len);
    }
    if cursor < TASK_TOP {
        check(b"munmap", munmap(cursor, TASK_TOP - cursor));
    }
}

fn map_memory(p: &Plan) {
    let maps = slice::<stasis_plan::MapOp>(p.maps);
    for m in maps {
        // Shared memory and shared files hold their contents already; a
        // region nothing goes into is mapped as it is (a PROT_NONE
        // reservation is never made writable: nothing committed for it).
        let as_is = (m.fd >= 0 && m.flags & MAP_SHARED != 0) || m.empty != 0;
        let prot = if as_is { m.prot } else { PROT_READ | PROT_WRITE };
        let r = mmap(m.start, m.len, prot, m.flags | MAP_FIXED, m.fd, m.offset);
        if r as u64 != m.start {
            fail(b"mmap", r);
        }
    }
    // Pages that come straight from an image: mapped over the anonymous
    // region, read by the kernel when first touched.
    for m in slice::<stasis_plan::MapOp>(p.image_maps) {
        let r = mmap(m.start, m.len, m.prot, m.flags | MAP_FIXED, m.fd, m.offset);
        if r as u64 != m.start {
            fail(b"mmap of the image", r);
        }
    }
    // Pages restart decompressed in our area: moved, or copied where a move
    // would split a mapping that must stay one (a stack, the heap).
    for m in slice::<stasis_plan::RemapOp>(p.remaps) {
        if m.copy != 0 {
            // SAFETY: restart filled `len` bytes at `from` in our area, and
            // `to` lies in a region mapped writable above; they are disjoint.
            unsafe { core::ptr::copy_nonoverlapping(m.from as *const u8, m.to as *mut u8, m.len as usize) };
            continue;
        }
        let r = mremap_fixed(m.from, m.len, m.to);
        if r as u64 != m.to {
            fail(b"mremap of decompressed memory", r);
        }
    }
    for r in slice::<stasis_plan::ReadOp>(p.reads) {
        read_fully(r.fd, r.addr, r.len, r.file_offset);
    }
    for m in maps {
        let as_is = (m.fd >= 0 && m.flags & MAP_SHARED != 0) || m.empty != 0;
        if !as_is {
            check(b"mprotect", mprotect(m.start, m.len, m.prot));
        }
        // How the program asked the region to behave across fork.
        if m.fork_advice & stasis_plan::FORK_DONTFORK != 0 {
            check(b"madvise(MADV_DONTFORK)", madvise(m.start, m.len, MADV_DONTFORK));
        }
        if m.fork_advice & stasis_plan::FORK_WIPEONFORK != 0 {
            check(b"madvise(MADV_WIPEONFORK)", madvise(m.start, m.len, MADV_WIPEONFORK));
        }
    }
}

fn read_fully(fd: i32, addr: u64, len: u64, offset: u64) {
    let mut done = 0u64;
    while done < len {
        let n = pread(fd, addr + done, len - done, offset + done);
        if n == -4 {
            continue; // EINTR
        }
        if n <= 0 {
            fail(b"reading the image", if n == 0 { -5 } else { n });
        }
        done += n as u64;
    }
}

fn restore_timers(p: &Plan, timers: &[TimerPlan]) {
    if timers.is_empty() {
        return;
    }
    // Linux 6.16+: timer_create then takes the wanted id from its argument.
    let _ = prctl(PR_TIMER_CREATE_RESTORE_IDS, 1);
    for t in timers {
        let mut sev = [0u64; 8];
        sev[0] = t.sigev_value;
        sev[1] = (t.signal as u32 as u64) | ((t.notify as u32 as u64) << 32);
        sev[2] = t.notify_tid as u32 as u64;
        let mut id: i32 = t.id;
        check(b"timer_create", timer_create(t.clock, &sev, &mut id));
        if id != t.id {
            fail(b"timer_create with the saved id", -22);
        }
        if t.value_sec != 0 || t.value_nsec != 0 {
            let spec = [t.interval_sec, t.interval_nsec, t.value_sec, t.value_nsec];
            check(b"timer_settime", timer_settime(id, &spec));
        }
    }
    let _ = p;
}

/// Size of each thread's restorer stack (must match restart's layout).
const THREAD_STACK: u64 = stasis_plan::RESTORER_THREAD_STACK;

fn create_thread(t: &ThreadPlan) {
    let mut flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS;
    if t.clear_child_tid != 0 {
        flags |= CLONE_CHILD_CLEARTID;
    }
    let tid: i64 = t.tid as i64;
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: t.clear_child_tid,
        parent_tid: 0,
        exit_signal: 0,
        stack: t.stack_top - THREAD_STACK,
        stack_size: THREAD_STACK,
        tls: t.fs_base,
        set_tid: &tid as *const i64 as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    let ret: isize;
    // SAFETY: clone3 with a fresh stack: the child starts on that stack and
    // immediately calls thread_entry (which never returns) with r12 = t.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym thread_entry,
            inlateout("rax") SYS_CLONE3 => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") core::mem::size_of::<CloneArgs>(),
            in("r12") t as *const ThreadPlan,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    if ret != t.tid as isize {
        fail(b"clone3 with the saved tid", ret);
    }
}

extern "C" fn thread_entry(t: *const ThreadPlan) -> ! {
    // SAFETY: t points into the plan (see create_thread).
    let t = unsafe { &*t };
    let go = go_word(plan());
    while go.load(Ordering::Acquire) == 0 {
        futex_wait(go, 0);
    }
    finish_thread(t, false)
}

/// Puts the thread's own kernel state back, then returns into the program.
fn finish_thread(t: &ThreadPlan, leader: bool) -> ! {
    if leader {
        check(b"arch_prctl(ARCH_SET_FS)", arch_prctl(ARCH_SET_FS, t.fs_base));
    }
    if t.gs_base != 0 {
        let _ = arch_prctl(ARCH_SET_GS, t.gs_base);
    }
    if t.robust_list != 0 {
        let _ = set_robust_list(t.robust_list, t.robust_list_len);
    }
    let _ = prctl(PR_SET_NAME, t.name.as_ptr() as u64);
    if t.rseq_addr != 0 {
        // Best effort: without it glibc only sees a stale cpu number.
        let _ = rseq(t.rseq_addr, t.rseq_len, t.rseq_sig);
    }
    let pid = getpid();
    for sig in 1..=64 {
        if t.pending & (1 << (sig - 1)) != 0 {
            let _ = tgkill(pid, t.tid, sig);
        }
    }
    // Queued while every signal is blocked, delivered the moment
    // rt_sigreturn installs the saved mask: the agent's handler then knows
    // this thread has left the restorer's memory.
    let _ = tgkill(pid, t.tid, plan().ckpt_signal);
    // SAFETY: `frame` is a complete rt_sigframe prepared by restart; the
    // kernel reads it at rsp - 8 and never returns here.
    unsafe {
        asm!(
            "mov rsp, {sp}",
            "mov eax, 15",
            "syscall",
            "ud2",
            sp = in(reg) t.frame + 8,
            options(noreturn),
        )
    }
}
