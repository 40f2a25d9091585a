//! Programs the computation execs find the coordinator where it is now.
//!
//! A program started by exec reads the coordinator's address from
//! `STASIS_COORD_ADDR` in its environment. After a restart (or when a new
//! coordinator took over) that address may have changed, but the
//! environments the program passes on still hold the old one: `environ`
//! is updated by the checkpoint thread, and the environment arrays a
//! program builds itself (a shell's exported variables) are mended on the
//! way through execve, execv, execvp, execvpe, posix_spawn and
//! posix_spawnp. A restored process learns the new address before its
//! program runs again (`control::restored`).

use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

const VAR: &[u8] = b"STASIS_COORD_ADDR=";

/// "STASIS_COORD_ADDR=<current address>", once the coordinator told us one.
static CURRENT: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

/// "STASIS_OUTSIDE_STDIO=<identities>" (`stdio`), once known.
static CURRENT_STDIO: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Records the outside stdio's entry for the exec wrappers (as
/// `set_current`: the old one is leaked).
pub fn set_stdio_entry(entry: &str) {
    if let Ok(entry) = CString::new(entry) {
        CURRENT_STDIO.store(entry.into_raw(), Ordering::Release);
    }
}

/// libc's own setenv (past the program's), or nothing if it was not found.
/// Only where libc's lock cannot be held by a stopped thread: from the
/// constructor, or while the program runs (inside `tree::without_fork`).
pub fn setenv_real(name: &CStr, value: &CStr) {
    let f = REAL_SETENV.load(Ordering::Acquire);
    if f == 0 {
        return;
    }
    // SAFETY: dlsym found libc's setenv, of this signature.
    let setenv: SetenvFn = unsafe { std::mem::transmute::<usize, SetenvFn>(f) };
    // SAFETY: NUL-terminated name and value.
    unsafe { setenv(name.as_ptr(), value.as_ptr(), 1) };
}

/// Records the current address for the exec wrappers only: callable while
/// the program's threads are held (it allocates from the agent alone). The
/// old entry is leaked: a concurrent exec may still be reading it.
pub fn set_current(addr: &str) {
    if let Ok(entry) = CString::new([VAR, addr.as_bytes()].concat()) {
        CURRENT.store(entry.into_raw(), Ordering::Release);
    }
}

/// Records the current address, and puts it into `environ` too, through
/// libc's own setenv (found past the program, which may define its own
/// on tables of its own, as a shell does), for the programs libc starts
/// from `environ` itself (system, popen). Only while the program runs:
/// setenv takes libc's lock and mallocs.
///
/// `environ` itself is never read here: the program may be changing it
/// this very moment (setenv frees the array it replaces), and only libc's
/// lock orders the two. What it holds is known instead: the value read in
/// the constructor, then what was set here.
pub fn set_address(addr: &str) {
    set_current(addr);
    let in_environ = IN_ENVIRON.load(Ordering::Acquire);
    // SAFETY: a non-null IN_ENVIRON is a CString leaked below or by `remember`.
    if !in_environ.is_null() && unsafe { CStr::from_ptr(in_environ) }.to_bytes() == addr.as_bytes() {
        return;
    }
    let f = REAL_SETENV.load(Ordering::Acquire);
    let Ok(value) = CString::new(addr) else { return };
    if f == 0 {
        return;
    }
    // SAFETY: dlsym found libc's setenv, of this signature.
    let setenv: SetenvFn = unsafe { std::mem::transmute::<usize, SetenvFn>(f) };
    // No fork may start while libc's environment lock is held (the child
    // would inherit it taken).
    crate::tree::without_fork(|| {
        // SAFETY: NUL-terminated name and value.
        unsafe { setenv(c"STASIS_COORD_ADDR".as_ptr(), value.as_ptr(), 1) };
    });
    IN_ENVIRON.store(value.into_raw(), Ordering::Release);
}

/// The address `environ` holds (as far as the agent knows), or null.
static IN_ENVIRON: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Records the address the process started with (from the constructor).
pub fn remember_address(addr: &str) {
    if let Ok(c) = CString::new(addr) {
        IN_ENVIRON.store(c.into_raw(), Ordering::Release);
    }
}

type SetenvFn = unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> c_int;
static REAL_SETENV: AtomicUsize = AtomicUsize::new(0);

/// The value of environment variable `name` as the process started with it,
/// read from `environ` itself: the program's getenv may be its own (a
/// shell's answers from tables it is still building while it starts).
/// Only from the constructor: later the program may be changing `environ`.
pub fn env_var(name: &str) -> Option<String> {
    let env = current_environ();
    if env.is_null() {
        return None;
    }
    let mut i = 0;
    loop {
        // SAFETY: `environ` is a null-terminated array of C strings.
        let e = unsafe { *env.add(i) };
        if e.is_null() {
            return None;
        }
        // SAFETY: every entry is a C string.
        let bytes = unsafe { CStr::from_ptr(e) }.to_bytes();
        if let Some(value) = bytes.strip_prefix(name.as_bytes()).and_then(|r| r.strip_prefix(b"=")) {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        i += 1;
    }
}

/// What the process started with that its children need to stay in the
/// computation: every `STASIS_*` entry, and the agent's own path as
/// LD_PRELOAD named it. A program that builds its children's environment
/// itself (or drops LD_PRELOAD, or puts a library of its own there) gets
/// them put back at exec, as DMTCP does.
struct Inherited {
    entries: Vec<CString>,
    agent: Option<CString>,
}

static INHERITED: std::sync::OnceLock<Inherited> = std::sync::OnceLock::new();

/// Records the `STASIS_*` entries and the agent's path. Only from the
/// constructor (see `env_var`).
pub fn remember_inherited() {
    let env = current_environ();
    let mut entries = Vec::new();
    let mut i = 0;
    while !env.is_null() {
        // SAFETY: `environ` is a null-terminated array of C strings.
        let e = unsafe { *env.add(i) };
        if e.is_null() {
            break;
        }
        // SAFETY: every entry is a C string.
        let entry = unsafe { CStr::from_ptr(e) };
        if entry.to_bytes().starts_with(b"STASIS_") {
            entries.push(entry.to_owned());
        }
        i += 1;
    }
    let _ = INHERITED.set(Inherited { entries, agent: agent_path() });
}

/// The path this library was loaded from (as LD_PRELOAD named it).
fn agent_path() -> Option<CString> {
    // SAFETY: a zeroed Dl_info is valid; dladdr fills it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: any address inside this library; `info` is writable.
    let found = unsafe { libc::dladdr(agent_path as *const () as *const libc::c_void, &mut info) } != 0;
    if !found || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr gives a C string that lives as long as the library.
    let path = unsafe { CStr::from_ptr(info.dli_fname) };
    path.to_bytes().starts_with(b"/").then(|| path.to_owned())
}

const PRELOAD: &[u8] = b"LD_PRELOAD=";
/// An environment that holds this variable is passed on as it is: the
/// program started with it is meant to run outside the computation (what
/// DMTCP's `dmtcp_nocheckpoint` asks for), its caller having taken the
/// agent out of its LD_PRELOAD.
const NOCHECKPOINT: &[u8] = b"STASIS_NOCHECKPOINT=";

/// Whether LD_PRELOAD's list (split at spaces and colons, as the loader
/// does) already names the agent.
fn preloads_agent(list: &[u8], agent: &[u8]) -> bool {
    let name = agent.rsplit(|&b| b == b'/').next().unwrap_or(agent);
    list.split(|&b| b == b':' || b == b' ')
        .any(|item| item == agent || item.rsplit(|&b| b == b'/').next() == Some(name))
}

/// An environment array for exec, and the entries made for it.
struct Mended {
    ptrs: Vec<*const c_char>,
    _made: Vec<CString>,
}

/// The name part of an entry, "NAME=" included (the whole entry if none).
fn entry_name(entry: &[u8]) -> &[u8] {
    entry.iter().position(|&b| b == b'=').map_or(entry, |at| &entry[..=at])
}

/// `envp` with its STASIS_COORD_ADDR and STASIS_OUTSIDE_STDIO entries
/// replaced by the current ones, the other `STASIS_*` entries the process
/// started with added where missing, and the agent put first in
/// LD_PRELOAD where it is not there; or None when it needs no change.
///
/// # Safety
/// `envp` is null (no variables) or a null-terminated array of C strings.
unsafe fn mended(envp: *const *const c_char) -> Option<Mended> {
    let current = CURRENT.load(Ordering::Acquire);
    let stdio = CURRENT_STDIO.load(Ordering::Acquire);
    let inherited = INHERITED.get();
    if current.is_null() && stdio.is_null() && inherited.is_none() {
        return None;
    }
    // A null array (after clearenv) is an empty one to the kernel.
    let empty: [*const c_char; 1] = [std::ptr::null()];
    let envp = if envp.is_null() { empty.as_ptr() } else { envp };
    let stdio_name = stdio_name(stdio);
    let no_entries: &[CString] = &[];
    let wanted = inherited.map_or(no_entries, |i| &i.entries);
    let agent = inherited.and_then(|i| i.agent.as_deref());
    // Which of the `wanted` entries' names the array has.
    let mut seen = vec![false; wanted.len()];
    let mut out = Vec::new();
    let mut made = Vec::new();
    let mut changed = false;
    let (mut saw_addr, mut saw_stdio, mut saw_preload) = (false, false, false);
    let mut i = 0;
    loop {
        // SAFETY: within the null-terminated array (caller's promise).
        let e = unsafe { *envp.add(i) };
        if e.is_null() {
            break;
        }
        // SAFETY: every entry is a C string (caller's promise).
        let bytes = unsafe { CStr::from_ptr(e) }.to_bytes();
        if bytes.starts_with(NOCHECKPOINT) {
            return None;
        }
        let mut entry = e;
        if bytes.starts_with(VAR) {
            saw_addr = true;
            // SAFETY: CURRENT holds a C string.
            if !current.is_null() && bytes != unsafe { CStr::from_ptr(current) }.to_bytes() {
                entry = current;
            }
        } else if !stdio.is_null() && bytes.starts_with(stdio_name) {
            saw_stdio = true;
            // SAFETY: CURRENT_STDIO holds a C string.
            if bytes != unsafe { CStr::from_ptr(stdio) }.to_bytes() {
                entry = stdio;
            }
        } else if let Some(list) = bytes.strip_prefix(PRELOAD) {
            saw_preload = true;
            if let Some(agent) = agent
                && !preloads_agent(list, agent.to_bytes())
            {
                let mut value = [PRELOAD, agent.to_bytes()].concat();
                if !list.is_empty() {
                    value.push(b':');
                    value.extend_from_slice(list);
                }
                if let Ok(c) = CString::new(value) {
                    entry = c.as_ptr();
                    made.push(c);
                }
            }
        }
        let name = entry_name(bytes);
        for (w, seen) in wanted.iter().zip(seen.iter_mut()) {
            *seen |= entry_name(w.to_bytes()) == name;
        }
        changed |= entry != e;
        out.push(entry);
        i += 1;
    }
    if !saw_preload
        && let Some(agent) = agent
        && let Ok(c) = CString::new([PRELOAD, agent.to_bytes()].concat())
    {
        out.push(c.as_ptr());
        made.push(c);
        changed = true;
    }
    for (w, seen) in wanted.iter().zip(&seen) {
        if *seen {
            continue;
        }
        let bytes = w.to_bytes();
        // The current address and stdio rather than those of the start.
        let entry = if bytes.starts_with(VAR) && !current.is_null() {
            current
        } else if !stdio.is_null() && bytes.starts_with(stdio_name) {
            saw_stdio = true;
            stdio
        } else {
            w.as_ptr()
        };
        saw_addr |= bytes.starts_with(VAR);
        out.push(entry);
        changed = true;
    }
    if !saw_addr && !current.is_null() {
        out.push(current);
        changed = true;
    }
    if !saw_stdio && !stdio.is_null() {
        out.push(stdio);
        changed = true;
    }
    out.push(std::ptr::null());
    changed.then_some(Mended { ptrs: out, _made: made })
}

/// "STASIS_OUTSIDE_STDIO=" out of its entry (empty for none).
fn stdio_name<'a>(entry: *const c_char) -> &'a [u8] {
    if entry.is_null() {
        return b"";
    }
    // SAFETY: a non-null CURRENT_STDIO is a C string that is never freed.
    let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
    bytes.iter().position(|&b| b == b'=').map_or(bytes, |at| &bytes[..=at])
}

static REAL_EXECVE: AtomicUsize = AtomicUsize::new(0);
static REAL_EXECVPE: AtomicUsize = AtomicUsize::new(0);
static REAL_POSIX_SPAWN: AtomicUsize = AtomicUsize::new(0);
static REAL_POSIX_SPAWNP: AtomicUsize = AtomicUsize::new(0);

/// Resolves the wrapped functions at start-up (dlsym takes the loader's
/// lock, which must not be taken later from inside a vfork child).
pub fn resolve_real_functions() {
    for (cache, name) in [
        (&REAL_EXECVE, c"execve"),
        (&REAL_EXECVPE, c"execvpe"),
        (&REAL_POSIX_SPAWN, c"posix_spawn"),
        (&REAL_POSIX_SPAWNP, c"posix_spawnp"),
        (&REAL_SETENV, c"setenv"),
    ] {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        cache.store(unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize, Ordering::Release);
    }
}

fn real(cache: &AtomicUsize) -> usize {
    cache.load(Ordering::Acquire)
}

type ExecFn = unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

/// Calls an exec-like function with `envp` mended.
///
/// # Safety
/// `f` is libc's function of this signature; the arguments are the caller's.
unsafe fn exec_with(f: usize, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    if f == 0 {
        // SAFETY: __errno_location is this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    // SAFETY: dlsym found libc's function of this signature.
    let f: ExecFn = unsafe { std::mem::transmute::<usize, ExecFn>(f) };
    // SAFETY: envp is the caller's environment array (the closure's unsafe).
    match crate::signals::unstoppable(|| unsafe { mended(envp) }) {
        // SAFETY: forwarded, with an array that lives across the call.
        Some(env) => unsafe { f(path, argv, env.ptrs.as_ptr()) },
        // SAFETY: forwarded unchanged.
        None => unsafe { f(path, argv, envp) },
    }
}

/// # Safety
/// Same contract as libc's execve.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: the caller's arguments, forwarded.
    unsafe { exec_with(real(&REAL_EXECVE), path, argv, envp) }
}

unsafe extern "C" {
    /// libc's environment; setenv may replace the array at any time.
    static mut environ: *const *const c_char;
}

/// The environment as it is now.
fn current_environ() -> *const *const c_char {
    // SAFETY: reading libc's pointer once, by value, without a reference.
    unsafe { std::ptr::read_volatile(&raw const environ) }
}

/// # Safety
/// Same contract as libc's execv (execve with `environ`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: the caller's arguments, forwarded with the process's environment.
    unsafe { exec_with(real(&REAL_EXECVE), path, argv, current_environ()) }
}

/// # Safety
/// Same contract as libc's execvp (execvpe with `environ`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: the caller's arguments, forwarded with the process's environment.
    unsafe { exec_with(real(&REAL_EXECVPE), file, argv, current_environ()) }
}

/// # Safety
/// Same contract as libc's execvpe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: the caller's arguments, forwarded.
    unsafe { exec_with(real(&REAL_EXECVPE), file, argv, envp) }
}

/// Calls a posix_spawn-like function with `envp` mended.
///
/// # Safety
/// `f` is libc's function of this signature; the arguments are the caller's.
unsafe fn spawn_with(
    f: usize,
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    if f == 0 {
        return libc::ENOSYS;
    }
    // SAFETY: dlsym found libc's function of this signature.
    let f: SpawnFn = unsafe { std::mem::transmute::<usize, SpawnFn>(f) };
    // SAFETY: envp is the caller's environment array (the closure's unsafe).
    match crate::signals::unstoppable(|| unsafe { mended(envp) }) {
        // SAFETY: forwarded, with an array that lives across the call.
        Some(env) => unsafe { f(pid, path, actions, attr, argv, env.ptrs.as_ptr()) },
        // SAFETY: forwarded unchanged.
        None => unsafe { f(pid, path, actions, attr, argv, envp) },
    }
}

/// # Safety
/// Same contract as libc's posix_spawn.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the caller's arguments, forwarded.
    unsafe { spawn_with(real(&REAL_POSIX_SPAWN), pid, path, actions, attr, argv, envp) }
}

/// # Safety
/// Same contract as libc's posix_spawnp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the caller's arguments, forwarded.
    unsafe { spawn_with(real(&REAL_POSIX_SPAWNP), pid, file, actions, attr, argv, envp) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_address_entry_changes() {
        let entries = [c"A=1", c"STASIS_COORD_ADDR=unix:/old", c"B=2"];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: a null-terminated array of C strings.
        assert!(unsafe { mended(envp.as_ptr()) }.is_none(), "nothing known yet");
        CURRENT.store(CString::new("STASIS_COORD_ADDR=unix:/new").unwrap().into_raw(), Ordering::Release);
        // SAFETY: as above.
        let out = unsafe { mended(envp.as_ptr()) }.unwrap().ptrs;
        // SAFETY: the entries are C strings.
        let text: Vec<&CStr> = out[..3].iter().map(|&p| unsafe { CStr::from_ptr(p) }).collect();
        assert_eq!(text, [c"A=1", c"STASIS_COORD_ADDR=unix:/new", c"B=2"]);
        assert!(out[3].is_null());

        // The outside stdio's entry: replaced where stale, added where missing.
        set_stdio_entry("STASIS_OUTSIDE_STDIO=1:2,-,-");
        let entries = [c"STASIS_OUTSIDE_STDIO=3:4,-,-", c"STASIS_COORD_ADDR=unix:/new"];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: as above.
        let out = unsafe { mended(envp.as_ptr()) }.unwrap().ptrs;
        // SAFETY: the entries are C strings.
        let text: Vec<&CStr> = out[..2].iter().map(|&p| unsafe { CStr::from_ptr(p) }).collect();
        assert_eq!(text, [c"STASIS_OUTSIDE_STDIO=1:2,-,-", c"STASIS_COORD_ADDR=unix:/new"]);
        let entries = [c"STASIS_COORD_ADDR=unix:/new"];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: as above.
        let out = unsafe { mended(envp.as_ptr()) }.unwrap().ptrs;
        assert_eq!(out.len(), 3);
        // SAFETY: a C string.
        assert_eq!(unsafe { CStr::from_ptr(out[1]) }, c"STASIS_OUTSIDE_STDIO=1:2,-,-");

        // An environment of the program's own, without ours and with a
        // library of its own preloaded: the agent goes first, and every
        // variable the process started with comes back.
        let _ = INHERITED.set(Inherited {
            entries: vec![
                CString::new("STASIS_COORD_ADDR=unix:/start").unwrap(),
                CString::new("STASIS_CKPT_SIGNAL=50").unwrap(),
            ],
            agent: Some(CString::new("/opt/s/libstasis_agent.so").unwrap()),
        });
        let entries = [c"A=B", c"LD_PRELOAD=taco"];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: as above.
        let out = unsafe { mended(envp.as_ptr()) }.unwrap();
        // SAFETY: the entries are C strings.
        let text: Vec<&CStr> = out.ptrs[..5].iter().map(|&p| unsafe { CStr::from_ptr(p) }).collect();
        assert_eq!(
            text,
            [
                c"A=B",
                c"LD_PRELOAD=/opt/s/libstasis_agent.so:taco",
                c"STASIS_COORD_ADDR=unix:/new",
                c"STASIS_CKPT_SIGNAL=50",
                c"STASIS_OUTSIDE_STDIO=1:2,-,-"
            ]
        );
        assert!(out.ptrs[5].is_null());
        // No LD_PRELOAD at all: the agent's alone.
        let entries = [c"STASIS_COORD_ADDR=unix:/new", c"STASIS_CKPT_SIGNAL=50", c"STASIS_OUTSIDE_STDIO=1:2,-,-"];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: as above.
        let out = unsafe { mended(envp.as_ptr()) }.unwrap();
        // SAFETY: a C string.
        assert_eq!(unsafe { CStr::from_ptr(out.ptrs[3]) }, c"LD_PRELOAD=/opt/s/libstasis_agent.so");
        // Already there (under any directory): nothing to do.
        let entries = [
            c"STASIS_COORD_ADDR=unix:/new",
            c"STASIS_CKPT_SIGNAL=50",
            c"STASIS_OUTSIDE_STDIO=1:2,-,-",
            c"LD_PRELOAD=x.so /else/libstasis_agent.so",
        ];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: as above.
        assert!(unsafe { mended(envp.as_ptr()) }.is_none());
        // Asked to run outside the computation: left alone.
        let entries = [c"STASIS_NOCHECKPOINT=1", c"LD_PRELOAD=mine.so"];
        let mut envp: Vec<*const c_char> = entries.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: as above.
        assert!(unsafe { mended(envp.as_ptr()) }.is_none());
    }
}
