//! The application API: the functions a program calls to learn about and
//! steer its checkpoints (include/stasis.h), and the same under DMTCP's
//! dmtcp.h names. docs/api.md tells what each does.
//!
//! A program declares these functions weak (the headers do), so that the
//! same binary runs without the agent: then each is a null pointer and
//! the header's macros answer "not present".
//!
//! These run on the program's threads, so they may block and allocate
//! (the agent's allocator); the checkpoint thread only reads atomics here
//! and runs the program's hooks (`plugins`) outside any signal handler.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use stasis_proto::{self as proto, Message};

use crate::{control, plugins, sys};

/// Return values, as DMTCP's (dmtcp.h) so that one set serves both names.
pub const AFTER_CHECKPOINT: c_int = 1;
pub const AFTER_RESTART: c_int = 2;
pub const NOT_PRESENT: c_int = 3;
pub const IS_PRESENT: c_int = 4;
/// An error (the checkpoint could not be asked for, or failed).
const ERROR: c_int = -1;

/// The last generation this process took part in (0: none yet).
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Checkpoints this process took part in, and restarts it came from.
static CHECKPOINTS: AtomicU32 = AtomicU32::new(0);
static RESTARTS: AtomicU32 = AtomicU32::new(0);
/// 1 once the coordinator has counted this process in (see `note_connected`).
static CONNECTED: AtomicU32 = AtomicU32::new(0);
/// How long a checkpoint asked for at start waits for that.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The newest generation counted in CHECKPOINTS.
static COUNTED: AtomicU64 = AtomicU64::new(0);

/// How many critical sections hold checkpoints back right now.
static DISABLED: AtomicU32 = AtomicU32::new(0);
/// 1 while a checkpoint is under way (from its request until the program
/// runs again): a thread entering a critical section waits for it.
static PENDING: AtomicU32 = AtomicU32::new(0);

/// Whether this process runs under stasis (it was launched or restarted).
fn enabled() -> bool {
    control::under_stasis()
}

// ---- what the checkpoint thread tells us ----------------------------------

/// A checkpoint was requested: waits until no critical section holds it
/// back, then keeps new ones from starting until `checkpoint_done`.
/// On the checkpoint thread, before the program's threads are stopped.
pub fn hold_critical_sections() {
    PENDING.store(1, Ordering::SeqCst);
    loop {
        let n = DISABLED.load(Ordering::SeqCst);
        if n == 0 {
            return;
        }
        sys::futex_wait(&DISABLED, n, 100);
    }
}

/// The checkpoint is over (whatever its outcome): critical sections may start.
pub fn release_critical_sections() {
    PENDING.store(0, Ordering::SeqCst);
    sys::futex_wake(&PENDING);
}

/// The coordinator has greeted this process: it is in the next checkpoint.
pub fn note_connected() {
    if CONNECTED.swap(1, Ordering::AcqRel) == 0 {
        sys::futex_wake(&CONNECTED);
    }
}

/// The generation the coordinator last committed with this process in it.
pub fn set_generation(g: u64) {
    GENERATION.fetch_max(g, Ordering::AcqRel);
    if COUNTED.fetch_max(g, Ordering::AcqRel) < g {
        CHECKPOINTS.fetch_add(1, Ordering::AcqRel);
    }
}

/// In a restored process, before its program runs again.
pub fn note_restored(generation: u64) {
    RESTARTS.fetch_add(1, Ordering::AcqRel);
    GENERATION.store(generation, Ordering::Release);
    COUNTED.store(generation, Ordering::Release);
    // The image was taken with a checkpoint under way.
    release_critical_sections();
}

/// Whether child `pid` may still join the computation: not when its
/// environment names no coordinator (dmtcp_nocheckpoint ran it outside;
/// the agent's exec wrappers put the address in every other). One whose
/// environment cannot be read counts as joining. While the program is stopped.
pub fn may_join(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env
            .split(|&b| b == 0)
            .any(|e| e.starts_with(b"STASIS_COORD_ADDR=") || e.starts_with(b"STASIS_COORD_SOCKET=")),
        Err(_) => true,
    }
}

// ---- what the program sees --------------------------------------------------

/// Asks the coordinator for a checkpoint of the whole computation and
/// waits until it is committed (or until this process was restarted from it).
fn checkpoint_now() -> c_int {
    if !enabled() {
        return NOT_PRESENT;
    }
    if on_checkpoint_thread() {
        complain("a checkpoint cannot be asked for from a checkpoint hook");
        return ERROR;
    }
    // Asked for at start: this process must be in it.
    let deadline = std::time::Instant::now() + CONNECT_WAIT;
    while CONNECTED.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
        sys::futex_wait(&CONNECTED, 0, 100);
    }
    let restarts = RESTARTS.load(Ordering::Acquire);
    let reply = control::ask_coordinator(&Message::new(proto::COMMAND).with("what", "checkpoint"));
    if RESTARTS.load(Ordering::Acquire) != restarts {
        return AFTER_RESTART;
    }
    match reply {
        Ok(m) if m.verb == proto::OK => {
            if let Some(g) = m.get_parsed::<u64>("generation") {
                set_generation(g);
            }
            AFTER_CHECKPOINT
        }
        Ok(m) => {
            complain(&format!("checkpoint refused: {}", m.get("reason").unwrap_or("no reason given")));
            ERROR
        }
        Err(e) => {
            complain(&format!("cannot ask for a checkpoint: {e}"));
            ERROR
        }
    }
}

fn on_checkpoint_thread() -> bool {
    crate::signals::CT_TID.load(Ordering::Acquire) == sys::gettid()
}

fn complain(msg: &str) {
    sys::write_stderr(format!("stasis agent[{}]: {msg}\n", sys::getpid()).as_bytes());
}

/// Enters a critical section: no checkpoint starts until it is left. One
/// that is under way finishes first.
fn disable() -> c_int {
    if !enabled() {
        return NOT_PRESENT;
    }
    if on_checkpoint_thread() {
        return 1; // a hook: the checkpoint it belongs to waits for it anyway
    }
    loop {
        while PENDING.load(Ordering::SeqCst) != 0 {
            sys::futex_wait(&PENDING, 1, 100);
        }
        DISABLED.fetch_add(1, Ordering::SeqCst);
        if PENDING.load(Ordering::SeqCst) == 0 {
            return 1;
        }
        // A checkpoint was requested in between: it goes first.
        leave();
    }
}

fn leave() {
    DISABLED.fetch_sub(1, Ordering::SeqCst);
    sys::futex_wake(&DISABLED);
}

/// Leaves a critical section; a checkpoint that waited for it goes on.
fn enable() -> c_int {
    if !enabled() {
        return NOT_PRESENT;
    }
    if on_checkpoint_thread() {
        return 1;
    }
    let left = DISABLED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if left.is_err() {
        return ERROR; // not in a critical section
    }
    sys::futex_wake(&DISABLED);
    1
}

/// A C string made once and kept for the life of the process.
fn kept(cell: &'static OnceLock<CString>, make: impl FnOnce() -> String) -> *const c_char {
    cell.get_or_init(|| CString::new(make()).unwrap_or_default()).as_ptr()
}

/// Where the computation's temporary files go: `--tmpdir` of launch (or
/// of the restart that brought the process back), else DMTCP_TMPDIR or
/// TMPDIR as launched; null: /tmp. Each value stays allocated for good:
/// the program may keep the pointer it was given.
static TMPDIR: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());
static CKPT_DIR: OnceLock<CString> = OnceLock::new();

/// Reads what the environment says, from the constructor (see `exec::env_var`).
pub fn remember_environment() {
    if let Some(f) = ["STASIS_LOG_FILE", "DMTCP_LOG_FILE"]
        .iter()
        .find_map(|n| crate::exec::env_var(n).filter(|v| !v.is_empty()))
        .and_then(|f| CString::new(f).ok())
    {
        sys::set_log_file(f);
    }
    let tmp = ["STASIS_TMPDIR", "DMTCP_TMPDIR", "TMPDIR"]
        .iter()
        .find_map(|n| crate::exec::env_var(n).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "/tmp".into());
    set_tmpdir(tmp.into_bytes());
    if let Some(d) = crate::exec::env_var("STASIS_CKPT_DIR") {
        let _ = kept(&CKPT_DIR, || d);
    }
}

// ---- exported: the stasis names (include/stasis.h) --------------------------

/// 1 under stasis, 0 otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn stasis_is_enabled() -> c_int {
    c_int::from(enabled())
}

/// Checkpoints the computation now and returns once the checkpoint is
/// committed (STASIS_AFTER_CHECKPOINT) or, in a process restarted from it,
/// once it runs again (STASIS_AFTER_RESTART); negative on failure.
#[unsafe(no_mangle)]
pub extern "C" fn stasis_checkpoint() -> c_int {
    checkpoint_now()
}

/// The generation of the last checkpoint this process is in (0: none yet).
#[unsafe(no_mangle)]
pub extern "C" fn stasis_generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

#[unsafe(no_mangle)]
pub extern "C" fn stasis_disable_checkpoints() -> c_int {
    disable()
}

#[unsafe(no_mangle)]
pub extern "C" fn stasis_enable_checkpoints() -> c_int {
    enable()
}

/// Registers `hook(event, arg)`, called on the checkpoint thread before
/// each checkpoint, after the program resumes from it and after a restart.
#[unsafe(no_mangle)]
pub extern "C" fn stasis_add_hook(hook: Option<plugins::StasisHook>, arg: *mut c_void) -> c_int {
    if !enabled() {
        return NOT_PRESENT;
    }
    match hook {
        Some(h) if plugins::add_stasis_hook(h, arg) => 1,
        _ => ERROR,
    }
}

// ---- exported: DMTCP's names (dmtcp.h) --------------------------------------

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_is_enabled() -> c_int {
    c_int::from(enabled())
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_checkpoint() -> c_int {
    checkpoint_now()
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_get_generation() -> u32 {
    GENERATION.load(Ordering::Acquire) as u32
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_disable_ckpt() -> c_int {
    disable()
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_enable_ckpt() -> c_int {
    enable()
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_plugin_disable_ckpt() -> c_int {
    disable()
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_plugin_enable_ckpt() {
    enable();
}

#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_get_tmpdir() -> *const c_char {
    let p = TMPDIR.load(Ordering::Acquire);
    if p.is_null() { c"/tmp".as_ptr() } else { p }
}

/// A new temporary directory: from the environment at start, or restart's
/// `--tmpdir` (then `STASIS_TMPDIR` too, for what the program execs).
pub fn set_tmpdir(dir: Vec<u8>) {
    if let Ok(c) = CString::new(dir) {
        TMPDIR.store(c.into_raw(), Ordering::Release);
    }
}

/// The checkpoint directory; "" before the agent has learnt it.
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_get_ckpt_dir() -> *const c_char {
    kept(&CKPT_DIR, String::new)
}

/// Refused: the checkpoint directory is the coordinator's, for the whole
/// computation.
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_set_ckpt_dir(_dir: *const c_char) -> c_int {
    if enabled() { ERROR } else { NOT_PRESENT }
}

/// The checkpoint signal.
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_get_ckpt_signal() -> c_int {
    crate::signals::CKPT_SIGNAL.load(Ordering::Acquire)
}

/// 1 unless a checkpoint is under way.
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_is_running_state() -> c_int {
    c_int::from(PENDING.load(Ordering::Acquire) == 0)
}

/// The processes the coordinator has, and whether they all run.
///
/// # Safety
/// Each pointer is null or points to an int.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dmtcp_get_coordinator_status(num_peers: *mut c_int, is_running: *mut c_int) -> c_int {
    if !enabled() {
        return NOT_PRESENT;
    }
    let Ok(m) = control::ask_coordinator(&Message::new(proto::COMMAND).with("what", "status")) else {
        return ERROR;
    };
    let peers = m.get_parsed::<c_int>("processes").unwrap_or(0);
    let running = c_int::from(m.get("state") == Some("running"));
    // SAFETY: the caller passes null or valid pointers (dmtcp.h's contract).
    unsafe {
        if !num_peers.is_null() {
            *num_peers = peers;
        }
        if !is_running.is_null() {
            *is_running = running;
        }
    }
    IS_PRESENT
}

/// How many checkpoints this process took part in, and restarts it came from.
///
/// # Safety
/// Each pointer is null or points to an int.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dmtcp_get_local_status(num_checkpoints: *mut c_int, num_restarts: *mut c_int) -> c_int {
    if !enabled() {
        return NOT_PRESENT;
    }
    // SAFETY: the caller passes null or valid pointers (dmtcp.h's contract).
    unsafe {
        if !num_checkpoints.is_null() {
            *num_checkpoints = CHECKPOINTS.load(Ordering::Acquire) as c_int;
        }
        if !num_restarts.is_null() {
            *num_restarts = RESTARTS.load(Ordering::Acquire) as c_int;
        }
    }
    IS_PRESENT
}

/// Nothing to do: the agent is set up by its constructor.
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_initialize() {}

/// Registers a plugin's event hook (DMTCP_DECL_PLUGIN, or a program's own call).
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_register_plugin(descriptor: plugins::PluginDescriptor) {
    plugins::register(descriptor);
}

/// DMTCP's barriers among the processes of a computation, called from a
/// plugin's hook. Stasis has none: see `plugins::barrier`.
///
/// # Safety
/// `name` is null or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dmtcp_global_barrier(name: *const c_char) {
    // SAFETY: as the caller promises.
    let name = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) });
    plugins::barrier(name, true);
}

/// # Safety
/// `name` is null or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dmtcp_local_barrier(name: *const c_char) {
    // SAFETY: as the caller promises.
    let name = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) });
    plugins::barrier(name, false);
}

/// `dlsym` for plugins' NEXT_FNC: RTLD_NEXT must mean "after the caller",
/// so this jumps into dlsym, which finds the caller from its return address.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_dlsym(_handle: *mut c_void, _symbol: *const c_char) -> *mut c_void {
    std::arch::naked_asm!("jmp qword ptr [rip + dlsym@GOTPCREL]")
}

#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn dmtcp_dlsym(_handle: *mut c_void, _symbol: *const c_char) -> *mut c_void {
    std::arch::naked_asm!("adrp x16, :got:dlsym", "ldr x16, [x16, :got_lo12:dlsym]", "br x16")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_outside_the_computation_is_not_waited_for() {
        // The test runner's environment names no coordinator.
        if std::env::var_os("STASIS_COORD_ADDR").is_none() && std::env::var_os("STASIS_COORD_SOCKET").is_none() {
            assert!(!may_join(std::process::id() as i32));
        }
        // Unreadable (no such process): counted as joining.
        assert!(may_join(i32::MAX));
    }

    #[test]
    fn critical_sections_count_and_an_unmatched_enable_is_refused() {
        DISABLED.store(0, Ordering::SeqCst);
        DISABLED.fetch_add(2, Ordering::SeqCst);
        leave();
        assert_eq!(DISABLED.load(Ordering::SeqCst), 1);
        leave();
        assert!(DISABLED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err());
    }
}
