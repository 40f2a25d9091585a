//! The coordinator's console, driven through a pseudo-terminal as a user
//! types at it: `?`, `s`, `l`, `i`, `c` checkpoint a launched program, `k`
//! kills it, `q` ends the coordinator; the checkpoint taken from the
//! console then restarts to the right result.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// How long the console may take to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A program whose stdin, stdout and stderr are the slave side of a
/// pseudo-terminal; the test holds the master side.
struct OnTerminal {
    child: Child,
    master: File,
    /// Everything read from the terminal so far.
    seen: String,
    /// Where in `seen` the next `expect` starts looking.
    from: usize,
}

fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors; the name, termios and
    // winsize pointers may be null.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and ours alone.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

impl OnTerminal {
    fn spawn(sb: &Sandbox, mut cmd: Command) -> OnTerminal {
        let (master, slave) = open_pty();
        let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
        cmd.stdin(dup(&slave)).stdout(dup(&slave)).stderr(dup(&slave));
        // SAFETY: between fork and exec; setsid and ioctl are
        // async-signal-safe. The terminal becomes the controlling one, as
        // for a user's shell.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| sb.fail(format!("cannot start {cmd:?}: {e}")));
        drop(slave);
        let master = File::from(master);
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        OnTerminal { child, master, seen: String::new(), from: 0 }
    }

    /// Reads what the terminal has; false once the other side is closed.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.master.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: every slave descriptor is closed.
                Err(_) => return false,
            }
        }
    }

    /// Waits until `text` appears after what earlier calls matched;
    /// returns everything up to and including it, from the last match.
    fn expect(&mut self, sb: &Sandbox, text: &str) -> String {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let open = self.pump();
            if let Some(at) = self.seen[self.from..].find(text) {
                let end = self.from + at + text.len();
                let got = self.seen[self.from..end].to_string();
                self.from = end;
                return got;
            }
            if !open || Instant::now() > deadline {
                sb.fail(format!(
                    "the console did not print {text:?} ({}); it printed:\n{}",
                    if open { "timed out" } else { "its terminal closed" },
                    &self.seen[self.from..]
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, sb: &Sandbox, line: &str) {
        if let Err(e) = self.master.write_all(format!("{line}\n").as_bytes()) {
            sb.fail(format!("cannot type {line:?} at the console: {e}"));
        }
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator_on_a_terminal(sb: &Sandbox, sock: &Path, ck: &Path) -> OnTerminal {
    let mut cmd = Command::new(stasis());
    cmd.arg("coordinator").arg("--coord-socket").arg(sock).arg("--ckptdir").arg(ck).current_dir(sb.path());
    OnTerminal::spawn(sb, cmd)
}

#[test]
fn console_checkpoints_reports_and_kills() {
    let sb = Sandbox::new("console_checkpoints_reports_and_kills");
    let prog = Program::c("single", &["60", "80"]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let ck = sb.join("ck");
    let sock = sb.socket();

    let mut console = coordinator_on_a_terminal(&sb, &sock, &ck);
    console.expect(&sb, "type ? for help");
    console.type_line(&sb, "?");
    let help = console.expect(&sb, "this help");
    for key in ["c ", "s ", "l ", "i N", "k ", "q "] {
        sb.check(help.contains(&format!("\n  {key}")), || format!("the help lacks {key:?}:\n{help}"));
    }
    console.type_line(&sb, "s");
    console.expect(&sb, "processes:       0");

    // A program joins it.
    let mut cmd = Command::new(stasis());
    cmd.arg("launch").arg("--join-coordinator").arg("--coord-socket").arg(&sock).arg("--").args(&prog.argv);
    cmd.current_dir(sb.mkdir("run"));
    let mut app = Proc::spawn(&sb, &sb.label("launch"), cmd, Out::Pipe);
    app.wait_lines(&sb, 3);
    console.type_line(&sb, "l");
    console.expect(&sb, "single");

    console.type_line(&sb, "i 3600");
    console.expect(&sb, "checkpoint interval: 3600 s");
    console.type_line(&sb, "s");
    let status = console.expect(&sb, "last checkpoint:");
    for want in ["processes:       1", "interval:        3600 s"] {
        sb.check(status.contains(want), || format!("{want:?} not in the status:\n{status}"));
    }
    console.expect(&sb, "none");

    // `c` answers once the generation is committed: the same window rule
    // as `stasis command --checkpoint` (support's module docs).
    app.drain();
    let lo = app.line_count();
    console.type_line(&sb, "c");
    console.expect(&sb, "checkpoint committed: generation 1");
    app.drain();
    let window = Window { lo, hi: app.line_count() };
    sb.check(committed_generations(&ck).len() == 1, || "no committed generation after c".into());

    console.type_line(&sb, "k");
    console.expect(&sb, "kill sent to 1 process(es)");
    let killed = app.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(!killed.success(), || format!("{} survived k: {killed}", app.label));
    console.type_line(&sb, "s");
    console.expect(&sb, "processes:       0");
    console.type_line(&sb, "q");
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while console.child.try_wait().ok().flatten().is_none() {
        sb.check(Instant::now() < deadline, || "the coordinator did not end after q".into());
        std::thread::sleep(Duration::from_millis(20));
    }

    let reference = finish_reference(&sb, reference);
    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let st = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(st.success(), || format!("{} exited with {st}", re.label));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&re.label, re.lines(), vec![])],
    );
}
