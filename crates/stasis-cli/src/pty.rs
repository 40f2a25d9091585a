//! The terminal of a restarted computation.
//!
//! A program that ran in a terminal (an interactive shell, a pager) comes
//! back in a pseudo-terminal made by `stasis restart`: its session gets it
//! as controlling terminal, with the foreground group and the settings it
//! had, so job control and line editing work as before. Restart relays
//! between that pseudo-terminal and its own standard input and output, in
//! raw mode when they are a terminal, so that what the user types reaches
//! the program untouched and its window size follows.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pseudo-terminal: the master end restart keeps, the slave end the
/// restored processes get.
pub struct Pty {
    master: File,
    pub slave: OwnedFd,
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::new(io::Error::last_os_error().kind(), format!("{what}: {}", io::Error::last_os_error())))
    } else {
        Ok(r)
    }
}

impl Pty {
    /// Opens a new pseudo-terminal, as large as our own terminal.
    pub fn open() -> io::Result<Pty> {
        // SAFETY: posix_openpt opens a new master descriptor.
        let m = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) }, "posix_openpt")?;
        // SAFETY: `m` was just opened and is owned here.
        let master = unsafe { File::from_raw_fd(m) };
        // SAFETY: grantpt/unlockpt on our master.
        check(unsafe { libc::grantpt(m) }, "grantpt")?;
        // SAFETY: as above.
        check(unsafe { libc::unlockpt(m) }, "unlockpt")?;
        // TIOCGPTPEER opens the slave from the master, without a path.
        // SAFETY: an ioctl on our master that returns a new descriptor.
        let s = check(
            unsafe { libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) },
            "open the pseudo-terminal's slave",
        )?;
        // SAFETY: `s` is new and owned here.
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        copy_window_size(0, m);
        Ok(Pty { master, slave })
    }

    /// Relays until the restored processes have all closed the terminal:
    /// standard input to the pseudo-terminal, and what the program writes
    /// to standard output. Returns the relay, to `finish` once they ended.
    pub fn relay(self) -> io::Result<Relay> {
        let Pty { master, slave } = self;
        drop(slave);
        let mut to_program = master.try_clone()?;
        let raw = RawMode::enter(0);
        std::thread::Builder::new().name("stasis-pty-in".into()).spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || to_program.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })?;
        let mut from_program = master;
        let output = std::thread::Builder::new().name("stasis-pty-out".into()).spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = io::stdout().lock();
            loop {
                match from_program.read(&mut buf) {
                    // EIO: every process closed its end.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
                            break;
                        }
                    }
                }
                copy_window_size(0, from_program.as_raw_fd());
            }
        })?;
        Ok(Relay { output, _raw: raw })
    }
}

/// A running relay.
pub struct Relay {
    output: std::thread::JoinHandle<()>,
    _raw: RawMode,
}

impl Relay {
    /// Once the computation ended: lets the last output through (a process
    /// left behind may hold the terminal: not waited for long), then puts
    /// our terminal back as it was.
    pub fn finish(self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !self.output.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Gives terminal `to` the window size of terminal `from`, if both are.
fn copy_window_size(from: i32, to: i32) {
    // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it, TIOCSWINSZ
    // reads it; both fail harmlessly on what is not a terminal.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            let mut now: libc::winsize = std::mem::zeroed();
            let same =
                libc::ioctl(to, libc::TIOCGWINSZ, &mut now) == 0 && (now.ws_row, now.ws_col) == (ws.ws_row, ws.ws_col);
            if !same {
                libc::ioctl(to, libc::TIOCSWINSZ, &ws);
            }
        }
    }
}

/// Our terminal in raw mode, put back as it was when dropped.
struct RawMode {
    fd: i32,
    saved: Option<libc::termios>,
}

impl RawMode {
    fn enter(fd: i32) -> RawMode {
        // SAFETY: a zeroed termios is valid; tcgetattr fills it and fails
        // when `fd` is no terminal (then nothing changes).
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return RawMode { fd, saved: None };
        }
        let saved = t;
        // SAFETY: cfmakeraw edits our copy; tcsetattr reads it.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        RawMode { fd, saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: tcsetattr reads the settings saved at entry.
            unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, t) };
        }
    }
}
