//! Support for the end-to-end tests of the `stasis` binary.
//!
//! # What a test does
//!
//! Each test gets a [`Sandbox`]: a fresh temporary directory holding its
//! checkpoint directory, its coordinator sockets (unique, so tests run in
//! parallel), the working directories of its programs and a copy of every
//! output. Every child is started in a process group of its own and wrapped
//! in a [`Proc`], whose `Drop` kills the whole tree; the sandbox's `Drop`
//! then kills anything still running that names the sandbox (in its command
//! line, working directory or environment). No wait is unbounded: a wait that
//! runs out fails the test with the sandbox's [report](Sandbox::fail), which
//! holds the stdout and stderr of every program and stasis command it ran.
//! A test that kills a computation on purpose, process tree and all, uses
//! [`Proc::kill_computation`]: it also finds the processes that left the
//! tree or their group (setsid, an orphan reparented) by their working
//! directory, and fails the test unless none of them survives.
//!
//! # How output is compared
//!
//! The test programs print one distinct line per step and a final line that
//! depends on all the work done. A run under stasis is compared with a
//! reference run of the same program, without stasis, line by line.
//!
//! The launched run's stdout is a pipe the harness drains without blocking.
//! Just before `stasis command --checkpoint` is sent, the harness reads
//! everything in the pipe and counts `lo` lines; right after the command
//! returns it reads everything again and counts `hi` lines. The program was
//! stopped for the checkpoint at some point in between, so the number `k` of
//! lines it had written at that moment satisfies `lo <= k <= hi` (a line is
//! one `write`, and what was written before the command returned is in the
//! pipe by then). The restored program carries on from that moment, so the
//! history is correct when
//!
//! ```text
//! launched[..k] ++ restarted == reference     for some k in lo..=hi
//! ```
//!
//! and, with restarts of restarts, the same rule applied run after run
//! ([`verify_history`]). Because the reference's lines are distinct, at most
//! one `k` fits. This catches a step lost or done twice, a restart from the
//! wrong generation or the wrong moment, and a wrong final result, with no
//! assumption on timing. Each run's own output must also be a contiguous
//! part of the reference, and the last run must finish it.
//!
//! # Environment
//!
//! - `STASIS_BIN`: the stasis binary (default: the one cargo built for this
//!   test); `libstasis_agent.so` must lie next to it.
//! - `STASIS_E2E_PROGRAMS`: the directory of the test programs' sources
//!   (default: `tests/programs` of the checkout).
//! - `STASIS_E2E_CACHE`: where compiled test programs are cached.
//! - `STASIS_E2E_KEEP=1`: keep the sandboxes instead of deleting them.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long to wait for a program to print the lines a test waits for.
pub const LINES_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stasis command --checkpoint` may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a run to completion (restart, reference) may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a stasis command that must fail at once may take.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(20);
const AGENT: &str = "libstasis_agent.so";
const PYTHON: &str = "/usr/bin/python3";
const BASH: &str = "/bin/bash";
/// How long the processes of a killed computation may take to be gone.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Binaries and programs

/// The stasis binary, with the agent next to it (built if missing).
pub fn stasis() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_stasis)
}

fn locate_stasis() -> PathBuf {
    let bin = match std::env::var_os("STASIS_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_stasis")),
    };
    assert!(
        bin.is_file(),
        "build the workspace first: cargo build --workspace (no stasis binary at {})",
        bin.display()
    );
    let agent = bin.with_file_name(AGENT);
    if !agent.is_file() {
        build_agent(&bin);
    }
    assert!(
        agent.is_file(),
        "build the workspace first: cargo build --workspace (no {} next to {})",
        AGENT,
        bin.display()
    );
    bin
}

/// One of the DMTCP-named binaries (`dmtcp_launch`, ...), next to stasis.
pub fn dmtcp_bin(name: &str) -> PathBuf {
    let bin = stasis().with_file_name(name);
    assert!(bin.is_file(), "build the workspace first: cargo build --workspace (no {} next to stasis)", name);
    bin
}

/// The directory of the stasis binaries, for a PATH that finds the DMTCP
/// names as a batch script calls them.
pub fn bin_dir() -> &'static Path {
    stasis().parent().expect("the stasis binary has a directory")
}

/// Builds the agent into the target directory that holds `bin`.
fn build_agent(bin: &Path) {
    let profile_dir = bin.parent().expect("the stasis binary has a directory");
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let profile = profile_dir.file_name().and_then(OsStr::to_str).unwrap_or("debug");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "stasis-agent", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null());
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("e2e: {AGENT} is missing next to {}; running {cmd:?}", bin.display());
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("build the workspace first: cargo build --workspace (cargo build -p stasis-agent: {s})"),
        Err(e) => {
            panic!("build the workspace first: cargo build --workspace (cannot run cargo: {e})")
        }
    }
}

/// Fails the test, with a clear message, where `stasis restart` cannot work
/// because unprivileged user namespaces are unavailable. It never skips.
pub fn require_user_namespaces() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check =
        CHECK.get_or_init(|| match Command::new("unshare").args(["-Ur", "true"]).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!("exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => Err(format!("could not run: {e} (is util-linux installed?)")),
        });
    if let Err(why) = check {
        panic!(
            "stasis restart needs unprivileged user namespaces and this machine does not \
             allow them: `unshare -Ur true` {why}. Enable them (sysctl \
             user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1, or a container \
             seccomp/AppArmor profile that allows unshare) and run the tests again; restart \
             tests fail here rather than skip."
        );
    }
}

/// Where the test programs' sources are.
pub fn programs_dir() -> PathBuf {
    match std::env::var_os("STASIS_E2E_PROGRAMS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/programs"),
    }
}

/// Where compiled test programs are kept, by content hash.
fn cache_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os("STASIS_E2E_CACHE") {
            candidates.push(PathBuf::from(p));
        }
        if let Some(p) = option_env!("CARGO_TARGET_TMPDIR") {
            candidates.push(Path::new(p).join("stasis-e2e-programs"));
        }
        // SAFETY: getuid cannot fail and touches no memory.
        let uid = unsafe { libc::getuid() };
        candidates.push(std::env::temp_dir().join(format!("stasis-e2e-programs-{uid}")));
        for dir in candidates {
            if fs::create_dir_all(&dir).is_err() {
                continue;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let probe = dir.join(format!(".probe-{}", std::process::id()));
            if meta.uid() == uid && File::create(&probe).is_ok() {
                let _ = fs::remove_file(&probe);
                return dir;
            }
        }
        panic!("no writable directory for the compiled test programs: set STASIS_E2E_CACHE")
    })
}

fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const CFLAGS: [&str; 3] = ["-O1", "-g", "-pthread"];

/// Compiles `tests/programs/NAME.c` (once per content) and returns its path.
/// An existing binary is never replaced, so a program being checkpointed
/// keeps its executable file unchanged.
pub fn compiled(name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = programs_dir();
    let src = dir.join(format!("{name}.c"));
    let mut h = 0xcbf2_9ce4_8422_2325;
    for part in [src.clone(), dir.join("common.h")] {
        let bytes = fs::read(&part).unwrap_or_else(|e| panic!("read {}: {e}", part.display()));
        h = fnv1a(&bytes, h);
    }
    h = fnv1a(CFLAGS.join(" ").as_bytes(), h);
    let out = cache_dir().join(format!("{name}-{h:016x}"));
    if out.is_file() {
        return out;
    }
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp = cache_dir().join(format!(".{name}-{}-{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = Command::new("cc")
        .args(CFLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc to build {}: {e} (install gcc)", src.display()));
    assert!(result.status.success(), "cc {} failed:\n{}", src.display(), String::from_utf8_lossy(&result.stderr));
    match fs::hard_link(&tmp, &out) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("link {} to {}: {e}", tmp.display(), out.display()),
    }
    let _ = fs::remove_file(&tmp);
    out
}

/// A test program and its arguments.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub argv: Vec<OsString>,
}

impl Program {
    /// A C program of tests/programs, compiled with `cc -O1 -g -pthread`.
    pub fn c(name: &str, args: &[&str]) -> Program {
        let mut argv = vec![compiled(name).into_os_string()];
        argv.extend(args.iter().map(OsString::from));
        Program { name: name.to_string(), argv }
    }

    /// A Python script of tests/programs, run by the distribution's python3.
    pub fn python(script: &str, args: &[&str]) -> Program {
        assert!(Path::new(PYTHON).is_file(), "{PYTHON} is missing: install python3 (apt-get install python3)");
        let mut argv = vec![OsString::from(PYTHON), programs_dir().join(script).into_os_string()];
        argv.extend(args.iter().map(OsString::from));
        Program { name: script.to_string(), argv }
    }

    /// A bash script of tests/programs, run by /bin/bash.
    pub fn bash(script: &str, args: &[&str]) -> Program {
        assert!(Path::new(BASH).is_file(), "{BASH} is missing: install bash");
        let mut argv = vec![OsString::from(BASH), programs_dir().join(script).into_os_string()];
        argv.extend(args.iter().map(OsString::from));
        Program { name: script.to_string(), argv }
    }

    /// The same program run from another copy of its executable.
    pub fn at(&self, exe: &Path) -> Program {
        let mut argv = self.argv.clone();
        argv[0] = exe.as_os_str().to_owned();
        Program { name: self.name.clone(), argv }
    }

    pub fn exe(&self) -> &Path {
        Path::new(&self.argv[0])
    }

    /// The program run directly, without stasis.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        cmd
    }
}

// ---------------------------------------------------------------------------
// Sandbox

/// A test's private directory; see the module documentation.
pub struct Sandbox {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    test: String,
    seq: AtomicUsize,
}

impl Sandbox {
    pub fn new(test: &str) -> Sandbox {
        // Unix socket paths must stay short: fall back to /tmp under a long TMPDIR.
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new()
            .prefix("stasis-e2e-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temporary directory in {}: {e}", base.display()));
        let path = dir.path().to_path_buf();
        Sandbox { dir: Some(dir), path, test: test.to_string(), seq: AtomicUsize::new(0) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates (if needed) and returns a directory of the sandbox.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| self.fail(format!("mkdir {}: {e}", p.display())));
        p
    }

    /// A label not used before in this sandbox: `base-N`.
    pub fn label(&self, base: &str) -> String {
        format!("{base}-{}", self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// A fresh coordinator socket path.
    pub fn socket(&self) -> PathBuf {
        self.join(format!("{}.sock", self.label("coord")))
    }

    /// Fails the test with `msg` and everything the sandbox knows.
    #[track_caller]
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("{}: {msg}\n\n{}", self.test, self.report())
    }

    #[track_caller]
    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(msg());
        }
    }

    fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(self.join("commands.log")) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// The sandbox's files, then the tail of every output and log in it.
    pub fn report(&self) -> String {
        let mut files = Vec::new();
        walk(&self.path, 0, &mut files);
        files.sort();
        let mut out = format!("--- sandbox {} ---\n", self.path.display());
        for f in &files {
            if let Ok(m) = fs::symlink_metadata(f) {
                let rel = f.strip_prefix(&self.path).unwrap_or(f);
                let _ = writeln!(out, "{:o} {:>10} {}", m.mode() & 0o7777, m.len(), rel.display());
            }
        }
        for f in &files {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let shown = [".stdout", ".stderr", ".log", ".txt"].iter().any(|e| name.ends_with(e));
            if !shown || !f.is_file() {
                continue;
            }
            let bytes = fs::read(f).unwrap_or_default();
            let tail = &bytes[bytes.len().saturating_sub(6000)..];
            let rel = f.strip_prefix(&self.path).unwrap_or(f);
            let _ = writeln!(out, "--- {} ({} bytes, last {}) ---", rel.display(), bytes.len(), tail.len());
            out.push_str(&String::from_utf8_lossy(tail));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(p.clone());
        if is_dir {
            walk(&p, depth + 1, out);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Anything left that names this sandbox was started by this test.
        for _ in 0..3 {
            let strays = processes_naming(&self.path);
            if strays.is_empty() {
                break;
            }
            for pid in strays {
                signal(pid, libc::SIGKILL);
            }
            sleep(Duration::from_millis(50));
        }
        if std::env::var_os("STASIS_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("{}: kept {}", self.test, dir.keep().display());
        }
    }
}

// ---------------------------------------------------------------------------
// Processes

fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill takes plain integers; the worst outcome is an error code.
        unsafe { libc::kill(pid, sig) };
    }
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: as above; a negative pid names the process group.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Whether process group `pgid` still has a member.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    pgid > 1 && unsafe { libc::kill(-pgid, 0) } == 0
}

fn proc_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// State and parent of a process, from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold anything; the rest follows the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// All descendants of `root`, parents before children.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in proc_pids() {
        if let Some((_, ppid)) = stat(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Live processes (not zombies) other than this one whose command line,
/// working directory or environment names something inside `dir`.
pub fn processes_naming(dir: &Path) -> Vec<i32> {
    let mut inside = dir.as_os_str().as_bytes().to_vec();
    inside.push(b'/');
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in proc_pids() {
        if pid == me || matches!(stat(pid), None | Some(('Z' | 'X', _))) {
            continue;
        }
        let base = format!("/proc/{pid}");
        let cwd = fs::read_link(format!("{base}/cwd")).ok();
        let cwd_hit = cwd.is_some_and(|c| c == dir || c.as_os_str().as_bytes().starts_with(&inside));
        let in_file = |name: &str| fs::read(format!("{base}/{name}")).is_ok_and(|b| contains(&b, &inside));
        if cwd_hit || in_file("cmdline") || in_file("environ") {
            out.push(pid);
        }
    }
    out
}

/// The TCP addresses process `pid` listens on: "IP:PORT" for IPv4, the
/// kernel's hex for IPv6 (from /proc/net/tcp*, matched by socket inode).
pub fn tcp_listening(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let l = fs::read_link(e.path()).ok()?.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A: listening), field 9 the inode.
            if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
                continue;
            }
            let Some((ip, port)) = f[1].split_once(':') else { continue };
            let port = u16::from_str_radix(port, 16).unwrap_or(0);
            match u32::from_str_radix(ip, 16) {
                // The address as the kernel holds it, in host byte order.
                Ok(v4) if ip.len() == 8 => out.push(format!("{}:{port}", std::net::Ipv4Addr::from(v4.to_ne_bytes()))),
                _ => out.push(format!("{ip}:{port}")),
            }
        }
    }
    out
}

/// SIGKILLs `root`'s descendants, then its process group, then `root`.
/// `root` must not have been reaped yet (so its pid and group are still ours).
fn kill_tree(root: i32) {
    // Stop the whole tree before killing any of it: a parent that outlived
    // its killed children by a moment would go on and print (a script's
    // next line after its pipeline died), which no run of the program
    // would ever print at that point.
    signal(root, libc::SIGSTOP);
    let mut stopped = HashSet::new();
    for _ in 0..3 {
        let fresh: Vec<i32> = descendants(root).into_iter().filter(|&p| stopped.insert(p)).collect();
        if fresh.is_empty() {
            break;
        }
        for p in fresh {
            signal(p, libc::SIGSTOP);
        }
    }
    for _ in 0..3 {
        let below = descendants(root);
        for &p in below.iter().rev() {
            signal(p, libc::SIGKILL);
        }
        signal_group(root, libc::SIGKILL);
        signal(root, libc::SIGKILL);
        if below.is_empty() {
            break;
        }
    }
}

/// Start time of a process (field 22 of /proc/PID/stat, clock ticks since
/// boot): with the pid, it tells a process from a later one given its pid.
fn start_time(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the name: 3 state, 4 ppid, ... 22 starttime.
    text[text.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `started` and is not
/// a zombie.
fn still_running(pid: i32, started: Option<u64>) -> bool {
    start_time(pid) == started && !matches!(stat(pid), None | Some(('Z' | 'X', _)))
}

/// Live processes (not zombies), other than this one, whose working
/// directory is `dir` or lies inside it: the processes of a computation
/// whose program runs there, wherever they are in the process tree (an
/// orphan adopted by init, a process restored in a pid namespace).
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let mut inside = dir.as_os_str().as_bytes().to_vec();
    inside.push(b'/');
    let me = std::process::id() as i32;
    proc_pids()
        .into_iter()
        .filter(|&pid| pid != me && !matches!(stat(pid), None | Some(('Z' | 'X', _))))
        .filter(|&pid| {
            fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|c| c == dir || c.as_os_str().as_bytes().starts_with(&inside))
        })
        .collect()
}

/// One line about a process, for failure messages: pid, state, parent,
/// process group, session, pid in its own namespace, and command line.
pub fn describe_process(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        text.rfind(')').map(|i| text[i + 1..].split_whitespace().take(4).collect()).unwrap_or_default();
    let nspid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).map(|l| l[6..].trim().to_string()))
        .unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    format!(
        "pid {pid} state {} ppid {} pgrp {} sid {} nspid [{nspid}] cmd {}",
        fields.first().unwrap_or(&"?"),
        fields.get(1).unwrap_or(&"?"),
        fields.get(2).unwrap_or(&"?"),
        fields.get(3).unwrap_or(&"?"),
        cmdline.trim()
    )
}

fn set_nonblocking(f: &File) {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Where a [`Proc`]'s stdout goes.
pub enum Out {
    /// A pipe the harness drains (and copies to `LABEL.stdout`).
    Pipe,
    /// A file (the process's stdout is that file).
    File(PathBuf),
    Null,
}

/// A child process in a process group of its own; killed with all its
/// descendants when dropped.
pub struct Proc {
    pub label: String,
    child: Child,
    pipe: Option<File>,
    buf: Vec<u8>,
    copy: Option<File>,
    status: Option<ExitStatus>,
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null, stdout as `out` says and
    /// stderr to `LABEL.stderr` in the sandbox.
    pub fn spawn(sb: &Sandbox, label: &str, mut cmd: Command, out: Out) -> Proc {
        let stderr_path = sb.join(format!("{label}.stderr"));
        let stderr = File::create(&stderr_path).unwrap_or_else(|e| sb.fail(format!("create stderr file: {e}")));
        let piped = matches!(out, Out::Pipe);
        match out {
            Out::Pipe => cmd.stdout(Stdio::piped()),
            Out::Null => cmd.stdout(Stdio::null()),
            Out::File(p) => {
                let f = File::create(&p).unwrap_or_else(|e| sb.fail(format!("create {}: {e}", p.display())));
                cmd.stdout(f)
            }
        };
        cmd.stdin(Stdio::null()).stderr(stderr).process_group(0);
        // SAFETY: the closure runs in the child between fork and exec, after
        // stdin/stdout/stderr are in place, and only makes one system call.
        // It closes what this process inherited without close-on-exec (such
        // as cargo's jobserver pipe), so the programs see only 0, 1 and 2.
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        sb.note(&format!("{label}: {cmd:?}"));
        let mut child = cmd.spawn().unwrap_or_else(|e| sb.fail(format!("cannot start {label} ({cmd:?}): {e}")));
        let pipe = child.stdout.take().map(|s| {
            let f = File::from(OwnedFd::from(s));
            set_nonblocking(&f);
            f
        });
        let copy = if piped { File::create(sb.join(format!("{label}.stdout"))).ok() } else { None };
        Proc { label: label.to_string(), child, pipe, buf: Vec::new(), copy, status: None, stderr_path }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads whatever the stdout pipe holds, without blocking. True at EOF.
    pub fn drain(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return true;
        };
        let mut chunk = [0u8; 16384];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => {
                    self.pipe = None;
                    return true;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Some(c) = self.copy.as_mut() {
                        let _ = c.write_all(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.pipe = None;
                    return true;
                }
            }
        }
    }

    /// The complete lines read so far.
    pub fn lines(&self) -> Vec<String> {
        complete_lines(&self.buf)
    }

    pub fn line_count(&self) -> usize {
        self.buf.iter().filter(|&&b| b == b'\n').count()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status, if it has exited (reaping it).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits until `n` complete lines were printed; fails on exit or timeout.
    pub fn wait_lines(&mut self, sb: &Sandbox, n: usize) {
        if let Some(st) = self.wait_lines_or_exit(sb, n) {
            sb.fail(format!(
                "{} exited ({st}) after printing {} lines; the test waited for {n}",
                self.label,
                self.line_count()
            ));
        }
    }

    /// Waits until `n` complete lines were printed or the process exited
    /// (then returns its status); fails on timeout.
    pub fn wait_lines_or_exit(&mut self, sb: &Sandbox, n: usize) -> Option<ExitStatus> {
        let deadline = Instant::now() + LINES_TIMEOUT;
        loop {
            self.drain();
            if self.line_count() >= n {
                return None;
            }
            if let Some(st) = self.poll_exit() {
                self.finish_reading();
                if self.line_count() >= n {
                    return None;
                }
                return Some(st);
            }
            if Instant::now() > deadline {
                sb.fail(format!(
                    "{} printed {} lines in {LINES_TIMEOUT:?}; the test waited for {n}",
                    self.label,
                    self.line_count()
                ));
            }
            sleep(POLL);
        }
    }

    /// Waits for the process to exit, reading its output; fails on timeout.
    pub fn wait_exit(&mut self, sb: &Sandbox, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(st) = self.poll_exit() {
                self.finish_reading();
                return st;
            }
            if Instant::now() > deadline {
                sb.fail(format!("{} did not exit within {timeout:?}", self.label));
            }
            sleep(POLL);
        }
    }

    /// After exit: reads to EOF, but gives up after a moment, in case
    /// something else (a background coordinator) holds the pipe open.
    fn finish_reading(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.drain() && Instant::now() < deadline {
            sleep(POLL);
        }
    }

    /// SIGKILLs a whole computation: this process (a launcher or a
    /// restart), every descendant of it, and every live process whose
    /// working directory is `cwd` or inside it (the program's directory:
    /// that finds a process of the tree however it got reparented or
    /// regrouped, setsid and setpgid included). First everything found is
    /// stopped (SIGSTOP), again and again until a scan finds nothing new, so
    /// that nothing forks behind the kill; then everything is SIGKILLed and
    /// this process reaped. Fails the test unless every one of them is gone
    /// (or a zombie) within a few seconds and nothing runs in `cwd` any
    /// more.
    pub fn kill_computation(&mut self, sb: &Sandbox, cwd: &Path) {
        let root = self.pid();
        let root_alive = self.status.is_none();
        let mut members: Vec<(i32, Option<u64>)> = Vec::new();
        let mut known = HashSet::new();
        let freeze_deadline = Instant::now() + GONE_TIMEOUT;
        loop {
            let mut found = if root_alive {
                let mut v = vec![root];
                v.extend(descendants(root));
                v
            } else {
                Vec::new()
            };
            found.extend(processes_in(cwd));
            let fresh: Vec<i32> = found.into_iter().filter(|&p| known.insert(p)).collect();
            if fresh.is_empty() || Instant::now() > freeze_deadline {
                break;
            }
            for &p in &fresh {
                let started = start_time(p);
                signal(p, libc::SIGSTOP);
                members.push((p, started));
            }
            // Wait (briefly) until they are stopped, so that the next scan
            // sees any child they forked before stopping.
            let stop_deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < stop_deadline
                && fresh.iter().any(|&p| matches!(stat(p), Some((s, _)) if !matches!(s, 'T' | 't' | 'Z' | 'X')))
            {
                sleep(Duration::from_millis(2));
            }
        }
        for &(p, started) in members.iter().rev() {
            if start_time(p) == started {
                signal(p, libc::SIGKILL);
            }
        }
        if root_alive {
            signal_group(root, libc::SIGKILL);
            kill_tree(root);
            self.status = self.child.wait().ok();
        }
        self.drain();

        let deadline = Instant::now() + GONE_TIMEOUT;
        loop {
            let mut left: Vec<i32> = members.iter().filter(|&&(p, t)| still_running(p, t)).map(|&(p, _)| p).collect();
            for p in processes_in(cwd) {
                if !left.contains(&p) {
                    left.push(p);
                }
            }
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let list: Vec<String> = left.iter().map(|&p| describe_process(p)).collect();
                sb.fail(format!(
                    "{}: {} process(es) of the computation survived SIGKILL for {GONE_TIMEOUT:?}:\n{}",
                    self.label,
                    left.len(),
                    list.join("\n")
                ));
            }
            sleep(POLL);
        }
        sb.note(&format!("{}: killed the computation ({} processes)", self.label, members.len()));
    }

    /// SIGKILLs the process, its descendants and its group, and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            kill_tree(self.pid());
            self.status = self.child.wait().ok();
        }
        self.drain();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn complete_lines(buf: &[u8]) -> Vec<String> {
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&buf[..end]).lines().map(str::to_string).collect()
}

/// The complete lines of a file.
pub fn file_lines(path: &Path) -> Vec<String> {
    complete_lines(&fs::read(path).unwrap_or_default())
}

/// Tests that listen on DMTCP's default port, 7779, take turns.
pub fn default_port_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Stasis commands

/// `stasis launch --ckptdir CK --coord-socket SOCK -- PROGRAM`, run in `cwd`.
pub fn launch(sb: &Sandbox, prog: &Program, sock: &Path, ck: &Path, cwd: &Path, out: Out) -> Proc {
    launch_with(sb, stasis(), prog, sock, ck, cwd, out)
}

/// Like [`launch`], with another stasis binary.
pub fn launch_with(sb: &Sandbox, bin: &Path, prog: &Program, sock: &Path, ck: &Path, cwd: &Path, out: Out) -> Proc {
    launch_command(sb, bin, prog, sock, ck, cwd, &[], out)
}

/// Like [`launch`], with launch options `args` before the `--`.
pub fn launch_args(sb: &Sandbox, prog: &Program, sock: &Path, ck: &Path, cwd: &Path, args: &[&str], out: Out) -> Proc {
    launch_command(sb, stasis(), prog, sock, ck, cwd, args, out)
}

#[allow(clippy::too_many_arguments)]
fn launch_command(
    sb: &Sandbox,
    bin: &Path,
    prog: &Program,
    sock: &Path,
    ck: &Path,
    cwd: &Path,
    args: &[&str],
    out: Out,
) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.arg("launch")
        .arg("--ckptdir")
        .arg(ck)
        .arg("--coord-socket")
        .arg(sock)
        .args(args)
        .arg("--")
        .args(&prog.argv)
        .current_dir(cwd);
    Proc::spawn(sb, &sb.label("launch"), cmd, out)
}

/// `stasis restart --coord-socket SOCK TARGET`, run in the sandbox.
pub fn restart(sb: &Sandbox, sock: &Path, target: &Path, out: Out) -> Proc {
    restart_args(sb, &[], sock, target, out)
}

/// Like [`restart`], with restart options `args` before the target.
pub fn restart_args(sb: &Sandbox, args: &[&str], sock: &Path, target: &Path, out: Out) -> Proc {
    require_user_namespaces();
    let mut cmd = Command::new(stasis());
    cmd.arg("restart").arg("--coord-socket").arg(sock).args(args).arg(target).current_dir(sb.path());
    Proc::spawn(sb, &sb.label("restart"), cmd, out)
}

/// A finished stasis command.
pub struct Outcome {
    pub label: String,
    /// Its pid, which was also its process group.
    pub pid: i32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `stasis ARGS...` to completion (in the sandbox directory).
pub fn run_stasis<S: AsRef<OsStr>>(sb: &Sandbox, base: &str, args: &[S], timeout: Duration) -> Outcome {
    let mut cmd = Command::new(stasis());
    cmd.args(args).current_dir(sb.path());
    let mut p = Proc::spawn(sb, &sb.label(base), cmd, Out::Pipe);
    let status = p.wait_exit(sb, timeout);
    Outcome { label: p.label.clone(), pid: p.pid(), status, stdout: p.stdout_text(), stderr: p.stderr_text() }
}

/// Where in a run's output a checkpoint was taken: after `k` of its lines,
/// for some `k` in `lo..=hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub lo: usize,
    pub hi: usize,
}

/// `stasis command --coord-socket SOCK --checkpoint`, which must succeed,
/// while `app` runs; returns where in `app`'s output the checkpoint lies.
pub fn checkpoint(sb: &Sandbox, sock: &Path, app: &mut Proc) -> Window {
    app.drain();
    let lo = app.line_count();
    let mut cmd = Command::new(stasis());
    cmd.arg("command").arg("--coord-socket").arg(sock).arg("--checkpoint").current_dir(sb.path());
    let mut command = Proc::spawn(sb, &sb.label("command"), cmd, Out::Pipe);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        app.drain();
        if let Some(st) = command.poll_exit() {
            break st;
        }
        if Instant::now() > deadline {
            sb.fail(format!(
                "{} (checkpoint of {}) did not return within {COMMAND_TIMEOUT:?}",
                command.label, app.label
            ));
        }
        sleep(POLL);
    };
    command.finish_reading();
    sb.check(status.success(), || {
        format!(
            "{} (checkpoint of {}) failed with {status}; stderr:\n{}",
            command.label,
            app.label,
            command.stderr_text()
        )
    });
    app.drain();
    Window { lo, hi: app.line_count() }
}

/// Starts `stasis command --checkpoint` without waiting for it.
pub fn start_checkpoint(sb: &Sandbox, sock: &Path) -> Proc {
    let mut cmd = Command::new(stasis());
    cmd.arg("command").arg("--coord-socket").arg(sock).arg("--checkpoint").current_dir(sb.path());
    Proc::spawn(sb, &sb.label("command"), cmd, Out::Pipe)
}

/// Checks that a stasis command refused cleanly: a non-zero exit (not a
/// crash) and a single line on stderr, starting with "stasis:".
pub fn expect_clean_error(sb: &Sandbox, what: &str, out: &Outcome) {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let ok = out.status.code().is_some_and(|c| c != 0) && lines.len() == 1 && lines[0].starts_with("stasis:");
    sb.check(ok, || {
        format!(
            "{what} ({}): expected a non-zero exit and one line \"stasis: ...\" on stderr; got {} \
             (signal {:?}) and stderr:\n{}",
            out.label,
            out.status,
            out.status.signal(),
            out.stderr
        )
    });
}

// ---------------------------------------------------------------------------
// Checkpoint directories

/// Committed generations of `ck` (`gen-NNNNNN` with a MANIFEST), oldest first.
pub fn committed_generations(ck: &Path) -> Vec<(u64, PathBuf)> {
    let mut gens: Vec<(u64, PathBuf)> = fs::read_dir(ck)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("gen-")?.parse().ok()?;
            e.path().join("MANIFEST").is_file().then(|| (n, e.path()))
        })
        .collect();
    gens.sort();
    gens
}

pub fn newest_generation(sb: &Sandbox, ck: &Path) -> PathBuf {
    committed_generations(ck)
        .pop()
        .map(|(_, p)| p)
        .unwrap_or_else(|| sb.fail(format!("no committed generation in {}", ck.display())))
}

/// The image files of a generation (every regular file but the MANIFEST
/// and the saved copies of files).
pub fn images_in(sb: &Sandbox, generation: &Path) -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = fs::read_dir(generation)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name() != "MANIFEST" && !e.file_name().as_bytes().starts_with(b"."))
        // Saved contents of files open for writing (docs/files.md).
        .filter(|e| !e.file_name().as_bytes().starts_with(b"file-"))
        .map(|e| e.path())
        .collect();
    images.sort();
    sb.check(!images.is_empty(), || format!("no image in {}", generation.display()));
    images
}

/// Copies a directory tree (regular files and directories).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// File mode bits (permissions only).
pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Runs and their comparison

/// Runs `prog` without stasis, in `cwd`, to completion.
pub fn start_reference(sb: &Sandbox, prog: &Program, cwd: &Path) -> Proc {
    let mut cmd = prog.command();
    cmd.current_dir(cwd);
    Proc::spawn(sb, &sb.label("reference"), cmd, Out::Pipe)
}

/// Waits for a reference run; its output, whose lines must be distinct.
pub fn finish_reference(sb: &Sandbox, mut p: Proc) -> Vec<String> {
    let st = p.wait_exit(sb, RUN_TIMEOUT);
    sb.check(st.success(), || format!("the reference run {} failed: {st}", p.label));
    let lines = p.lines();
    let mut seen = HashSet::new();
    for l in &lines {
        sb.check(seen.insert(l), || format!("the reference output repeats the line {l:?}"));
    }
    sb.check(lines.last().is_some_and(|l| l.starts_with("final ")), || {
        "the reference output does not end with a \"final\" line".into()
    });
    lines
}

/// One run of a computation: its stdout lines, and where in them each
/// checkpoint that a later run may have restarted from was taken.
pub struct Piece {
    pub label: String,
    pub lines: Vec<String>,
    pub checkpoints: Vec<Window>,
}

impl Piece {
    pub fn new(label: &str, lines: Vec<String>, checkpoints: Vec<Window>) -> Piece {
        Piece { label: label.to_string(), lines, checkpoints }
    }
}

/// Checks a history of runs against the reference output (module docs):
/// each run prints a contiguous part of the reference; each next run starts
/// where the previous one stood at one of its checkpoints; the last run
/// prints the reference to its end.
pub fn verify_history(sb: &Sandbox, reference: &[String], pieces: &[Piece]) {
    let describe = |p: &Piece| format!("{} ({} lines)", p.label, p.lines.len());
    let mut pos = 0;
    for (i, piece) in pieces.iter().enumerate() {
        if let Some(bad) = mismatch(reference, pos, &piece.lines) {
            sb.fail(format!(
                "{} does not follow the reference: its line {} is {:?} where the reference \
                 (line {}) has {:?}",
                describe(piece),
                bad + 1,
                piece.lines.get(bad),
                pos + bad + 1,
                reference.get(pos + bad)
            ));
        }
        let Some(next) = pieces.get(i + 1) else {
            sb.check(pos + piece.lines.len() == reference.len(), || {
                format!(
                    "{} stopped after reference line {} of {}: the run did not finish",
                    describe(piece),
                    pos + piece.lines.len(),
                    reference.len()
                )
            });
            return;
        };
        let last = i + 2 == pieces.len();
        let fits = |k: usize| {
            mismatch(reference, pos + k, &next.lines).is_none()
                && (!last || pos + k + next.lines.len() == reference.len())
        };
        let candidates: Vec<usize> = piece
            .checkpoints
            .iter()
            .flat_map(|w| w.lo..=w.hi.min(piece.lines.len()))
            .filter(|&k| fits(k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        match candidates.as_slice() {
            [k] => pos += k,
            [] => {
                let in_window = |k: usize| piece.checkpoints.iter().any(|w| (w.lo..=w.hi).contains(&k));
                let start = next.lines.first().and_then(|l| reference.iter().position(|r| r == l));
                if let Some(j) = start.filter(|&j| j >= pos && in_window(j - pos)) {
                    let bad = mismatch(reference, j, &next.lines).unwrap_or(next.lines.len());
                    sb.fail(format!(
                        "{} resumes {} at the right line ({} of the reference) but then differs: \
                         its line {} is {:?} where the reference (line {}) has {:?}",
                        describe(next),
                        piece.label,
                        j + 1,
                        bad + 1,
                        next.lines.get(bad),
                        j + bad + 1,
                        reference.get(j + bad)
                    ));
                }
                let at = next.lines.first().and_then(|l| reference.iter().position(|r| r == l));
                let at = match at {
                    Some(j) if j >= pos => {
                        format!("reference line {} (after {} lines of {})", j + 1, j - pos, piece.label)
                    }
                    Some(j) => format!("reference line {}", j + 1),
                    None => "no line of the reference".into(),
                };
                sb.fail(format!(
                    "{} does not continue {} from its checkpoint: {} was taken after k lines of \
                     {}, k in {:?}, but the restarted output begins with {:?}, which is {at}; \
                     a step was lost or repeated, or the wrong checkpoint was restored",
                    describe(next),
                    piece.label,
                    if piece.checkpoints.len() == 1 { "it" } else { "one" },
                    piece.label,
                    piece.checkpoints,
                    next.lines.first()
                ));
            }
            many => sb.fail(format!("ambiguous history: {} fits after {many:?} lines of {}", next.label, piece.label)),
        }
    }
}

/// The first index where `lines` differs from `reference[pos..]`, if any.
fn mismatch(reference: &[String], pos: usize, lines: &[String]) -> Option<usize> {
    (0..lines.len()).find(|&i| reference.get(pos + i) != Some(&lines[i]))
}

/// Reads a `/proc/PID/maps` into (start, end, name) triples.
pub fn maps(pid: i32) -> Vec<(u64, u64, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let name = f.nth(4).unwrap_or("").to_string();
            Some((u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?, name))
        })
        .collect()
}

/// The descendant of `root` running `exe`.
pub fn find_descendant(root: i32, exe: &Path) -> Option<i32> {
    descendants(root).into_iter().find(|&p| fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe))
}

/// How many processes the coordinator at `sock` has connected (its status).
pub fn connected(sb: &Sandbox, sock: &Path) -> usize {
    let sock = sock.as_os_str();
    let out = run_stasis(
        sb,
        "status",
        &["command".as_ref(), "--coord-socket".as_ref(), sock, "--status".as_ref()],
        QUICK_TIMEOUT,
    );
    out.stdout.lines().find_map(|l| l.strip_prefix("processes:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}
