//! The program's hooks around checkpoints: those it registered with
//! `stasis_add_hook`, and DMTCP plugins' event hooks (DMTCP_DECL_PLUGIN,
//! `dmtcp_register_plugin`).
//!
//! A DMTCP plugin is a library preloaded after the agent (`--with-plugin`,
//! DMTCP_PLUGIN: launch puts it in LD_PRELOAD, so that the functions it
//! wraps are found before libc's and children inherit it). DMTCP_DECL_PLUGIN
//! defines `dmtcp_initialize_plugin` in each, chained through NEXT_FNC; the
//! agent's constructor calls the first, which registers every plugin.
//!
//! Hooks run on the checkpoint thread, outside any signal handler, while
//! the program's other threads run: before the checkpoint (DMTCP's
//! PRESUSPEND, then PRECHECKPOINT), after the program resumes from it
//! (RESUME), after a restart (RESTART), each followed by RUNNING; INIT at
//! start, EXIT at exit. docs/api.md says which of DMTCP's events map.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// `void hook(int event, void *arg)`, as include/stasis.h declares it.
pub type StasisHook = extern "C" fn(c_int, *mut c_void);
/// A DMTCP event hook: `void hook(DmtcpEvent_t event, DmtcpEventData_t *data)`.
type DmtcpHook = extern "C" fn(c_int, *mut c_void);

/// DMTCP's DmtcpPluginDescriptor_t, passed by value to dmtcp_register_plugin.
#[repr(C)]
pub struct PluginDescriptor {
    api_version: *const c_char,
    dmtcp_version: *const c_char,
    name: *const c_char,
    author: *const c_char,
    email: *const c_char,
    description: *const c_char,
    event_hook: Option<DmtcpHook>,
}

/// DMTCP's event numbers (DmtcpEvent_t in dmtcp.h), those delivered here.
mod dmtcp_event {
    pub const INIT: i32 = 0;
    pub const EXIT: i32 = 1;
    pub const PRESUSPEND: i32 = 15;
    pub const PRECHECKPOINT: i32 = 16;
    pub const RESUME: i32 = 17;
    pub const RESTART: i32 = 18;
    pub const RUNNING: i32 = 19;
}

/// include/stasis.h's events.
mod stasis_event {
    pub const PRECHECKPOINT: i32 = 1;
    pub const RESUME: i32 = 2;
    pub const RESTART: i32 = 3;
}

const MAX_HOOKS: usize = 64;
const EMPTY: usize = 0;
const DMTCP: usize = 1;
const STASIS: usize = 2;

/// One registered hook; `kind` is written last, so a reader that sees it
/// set sees the rest.
struct Slot {
    kind: AtomicUsize,
    func: AtomicUsize,
    arg: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { kind: AtomicUsize::new(EMPTY), func: AtomicUsize::new(0), arg: AtomicUsize::new(0) };
static SLOTS: [Slot; MAX_HOOKS] = [FREE; MAX_HOOKS];
static USED: AtomicUsize = AtomicUsize::new(0);
/// The constructor delivered INIT: a plugin registered later gets its own at once.
static STARTED: AtomicBool = AtomicBool::new(false);
/// The checkpoint thread is running PRESUSPEND hooks (see `barrier`).
static IN_PRESUSPEND: AtomicBool = AtomicBool::new(false);

fn add(kind: usize, func: usize, arg: usize) -> Option<usize> {
    let i = USED.fetch_add(1, Ordering::AcqRel);
    if i >= MAX_HOOKS {
        USED.fetch_sub(1, Ordering::AcqRel);
        crate::sys::write_stderr(b"stasis agent: too many checkpoint hooks; this one is ignored\n");
        return None;
    }
    SLOTS[i].func.store(func, Ordering::Relaxed);
    SLOTS[i].arg.store(arg, Ordering::Relaxed);
    SLOTS[i].kind.store(kind, Ordering::Release);
    Some(i)
}

pub fn add_stasis_hook(hook: StasisHook, arg: *mut c_void) -> bool {
    add(STASIS, hook as usize, arg as usize).is_some()
}

/// dmtcp_register_plugin: a plugin's hook, which gets INIT at once if the
/// agent has started already (a program registering from its main).
pub fn register(d: PluginDescriptor) {
    let Some(hook) = d.event_hook else { return };
    if add(DMTCP, hook as usize, 0).is_some() && STARTED.load(Ordering::Acquire) {
        call_dmtcp(hook, dmtcp_event::INIT);
    }
}

/// DmtcpEventData_t: a union of at most six words; zero but for RESTART's
/// `isRestart`.
fn call_dmtcp(hook: DmtcpHook, event: i32) {
    let mut data = [0u64; 8];
    if event == dmtcp_event::RESTART || event == dmtcp_event::RUNNING {
        data[0] = u64::from(event == dmtcp_event::RESTART);
    }
    hook(event, data.as_mut_ptr().cast());
}

/// Calls every hook of `kind` with `event`, in the order registered.
fn deliver(kind: usize, event: i32) {
    let n = USED.load(Ordering::Acquire).min(MAX_HOOKS);
    for s in &SLOTS[..n] {
        if s.kind.load(Ordering::Acquire) != kind {
            continue;
        }
        let func = s.func.load(Ordering::Relaxed);
        // SAFETY: only `add` writes slots, with a function of this kind's
        // signature, which the program gave us.
        let f: extern "C" fn(c_int, *mut c_void) = unsafe { std::mem::transmute::<usize, DmtcpHook>(func) };
        match kind {
            DMTCP => call_dmtcp(f, event),
            _ => f(event, s.arg.load(Ordering::Relaxed) as *mut c_void),
        }
    }
}

/// From the constructor: initializes the preloaded DMTCP plugins (their
/// chain of `dmtcp_initialize_plugin`), then gives every hook INIT.
pub fn init() {
    // SAFETY: dlsym with a NUL-terminated name; from the constructor,
    // no thread of ours is stopped.
    let first = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dmtcp_initialize_plugin".as_ptr()) };
    if !first.is_null() {
        // SAFETY: DMTCP_DECL_PLUGIN defines it as `void f(void)`.
        let f: extern "C" fn() = unsafe { std::mem::transmute::<*mut c_void, extern "C" fn()>(first) };
        f();
    }
    deliver(DMTCP, dmtcp_event::INIT);
    STARTED.store(true, Ordering::Release);
    // SAFETY: atexit with a function that lives as long as the process.
    unsafe { libc::atexit(at_exit) };
}

extern "C" fn at_exit() {
    deliver(DMTCP, dmtcp_event::EXIT);
}

/// How long after the RESUME or RESTART hooks the next PRESUSPEND waits at
/// least: the program may act on those hooks in its own threads (DMTCP's
/// `presuspend` test forks a new child once RESTART said so), and DMTCP
/// delivers RESTART before the program's threads run, so they have acted
/// by the time the next checkpoint comes.
const SETTLE: Duration = Duration::from_secs(2);
/// When the last RESUME/RESTART hooks were delivered to DMTCP hooks.
static LAST_RUNNING: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

fn has_dmtcp_hooks() -> bool {
    let n = USED.load(Ordering::Acquire).min(MAX_HOOKS);
    SLOTS[..n].iter().any(|s| s.kind.load(Ordering::Acquire) == DMTCP)
}

fn note_running() {
    if has_dmtcp_hooks()
        && let Ok(mut t) = LAST_RUNNING.lock()
    {
        *t = Some(std::time::Instant::now());
    }
}

/// Gives the program the rest of SETTLE to act on its last RESUME/RESTART.
fn settle() {
    let since = LAST_RUNNING.lock().ok().and_then(|t| *t).map(|t| t.elapsed());
    if let Some(since) = since
        && since < SETTLE
    {
        std::thread::sleep(SETTLE - since);
    }
}

/// Before the program's threads are stopped for a checkpoint.
pub fn before_checkpoint() {
    settle();
    IN_PRESUSPEND.store(true, Ordering::Release);
    deliver(DMTCP, dmtcp_event::PRESUSPEND);
    IN_PRESUSPEND.store(false, Ordering::Release);
    deliver(DMTCP, dmtcp_event::PRECHECKPOINT);
    deliver(STASIS, stasis_event::PRECHECKPOINT);
}

/// After the program runs again, the checkpoint done (or given up).
pub fn after_resume() {
    deliver(DMTCP, dmtcp_event::RESUME);
    deliver(STASIS, stasis_event::RESUME);
    deliver(DMTCP, dmtcp_event::RUNNING);
    note_running();
}

/// In a restored process, once its program runs again.
pub fn after_restart() {
    deliver(DMTCP, dmtcp_event::RESTART);
    deliver(STASIS, stasis_event::RESTART);
    deliver(DMTCP, dmtcp_event::RUNNING);
    note_running();
}

/// How long a global barrier in a PRESUSPEND hook holds this process back.
const PRESUSPEND_BARRIER: Duration = Duration::from_secs(1);

/// DMTCP's barriers. Stasis's coordinator has no barrier that plugins can
/// name, so a global one in a PRESUSPEND hook, where it matters most (the
/// other processes' PRESUSPEND hooks act on this one: one kills its child,
/// say), is a pause that gives them the time to; elsewhere every process
/// reaches the coordinator's own barriers anyway, and this returns at once.
pub fn barrier(_name: Option<&CStr>, global: bool) {
    if global
        && IN_PRESUSPEND.load(Ordering::Acquire)
        && crate::signals::CT_TID.load(Ordering::Acquire) == crate::sys::gettid()
    {
        std::thread::sleep(PRESUSPEND_BARRIER);
    }
}
