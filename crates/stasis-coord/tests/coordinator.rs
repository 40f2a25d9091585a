//! The coordinator against fake agents: threads that speak the protocol
//! over the Unix socket and write dummy image files.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use stasis_coord::{CoordConfig, CoordHandle, Coordinator};
use stasis_image::CheckpointDir;
use stasis_proto::Message;

/// What a fake agent does when asked to checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    Write,
    Fail,
    Disconnect,
    Ignore,
}

struct Test {
    _tmp: tempfile::TempDir,
    sock: PathBuf,
    ck: PathBuf,
}

impl Test {
    fn new() -> Test {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run/coord.sock");
        let ck = tmp.path().join("ck");
        Test { _tmp: tmp, sock, ck }
    }

    fn config(&self) -> CoordConfig {
        CoordConfig::new(self.sock.clone(), self.ck.clone())
    }

    fn start(&self) -> CoordHandle {
        self.start_with(|_| {})
    }

    fn start_with(&self, tweak: impl FnOnce(&mut CoordConfig)) -> CoordHandle {
        let mut cfg = self.config();
        tweak(&mut cfg);
        Coordinator::bind(cfg).unwrap().spawn().unwrap()
    }

    fn command(&self, fields: &[(&str, &str)]) -> Message {
        command(&self.sock, fields)
    }

    fn wait_processes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.command(&[("what", "status")]);
            if st.get_parsed::<usize>("processes") == Some(n) {
                return;
            }
            assert!(Instant::now() < deadline, "never saw {n} processes: {st:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn latest(&self) -> Option<u64> {
        CheckpointDir::open_or_create(&self.ck).unwrap().latest().ok().map(|g| g.number)
    }

    /// The directory entries of the checkpoint directory.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.ck)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn command(sock: &Path, fields: &[(&str, &str)]) -> Message {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut m = Message::new("COMMAND");
    for (k, v) in fields {
        m = m.with(k, v);
    }
    s.write_all(m.encode().as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    Message::decode(&line).unwrap()
}

/// A fake agent: greets, then obeys (or not) in a thread of its own.
/// `kills` receives the pid each time KILL arrives.
struct FakeAgent {
    thread: Option<thread::JoinHandle<()>>,
    kills: mpsc::Receiver<i32>,
    stream: UnixStream,
}

impl FakeAgent {
    fn connect(sock: &Path, pid: i32, name: &str, behaviour: Behaviour) -> FakeAgent {
        Self::with_hello(sock, pid, name, behaviour, &[])
    }

    fn with_hello(sock: &Path, pid: i32, name: &str, behaviour: Behaviour, extra: &[(&str, &str)]) -> FakeAgent {
        let stream = UnixStream::connect(sock).unwrap();
        Self::on_stream(stream, pid, name, behaviour, extra)
    }

    fn on_stream(stream: UnixStream, pid: i32, name: &str, behaviour: Behaviour, extra: &[(&str, &str)]) -> FakeAgent {
        let mut hello = Message::new("HELLO")
            .with("pid", pid)
            .with("name", name)
            .with("restored", 0)
            .with("computation", 0)
            .with("generation", 0);
        for (k, v) in extra {
            hello.fields.retain(|(key, _)| key != k);
            hello = hello.with(k, v);
        }
        (&stream).write_all(hello.encode().as_bytes()).unwrap();
        let (tx, kills) = mpsc::channel();
        let name = name.to_string();
        let mine = stream.try_clone().unwrap();
        let thread = thread::spawn(move || agent_loop(mine, pid, &name, behaviour, &tx));
        FakeAgent { thread: Some(thread), kills, stream }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent_loop(stream: UnixStream, pid: i32, name: &str, behaviour: Behaviour, kills: &mpsc::Sender<i32>) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let m = Message::decode(&line).unwrap();
        match m.verb.as_str() {
            "CHECKPOINT" => {
                let generation: u64 = m.get_parsed("generation").unwrap();
                let dir = PathBuf::from(m.get("dir").unwrap());
                assert!(dir.is_absolute(), "{dir:?}");
                assert!(m.get("interval").is_some() && m.get("computation").is_some());
                let reply = match behaviour {
                    Behaviour::Write => {
                        let image = format!("{name}-{pid}.img");
                        // The directory is gone if another agent made the
                        // checkpoint fail first.
                        match std::fs::write(dir.join(&image), b"not really an image\n") {
                            Ok(()) => Message::new("WRITTEN")
                                .with("generation", generation)
                                .with("image", image)
                                .with("bytes", 20)
                                .with("pause_us", 7),
                            Err(e) => Message::new("FAILED").with("generation", generation).with("reason", e),
                        }
                    }
                    Behaviour::Fail => {
                        Message::new("FAILED").with("generation", generation).with("reason", "disk on fire")
                    }
                    Behaviour::Disconnect => {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    Behaviour::Ignore => continue,
                };
                (&stream).write_all(reply.encode().as_bytes()).unwrap();
            }
            "KILL" => {
                let _ = kills.send(pid);
            }
            other => panic!("fake agent got {other}"),
        }
    }
}

fn ok(m: &Message) -> &Message {
    assert_eq!(m.verb, "OK", "{m:?}");
    m
}

fn err(m: &Message) -> String {
    assert_eq!(m.verb, "ERROR", "{m:?}");
    m.get("reason").unwrap().to_string()
}

fn checkpoint(t: &Test) -> Message {
    t.command(&[("what", "checkpoint")])
}

#[test]
fn two_agents_commit_a_generation_that_lists_both() {
    let t = Test::new();
    let _coord = t.start();
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    let _b = FakeAgent::connect(&t.sock, 102, "beta", Behaviour::Write);
    t.wait_processes(2);
    let reply = checkpoint(&t);
    ok(&reply);
    assert_eq!(reply.get_parsed::<u64>("generation"), Some(1));
    assert_eq!(reply.get_parsed::<usize>("processes"), Some(2));
    let dir = PathBuf::from(reply.get("dir").unwrap());
    assert!(dir.is_dir(), "{dir:?}");
    assert_eq!(t.latest(), Some(1));
    let mut images: Vec<String> = stasis_image::resolve_restart_target(&t.ck)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    images.sort();
    assert_eq!(images, ["alpha-101.img", "beta-102.img"]);

    // The agents' statistics show in the status.
    let st = ok(&t.command(&[("what", "status")])).clone();
    assert_eq!(st.get("generation"), Some("1"));
    assert_ne!(st.get("last_checkpoint"), Some("0"));
    assert_eq!(st.get("proc.0.pause_us"), Some("7"));
    assert_eq!(st.get("proc.1.generation"), Some("1"));

    // A second one, then a third: older generations are pruned to keep = 2.
    assert_eq!(ok(&checkpoint(&t)).get("generation"), Some("2"));
    assert_eq!(ok(&checkpoint(&t)).get("generation"), Some("3"));
    assert_eq!(t.latest(), Some(3));
    assert!(!t.entries().iter().any(|e| e.contains("000001")), "{:?}", t.entries());
}

#[test]
fn a_failed_agent_aborts_and_the_previous_generation_stays() {
    let t = Test::new();
    let _coord = t.start();
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    ok(&checkpoint(&t));
    let before = t.entries();

    let _b = FakeAgent::connect(&t.sock, 102, "beta", Behaviour::Fail);
    t.wait_processes(2);
    let why = err(&checkpoint(&t));
    assert!(why.contains("102") && why.contains("beta") && why.contains("disk on fire"), "{why}");
    assert_eq!(t.latest(), Some(1));
    assert_eq!(t.entries(), before, "the aborted generation left something");

    let st = t.command(&[("what", "status")]);
    assert_eq!(st.get("generation"), Some("1"));
    assert!(st.get("last_error").is_some_and(|e| e.contains("disk on fire")), "{st:?}");
    assert_eq!(st.get("state"), Some("running"));
}

#[test]
fn a_disconnecting_agent_aborts() {
    let t = Test::new();
    let _coord = t.start();
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    ok(&checkpoint(&t));
    let _b = FakeAgent::connect(&t.sock, 102, "beta", Behaviour::Disconnect);
    t.wait_processes(2);
    let why = err(&checkpoint(&t));
    assert!(why.contains("102") && why.contains("disconnected"), "{why}");
    assert_eq!(t.latest(), Some(1));
    // The one that is left checkpoints alone; numbers are not reused.
    t.wait_processes(1);
    let reply = checkpoint(&t);
    assert_eq!(ok(&reply).get("generation"), Some("3"));
}

#[test]
fn a_silent_agent_times_out() {
    let t = Test::new();
    let _coord = t.start_with(|c| c.checkpoint_timeout = Duration::from_millis(300));
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    let _b = FakeAgent::connect(&t.sock, 102, "beta", Behaviour::Ignore);
    t.wait_processes(2);
    let why = err(&checkpoint(&t));
    assert!(why.contains("timed out") && why.contains("102") && !why.contains("101"), "{why}");
    assert_eq!(t.latest(), None);
    assert!(t.entries().is_empty(), "{:?}", t.entries());
}

#[test]
fn no_process_no_checkpoint() {
    let t = Test::new();
    let _coord = t.start();
    assert_eq!(err(&checkpoint(&t)), "no process connected");
}

#[test]
fn the_interval_timer_checkpoints() {
    let t = Test::new();
    let _coord = t.start_with(|c| c.interval_s = 1);
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.latest().unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "no interval checkpoint");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn interval_and_status_commands() {
    let t = Test::new();
    let _coord = t.start();
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    let _b = FakeAgent::connect(&t.sock, 102, "beta", Behaviour::Write);
    t.wait_processes(2);
    let st = ok(&t.command(&[("what", "status")])).clone();
    assert_eq!(st.get("state"), Some("running"));
    assert_eq!(st.get("interval"), Some("0"));
    assert_eq!(st.get("generation"), Some("0"));
    assert_eq!(st.get("last_checkpoint"), Some("0"));
    assert_eq!(st.get("computation").map(str::len), Some(16));
    let mut names = [st.get("proc.0.name").unwrap(), st.get("proc.1.name").unwrap()];
    names.sort();
    assert_eq!(names, ["alpha", "beta"]);

    assert_eq!(ok(&t.command(&[("what", "interval"), ("seconds", "1")])).get("interval"), Some("1"));
    assert_eq!(t.command(&[("what", "status")]).get("interval"), Some("1"));
    // The timer, switched on by the command, checkpoints.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.latest().is_none() {
        assert!(Instant::now() < deadline, "no interval checkpoint");
        thread::sleep(Duration::from_millis(50));
    }
    ok(&t.command(&[("what", "interval"), ("seconds", "0")]));

    assert!(err(&t.command(&[("what", "interval"), ("seconds", "soon")])).contains("seconds="));
    assert!(err(&t.command(&[("what", "interval")])).contains("seconds="));
    assert!(err(&t.command(&[("what", "dance")])).contains("unknown command"));
    assert!(err(&t.command(&[])).contains("what="));
}

#[test]
fn kill_reaches_every_agent() {
    let t = Test::new();
    let _coord = t.start();
    let a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    let b = FakeAgent::connect(&t.sock, 102, "beta", Behaviour::Write);
    t.wait_processes(2);
    assert_eq!(ok(&t.command(&[("what", "kill")])).get("processes"), Some("2"));
    let timeout = Duration::from_secs(5);
    assert_eq!(a.kills.recv_timeout(timeout), Ok(101));
    assert_eq!(b.kills.recv_timeout(timeout), Ok(102));
}

#[test]
fn requests_during_a_checkpoint_wait_for_the_next_one() {
    let t = Test::new();
    let _coord = t.start();
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let sock = t.sock.clone();
            thread::spawn(move || command(&sock, &[("what", "checkpoint")]))
        })
        .collect();
    let mut generations: Vec<u64> =
        clients.into_iter().map(|c| ok(&c.join().unwrap()).get_parsed("generation").unwrap()).collect();
    generations.sort();
    generations.dedup();
    // Never more checkpoints than requests, and at least one.
    assert!(!generations.is_empty() && generations.len() <= 6, "{generations:?}");
    assert_eq!(t.latest(), generations.last().copied());
}

#[test]
fn a_restored_agent_brings_its_computation_and_generation() {
    let t = Test::new();
    let mut coord = Coordinator::bind(t.config()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    coord.adopt_agent(ours);
    let coord = coord.spawn().unwrap();
    let _a = FakeAgent::on_stream(
        theirs,
        4242,
        "restored",
        Behaviour::Write,
        &[("restored", "1"), ("computation", "00000000deadbeef"), ("generation", "7")],
    );
    t.wait_processes(1);
    assert_eq!(coord.computation_id(), 0xdead_beef);
    let st = t.command(&[("what", "status")]);
    assert_eq!(st.get("computation"), Some("00000000deadbeef"));
    assert_eq!(st.get("proc.0.restored"), Some("1"));
    assert_eq!(ok(&checkpoint(&t)).get("generation"), Some("8"));
}

#[test]
fn a_configured_computation_id_is_used() {
    let t = Test::new();
    let coord = t.start_with(|c| c.computation_id = Some(0x1234));
    assert_eq!(coord.computation_id(), 0x1234);
    assert_eq!(t.command(&[("what", "status")]).get("computation"), Some("0000000000001234"));
}

#[test]
fn bad_lines_get_an_error_and_the_coordinator_carries_on() {
    let t = Test::new();
    let _coord = t.start();
    for garbage in ["hello there\n", "NOPE x=1\n", "HELLO pid=-3\n", "COMMAND what=status junk\n", "\u{1}\n"] {
        let s = UnixStream::connect(&t.sock).unwrap();
        (&s).write_all(garbage.as_bytes()).unwrap();
        let mut reader = BufReader::new(&s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("ERROR reason="), "{garbage:?} got {line:?}");
        line.clear();
        assert_eq!(reader.read_line(&mut line).unwrap(), 0, "{garbage:?}: not closed");
    }
    // A line that never ends is cut off at MAX_LINE.
    let s = UnixStream::connect(&t.sock).unwrap();
    let _ = (&s).write_all(&vec![b'A'; stasis_proto::MAX_LINE + 10]);
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(err(&Message::decode(&line).unwrap()).contains("longer than"), "{line:?}");

    // An agent that says something odd is dropped; the others stay.
    let _a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let odd = UnixStream::connect(&t.sock).unwrap();
    (&odd).write_all(b"HELLO pid=5 name=odd\nCOMMAND what=status\n").unwrap();
    let mut line = String::new();
    BufReader::new(&odd).read_line(&mut line).unwrap();
    assert!(line.starts_with("ERROR"), "{line:?}");
    t.wait_processes(1);
    ok(&checkpoint(&t));
}

#[test]
fn a_late_answer_to_an_abandoned_checkpoint_is_ignored() {
    let t = Test::new();
    let _coord = t.start_with(|c| c.checkpoint_timeout = Duration::from_millis(200));
    let raw = UnixStream::connect(&t.sock).unwrap();
    (&raw).write_all(b"HELLO pid=300 name=slow restored=0 computation=0 generation=0\n").unwrap();
    t.wait_processes(1);
    assert!(err(&checkpoint(&t)).contains("timed out"));
    let mut reader = BufReader::new(&raw);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let first = Message::decode(&line).unwrap();
    // Answer the first request late, while a second one is running.
    let sock = t.sock.clone();
    let second = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    line.clear();
    reader.read_line(&mut line).unwrap();
    let next = Message::decode(&line).unwrap();
    assert_ne!(next.get("generation"), first.get("generation"));
    let late = Message::new("WRITTEN").with("generation", first.get("generation").unwrap()).with("image", "x.img");
    (&raw).write_all(late.encode().as_bytes()).unwrap();
    assert!(err(&second.join().unwrap()).contains("timed out"));
    assert_eq!(t.latest(), None);
}

#[test]
fn an_image_that_is_not_there_aborts() {
    let t = Test::new();
    let _coord = t.start();
    let raw = UnixStream::connect(&t.sock).unwrap();
    (&raw).write_all(b"HELLO pid=300 name=liar\n").unwrap();
    t.wait_processes(1);
    let sock = t.sock.clone();
    let client = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    let mut line = String::new();
    BufReader::new(&raw).read_line(&mut line).unwrap();
    let m = Message::decode(&line).unwrap();
    let answer =
        Message::new("WRITTEN").with("generation", m.get("generation").unwrap()).with("image", "../escape.img");
    (&raw).write_all(answer.encode().as_bytes()).unwrap();
    let why = err(&client.join().unwrap());
    assert!(why.contains("not a plain file name"), "{why}");
    assert_eq!(t.latest(), None);
}

#[test]
fn a_second_coordinator_is_refused_and_shutdown_removes_the_socket() {
    let t = Test::new();
    let coord = t.start();
    let e = Coordinator::bind(t.config()).err().unwrap();
    assert!(e.to_string().contains("already listening"), "{e}");
    assert!(t.sock.exists());
    coord.shutdown();
    assert!(!t.sock.exists());
    // The path is free again.
    let again = t.start();
    drop(again);
    assert!(!t.sock.exists());
}

#[test]
fn shutdown_answers_a_waiting_client_and_releases_agents() {
    let t = Test::new();
    let coord = t.start();
    let a = FakeAgent::connect(&t.sock, 101, "alpha", Behaviour::Ignore);
    t.wait_processes(1);
    let sock = t.sock.clone();
    let client = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.command(&[("what", "status")]).get("state") != Some("checkpointing") {
        assert!(Instant::now() < deadline, "the checkpoint never started");
        thread::sleep(Duration::from_millis(10));
    }
    coord.shutdown();
    assert!(err(&client.join().unwrap()).contains("shutting down"));
    // The agent saw its connection end.
    drop(a);
    assert_eq!(t.latest(), None);
    assert!(t.entries().is_empty(), "{:?}", t.entries());
}
