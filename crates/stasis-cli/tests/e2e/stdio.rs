//! stdin, stdout and stderr that the computation got from outside at
//! launch come back as restart's own (docs/architecture.md, *A restart*):
//! files, pipes, a pipeline inside the computation that keeps its own pipe,
//! children that inherited them. The launch's files are left as the first
//! run left them. And a restore that fails says on restart's stderr which
//! process failed, at what step and why.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Steps of the scripts below: long enough to checkpoint and kill midway.
const STEPS: &str = "80";

/// A bash script written into the sandbox: prints "step N" on stdout and
/// "err N" on stderr for each step, forking a `sleep` each time (a child
/// that inherited both), then reads one line of stdin and prints
/// "final LINE".
fn stepping_script(sb: &Sandbox) -> Program {
    let path = sb.join("steps.sh");
    fs::write(
        &path,
        "for i in $(seq 1 \"$1\"); do echo \"step $i\"; echo \"err $i\" >&2; sleep 0.05; done\n\
         read -r last || last=none\n\
         echo \"final $last\"\n",
    )
    .unwrap_or_else(|e| sb.fail(format!("write {}: {e}", path.display())));
    Program { name: "steps.sh".into(), argv: vec!["/bin/bash".into(), path.into_os_string(), STEPS.into()] }
}

/// `cmd` with its stdin from `stdin` (Proc::spawn gives /dev/null).
fn with_stdin(cmd: Command, stdin: &Path) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg("exec \"$@\" < \"$STDIN_FILE\"").arg("sh").arg(cmd.get_program()).args(cmd.get_args());
    sh.env("STDIN_FILE", stdin);
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    sh
}

fn write_file(sb: &Sandbox, name: &str, text: &str) -> PathBuf {
    let p = sb.join(name);
    fs::write(&p, text).unwrap_or_else(|e| sb.fail(format!("write {}: {e}", p.display())));
    p
}

fn launch_cmd(prog: &Program, sock: &Path, ck: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(stasis());
    cmd.arg("launch").arg("--ckptdir").arg(ck).arg("--coord-socket").arg(sock).arg("--").args(&prog.argv);
    cmd.current_dir(cwd);
    cmd
}

fn restart_cmd(sb: &Sandbox, sock: &Path, ck: &Path) -> Command {
    require_user_namespaces();
    let mut cmd = Command::new(stasis());
    cmd.arg("restart").arg("--coord-socket").arg(sock).arg(ck).current_dir(sb.path());
    cmd
}

/// `stasis command --checkpoint` while the program writes to `out`;
/// returns where in `out` the checkpoint lies.
fn checkpoint_file(sb: &Sandbox, sock: &Path, out: &Path) -> Window {
    let lo = file_lines(out).len();
    let sock = sock.to_string_lossy().into_owned();
    let done = run_stasis(sb, "command", &["command", "--coord-socket", &sock, "--checkpoint"], COMMAND_TIMEOUT);
    sb.check(done.status.success(), || format!("{} failed: {}", done.label, done.stderr));
    Window { lo, hi: file_lines(out).len() }
}

/// Launch with stdout to file A, stderr to file B and stdin from file E0;
/// checkpoint, kill; `stasis restart DIR > C 2> D < E`: the output goes on
/// in C and D, the last line read comes from E, and A and B stay as the
/// first run left them (never cut back to the checkpoint).
#[test]
fn stdio_files_of_the_launch_come_back_as_the_restarts_own() {
    let sb = Sandbox::new("stdio-files");
    let prog = stepping_script(&sb);
    let first_stdin = write_file(&sb, "E0", "from the launch's stdin\n");
    let restart_stdin = write_file(&sb, "E", "from the restart's stdin\n");
    let mut reference = prog.command();
    reference.current_dir(sb.mkdir("ref"));
    let reference = Proc::spawn(&sb, &sb.label("reference"), with_stdin(reference, &restart_stdin), Out::Pipe);

    let (ck, sock, a) = (sb.join("ck"), sb.socket(), sb.join("A"));
    let run = sb.mkdir("run");
    let cmd = with_stdin(launch_cmd(&prog, &sock, &ck, &run), &first_stdin);
    let mut app = Proc::spawn(&sb, &sb.label("launch"), cmd, Out::File(a.clone()));
    wait_until(&sb, "5 lines in A", LINES_TIMEOUT, || file_lines(&a).len() >= 5 || app.poll_exit().is_some());
    let window = checkpoint_file(&sb, &sock, &a);
    let hi = window.hi;
    wait_until(&sb, "more lines in A", LINES_TIMEOUT, || file_lines(&a).len() >= hi + 3 || app.poll_exit().is_some());
    sb.check(app.poll_exit().is_none(), || format!("{} ended before it was killed", app.label));
    app.kill();
    let (first_out, first_err) = (fs::read(&a).unwrap_or_default(), fs::read(&app.stderr_path).unwrap_or_default());
    let reference = finish_reference(&sb, reference);

    let c = sb.join("C");
    let mut re = Proc::spawn(
        &sb,
        &sb.label("restart"),
        with_stdin(restart_cmd(&sb, &sb.socket(), &ck), &restart_stdin),
        Out::File(c.clone()),
    );
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    let restart_err = re.stderr_text();
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{restart_err}", re.label));
    sb.check(fs::read(&a).unwrap_or_default() == first_out, || {
        "A (the launch's stdout) was changed by the restart".into()
    });
    sb.check(fs::read(&app.stderr_path).unwrap_or_default() == first_err, || {
        "B (the launch's stderr) was changed by the restart".into()
    });
    verify_history(
        &sb,
        &reference,
        &[Piece::new("A", file_lines(&a), vec![window]), Piece::new("C", file_lines(&c), vec![])],
    );
    let last_err = format!("err {STEPS}");
    sb.check(restart_err.lines().any(|l| l == last_err), || {
        format!("the program's last stderr line {last_err:?} is not on restart's stderr:\n{restart_err}")
    });
}

/// The launch's stdout a pipe (the harness's, as `| cat > file`), and a
/// pipeline inside the computation (`steps | cat`): the internal pipe is
/// the program's own and comes back whole, bytes in flight included; cat,
/// a child that inherited stdout, writes into restart's stdout pipe.
#[test]
fn a_pipeline_keeps_its_pipe_and_writes_to_the_restarts_stdout_pipe() {
    let sb = Sandbox::new("stdio-pipeline");
    let path = sb.join("pipeline.sh");
    fs::write(
        &path,
        "for i in $(seq 1 \"$1\"); do echo \"step $i\"; sleep 0.05; done | cat\n\
         echo \"final done\"\n",
    )
    .unwrap_or_else(|e| sb.fail(format!("write {}: {e}", path.display())));
    let prog =
        Program { name: "pipeline.sh".into(), argv: vec!["/bin/bash".into(), path.into_os_string(), STEPS.into()] };
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &sb.mkdir("run"), Out::Pipe);
    app.wait_lines(&sb, 5);
    let window = checkpoint(&sb, &sock, &mut app);
    app.wait_lines(&sb, window.hi + 3);
    app.kill();
    let reference = finish_reference(&sb, reference);

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{}", re.label, re.stderr_text()));
    verify_history(
        &sb,
        &reference,
        &[Piece::new(&app.label, app.lines(), vec![window]), Piece::new(&re.label, re.lines(), vec![])],
    );
}

/// A file the program opened itself that cannot be opened again (a socket
/// now lies at its path): the restart fails, and says on its own stderr
/// which process, at what step and why; never nothing.
#[test]
fn a_failed_restore_names_the_process_and_the_reason() {
    let sb = Sandbox::new("stdio-failure");
    let run = sb.mkdir("run");
    let input = run.join("input");
    fs::write(&input, "data\n").unwrap_or_else(|e| sb.fail(format!("write {}: {e}", input.display())));
    let path = sb.join("reader.sh");
    fs::write(&path, "exec 5<input\nfor i in $(seq 1 \"$1\"); do echo \"step $i\"; sleep 0.05; done\n")
        .unwrap_or_else(|e| sb.fail(format!("write {}: {e}", path.display())));
    let prog =
        Program { name: "reader.sh".into(), argv: vec!["/bin/bash".into(), path.into_os_string(), STEPS.into()] };
    let (ck, sock) = (sb.join("ck"), sb.socket());
    let mut app = launch(&sb, &prog, &sock, &ck, &run, Out::Pipe);
    app.wait_lines(&sb, 3);
    checkpoint(&sb, &sock, &mut app);
    app.kill();
    fs::remove_file(&input).unwrap_or_else(|e| sb.fail(format!("remove {}: {e}", input.display())));
    // A socket's path cannot be opened (ENXIO); it stays after its listener.
    drop(std::os::unix::net::UnixListener::bind(&input).unwrap_or_else(|e| sb.fail(format!("bind: {e}"))));
    let _ = fs::set_permissions(&input, fs::Permissions::from_mode(0o644));

    let mut re = restart(&sb, &sb.socket(), &ck, Out::Pipe);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    let err = re.stderr_text();
    sb.check(!status.success(), || format!("{} succeeded although fd 5 could not be reopened", re.label));
    let said = err.lines().any(|l| {
        l.starts_with("stasis: restart: restoring process ")
            && l.contains(" failed: ")
            && l.contains("reopening its descriptors")
            && l.contains("fd 5")
            && l.contains(&input.display().to_string())
    });
    sb.check(said, || {
        format!("{} ({status}) did not say which process failed, where and why; its stderr:\n{err}", re.label)
    });
    sb.check(re.stdout_text().is_empty(), || format!("{} printed on stdout: {}", re.label, re.stdout_text()));
}

/// A new pseudo-terminal: its master, and its slave's path.
fn pseudo_terminal(sb: &Sandbox) -> (fs::File, PathBuf) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt opens a new descriptor, owned by the File.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    sb.check(m >= 0, || format!("posix_openpt: {}", std::io::Error::last_os_error()));
    // SAFETY: `m` was just opened and is owned here.
    let master = unsafe { fs::File::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt, unlockpt and ptsname_r on our master; ptsname_r
    // writes at most `name.len()` bytes.
    let ok = unsafe {
        libc::grantpt(m) == 0 && libc::unlockpt(m) == 0 && libc::ptsname_r(m, name.as_mut_ptr(), name.len()) == 0
    };
    sb.check(ok, || format!("cannot set up a pseudo-terminal: {}", std::io::Error::last_os_error()));
    // SAFETY: ptsname_r wrote a NUL-terminated name.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    (master, PathBuf::from(path))
}

/// Launched in a terminal (stdin and stdout a pseudo-terminal's), restarted
/// with stdin and stdout that are no terminal (`< /dev/null > C`): the
/// output goes on in C, and no terminal is made for it.
#[test]
fn a_terminal_of_the_launch_becomes_the_restarts_own_stdout_file() {
    use std::io::Read;
    let sb = Sandbox::new("stdio-terminal");
    let prog = Program::c("single", &[]);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));
    let (mut master, pts) = pseudo_terminal(&sb);
    let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = read.clone();
    // Reads until every holder of the slave is gone (EIO).
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
        }
    });
    let lines = || {
        let bytes = read.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let text = String::from_utf8_lossy(&bytes).replace('\r', "");
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        text[..end].lines().map(str::to_string).collect::<Vec<_>>()
    };
    let (ck, sock, run) = (sb.join("ck"), sb.socket(), sb.mkdir("run"));
    // `launch_cmd`'s arguments, after the stasis binary as $0.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("exec \"$0\" \"$@\" < \"$PTS\" > \"$PTS\"").arg(stasis());
    cmd.args(launch_cmd(&prog, &sock, &ck, &run).get_args()).env("PTS", &pts).current_dir(&run);
    let mut app = Proc::spawn(&sb, &sb.label("launch"), cmd, Out::Null);
    wait_until(&sb, "3 lines on the terminal", LINES_TIMEOUT, || lines().len() >= 3 || app.poll_exit().is_some());
    let lo = lines().len();
    let sock_text = sock.to_string_lossy().into_owned();
    let done = run_stasis(&sb, "command", &["command", "--coord-socket", &sock_text, "--checkpoint"], COMMAND_TIMEOUT);
    sb.check(done.status.success(), || format!("{} failed: {}", done.label, done.stderr));
    let after = lines().len();
    wait_until(&sb, "more lines on the terminal", LINES_TIMEOUT, || {
        lines().len() >= after + 3 || app.poll_exit().is_some()
    });
    app.kill();
    let _ = reader.join();
    let first_run = lines();
    let reference = finish_reference(&sb, reference);

    let c = sb.join("C");
    let mut re = Proc::spawn(&sb, &sb.label("restart"), restart_cmd(&sb, &sb.socket(), &ck), Out::File(c.clone()));
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stderr:\n{}", re.label, re.stderr_text()));
    // The reader may lag behind the terminal: the checkpoint lies between
    // `lo` and whatever was read in the end.
    let window = Window { lo, hi: first_run.len() };
    verify_history(
        &sb,
        &reference,
        &[Piece::new("the terminal", first_run, vec![window]), Piece::new("C", file_lines(&c), vec![])],
    );
}

/// Whether this test process runs as root.
fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The first user of `STASIS_E2E_USERS` (default `stasis-ci`), created
/// (without a home) when missing.
fn test_user() -> String {
    let names = std::env::var("STASIS_E2E_USERS").unwrap_or_else(|_| "stasis-ci,stasis-ci2".into());
    let name = names.split(',').next().unwrap_or("stasis-ci").to_string();
    let known = Command::new("id").arg("-u").arg(&name).output().is_ok_and(|o| o.status.success());
    if !known {
        let st = Command::new("useradd").args(["-M", "-s", "/bin/bash", &name]).status();
        assert!(st.is_ok_and(|s| s.success()), "cannot create the test user {name} (useradd)");
    }
    name
}

/// `stasis ARGS...` as `user` (`runuser -u USER -- env -i ...` from root),
/// in `home`, with the redirections `redirect` (sh syntax) and stderr
/// added to `$HOME/stasis.log`.
fn as_user(user: &str, home: &Path, bin: &Path, redirect: &str, args: &[std::ffi::OsString]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("TMPDIR={}", home.display()))
        .arg(format!("PATH={}:/usr/bin:/bin", bin.display()))
        .args(["/bin/sh", "-c", &format!("exec \"$0\" \"$@\" {redirect} 2>>\"$HOME/stasis.log\"")])
        .arg(bin.join("stasis"))
        .args(args)
        .current_dir(home);
    cmd
}

/// Run as a user, with stdout a file only root may write (as a batch
/// system's output file can be): the checkpoint leaves it alone, and the
/// restart, as the user with stdout a file of the user's, carries on there.
#[test]
fn stdout_a_file_of_roots_comes_back_as_the_users_own_restart_stdout() {
    if !is_root() {
        eprintln!("stdout_a_file_of_roots: not run: playing a user needs root (.ci/run runs it as root)");
        return;
    }
    let user = test_user();
    let sb = Sandbox::new("stdio-root-file");
    let chmod = |p: &Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| sb.fail(format!("chmod {}: {e}", p.display())))
    };
    chmod(sb.path(), 0o755);
    let bin = sb.mkdir("bin");
    chmod(&bin, 0o755);
    for name in ["stasis", "libstasis_agent.so"] {
        let to = bin.join(name);
        fs::copy(stasis().with_file_name(name), &to).unwrap_or_else(|e| sb.fail(format!("copy {name}: {e}")));
        chmod(&to, 0o755);
    }
    let exe = bin.join("single");
    fs::copy(compiled("single"), &exe).unwrap_or_else(|e| sb.fail(format!("copy single: {e}")));
    chmod(&exe, 0o755);
    let home = sb.mkdir("home");
    let owned = Command::new("chown").arg(&user).arg(&home).status();
    sb.check(owned.is_ok_and(|s| s.success()), || format!("chown {user} {}", home.display()));
    chmod(&home, 0o700);
    let ck = home.join("ck");
    let prog = Program::c("single", &["60", "60"]).at(&exe);
    let reference = start_reference(&sb, &prog, &sb.mkdir("ref"));

    // Root's file, opened by root for the user's program (Out::File).
    let a = sb.join("A");
    let os = std::ffi::OsString::from;
    let launch_args = [
        os("launch"),
        os("--ckptdir"),
        ck.clone().into_os_string(),
        os("--"),
        exe.clone().into_os_string(),
        os("60"),
        os("60"),
    ];
    let mut app =
        Proc::spawn(&sb, &sb.label("launch"), as_user(&user, &home, &bin, "", &launch_args), Out::File(a.clone()));
    wait_until(&sb, "3 lines in A", LINES_TIMEOUT, || file_lines(&a).len() >= 3 || app.poll_exit().is_some());
    chmod(&a, 0o644);
    let log = || fs::read_to_string(home.join("stasis.log")).unwrap_or_default();
    let lo = file_lines(&a).len();
    let ck_args = [os("command"), os("--ckptdir"), ck.clone().into_os_string(), os("--checkpoint")];
    let mut command = Proc::spawn(&sb, &sb.label("command"), as_user(&user, &home, &bin, "", &ck_args), Out::Pipe);
    let status = command.wait_exit(&sb, COMMAND_TIMEOUT);
    sb.check(status.success(), || format!("{} failed with {status}; stasis.log:\n{}", command.label, log()));
    let window = Window { lo, hi: file_lines(&a).len() };
    let hi = window.hi;
    wait_until(&sb, "more lines in A", LINES_TIMEOUT, || file_lines(&a).len() >= hi + 2 || app.poll_exit().is_some());
    app.kill();
    let first_run = fs::read(&a).unwrap_or_default();
    let reference = finish_reference(&sb, reference);

    let c = home.join("C");
    let re_args = [os("restart"), ck.clone().into_os_string()];
    let mut re =
        Proc::spawn(&sb, &sb.label("restart"), as_user(&user, &home, &bin, "> \"$HOME/C\"", &re_args), Out::Null);
    let status = re.wait_exit(&sb, RUN_TIMEOUT);
    sb.check(status.success(), || format!("{} exited with {status}; stasis.log:\n{}", re.label, log()));
    sb.check(fs::read(&a).unwrap_or_default() == first_run, || "root's A was changed by the restart".into());
    verify_history(
        &sb,
        &reference,
        &[Piece::new("A", file_lines(&a), vec![window]), Piece::new("C", file_lines(&c), vec![])],
    );
}

fn wait_until(sb: &Sandbox, what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        if std::time::Instant::now() > deadline {
            sb.fail(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
