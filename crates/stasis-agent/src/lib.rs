//! The Stasis agent, preloaded into every process of a computation.
//!
//! At load time it installs the checkpoint signal's handler and starts the
//! checkpoint thread, which connects to the coordinator named in
//! `STASIS_COORD_SOCKET` and writes this process's image on request.
//! docs/architecture.md tells the whole story.
//!
//! Rules for code here: the agent lives inside someone else's program. It
//! never panics into it, never allocates or locks in a signal handler, and
//! uses its own allocator so it cannot deadlock on the program's malloc.

mod alloc;
mod api;
mod ckpt;
mod collect;
mod conn_fd;
mod control;
mod eintr;
mod exec;
mod fork_advice;
mod imagemap;
mod inotify;
mod ipc;
mod modify_env;
mod mqueue;
mod pending;
mod plugins;
mod progsig;
mod pty;
mod reuse_addr;
mod savefiles;
mod signals;
mod sigwait;
mod sockets;
mod stdio;
mod sys;
mod threads;
mod threadstart;
mod timeouts;
mod timerthread;
mod timing;
mod track;
mod tree;
mod workers;
mod writer;
mod zstd_static;

#[global_allocator]
pub(crate) static ALLOC: alloc::AgentAlloc = alloc::AgentAlloc::new();

/// The signal used unless STASIS_CKPT_SIGNAL names another: a real-time
/// signal near the top, which programs rarely use (glibc reserves the
/// lowest ones).
const DEFAULT_SIGNAL: i32 = 62;

extern "C" fn init() {
    // Read here, before the program's main: see `exec::env_var`.
    control::remember_environment();
    if !control::under_stasis() {
        return; // not under stasis: stay out of the way
    }
    let sig = exec::env_var("STASIS_CKPT_SIGNAL").and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SIGNAL);
    control::remember_name();
    timing::init();
    savefiles::remember_settings();
    signals::resolve_real_functions();
    timeouts::resolve_real_functions();
    sigwait::resolve_real_functions();
    threadstart::resolve_real_functions();
    timerthread::resolve_real_functions();
    progsig::resolve_real_functions();
    exec::resolve_real_functions();
    exec::remember_inherited();
    // After the line above: it publishes through libc's setenv.
    stdio::remember_at_start();
    inotify::resolve_real_functions();
    ipc::resolve_real_functions();
    mqueue::resolve_mq_notify();
    collect::init_rseq_lookup();
    if signals::install(sig, ckpt::in_handler).is_err() {
        sys::write_stderr(b"stasis agent: cannot install the checkpoint signal handler\n");
        return;
    }
    // Whoever started us may have left it blocked (a wrapper that execs).
    sys::sigmask_one(libc::SIG_UNBLOCK, sig);
    if !tree::install_fork_handlers() {
        sys::write_stderr(b"stasis agent: cannot register fork handlers; forked children will not be checkpointed\n");
    }
    // The program's view of our signal's mask, carried into a fork child.
    progsig::install_fork_handlers();
    // The application API and DMTCP plugins (api.rs, plugins.rs).
    api::remember_environment();
    plugins::init();
    start_checkpoint_thread();
}

/// Starts the checkpoint thread: at load time, and in a child of fork().
pub(crate) fn start_checkpoint_thread() {
    let spawned = std::thread::Builder::new().name("stasis-ckpt".into()).spawn(move || {
        // A bug in the agent must not take the program down with it.
        let _ = std::panic::catch_unwind(control::run);
    });
    if spawned.is_err() {
        sys::write_stderr(b"stasis agent: cannot start the checkpoint thread\n");
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;
