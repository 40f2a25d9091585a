//! The paths of inotify watches. The kernel tells a watch's inode and
//! device (fdinfo), not the path it was added with, and only a privileged
//! process could open a file by its handle; so the agent wraps
//! inotify_add_watch and inotify_rm_watch and keeps (descriptor, watch,
//! path) in a table of its own, which the checkpoint reads.
//!
//! The table takes no lock: a program thread stopped in the middle of an
//! update must not block the checkpoint thread. Each slot is claimed,
//! filled and published with atomics; a slot caught half written is
//! skipped (its watch is being added or removed at that very moment).

use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

const SLOTS: usize = 1024;
const FREE: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

struct Slot {
    state: AtomicU8,
    fd: AtomicI32,
    wd: AtomicI32,
    /// A leaked CString: the absolute path.
    path: AtomicPtr<c_char>,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        state: AtomicU8::new(FREE),
        fd: AtomicI32::new(-1),
        wd: AtomicI32::new(-1),
        path: AtomicPtr::new(std::ptr::null_mut()),
    }
}; SLOTS];

static REAL_ADD: AtomicUsize = AtomicUsize::new(0);
static REAL_RM: AtomicUsize = AtomicUsize::new(0);

type AddFn = unsafe extern "C" fn(c_int, *const c_char, u32) -> c_int;
type RmFn = unsafe extern "C" fn(c_int, c_int) -> c_int;

/// Resolves libc's functions at start-up.
pub fn resolve_real_functions() {
    // SAFETY: dlsym with RTLD_NEXT and NUL-terminated names.
    unsafe {
        REAL_ADD.store(libc::dlsym(libc::RTLD_NEXT, c"inotify_add_watch".as_ptr()) as usize, Ordering::Release);
        REAL_RM.store(libc::dlsym(libc::RTLD_NEXT, c"inotify_rm_watch".as_ptr()) as usize, Ordering::Release);
    }
}

/// Forgets the slot of (fd, wd), if any.
fn forget(fd: i32, wd: i32) {
    for s in &TABLE {
        if s.fd.load(Ordering::Acquire) == fd
            && s.wd.load(Ordering::Acquire) == wd
            && s.state.compare_exchange(READY, BUSY, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            let p = s.path.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: every non-null path came from CString::into_raw
                // below, and this slot held the only pointer to it.
                drop(unsafe { CString::from_raw(p) });
            }
            s.state.store(FREE, Ordering::Release);
        }
    }
}

fn remember(fd: i32, wd: i32, path: CString) {
    // Adding a path already watched returns its watch again.
    forget(fd, wd);
    for s in &TABLE {
        if s.state.compare_exchange(FREE, BUSY, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            s.fd.store(fd, Ordering::Release);
            s.wd.store(wd, Ordering::Release);
            s.path.store(path.into_raw(), Ordering::Release);
            s.state.store(READY, Ordering::Release);
            return;
        }
    }
    // Full: that watch will come back without its path (restart says so).
}

/// The path watch `wd` of inotify instance `fd` was added with.
pub fn path_of(fd: i32, wd: i32) -> Option<String> {
    TABLE.iter().find_map(|s| {
        if s.state.load(Ordering::Acquire) != READY || s.fd.load(Ordering::Acquire) != fd {
            return None;
        }
        if s.wd.load(Ordering::Acquire) != wd {
            return None;
        }
        let p = s.path.load(Ordering::Acquire);
        // SAFETY: a READY slot's path is a live CString.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    })
}

/// # Safety
/// Same contract as libc's inotify_add_watch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_add_watch(fd: c_int, pathname: *const c_char, mask: u32) -> c_int {
    let f = REAL_ADD.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    // SAFETY: dlsym found libc's function of this signature.
    let real: AddFn = unsafe { std::mem::transmute::<usize, AddFn>(f) };
    // SAFETY: forwarded unchanged.
    let wd = unsafe { real(fd, pathname, mask) };
    if wd >= 0 && !pathname.is_null() {
        // SAFETY: the caller passes a C string.
        let given = unsafe { CStr::from_ptr(pathname) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        crate::signals::unstoppable(|| {
            let absolute = if given.to_bytes().first() == Some(&b'/') {
                Some(given.to_owned())
            } else {
                std::env::current_dir().ok().and_then(|cwd| {
                    use std::os::unix::ffi::OsStrExt;
                    CString::new([cwd.as_os_str().as_bytes(), b"/", given.to_bytes()].concat()).ok()
                })
            };
            if let Some(p) = absolute {
                remember(fd, wd, p);
            }
        });
        // What the program sees of errno is libc's, not ours.
        if let Some(e) = errno {
            // SAFETY: this thread's errno.
            unsafe { *libc::__errno_location() = e };
        }
    }
    wd
}

/// # Safety
/// Same contract as libc's inotify_rm_watch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn inotify_rm_watch(fd: c_int, wd: c_int) -> c_int {
    let f = REAL_RM.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    // SAFETY: dlsym found libc's function of this signature.
    let real: RmFn = unsafe { std::mem::transmute::<usize, RmFn>(f) };
    // SAFETY: forwarded unchanged.
    let r = unsafe { real(fd, wd) };
    if r == 0 {
        crate::signals::unstoppable(|| forget(fd, wd));
    }
    r
}
