//! Another user on the same node against a computation (docs/security.md).
//!
//! Two unprivileged users: the victim, who owns a computation, and the
//! attacker, who tries to read, steer, redirect or replace it. The harness
//! runs as root and acts as each of them through `runuser`; .ci/run creates
//! both (`stasis-ci` and `stasis-ci2`, or `STASIS_E2E_USERS=victim,attacker`).
//! Without root these tests cannot play two users: they say so and return
//! (.ci/run runs them as root before the unprivileged pass).
//!
//! Every attack must be refused with a clear message, and the victim's
//! computation must go on and stay checkpointable.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// One of the two users.
struct User {
    name: String,
    uid: u32,
    /// Its own directory in the sandbox (mode 0700): HOME and TMPDIR.
    home: PathBuf,
}

/// The sandbox, both users, and the binaries where both can run them.
struct Stage {
    sb: Sandbox,
    victim: User,
    attacker: User,
    /// stasis, the DMTCP names and the agent, readable by everyone.
    bin: PathBuf,
    /// tests/programs/single.c, compiled where both users can run it.
    prog: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The user named `name`, created (without a home) when missing.
fn user(name: &str) -> u32 {
    if let Some(uid) = uid_of(name) {
        return uid;
    }
    let st = Command::new("useradd").args(["-M", "-s", "/bin/bash", name]).status();
    assert!(st.is_ok_and(|s| s.success()), "cannot create the test user {name} (useradd)");
    uid_of(name).unwrap_or_else(|| panic!("the user {name} was created but has no uid"))
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None)
        .unwrap_or_else(|e| panic!("chown {} to {uid}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// A directory of the sandbox owned by `uid` with `mode`.
fn dir_for(sb: &Sandbox, rel: &str, uid: u32, mode: u32) -> PathBuf {
    let d = sb.mkdir(rel);
    chown(&d, uid);
    chmod(&d, mode);
    d
}

/// Sets up the stage, or returns None (saying why) when not root.
fn stage(test: &str) -> Option<Stage> {
    if !is_root() {
        eprintln!("{test}: not run: playing two users needs root (.ci/run runs it as root)");
        return None;
    }
    let names = std::env::var("STASIS_E2E_USERS").unwrap_or_else(|_| "stasis-ci,stasis-ci2".into());
    let (victim, attacker) = names.split_once(',').expect("STASIS_E2E_USERS=victim,attacker");
    let sb = Sandbox::new(test);
    // Both users must reach their own directories inside.
    chmod(sb.path(), 0o755);
    let bin = sb.mkdir("bin");
    for name in ["stasis", "libstasis_agent.so", "dmtcp_launch", "dmtcp_restart", "dmtcp_command", "dmtcp_coordinator"]
    {
        let from = stasis().with_file_name(name);
        let to = bin.join(name);
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        chmod(&to, 0o755);
    }
    let prog = bin.join("single");
    fs::copy(compiled("single"), &prog).expect("copy the test program");
    chmod(&prog, 0o755);
    let victim_uid = user(victim);
    let attacker_uid = user(attacker);
    let victim = User { name: victim.into(), uid: victim_uid, home: dir_for(&sb, "victim", victim_uid, 0o700) };
    let attacker =
        User { name: attacker.into(), uid: attacker_uid, home: dir_for(&sb, "attacker", attacker_uid, 0o700) };
    Some(Stage { sb, victim, attacker, bin, prog })
}

impl Stage {
    /// `cmd ARGS...` as `who`, in its home, with a clean environment.
    fn command(&self, who: &User, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &who.name, "--", "env", "-i"])
            .arg(format!("HOME={}", who.home.display()))
            .arg(format!("TMPDIR={}", who.home.display()))
            .arg(format!("PATH={}:/usr/bin:/bin", self.bin.display()))
            .arg("LANG=C.UTF-8")
            .arg(program)
            .args(args)
            .current_dir(&who.home);
        cmd
    }

    fn stasis(&self, who: &User, args: &[&str]) -> Command {
        self.command(who, &self.bin.join("stasis"), args)
    }

    /// Runs a stasis command as `who` to completion.
    fn run(&self, who: &User, base: &str, args: &[&str]) -> Outcome {
        let mut p = Proc::spawn(&self.sb, &self.sb.label(base), self.stasis(who, args), Out::Pipe);
        let status = p.wait_exit(&self.sb, COMMAND_TIMEOUT);
        Outcome { label: p.label.clone(), pid: p.pid(), status, stdout: p.stdout_text(), stderr: p.stderr_text() }
    }

    /// Runs a stasis command as `who`; it must succeed.
    fn ok(&self, who: &User, base: &str, args: &[&str]) -> Outcome {
        let out = self.run(who, base, args);
        self.sb.check(out.status.success(), || {
            format!("{} ({}) failed with {}:\n{}", out.label, args.join(" "), out.status, out.stderr)
        });
        out
    }

    /// A stasis command as `who` must be refused with one line naming `names`.
    fn refused(&self, who: &User, what: &str, args: &[&str], names: &[&str]) -> Outcome {
        let out = self.run(who, what, args);
        expect_clean_error(&self.sb, what, &out);
        for n in names {
            self.sb.check(out.stderr.contains(n), || format!("{what}: the refusal does not name {n}:\n{}", out.stderr));
        }
        out
    }

    /// The victim's program under `stasis launch ARGS -- single STEPS 50`.
    fn launch(&self, who: &User, args: &[&str], steps: u32) -> Proc {
        let steps = steps.to_string();
        let prog = self.prog.to_string_lossy().into_owned();
        let mut all: Vec<&str> = vec!["launch"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", &prog, &steps, "50"]);
        Proc::spawn(&self.sb, &self.sb.label("launch"), self.stasis(who, &all), Out::Pipe)
    }

    /// A Python script run as `who`.
    fn python(&self, who: &User, name: &str, script: &str, args: &[&str]) -> Proc {
        let path = self.bin.join(format!("{name}.py"));
        fs::write(&path, script).expect("write a script");
        chmod(&path, 0o644);
        let mut all = vec![path.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        Proc::spawn(&self.sb, &self.sb.label(name), self.command(who, Path::new("/usr/bin/python3"), &all), Out::Pipe)
    }
}

/// A TCP port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Waits until `p` printed a line containing `text`.
fn wait_for_line(sb: &Sandbox, p: &mut Proc, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        p.drain();
        if p.lines().iter().any(|l| l.contains(text)) {
            return;
        }
        if let Some(st) = p.poll_exit() {
            p.drain();
            if p.lines().iter().any(|l| l.contains(text)) {
                return;
            }
            sb.fail(format!("{} ended ({st}) before printing {text:?}:\n{}", p.label, p.stderr_text()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sb.fail(format!("{} did not print {text:?} within {timeout:?}", p.label));
}

/// The program's output must be the uninterrupted run's.
fn same_as_reference(st: &Stage, p: &mut Proc, steps: u32) {
    let status = p.wait_exit(&st.sb, RUN_TIMEOUT);
    st.sb.check(status.success(), || format!("{} failed: {status}\n{}", p.label, p.stderr_text()));
    let out = Command::new(&st.prog).args([&steps.to_string(), "0"]).output().expect("run the program natively");
    let reference: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    st.sb.check(p.lines() == reference, || {
        format!("{}'s output differs from an uninterrupted run:\n{:?}\nvs\n{:?}", p.label, p.lines(), reference)
    });
}

#[test]
fn checkpoint_directories_others_can_replace_are_refused() {
    let Some(st) = stage("checkpoint_directories_others_can_replace_are_refused") else { return };
    let (v, a) = (&st.victim, &st.attacker);
    dir_for(&st.sb, "open", 0, 0o755);
    let theirs = dir_for(&st.sb, "open/theirs", a.uid, 0o755);
    let everyones = dir_for(&st.sb, "open/everyones", v.uid, 0o777);
    dir_for(&st.sb, "open/lax", 0, 0o777);
    let under_lax = dir_for(&st.sb, "open/lax/ck", v.uid, 0o700);
    for (case, dir) in [("theirs", &theirs), ("everyones", &everyones), ("under_lax", &under_lax)] {
        let d = dir.to_str().unwrap();
        let p = st.prog.to_str().unwrap();
        let out = st.refused(v, case, &["launch", "--ckptdir", d, "--", p, "3", "10"], &[d]);
        st.sb.check(out.stdout.is_empty(), || format!("{case}: the program ran in a refused directory"));
        let out = st.refused(v, case, &["coordinator", "--ckptdir", d, "--exit-on-last"], &[d]);
        st.sb.check(out.stdout.is_empty(), || format!("{case}: a coordinator ran in a refused directory"));
    }
    // A directory of one's own under a sticky directory everyone writes
    // (as under /tmp) is fine.
    dir_for(&st.sb, "open/sticky", 0, 0o1777);
    let ck = dir_for(&st.sb, "open/sticky/ck", v.uid, 0o700);
    let ck_s = ck.to_str().unwrap();
    let mut app = st.launch(v, &["--ckptdir", ck_s], 60);
    app.wait_lines(&st.sb, 3);
    st.ok(v, "checkpoint", &["command", "--ckptdir", ck_s, "--checkpoint"]);
    same_as_reference(&st, &mut app, 60);
}

#[test]
fn generations_planted_by_another_user_are_refused() {
    let Some(st) = stage("generations_planted_by_another_user_are_refused") else { return };
    require_user_namespaces();
    let (v, a) = (&st.victim, &st.attacker);
    // Each checkpoints a computation of their own; the victim's directory
    // lies where others may look (as on a shared /scratch).
    dir_for(&st.sb, "scratch", 0, 0o755);
    let ck = dir_for(&st.sb, "scratch/ck", v.uid, 0o700);
    let theirs = dir_for(&st.sb, "attacker/ck", a.uid, 0o700);
    let (ck_s, theirs_s) = (ck.to_str().unwrap(), theirs.to_str().unwrap());
    // Their output goes to files of their own (a restart leaves them and
    // writes on into its own stdout).
    let prog = st.prog.to_string_lossy().into_owned();
    for (who, dir) in [(v, ck_s), (a, theirs_s)] {
        let out = who.home.join("out.txt");
        let mut app = Proc::spawn(
            &st.sb,
            &st.sb.label("launch"),
            st.command(
                who,
                Path::new("/bin/sh"),
                &[
                    "-c",
                    "exec \"$@\" > \"$HOME/out.txt\" 2> \"$HOME/err.txt\"",
                    "sh",
                    "stasis",
                    "launch",
                    "--ckptdir",
                    dir,
                    "--",
                    &prog,
                    "100",
                    "50",
                ],
            ),
            Out::Pipe,
        );
        wait_until_file(&st.sb, &out, |lines| lines.len() >= 3);
        st.ok(who, "checkpoint", &["command", "--ckptdir", dir, "--checkpoint"]);
        app.kill();
    }
    // The victim opens the directory by mistake; the attacker plants a
    // generation of their own program, newer than the victim's.
    chmod(&ck, 0o777);
    let planted = ck.join("gen-999999");
    let gen_of_theirs = committed_generations(&theirs).pop().expect("the attacker's generation").1;
    let cp = st
        .command(a, Path::new("/bin/cp"), &["-r", gen_of_theirs.to_str().unwrap(), planted.to_str().unwrap()])
        .status()
        .expect("run cp");
    st.sb.check(cp.success(), || "the attacker could not plant a generation".into());
    st.refused(v, "restart-open", &["restart", ck_s], &[ck_s]);
    let script = ck.join("dmtcp_restart_script.sh");
    let out = st.command(v, Path::new("/bin/sh"), &[script.to_str().unwrap()]).output().expect("run the script");
    st.sb.check(!out.status.success(), || "the restart script restarted from an open directory".into());
    // Closed again, the planted generation is still not the victim's.
    chmod(&ck, 0o700);
    let out = st.refused(v, "restart-planted", &["restart", ck_s], &["gen-999999"]);
    st.sb.check(out.stdout.is_empty(), || "the planted program ran".into());
    // Nothing was lost: the victim's own generation still restarts and
    // finishes its work.
    let out = st.ok(v, "restart-own", &["restart", "--generation", "1", ck_s]);
    st.sb.check(out.stdout.lines().last().is_some_and(|l| l.starts_with("final ")), || {
        format!("the victim's own restart did not finish its work; its stdout:\n{}", out.stdout)
    });
}

/// Waits until the complete lines of `path` satisfy `done`.
fn wait_until_file(sb: &Sandbox, path: &Path, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while Instant::now() < deadline {
        if done(&file_lines(path)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sb.fail(format!("{} did not get the expected lines: {:?}", path.display(), file_lines(path)));
}

/// A fake coordinator: it listens on the port, sends a challenge, says OK
/// to any answer (without proving anything) and then orders SUSPEND into a
/// directory of its own and KILL. It logs every line it receives.
const IMPOSTOR: &str = r#"
import socket, sys, threading
port, log, loot = int(sys.argv[1]), sys.argv[2], sys.argv[3]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(64)
print("listening", flush=True)
def serve(c):
    f = c.makefile("rwb", buffering=0)
    try:
        f.write(b"CHALLENGE nonce=" + b"11" * 32 + b"\n")
        for i, line in enumerate(f):
            open(log, "a").write(line.decode(errors="replace"))
            if i == 0:
                f.write(b"OK proof=" + b"00" * 32 + b"\n")
                f.write(("SUSPEND generation=1 dir=%s interval=0 computation=1 compression=none\n" % loot).encode())
                f.write(b"KILL\n")
    except Exception:
        pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn an_impostor_coordinator_is_not_obeyed() {
    let Some(st) = stage("an_impostor_coordinator_is_not_obeyed") else { return };
    let (v, a) = (&st.victim, &st.attacker);
    let port = free_port().to_string();
    let log = st.attacker.home.join("received.txt");
    let loot = dir_for(&st.sb, "loot", a.uid, 0o777);
    let mut fake = st.python(a, "impostor", IMPOSTOR, &[&port, log.to_str().unwrap(), loot.to_str().unwrap()]);
    wait_for_line(&st.sb, &mut fake, "listening", QUICK_TIMEOUT);

    // The victim's program, told to find its coordinator at that port (as
    // on another node): its agent must not obey, and the program runs on.
    let secret = "ab".repeat(32);
    let agent = st.bin.join("libstasis_agent.so");
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", &v.name, "--", "env", "-i"])
        .arg(format!("HOME={}", v.home.display()))
        .arg(format!("LD_PRELOAD={}", agent.display()))
        .arg(format!("STASIS_COORD_ADDR=tcp:127.0.0.1:{port}"))
        .arg(format!("STASIS_COORD_SECRET={secret}"))
        .arg(&st.prog)
        .args(["60", "50"])
        .current_dir(&v.home);
    let mut app = Proc::spawn(&st.sb, &st.sb.label("victim"), cmd, Out::Pipe);
    same_as_reference(&st, &mut app, 60);
    let received = fs::read_to_string(&log).unwrap_or_default();
    st.sb.check(received.contains("AUTH"), || format!("the agent never tried the impostor:\n{received}"));
    st.sb
        .check(!received.contains("HELLO") && !received.contains("SUSPENDED") && !received.contains("WRITTEN"), || {
            format!("the agent talked to an impostor that proved nothing:\n{received}")
        });
    let looted: Vec<_> = fs::read_dir(&loot).map(|d| d.flatten().collect()).unwrap_or_default();
    st.sb.check(looted.is_empty(), || format!("the impostor got files: {looted:?}"));

    // A client (stasis command, as launch and restart use it) refuses it too.
    let out = Command::new("runuser")
        .args(["-u", &v.name, "--", "env", "-i"])
        .arg(format!("STASIS_COORD_SECRET={secret}"))
        .arg(format!("TMPDIR={}", v.home.display()))
        .arg(st.bin.join("stasis"))
        .args(["command", "--coord-host", "127.0.0.1", "-p", &port, "--kill"])
        .current_dir(&v.home)
        .output()
        .expect("run stasis command");
    let stderr = String::from_utf8_lossy(&out.stderr);
    st.sb.check(!out.status.success() && stderr.contains("did not prove"), || {
        format!("stasis command did not refuse the impostor ({}):\n{stderr}", out.status)
    });
    let received = fs::read_to_string(&log).unwrap_or_default();
    st.sb.check(!received.contains("COMMAND"), || format!("a command reached the impostor:\n{received}"));
    fake.kill();
}

/// Opens as many TCP connections to the port as it can and keeps each
/// alive with a byte now and then, without ever authenticating.
const FLOOD: &str = r#"
import socket, sys, time
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
conns = []
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.setblocking(False)
        conns.append(s)
    except OSError:
        pass
print("open %d" % len(conns), flush=True)
end = time.time() + seconds
while time.time() < end:
    for s in conns:
        try:
            s.send(b"A")
        except OSError:
            pass
    time.sleep(2)
print("done", flush=True)
"#;

#[test]
fn a_flood_of_connections_does_not_stop_the_owner() {
    let Some(st) = stage("a_flood_of_connections_does_not_stop_the_owner") else { return };
    let (v, a) = (&st.victim, &st.attacker);
    let ck = dir_for(&st.sb, "victim/ck", v.uid, 0o700);
    let ck_s = ck.to_str().unwrap();
    let port = free_port().to_string();
    let mut app = st.launch(v, &["-p", &port, "--ckptdir", ck_s], 400);
    app.wait_lines(&st.sb, 3);
    let mut flood = st.python(a, "flood", FLOOD, &[&port, "1000", "60"]);
    wait_for_line(&st.sb, &mut flood, "open", Duration::from_secs(60));
    // The owner is served at once, over the Unix socket, while it lasts.
    for _ in 0..2 {
        st.ok(v, "status", &["command", "-p", &port, "--status"]);
        st.ok(v, "checkpoint", &["command", "-p", &port, "--checkpoint"]);
    }
    let coordinators = Command::new("pgrep").args(["-u", &v.uid.to_string(), "-f", "stasis coordinator"]).output();
    let pids = String::from_utf8_lossy(&coordinators.expect("pgrep").stdout).into_owned();
    for pid in pids.split_whitespace() {
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        st.sb.check(fds < 200, || format!("the coordinator {pid} holds {fds} descriptors under the flood"));
    }
    flood.kill();
    st.sb.check(committed_generations(&ck).len() >= 2, || "checkpoints did not commit under the flood".into());
    app.kill();
}

#[test]
fn another_users_coordinator_on_the_default_port_captures_nothing() {
    let Some(st) = stage("another_users_coordinator_on_the_default_port_captures_nothing") else { return };
    let _port = default_port_lock();
    let (v, a) = (&st.victim, &st.attacker);
    // The attacker's coordinator holds TCP 7779.
    let theirs = dir_for(&st.sb, "attacker/ck", a.uid, 0o700);
    let mut coord = Proc::spawn(
        &st.sb,
        &st.sb.label("their-coordinator"),
        st.stasis(a, &["coordinator", "-p", "7779", "--ckptdir", theirs.to_str().unwrap()]),
        Out::Pipe,
    );
    std::thread::sleep(Duration::from_millis(500));
    if let Some(s) = coord.poll_exit() {
        st.sb.fail(format!("the other user's coordinator did not start ({s}): {}", coord.stderr_text()));
    }
    // The how-to's line, unchanged, in the victim's batch job.
    let ck = dir_for(&st.sb, "victim/ck", v.uid, 0o700);
    let ck_s = ck.to_str().unwrap();
    let prog = st.prog.to_str().unwrap();
    let mut app = Proc::spawn(
        &st.sb,
        &st.sb.label("dmtcp_launch"),
        st.command(v, &st.bin.join("dmtcp_launch"), &["-i", "60", "--ckptdir", ck_s, prog, "60", "50"]),
        Out::Pipe,
    );
    app.wait_lines(&st.sb, 3);
    st.ok(v, "checkpoint", &["command", "--ckptdir", ck_s, "--checkpoint"]);
    same_as_reference(&st, &mut app, 60);
    st.sb.check(!committed_generations(&ck).is_empty(), || "the victim's checkpoint is not in its directory".into());
    st.sb.check(committed_generations(&theirs).is_empty(), || {
        "the victim checkpointed into the other's directory".into()
    });
    coord.kill();
}
