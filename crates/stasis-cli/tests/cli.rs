//! The `stasis` command line without checkpoints: usage errors, exit
//! statuses, signal forwarding, and `stasis command` against a coordinator
//! run in this test with a fake agent. (tests/e2e.rs checkpoints and
//! restarts real programs.)

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use stasis_coord::{CoordConfig, CoordHandle, Coordinator};
use stasis_proto::Message;

fn stasis() -> Command {
    let mut cmd = Command::new(support::stasis());
    cmd.stdin(Stdio::null()).env_remove("STASIS_COORD_SOCKET").env_remove("STASIS_COORD_PORT");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run stasis")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit 1 and one line "stasis: ..." on stderr that contains `what`.
#[track_caller]
fn refused(o: &Output, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{:?}: {err}", o.status);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("stasis: ") && err.contains(what), "{err}");
}

/// A temporary directory with a short path (socket paths are limited).
fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("stasis-cli-").tempdir_in("/tmp").unwrap()
}

#[test]
fn usage_errors_are_one_line_and_exit_1() {
    for args in [
        &[][..],
        &["launch"],
        &["launch", "-h", "host", "prog"],
        &["launch", "--keep", "0", "true"],
        &["command", "-c", "-k"],
        &["command", "-i", "later"],
        &["restart"],
        &["inspect"],
        &["frobnicate"],
    ] {
        let o = run(stasis().args(args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("stasis: "), "{args:?}: {err}");
    }
    let o = run(stasis().args(["launch", "--help"]));
    assert!(o.status.success() && stdout(&o).contains("PROGRAM [ARGS]..."), "{o:?}");
}

#[test]
fn launch_exits_as_the_program_did() {
    let t = tmp();
    let launch = |script: &str| {
        run(stasis()
            .current_dir(t.path())
            .arg("launch")
            .arg("--ckptdir")
            .arg(t.path().join("ck"))
            .arg("--coord-socket")
            .arg(t.path().join("c.sock"))
            .args(["--", "sh", "-c", script]))
    };
    assert_eq!(launch("exit 0").status.code(), Some(0));
    let o = launch("echo out; echo err >&2; exit 7");
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    // Killed by a signal: so is stasis, by the same one.
    let o = launch("kill -TERM $$");
    assert_eq!(o.status.signal(), Some(libc::SIGTERM), "{o:?}");
    let o = launch("kill -SEGV $$");
    assert_eq!(o.status.signal(), Some(libc::SIGSEGV), "{o:?}");
    assert!(!o.status.core_dumped());
    // The program saw its environment, and the socket is gone afterwards.
    let o = launch("echo \"$STASIS_COORD_SOCKET\"; echo \"$LD_PRELOAD\"");
    let text = stdout(&o);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(t.path().join("c.sock").to_str().unwrap()));
    assert!(lines.next().unwrap().ends_with("/libstasis_agent.so"), "{text}");
    assert!(!t.path().join("c.sock").exists());
    assert!(t.path().join("ck").is_dir());
}

#[test]
fn launch_refuses_cleanly() {
    let t = tmp();
    let sock = t.path().join("c.sock");
    let o = run(stasis().arg("launch").arg("--coord-socket").arg(&sock).arg(t.path().join("no-such-program")));
    assert_eq!(o.status.code(), Some(127), "{o:?}");
    assert!(stderr(&o).starts_with("stasis: cannot run "), "{o:?}");

    // A coordinator already there: --new-coordinator refuses to join it.
    let _other = Coordinator::bind(CoordConfig::new(sock.clone(), t.path().join("ck"))).unwrap().spawn().unwrap();
    let o = run(stasis().arg("launch").arg("--new-coordinator").arg("--coord-socket").arg(&sock).arg("true"));
    refused(&o, "already listening");

    // A socket directory others may write to.
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let o = run(stasis().arg("launch").arg("--coord-socket").arg(open.join("c.sock")).arg("true"));
    refused(&o, "others could replace the socket");

    // No agent next to the binary.
    let alone = t.path().join("bin");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(support::stasis(), alone.join("stasis")).unwrap();
    let o = run(Command::new(alone.join("stasis")).args(["launch", "true"]));
    refused(&o, &alone.join("libstasis_agent.so").display().to_string());
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn launch_passes_signals_on() {
    let t = tmp();
    let ready = t.path().join("ready");
    let script = format!(
        "trap 'echo got USR1' USR1; trap 'echo got TERM; exit 42' TERM; touch {}; \
         while :; do sleep 0.05; done",
        ready.display()
    );
    let mut child = Reaped(
        stasis()
            .arg("launch")
            .arg("--coord-socket")
            .arg(t.path().join("c.sock"))
            .arg("--ckptdir")
            .arg(t.path())
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for("the program to start", || ready.exists());
    let pid = child.0.id() as i32;
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "got USR1\ngot TERM\n");
}

#[test]
fn command_without_a_coordinator() {
    let t = tmp();
    let sock = t.path().join("none.sock");
    let o = run(stasis().arg("command").arg("--coord-socket").arg(&sock).arg("-s"));
    refused(&o, &format!("no coordinator at {} (is the computation running?)", sock.display()));
    // The port names the socket under STASIS_TMPDIR.
    let o = run(stasis().args(["command", "-p", "7123", "-s"]).env("STASIS_TMPDIR", t.path()));
    refused(&o, "coord-7123.sock");
}

/// A coordinator in this process and one fake agent that writes a dummy
/// image when asked and reports KILL.
struct Computation {
    _tmp: tempfile::TempDir,
    sock: PathBuf,
    ck: PathBuf,
    coord: Option<CoordHandle>,
    agent: Option<thread::JoinHandle<Vec<String>>>,
}

impl Computation {
    fn new(agents: usize) -> Computation {
        let t = tmp();
        let sock = t.path().join("run/c.sock");
        let ck = t.path().join("ck");
        let coord = Coordinator::bind(CoordConfig::new(sock.clone(), ck.clone())).unwrap().spawn().unwrap();
        let agent = (agents > 0).then(|| {
            let s = UnixStream::connect(&sock).unwrap();
            thread::spawn(move || fake_agent(s))
        });
        let c = Computation { _tmp: t, sock, ck, coord: Some(coord), agent };
        if agents > 0 {
            wait_for("the agent", || c.command(&["-s"]).1.contains("processes:       1"));
        }
        c
    }

    /// Runs `stasis command --coord-socket SOCK ARGS`: exit code, stdout, stderr.
    fn command(&self, args: &[&str]) -> (i32, String, String) {
        let o = run(stasis().arg("command").arg("--coord-socket").arg(&self.sock).args(args));
        (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
    }
}

impl Drop for Computation {
    fn drop(&mut self) {
        drop(self.coord.take());
        if let Some(a) = self.agent.take() {
            let _ = a.join();
        }
    }
}

/// Goes through the checkpoint's phases and writes a one-byte file as its
/// image; returns the verbs it received.
fn fake_agent(s: UnixStream) -> Vec<String> {
    let mut dir: Option<PathBuf> = None;
    let mut computation = 0u64;
    let hello = Message::new("HELLO")
        .with("pid", 4242)
        .with("name", "fake")
        .with("restored", 0)
        .with("computation", 0)
        .with("generation", 0);
    (&s).write_all(hello.encode().as_bytes()).unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(&s).lines() {
        let Ok(line) = line else { break };
        let m = Message::decode(&line).unwrap();
        let generation = m.get("generation").unwrap_or("0").to_string();
        let reply = match m.verb.as_str() {
            "SUSPEND" => {
                dir = Some(PathBuf::from(m.get("dir").unwrap()));
                computation = u64::from_str_radix(m.get("computation").unwrap_or("0"), 16).unwrap_or(0);
                Some(Message::new("SUSPENDED").with("generation", &generation))
            }
            "SNAPSHOT" => Some(Message::new("SNAPSHOTTED").with("generation", &generation).with("pause_us", 5)),
            // After SNAPSHOTTED, RESUME means "write the image".
            "RESUME" if dir.is_some() => {
                // A small real image: the coordinator reads its header and
                // metadata to vouch for it in the MANIFEST.
                let meta = stasis_image::ProcessMeta {
                    pid: 4242,
                    name: "fake".into(),
                    generation: generation.parse().unwrap(),
                    computation_id: computation,
                    threads: vec![stasis_image::Thread {
                        tid: 4242,
                        ucontext: vec![0; stasis_image::UCONTEXT_LEN],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let w = stasis_image::ImageWriter::create(&dir.take().unwrap().join("fake.img")).unwrap();
                w.finish(meta).unwrap();
                Some(Message::new("WRITTEN").with("generation", &generation).with("image", "fake.img").with("bytes", 1))
            }
            _ => None,
        };
        if let Some(reply) = reply {
            (&s).write_all(reply.encode().as_bytes()).unwrap();
        }
        // A real agent's process dies, which closes its connection: the
        // coordinator waits for that before it answers a kill.
        let killed = m.verb == "KILL";
        seen.push(m.verb);
        if killed {
            break;
        }
    }
    seen
}

#[test]
fn command_checkpoint_status_interval_kill() {
    let c = Computation::new(1);
    let (code, out, err) = c.command(&["--checkpoint"]);
    assert_eq!(code, 0, "{err}");
    let gen1 = c.ck.canonicalize().unwrap().join("gen-000001");
    assert_eq!(out, format!("checkpoint committed: generation 1 in {} (1 process)\n", gen1.display()));
    assert!(gen1.join("fake.img").is_file());
    let (code, out, _) = c.command(&["--bcheckpoint", "--json"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("{\"ok\":true,\"generation\":2,\"dir\":\""), "{out}");

    let (code, out, _) = c.command(&["-s"]);
    assert_eq!(code, 0);
    for want in
        ["state:           running", "interval:        none", "generation 2, ", "pid 4242 fake generation=2 bytes=1"]
    {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let (_, out, _) = c.command(&["-s", "--json"]);
    assert!(
        out.contains("\"process_list\":[{\"pid\":4242,\"name\":\"fake\",\"restored\":0,\"generation\":2,\"bytes\":1}]"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);

    let (code, out, _) = c.command(&["-i", "90"]);
    assert_eq!((code, out.as_str()), (0, "checkpoint interval: 90 s\n"));
    assert!(c.command(&["-s"]).1.contains("interval:        90 s"));
    let (code, out, _) = c.command(&["--interval", "0"]);
    assert_eq!((code, out.as_str()), (0, "checkpoint interval: none (checkpoints on request only)\n"));

    let (code, out, _) = c.command(&["-k"]);
    assert_eq!((code, out.as_str()), (0, "kill sent to 1 process(es)\n"));
    let mut c = c;
    drop(c.coord.take());
    let seen = c.agent.take().unwrap().join().unwrap();
    assert_eq!(seen.iter().filter(|v| *v == "SUSPEND").count(), 2, "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("KILL"), "{seen:?}");
}

#[test]
fn command_reports_an_error_answer() {
    let c = Computation::new(0);
    let (code, out, err) = c.command(&["-c"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "stasis: checkpoint failed: no process connected\n");
    let (code, out, err) = c.command(&["-c", "--json"]);
    assert_eq!(code, 1);
    assert_eq!(out, "{\"ok\":false,\"reason\":\"no process connected\"}\n");
    assert_eq!(err, "");
}

#[test]
fn inspect_and_restart_refuse_what_is_not_an_image() {
    let t = tmp();
    let junk = t.path().join("junk.img");
    std::fs::write(&junk, b"not an image at all").unwrap();
    refused(&run(stasis().arg("inspect").arg(&junk)), "junk.img");
    refused(&run(stasis().arg("inspect").arg(t.path().join("missing.img"))), "missing.img");
    let sock = t.path().join("c.sock");
    refused(&run(stasis().arg("restart").arg("--coord-socket").arg(&sock).arg(&junk)), "junk.img");
    refused(&run(stasis().arg("restart").arg("--coord-socket").arg(&sock).arg(t.path())), "no committed checkpoint");
    assert!(!sock.exists());
}

// ---------------------------------------------------------------------------
// Where the coordinator is

/// `stasis` with nothing in the environment that names a coordinator, and
/// the per-user socket directory under `tmpdir`.
fn unnamed(tmpdir: &std::path::Path) -> Command {
    let mut cmd = stasis();
    for var in ["STASIS_COORD_ADDR", "STASIS_COORD_HOST", "STASIS_COORD_SECRET"] {
        cmd.env_remove(var);
    }
    cmd.env("STASIS_TMPDIR", tmpdir);
    cmd
}

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Waits for a file to hold a line; returns it.
fn first_line(path: &std::path::Path) -> String {
    let mut line = String::new();
    wait_for(&format!("a line in {}", path.display()), || {
        line = std::fs::read_to_string(path).unwrap_or_default();
        line.ends_with('\n')
    });
    line.trim_end().to_string()
}

#[test]
fn a_launch_naming_no_coordinator_gets_one_of_its_own() {
    let t = tmp();
    let ck = t.path().join("ck");
    let launch = |quiet: bool| {
        let mut cmd = unnamed(t.path());
        cmd.arg("launch").arg("--ckptdir").arg(&ck);
        if quiet {
            cmd.arg("-q");
        }
        run(cmd.args(["--", "sh", "-c", "echo \"$STASIS_COORD_ADDR\""]))
    };
    let o = launch(false);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let addr = stdout(&o);
    let sock = addr.trim_end().strip_prefix("unix:").unwrap_or_else(|| panic!("{addr}")).to_string();
    // A Unix socket named for the checkpoint directory, under STASIS_TMPDIR.
    let dir = t.path().join(format!("stasis-{}", uid()));
    let name = sock.strip_prefix(&format!("{}/", dir.display())).unwrap_or_else(|| panic!("{sock}"));
    assert!(name.starts_with("ckpt-") && name.ends_with(".sock") && name.len() == "ckpt-.sock".len() + 16, "{name}");
    // It says where, once, and how to command it (the socket directory
    // too, which stasis command finds only where it is told).
    assert_eq!(
        stderr(&o),
        format!(
            "stasis: this computation's coordinator: {sock} (stasis command --tmpdir {} --ckptdir {} ...)\n",
            t.path().display(),
            ck.display()
        )
    );
    // The same directory, the same socket; quiet says nothing.
    let o = launch(true);
    assert_eq!((stdout(&o), stderr(&o)), (addr, String::new()));
}

#[test]
fn one_checkpoint_directory_one_computation() {
    let t = tmp();
    let ck = t.path().join("ck");
    let (sockfile, stop) = (t.path().join("sock.txt"), t.path().join("stop"));
    let script = format!(
        "echo \"$STASIS_COORD_SOCKET\" > {}; while [ ! -e {} ]; do sleep 0.05; done",
        sockfile.display(),
        stop.display()
    );
    let mut first = Reaped(
        unnamed(t.path())
            .arg("launch")
            .arg("-q")
            .arg("--ckptdir")
            .arg(&ck)
            .args(["--", "sh", "-c", &script])
            .spawn()
            .unwrap(),
    );
    let sock = first_line(&sockfile);

    // A second computation into the same directory is refused...
    let o = run(unnamed(t.path()).arg("launch").arg("--ckptdir").arg(&ck).arg("true"));
    refused(
        &o,
        &format!(
            "another computation already checkpoints into {} (its coordinator is at {sock}): choose another \
             --ckptdir, or add --join-coordinator to join it",
            ck.canonicalize().unwrap().display()
        ),
    );
    let o = run(unnamed(t.path()).arg("launch").arg("--new-coordinator").arg("--ckptdir").arg(&ck).arg("true"));
    refused(&o, "another computation already checkpoints into");
    // ...unless it asks to join.
    let o = run(unnamed(t.path()).args(["launch", "-j", "--ckptdir"]).arg(&ck).args([
        "sh",
        "-c",
        "echo \"$STASIS_COORD_SOCKET\"",
    ]));
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), format!("{sock}\n")), "{o:?}");
    assert_eq!(stderr(&o), "");

    // stasis command finds it by its directory, or from inside it.
    let o = run(unnamed(t.path()).args(["command", "-s", "--ckptdir"]).arg(&ck));
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains(&format!("socket:          {sock}\n")), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("checkpoint dir:  {}\n", ck.canonicalize().unwrap().display())));
    let o = run(unnamed(t.path()).args(["command", "-s"]).current_dir(&ck));
    assert!(o.status.success() && stdout(&o).contains(&sock), "{o:?}");
    // From elsewhere, with nothing named: what was tried.
    let o = run(unnamed(t.path()).args(["command", "-s"]).current_dir(t.path()));
    refused(&o, "the socket of ");
    assert!(stderr(&o).contains(", nor at ") && stderr(&o).contains("coord-7779.sock"), "{}", stderr(&o));
    let o = run(unnamed(t.path()).args(["command", "-s", "--ckptdir"]).arg(t.path().join("elsewhere")));
    refused(&o, "no coordinator at ");

    std::fs::write(&stop, b"").unwrap();
    assert!(first.0.wait().unwrap().success());
    // Its coordinator went with it: the directory is free again.
    let o = run(unnamed(t.path()).arg("launch").arg("-q").arg("--ckptdir").arg(&ck).arg("true"));
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn a_coordinator_listens_on_tcp_only_when_asked() {
    let t = tmp();
    let ck = t.path().join("ck");
    // No options: port 7779's socket, no TCP.
    let plain = Reaped(unnamed(t.path()).arg("coordinator").arg("--ckptdir").arg(&ck).spawn().unwrap());
    let sock = t.path().join(format!("stasis-{}/coord-7779.sock", uid()));
    wait_for("the coordinator's socket", || sock.exists());
    let o = run(unnamed(t.path()).args(["command", "-s", "--coord-socket"]).arg(&sock));
    assert!(o.status.success(), "{o:?}");
    assert!(!stdout(&o).contains("port:"), "{}", stdout(&o));
    assert_eq!(support::tcp_listening(plain.0.id()), Vec::<String>::new());
    drop(plain);

    // A port: TCP on 127.0.0.1 only, not every interface.
    let pf = t.path().join("port");
    let coord = Reaped(
        unnamed(t.path())
            .args(["coordinator", "-p", "0", "--port-file"])
            .arg(&pf)
            .arg("--ckptdir")
            .arg(&ck)
            .spawn()
            .unwrap(),
    );
    let port: u16 = first_line(&pf).parse().unwrap();
    assert_eq!(support::tcp_listening(coord.0.id()), [format!("127.0.0.1:{port}")]);
    drop(coord);

    // launch -p 0 starts one likewise, and says where.
    let pf2 = t.path().join("port2");
    let o = run(unnamed(t.path())
        .args(["launch", "-p", "0", "--port-file"])
        .arg(&pf2)
        .arg("--ckptdir")
        .arg(&ck)
        .arg("true"));
    assert!(o.status.success(), "{o:?}");
    let port = first_line(&pf2);
    assert!(
        stderr(&o).contains(&format!(
            " and TCP 127.0.0.1:{port} (stasis command --tmpdir {} -p {port} ...)",
            t.path().display()
        )),
        "{o:?}"
    );
}

#[test]
fn a_named_port_held_by_another_coordinator_is_not_joined() {
    let t = tmp();
    let (theirs, ours) = (t.path().join("theirs"), t.path().join("ours"));
    std::fs::create_dir(&theirs).unwrap();
    let pf = t.path().join("port");
    let _other = Reaped(
        unnamed(&theirs)
            .args(["coordinator", "-p", "0", "--port-file"])
            .arg(&pf)
            .arg("--ckptdir")
            .arg(&theirs)
            .spawn()
            .unwrap(),
    );
    let port = first_line(&pf);
    // Its socket is elsewhere: over TCP it is not this computation's.
    let o = run(unnamed(t.path()).args(["launch", "-p", &port, "--ckptdir"]).arg(&ours).arg("true"));
    refused(
        &o,
        &format!("TCP port {port} (127.0.0.1:{port}) is taken by something that is not this computation's coordinator"),
    );
    assert!(stderr(&o).contains("choose another port with -p, or leave -p out"), "{}", stderr(&o));
    // Its socket answers (the same user), and it checkpoints elsewhere but
    // has no process: the launch's --ckptdir is where its checkpoints go
    // from now on, as with DMTCP (with a process, it is refused: e2e
    // dmtcp_options).
    let o = run(unnamed(&theirs).args(["launch", "-p", &port, "--ckptdir"]).arg(&ours).arg("true"));
    assert!(o.status.success(), "{o:?}");
    let o = run(unnamed(&theirs).args(["command", "-p", &port, "--status"]));
    assert!(stdout(&o).contains(&ours.canonicalize().unwrap().display().to_string()), "{o:?}");
    // With nothing named, neither matters.
    let o = run(unnamed(&theirs).args(["launch", "-q", "--ckptdir"]).arg(&ours).arg("true"));
    assert!(o.status.success(), "{o:?}");
}
