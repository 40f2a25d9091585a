//! Interactive programs in a terminal: an interactive bash, driven through
//! tmux as a user types at it, is checkpointed, killed and restarted in a
//! new terminal, where it carries on with its variables, functions, history
//! and background job, runs new pipelines in the foreground and exits.
//!
//! tmux runs on a server of the test's own (`-S` with a socket in the
//! sandbox, `-f` with a config in the sandbox), so the test never touches a
//! user's tmux and tests run in parallel; the server is killed when the
//! test ends, failed or not. Everything is checked by polling the pane's
//! contents (`capture-pane`) with a generous timeout, never after a fixed
//! sleep. The latest contents of each pane are kept in the sandbox
//! (`pane-NAME.txt`), and restart's stderr in `restart.stderr`, so a
//! failure's report shows them.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::support::*;

/// How long one tmux command may take.
const TMUX_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the shell may take to show what a test waits for.
const SCREEN_TIMEOUT: Duration = LINES_TIMEOUT;
const POLL: Duration = Duration::from_millis(50);
const SH: &str = "/bin/sh";
const BASH: &str = "/bin/bash";

/// The tmux binary, found on PATH as `which` would. Missing, the test fails
/// (these tests do not skip).
fn tmux_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let executable = |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("tmux"))
        .find(|p| executable(p))
        .unwrap_or_else(|| {
            panic!(
                "tmux is missing (not on PATH {:?}): the terminal tests drive an interactive shell \
                 through it. Install it (apt-get install tmux; .ci/run does) and run the tests \
                 again; they fail rather than skip.",
                path
            )
        })
}

/// Runs `cmd` (stdin from /dev/null, no inherited descriptor past 2) and
/// collects its output, for at most `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec and makes one system
    // call: it closes what this process inherited without close-on-exec
    // (cargo's jobserver pipe), which the tmux server would keep open.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Err(_) => {
            // Not reaped yet (the thread still waits for it): the pid is its.
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(format!("{cmd:?} did not finish within {timeout:?}"))
        }
    }
}

/// A tmux server of the test's own, killed when dropped.
struct Tmux<'a> {
    sb: &'a Sandbox,
    bin: PathBuf,
    socket: PathBuf,
    config: PathBuf,
}

impl<'a> Tmux<'a> {
    fn new(sb: &'a Sandbox) -> Tmux<'a> {
        let bin = tmux_binary();
        let config = sb.join("tmux.conf");
        // Dead panes stay (their contents too, for the report); no status
        // line; room for the whole session in the pane's history. The
        // server stays when its last session is killed (one exiting would
        // refuse the next session), until the test kills it.
        let conf = "set -s exit-empty off\nset -g remain-on-exit on\nset -g status off\nset -g history-limit 20000\n";
        fs::write(&config, conf).unwrap_or_else(|e| sb.fail(format!("write {}: {e}", config.display())));
        Tmux { sb, bin, socket: sb.join("tmux.sock"), config }
    }

    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-S").arg(&self.socket).arg("-f").arg(&self.config).args(args);
        // Not the tmux the tests may run in; the server's directory is the
        // sandbox (not a program's directory).
        cmd.env_remove("TMUX").env_remove("TMUX_PANE").current_dir(self.sb.path());
        cmd
    }

    /// Runs one tmux command, which must succeed; returns its stdout.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        match output_within(self.command(args), TMUX_TIMEOUT) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => self.sb.fail(format!(
                "tmux {shown:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => self.sb.fail(format!("tmux {shown:?}: {e}")),
        }
    }

    /// A detached session `name` of one window running `argv` (executed
    /// directly, without a shell) in `cwd`.
    fn new_session(&self, name: &str, cwd: &Path, argv: &[&OsStr]) {
        let head = ["new-session", "-d", "-s", name, "-x", "200", "-y", "50", "-c"];
        let mut args: Vec<&OsStr> = head.iter().map(OsStr::new).collect();
        args.push(cwd.as_os_str());
        args.extend_from_slice(argv);
        self.run(&args);
    }

    /// Types `line` and Enter into the session's pane.
    fn type_line(&self, name: &str, line: &str) {
        self.run(&["send-keys", "-t", name, "-l", "--", line]);
        self.run(&["send-keys", "-t", name, "Enter"]);
    }

    /// The pane's whole contents, history included, wrapped lines joined;
    /// also kept in the sandbox as `pane-NAME.txt`.
    fn capture(&self, name: &str) -> String {
        let text = self.run(&["capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", name]);
        let _ = fs::write(self.sb.join(format!("pane-{name}.txt")), &text);
        text
    }

    /// Polls the pane until `done` holds for its contents; returns them.
    fn wait_for(&self, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let text = self.capture(name);
            if done(&text) {
                return text;
            }
            if Instant::now() > deadline {
                self.sb.fail(format!(
                    "timed out after {SCREEN_TIMEOUT:?} waiting for {what} in tmux pane {name:?}; it shows:\n{}",
                    text.trim_end()
                ));
            }
            sleep(POLL);
        }
    }

    /// Types `line` and waits until the pane shows a line that is exactly
    /// `output` (trailing blanks aside): what the command printed, not its
    /// echo after the prompt.
    fn expect_output(&self, name: &str, line: &str, output: &str) -> String {
        self.type_line(name, line);
        self.wait_for(name, &format!("the line {output:?} after typing {line:?}"), |text| has_line(text, output))
    }

    /// The pane's terminal device.
    fn pane_tty(&self, name: &str) -> PathBuf {
        PathBuf::from(self.run(&["display-message", "-p", "-t", name, "#{pane_tty}"]).trim())
    }
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        // Also while a failure unwinds: ends the panes' processes too.
        let _ = output_within(self.command(&["kill-server"]), TMUX_TIMEOUT);
    }
}

fn has_line(text: &str, want: &str) -> bool {
    text.lines().any(|l| l.trim_end() == want)
}

/// The last line of the pane with anything on it.
fn last_line(text: &str) -> &str {
    text.lines().rev().map(str::trim_end).find(|l| !l.is_empty()).unwrap_or("")
}

/// Whether the terminal `tty` is in non-canonical (raw) mode.
fn raw_mode(tty: &Path) -> bool {
    let Ok(f) = OpenOptions::new().read(true).custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK).open(tty) else {
        return false;
    };
    // SAFETY: a zeroed termios is valid; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a descriptor we own (closed right after, so that
    // the pane's end of file is not held back).
    unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) == 0 && t.c_lflag & libc::ICANON == 0 }
}

/// The entries `history` listed: (number, command line).
fn history_entries(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let digits = l.find(|c: char| !c.is_ascii_digit())?;
            let n = l[..digits].parse().ok()?;
            let cmd = l[digits..].strip_prefix("  ")?;
            Some((n, cmd.trim_end().to_string()))
        })
        .collect()
}

/// `pids BASH SLEEP` as the shell printed it.
fn pids_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim_end)
        .find(|l| l.starts_with("pids ") && l[5..].split(' ').all(|n| n.parse::<u32>().is_ok()))
        .map(str::to_string)
}

/// What the shell is given before the checkpoint, in order.
const BEFORE: [&str; 5] = [
    "v=7; w='two words'; arr=(alpha beta 'gamma delta')",
    "greet() { echo \"hello, $1: ${#arr[@]} items, v=$v\"; }",
    "printf '%s\\n' cherry apple banana | sort | tr a-z A-Z | paste -sd, -",
    "sleep 600 &",
    "echo \"pids $$ $!\"",
];

/// What the restored shell is given, in order, but `exit`; each with what
/// it must print (the history's listing and the job's are checked apart).
const ECHO_VARS: (&str, &str) = ("echo \"v=$v w=$w\"", "v=7 w=two words");
const ECHO_ARRAY: (&str, &str) =
    ("echo \"arr: ${#arr[@]} [${arr[0]}] [${arr[1]}] [${arr[2]}]\"", "arr: 3 [alpha] [beta] [gamma delta]");
const CALL: (&str, &str) = ("greet world", "hello, world: 3 items, v=7");
const JOBS: &str = "jobs";
const HISTORY: &str = "history";
const PIPELINE: (&str, &str) =
    ("printf '%s\\n' \"${arr[@]}\" | sort -r | tr a-z A-Z | paste -sd: -", "GAMMA DELTA:BETA:ALPHA");
/// Kills the background job and reports how it ended (128 + SIGTERM).
const KILL_JOB: (&str, &str) = ("kill %1; wait %1; echo \"job status $?\"", "job status 143");

#[test]
fn an_interactive_bash_driven_through_tmux_is_restarted_and_keeps_its_shell_variables_and_history() {
    let sb = Sandbox::new("terminal-bash");
    require_user_namespaces();
    assert!(Path::new(BASH).is_file(), "{BASH} is missing: install bash");
    let tmux = Tmux::new(&sb);
    let run = sb.mkdir("run");
    let ck = sb.join("ck");
    let sock = sb.socket();
    let histfile = run.join("bash_history.txt");
    let launch_status = sb.join("launch-status.txt");

    // An interactive bash under `stasis launch`, in a tmux pane: its
    // terminal is the pane's. Once launch returns, its status goes to a
    // file.
    let script = "\"$1\" launch --ckptdir \"$2\" --coord-socket \"$3\" -- \
                  env 'PS1=$ ' HISTFILE=\"$4\" \"$5\" --norc --noprofile -i; \
                  echo \"LAUNCH-EXIT $?\" > \"$6\"";
    let argv: Vec<OsString> = vec![
        SH.into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        stasis().into(),
        ck.clone().into(),
        sock.clone().into(),
        histfile.clone().into(),
        BASH.into(),
        launch_status.clone().into(),
    ];
    let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    tmux.new_session("before", &run, &argv);
    tmux.wait_for("before", "bash's first prompt", |t| last_line(t) == "$");

    tmux.type_line("before", BEFORE[0]);
    tmux.type_line("before", BEFORE[1]);
    tmux.expect_output("before", BEFORE[2], "APPLE,BANANA,CHERRY");
    tmux.type_line("before", BEFORE[3]);
    tmux.wait_for("before", "the background job's number", |t| t.lines().any(|l| l.starts_with("[1] ")));
    tmux.type_line("before", BEFORE[4]);
    let text = tmux.wait_for("before", "the shell's and the job's pids, then a prompt", |t| {
        pids_line(t).is_some() && last_line(t) == "$"
    });
    let pids = pids_line(&text).unwrap();

    // Checkpoint bash and its job, then kill them all.
    let coordinator = |what: &str| {
        let args = [OsStr::new("command"), "--coord-socket".as_ref(), sock.as_os_str(), what.as_ref()];
        run_stasis(&sb, "command", &args, COMMAND_TIMEOUT)
    };
    let out = coordinator("--checkpoint");
    sb.check(out.status.success(), || {
        format!("{} (--checkpoint) failed with {}:\n{}", out.label, out.status, out.stderr)
    });
    let generation = newest_generation(&sb, &ck);
    let images = images_in(&sb, &generation);
    if images.len() < 2 {
        let list = coordinator("--list");
        let shown: Vec<String> = pids.split(' ').skip(1).filter_map(|p| p.parse().ok()).map(describe_process).collect();
        sb.fail(format!(
            "{} holds {} image(s); bash and its background sleep ({pids}) are 2 processes. \
             The coordinator lists now:\n{}{}\nThe processes:\n{}",
            generation.display(),
            images.len(),
            list.stdout,
            list.stderr,
            shown.join("\n")
        ));
    }
    let out = coordinator("--kill");
    sb.check(out.status.success(), || format!("{} (--kill) failed with {}:\n{}", out.label, out.status, out.stderr));
    // Gone: launch returned, and nothing runs in bash's directory (bash, its
    // sleep, launch and the pane's sh all do).
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let left = processes_in(&run);
        if left.is_empty() && launch_status.is_file() {
            break;
        }
        if Instant::now() > deadline {
            let list: Vec<String> = left.iter().map(|&p| describe_process(p)).collect();
            tmux.capture("before");
            sb.fail(format!(
                "after --kill, {} process(es) still run in {} and launch {} returned:\n{}",
                left.len(),
                run.display(),
                if launch_status.is_file() { "has" } else { "has not" },
                list.join("\n")
            ));
        }
        sleep(POLL);
    }
    tmux.capture("before");
    tmux.run(&["kill-session", "-t", "before"]);

    // Restart in a new terminal: a new session of the same tmux server.
    let restart_stderr = sb.join("restart.stderr");
    let restart_status = sb.join("restart-status.txt");
    let script = "\"$1\" restart --coord-socket \"$2\" \"$3\" 2> \"$4\"; echo \"RESTART-EXIT $?\" > \"$5\"";
    let sock2 = sb.socket();
    let argv: Vec<OsString> = vec![
        SH.into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        stasis().into(),
        sock2.into(),
        ck.clone().into(),
        restart_stderr.clone().into(),
        restart_status.clone().into(),
    ];
    let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    tmux.new_session("after", sb.path(), &argv);
    // Restart relays its terminal in raw mode once the computation is back
    // (src/pty.rs): from then on what is typed reaches the restored bash.
    let tty = tmux.pane_tty("after");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !raw_mode(&tty) {
        if restart_status.is_file() || Instant::now() > deadline {
            let pane = tmux.capture("after");
            sb.fail(format!(
                "stasis restart {} before it relayed its terminal ({} not in raw mode); status: {:?}; \
                 stderr:\n{}\npane:\n{}",
                if restart_status.is_file() { "ended" } else { "timed out" },
                tty.display(),
                fs::read_to_string(&restart_status).unwrap_or_default().trim(),
                fs::read_to_string(&restart_stderr).unwrap_or_default(),
                pane.trim_end()
            ));
        }
        sleep(POLL);
    }

    for (line, output) in [ECHO_VARS, ECHO_ARRAY, CALL] {
        tmux.expect_output("after", line, output);
    }
    // Same shell, same job: the pids did not change.
    tmux.expect_output("after", BEFORE[4], &pids);

    // The job is still there, and running.
    tmux.type_line("after", JOBS);
    tmux.wait_for("after", "`jobs` listing the background sleep as Running", |t| {
        t.lines()
            .map(str::trim_end)
            .any(|l| l.starts_with("[1]+") && l.contains(" Running ") && l.ends_with("sleep 600 &"))
    });

    // The history holds what was typed before the checkpoint, in order,
    // and then what was typed since.
    tmux.type_line("after", HISTORY);
    let text = tmux.wait_for("after", "the history listing", |t| {
        history_entries(t).iter().any(|(_, c)| c == HISTORY) && last_line(t) == "$"
    });
    let entries = history_entries(&text);
    let number = |cmd: &str| entries.iter().find(|(_, c)| c == cmd).map(|(n, _)| *n);
    let before: Vec<Option<u32>> = BEFORE.iter().map(|c| number(c)).collect();
    let since = number(ECHO_VARS.0);
    sb.check(
        before.iter().chain([&since]).all(Option::is_some)
            && before.iter().chain([&since]).collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]),
        || {
            format!(
                "`history` after the restart should list, in order, {BEFORE:?} (numbers {before:?}) and \
                 then the first command typed after it (number {since:?}); it lists:\n{}",
                entries.iter().map(|(n, c)| format!("{n:5}  {c}")).collect::<Vec<_>>().join("\n")
            )
        },
    );

    // A new pipeline in the foreground, on the restored array.
    tmux.expect_output("after", PIPELINE.0, PIPELINE.1);

    // The restored job dies of the SIGTERM it is sent, bash exits, and
    // restart with it, with status 0.
    tmux.expect_output("after", KILL_JOB.0, KILL_JOB.1);
    tmux.type_line("after", "exit");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !fs::read_to_string(&restart_status).is_ok_and(|s| s.ends_with('\n')) {
        if Instant::now() > deadline {
            let pane = tmux.capture("after");
            sb.fail(format!(
                "stasis restart did not return within {RUN_TIMEOUT:?} of `exit`; pane:\n{}",
                pane.trim_end()
            ));
        }
        sleep(POLL);
    }
    let pane = tmux.capture("after");
    let status = fs::read_to_string(&restart_status).unwrap_or_default();
    sb.check(status.trim() == "RESTART-EXIT 0", || {
        format!(
            "stasis restart ended with {:?}, not status 0; stderr:\n{}\npane:\n{}",
            status.trim(),
            fs::read_to_string(&restart_stderr).unwrap_or_default(),
            pane.trim_end()
        )
    });

    // Nothing of the computation is left, and bash saved its history on
    // exit: the commands from both sides of the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_in(&run).is_empty() {
        if Instant::now() > deadline {
            let list: Vec<String> = processes_in(&run).iter().map(|&p| describe_process(p)).collect();
            sb.fail(format!("after bash exited, processes still run in {}:\n{}", run.display(), list.join("\n")));
        }
        sleep(POLL);
    }
    let saved: Vec<String> = fs::read_to_string(&histfile).unwrap_or_default().lines().map(str::to_string).collect();
    let mut wanted: Vec<&str> = BEFORE.to_vec();
    wanted.extend([ECHO_VARS.0, ECHO_ARRAY.0, CALL.0, BEFORE[4], JOBS, HISTORY, PIPELINE.0, KILL_JOB.0, "exit"]);
    let mut at = 0;
    let in_order = wanted.iter().all(|w| match saved[at..].iter().position(|s| s == w) {
        Some(i) => {
            at += i + 1;
            true
        }
        None => false,
    });
    sb.check(in_order, || {
        format!("{} should hold, in order, {wanted:?}; it holds:\n{}", histfile.display(), saved.join("\n"))
    });
}
