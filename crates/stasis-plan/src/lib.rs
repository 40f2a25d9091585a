//! The restore plan: what the restorer must do, decided beforehand.
//!
//! `stasis restart` computes every decision in ordinary, tested Rust and
//! writes the result as these flat `repr(C)` records into the memory area
//! where the restorer blob runs. The restorer only executes them: map this
//! here, read that there, create this thread. Addresses are plain `u64`
//! (absolute, in the restored process), so the records hold no pointers
//! that would need relocating.
#![no_std]

/// First word of a plan, checked by the restorer before it trusts the rest.
pub const PLAN_MAGIC: u64 = u64::from_le_bytes(*b"STASPLAN");

/// Size of the kernel's `struct ucontext` on x86_64 (flags, link, stack,
/// sigcontext, sigmask), as saved in images.
pub const UCONTEXT_LEN: usize = 304;
/// Offset of `uc_mcontext.fpstate` inside that ucontext.
pub const UC_FPSTATE_OFFSET: usize = 40 + 184;
/// Offset of `uc_sigmask` inside that ucontext.
pub const UC_SIGMASK_OFFSET: usize = 40 + 256;
/// Offset of the saved stack pointer (`uc_mcontext.sp`).
pub const UC_RSP_OFFSET: usize = 40 + 120;
/// Offset of the saved instruction pointer (`uc_mcontext.ip`).
pub const UC_RIP_OFFSET: usize = 40 + 128;

/// One `mmap(MAP_FIXED)` the restorer performs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOp {
    pub start: u64,
    pub len: u64,
    /// Final protection, applied once the contents are in place.
    pub prot: u32,
    /// MAP_PRIVATE/MAP_SHARED/MAP_ANONYMOUS/MAP_GROWSDOWN (MAP_FIXED is added).
    pub flags: u32,
    /// Descriptor to map from, or -1 for anonymous memory.
    pub fd: i32,
    /// `FORK_DONTFORK` | `FORK_WIPEONFORK`: madvise once filled.
    pub fork_advice: u32,
    pub offset: u64,
    /// 1: nothing is put into the region, which is mapped with its final
    /// protection at once: a region the program never made writable (a
    /// PROT_NONE reservation) is never made writable, so no memory is
    /// committed for it that the program had not.
    pub empty: u32,
    pub _pad: u32,
}

/// `MapOp::fork_advice` bits.
pub const FORK_DONTFORK: u32 = 1;
pub const FORK_WIPEONFORK: u32 = 2;

/// Read `len` bytes at `file_offset` of image `fd` into `addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOp {
    pub addr: u64,
    pub len: u64,
    pub file_offset: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// Put `len` bytes of memory that restart filled (decompressed pages in
/// the restorer's area, at `from`) at `to`: moved with mremap (no copy)
/// when `copy` is 0, copied otherwise.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RemapOp {
    pub from: u64,
    pub to: u64,
    pub len: u64,
    pub copy: u64,
}

/// Store `value` at `addr` once memory is in place (tells the agent it was restored).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Poke {
    pub addr: u64,
    pub value: u64,
}

/// Move one of this kernel's vdso/vvar areas to where the image had it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Move {
    pub from: u64,
    pub to: u64,
    pub len: u64,
}

/// One thread to bring back.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadPlan {
    pub tid: i32,
    pub _pad: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    /// Address of the prepared `rt_sigframe`; rt_sigreturn runs with
    /// rsp = frame + 8, as after a signal handler's `ret`.
    pub frame: u64,
    /// Top of the small stack the restorer uses for this thread.
    pub stack_top: u64,
    pub clear_child_tid: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// Thread-directed signals to queue again (bit n-1 is signal n).
    pub pending: u64,
    /// The thread's name (comm), NUL-terminated.
    pub name: [u8; 16],
}

/// The kernel's `struct sigaction` for rt_sigaction on x86_64.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `struct itimerval` (microseconds).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Itimerval {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// One POSIX timer to create with its old id.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TimerPlan {
    pub id: i32,
    pub clock: i32,
    pub notify: i32,
    pub signal: i32,
    pub notify_tid: i32,
    pub _pad: i32,
    pub sigev_value: u64,
    pub interval_sec: i64,
    pub interval_nsec: i64,
    pub value_sec: i64,
    pub value_nsec: i64,
}

/// The kernel's `struct prctl_mm_map` (PR_SET_MM_MAP).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// Where an array of records lies: `len` records starting at `addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Slice {
    pub addr: u64,
    pub len: u64,
}

/// The whole plan. `threads[0]` is the thread-group leader, the thread
/// that runs the restorer first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub magic: u64,
    /// The restorer's own area (code, plan, stacks): never unmapped by it.
    pub blob_start: u64,
    pub blob_end: u64,
    /// Other areas to keep while unmapping: this kernel's vdso and vvar.
    pub keep: [Move; 4],
    pub n_keep: u64,
    /// vdso/vvar moves, done in order (via a temporary place if needed).
    pub moves: [Move; 8],
    pub n_moves: u64,
    pub maps: Slice,
    /// `MapOp`s of image files (MAP_PRIVATE), laid over the anonymous
    /// regions of `maps` once those exist, before `reads`.
    pub image_maps: Slice,
    pub reads: Slice,
    /// `RemapOp`s, done after `image_maps`.
    pub remaps: Slice,
    pub pokes: Slice,
    pub threads: Slice,
    pub timers: Slice,
    pub sigactions: [KernelSigaction; 64],
    /// Bit n-1 set: install `sigactions[n-1]` for signal n.
    pub sigaction_set: u64,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [Itimerval; 3],
    pub mm_map: PrctlMmMap,
    /// Process-directed signals to queue again (bit n-1 is signal n).
    pub shared_pending: u64,
    pub image_fd: i32,
    /// Where the restorer reports a failure before exiting.
    pub log_fd: i32,
    /// The agent's signal: each thread raises it on itself just before
    /// rt_sigreturn, so the agent learns when the thread has left the blob.
    pub ckpt_signal: i32,
    /// Futex word: the leader sets it to 1 when every thread may go.
    pub go: u32,
    /// Restart's own descriptors (the image, mapped files, the log) are
    /// all in `[close_from, close_to)`, above every descriptor of the
    /// program; the restorer closes them before going.
    pub close_from: i32,
    pub close_to: i32,
    /// RLIMIT_NOFILE (soft, hard), set once those are closed when
    /// `set_open_files_limit` is 1: a program's soft limit may be below the
    /// numbers restart's own descriptors took.
    pub open_files_limit: [u64; 2],
    pub set_open_files_limit: u64,
}

/// The agent's block that the restorer writes into (through `Poke`s) to
/// tell the restored agent what happened. Its address is in the image.
///
/// Offsets are fixed: the agent declares the same layout with atomics.
pub mod restore_info {
    /// `u64`: always `MAGIC`, checked by restart before poking.
    pub const MAGIC_OFFSET: u64 = 0;
    /// `u32`: threads that have not yet left the restorer's memory.
    pub const CHECKOUT_OFFSET: u64 = 8;
    /// `u32`: `PHASE_RESTORING` while threads leave the restorer.
    pub const PHASE_OFFSET: u64 = 12;
    /// `u64`: the restorer area to unmap once every thread has left it.
    pub const BLOB_START_OFFSET: u64 = 16;
    pub const BLOB_LEN_OFFSET: u64 = 24;
    /// `u64`: set to 1 by restart; the checkpoint thread clears it.
    pub const RESTORED_OFFSET: u64 = 32;
    /// `u64`: the generation the process was restored from.
    pub const GENERATION_OFFSET: u64 = 40;
    /// `u64`: 1 + the descriptor that becomes readable once restart has
    /// verified every chunk of the images (0: nothing to wait for). Only in
    /// agents of image version 7 and later, as is what follows.
    pub const VERIFY_GATE_OFFSET: u64 = 48;
    /// `u64`: how many entries of the image table follow.
    pub const IMAGES_COUNT_OFFSET: u64 = 56;
    /// The image table: `IMAGES_MAX` entries of `IMAGE_ENTRY_LEN` bytes,
    /// each (dev as /proc/PID/maps prints it, major << 32 | minor; inode;
    /// generation), the image files the process's memory is mapped from.
    pub const IMAGES_OFFSET: u64 = 64;
    pub const IMAGE_ENTRY_LEN: u64 = 24;
    pub const IMAGES_MAX: usize = 32;
    /// `u64`: the length of the path that follows, 0 for none: the
    /// program's temporary directory as the restart was told it
    /// (`dmtcp_restart --tmpdir`), which the agent puts in
    /// `STASIS_TMPDIR` before the program runs again; the agent clears it.
    /// Only in agents of image version 8 and later.
    pub const TMPDIR_LEN_OFFSET: u64 = IMAGES_OFFSET + IMAGES_MAX as u64 * IMAGE_ENTRY_LEN;
    /// The path's bytes, at most `TMPDIR_MAX`, in whole `u64`s.
    pub const TMPDIR_OFFSET: u64 = TMPDIR_LEN_OFFSET + 8;
    pub const TMPDIR_MAX: usize = 504;
    pub const MAGIC: u64 = u64::from_le_bytes(*b"STASRINF");
    pub const PHASE_RESTORING: u32 = 1;
}

/// Size of the stack the restorer gives each thread it creates.
pub const RESTORER_THREAD_STACK: u64 = 32 * 1024;
