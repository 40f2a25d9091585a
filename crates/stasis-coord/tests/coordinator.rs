//! The coordinator against fake agents: threads that speak the protocol
//! over the Unix socket (or TCP) and write dummy image files.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use stasis_coord::client::{self, Addr, ClientError};
use stasis_coord::secret::Secret;
use stasis_coord::stream::Stream;
use stasis_coord::{CoordConfig, CoordHandle, Coordinator, End, EndWhen};
use stasis_image::CheckpointDir;
use stasis_proto::Message;

/// What a fake agent does when asked to checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    /// Suspends, snapshots, writes a dummy image.
    Write,
    /// Answers SUSPEND with FAILED.
    FailSuspend,
    /// Suspends, then answers SNAPSHOT with FAILED.
    FailSnapshot,
    /// Goes all the way, then answers FAILED instead of WRITTEN.
    FailWrite,
    /// Closes its connection on SUSPEND.
    Disconnect,
    /// Suspends, then closes its connection on SNAPSHOT.
    DisconnectOnSnapshot,
    /// Never answers SUSPEND.
    Ignore,
}

/// The children a fake agent names in its SUSPENDED: `first` in its answer
/// to SUSPEND, `relisted` in its answers to CHILDREN.
#[derive(Clone, Default, Debug)]
struct Children {
    first: Vec<i32>,
    relisted: Vec<i32>,
}

/// Events of every fake agent of a test, in the order they happened:
/// "PID got VERB" or "PID sent VERB".
type Log = Arc<Mutex<Vec<String>>>;

struct Test {
    _tmp: tempfile::TempDir,
    sock: PathBuf,
    ck: PathBuf,
    log: Log,
}

impl Test {
    fn new() -> Test {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run/coord.sock");
        let ck = tmp.path().join("ck");
        Test { _tmp: tmp, sock, ck, log: Log::default() }
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

    fn agent(&self, pid: i32, name: &str, behaviour: Behaviour) -> FakeAgent {
        self.parent(pid, name, behaviour, Children::default())
    }

    /// An agent whose process has children.
    fn parent(&self, pid: i32, name: &str, behaviour: Behaviour, children: Children) -> FakeAgent {
        let stream = UnixStream::connect(&self.sock).unwrap();
        FakeAgent::on_stream_with(Stream::Unix(stream), pid, name, behaviour, children, &[], &self.log)
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

    fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the events after the `after`-th hold `e`.
    fn wait_event(&self, after: usize, e: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.events().iter().skip(after).any(|x| x == e) {
            assert!(Instant::now() < deadline, "no {e:?} in {:?}", self.events());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn request(fields: &[(&str, &str)]) -> Message {
    let mut m = Message::new("COMMAND");
    for (k, v) in fields {
        m = m.with(k, v);
    }
    m
}

fn command(sock: &Path, fields: &[(&str, &str)]) -> Message {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(request(fields).encode().as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    Message::decode(&line).unwrap()
}

/// A fake agent: greets, then obeys (or not) in a thread of its own.
/// `kills` receives the pid each time KILL arrives.
struct FakeAgent {
    thread: Option<thread::JoinHandle<()>>,
    kills: mpsc::Receiver<i32>,
    coordinator: mpsc::Receiver<String>,
    stream: Arc<Stream>,
}

impl FakeAgent {
    fn on_stream(
        stream: Stream,
        pid: i32,
        name: &str,
        behaviour: Behaviour,
        extra: &[(&str, &str)],
        log: &Log,
    ) -> FakeAgent {
        FakeAgent::on_stream_with(stream, pid, name, behaviour, Children::default(), extra, log)
    }

    fn on_stream_with(
        stream: Stream,
        pid: i32,
        name: &str,
        behaviour: Behaviour,
        children: Children,
        extra: &[(&str, &str)],
        log: &Log,
    ) -> FakeAgent {
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
        let (addr_tx, coordinator) = mpsc::channel();
        let name = name.to_string();
        let stream = Arc::new(stream);
        let mine = stream.clone();
        let log = log.clone();
        let thread = thread::spawn(move || agent_loop(&mine, pid, &name, (behaviour, &children), &tx, &addr_tx, &log));
        FakeAgent { thread: Some(thread), kills, coordinator, stream }
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

fn agent_loop(
    stream: &Stream,
    pid: i32,
    name: &str,
    (behaviour, children): (Behaviour, &Children),
    kills: &mpsc::Sender<i32>,
    coordinator: &mpsc::Sender<String>,
    log: &Log,
) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut dir = PathBuf::new();
    let mut computation = 0u64;
    let note = |what: String| log.lock().unwrap().push(what);
    let answer = |m: Message| {
        note(format!("{pid} sent {}", m.verb));
        let _ = (&*stream).write_all(m.encode().as_bytes());
    };
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let m = Message::decode(&line).unwrap();
        // `RESUME hold=1` (checkpoint then kill) logs as "got RESUME hold".
        let held = if m.get("hold") == Some("1") { " hold" } else { "" };
        note(format!("{pid} got {}{held}", m.verb));
        let generation: u64 = m.get_parsed("generation").unwrap_or(0);
        let failed = |why: &str| Message::new("FAILED").with("generation", generation).with("reason", why);
        match m.verb.as_str() {
            "COORDINATOR" => {
                let _ = coordinator.send(m.get("addr").unwrap().to_string());
            }
            "SUSPEND" => {
                dir = PathBuf::from(m.get("dir").unwrap());
                computation = u64::from_str_radix(m.get("computation").unwrap_or("0"), 16).unwrap_or(0);
                assert!(dir.is_absolute(), "{dir:?}");
                assert!(m.get("interval").is_some() && m.get("computation").is_some());
                match behaviour {
                    Behaviour::FailSuspend => answer(failed("threads would not stop")),
                    Behaviour::Disconnect => {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    Behaviour::Ignore => {}
                    _ => answer(suspended(generation, &children.first)),
                }
            }
            // Asked only while suspended, after naming children.
            "CHILDREN" => answer(suspended(generation, &children.relisted)),
            "SNAPSHOT" => match behaviour {
                Behaviour::FailSnapshot => answer(failed("snapshot went wrong")),
                Behaviour::DisconnectOnSnapshot => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
                _ => answer(Message::new("SNAPSHOTTED").with("generation", generation).with("pause_us", 5)),
            },
            "RESUME" => {
                // Only after SNAPSHOTTED does RESUME mean "write".
                let snapshotted = log.lock().unwrap().iter().rev().find(|e| e.starts_with(&format!("{pid} sent ")))
                    == Some(&format!("{pid} sent SNAPSHOTTED"));
                if !snapshotted {
                    continue;
                }
                if behaviour == Behaviour::FailWrite {
                    answer(failed("disk on fire"));
                    continue;
                }
                let image = format!("{name}-{pid}.img");
                // The directory is gone if another agent made the
                // checkpoint fail first.
                answer(match write_image(&dir.join(&image), pid, name, generation, computation) {
                    Ok(()) => Message::new("WRITTEN")
                        .with("generation", generation)
                        .with("image", image)
                        .with("bytes", 20)
                        .with("pause_us", 7),
                    Err(e) => failed(&e.to_string()),
                });
            }
            "KILL" => {
                let _ = kills.send(pid);
            }
            other => panic!("fake agent got {other}"),
        }
    }
}

/// Writes a small but real image (the coordinator reads its header and
/// metadata to vouch for it in the MANIFEST).
fn write_image(path: &Path, pid: i32, name: &str, generation: u64, computation_id: u64) -> std::io::Result<()> {
    use stasis_image::{Fd, FdKind, ImageWriter, ProcessMeta, Thread, UCONTEXT_LEN};
    let meta = ProcessMeta {
        pid,
        generation,
        computation_id,
        name: name.into(),
        threads: vec![Thread { tid: pid, ucontext: vec![0; UCONTEXT_LEN], ..Default::default() }],
        fds: vec![Fd { fd: 3, cloexec: false, kind: FdKind::Agent, outside_stdio: None }],
        ..Default::default()
    };
    ImageWriter::create(path).and_then(|w| w.finish(meta)).map(drop).map_err(std::io::Error::other)
}

/// A SUSPENDED naming `children` (no field when there are none, as an
/// older agent would send it).
fn suspended(generation: u64, children: &[i32]) -> Message {
    let m = Message::new("SUSPENDED").with("generation", generation);
    if children.is_empty() { m } else { m.with("children", stasis_proto::format_pid_list(children)) }
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

/// The position of the first event equal to `e`.
fn at(events: &[String], e: &str) -> usize {
    events.iter().position(|x| x == e).unwrap_or_else(|| panic!("no {e:?} in {events:?}"))
}

#[test]
fn two_agents_commit_a_generation_that_lists_both() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    let _b = t.agent(102, "beta", Behaviour::Write);
    t.wait_processes(2);
    let reply = checkpoint(&t);
    ok(&reply);
    assert_eq!(reply.get_parsed::<u64>("generation"), Some(1));
    assert_eq!(reply.get_parsed::<usize>("processes"), Some(2));
    let dir = PathBuf::from(reply.get("dir").unwrap());
    assert!(dir.is_dir(), "{dir:?}");
    assert_eq!(t.latest(), Some(1));
    let mut images: Vec<String> = CheckpointDir::open(&t.ck)
        .and_then(|d| d.latest()?.image_paths())
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
    assert!(!t.entries().iter().any(|e| e == "gen-000001"), "{:?}", t.entries());
}

#[test]
fn the_barriers_hold_every_process_at_one_instant() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    let _b = t.agent(102, "beta", Behaviour::Write);
    let _c = t.agent(103, "gamma", Behaviour::Write);
    t.wait_processes(3);
    ok(&checkpoint(&t));
    let ev = t.events();
    for p in [101, 102, 103] {
        for q in [101, 102, 103] {
            // Nobody snapshots before everybody is suspended, and nobody
            // resumes before everybody holds a snapshot.
            assert!(at(&ev, &format!("{p} sent SUSPENDED")) < at(&ev, &format!("{q} got SNAPSHOT")), "{ev:?}");
            assert!(at(&ev, &format!("{p} sent SNAPSHOTTED")) < at(&ev, &format!("{q} got RESUME")), "{ev:?}");
        }
    }
}

#[test]
fn agents_learn_where_to_come_back() {
    let t = Test::new();
    let _coord = t.start();
    let a = t.agent(101, "alpha", Behaviour::Write);
    let addr = a.coordinator.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(Addr::parse(&addr), Some(Addr::Unix(t.sock.clone())), "{addr}");
}

#[test]
fn a_failure_before_the_snapshot_resumes_everyone_and_writes_nothing() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    ok(&checkpoint(&t));
    let before = t.entries();

    let _b = t.agent(102, "beta", Behaviour::FailSuspend);
    t.wait_processes(2);
    let why = err(&checkpoint(&t));
    assert!(why.contains("102") && why.contains("beta") && why.contains("threads would not stop"), "{why}");
    assert_eq!(t.latest(), Some(1));
    assert_eq!(t.entries(), before, "the aborted generation left something");
    // Alpha was suspended for generation 2 and told to resume, never to snapshot.
    let first_done = at(&t.events(), "101 sent WRITTEN");
    t.wait_event(first_done, "101 got RESUME");
    let ev = t.events();
    assert_eq!(ev[first_done..].iter().filter(|e| *e == "101 got SNAPSHOT").count(), 0, "{ev:?}");

    let st = t.command(&[("what", "status")]);
    assert_eq!(st.get("generation"), Some("1"));
    assert!(st.get("last_error").is_some_and(|e| e.contains("threads would not stop")), "{st:?}");
    assert_eq!(st.get("state"), Some("running"));
}

#[test]
fn a_failure_after_the_snapshot_or_at_the_write_aborts() {
    for behaviour in [Behaviour::FailSnapshot, Behaviour::FailWrite] {
        let t = Test::new();
        let _coord = t.start();
        let _a = t.agent(101, "alpha", Behaviour::Write);
        let _b = t.agent(102, "beta", behaviour);
        t.wait_processes(2);
        let why = err(&checkpoint(&t));
        assert!(why.contains("102") && why.contains("beta"), "{behaviour:?}: {why}");
        assert_eq!(t.latest(), None, "{behaviour:?}");
        assert!(t.entries().is_empty(), "{behaviour:?}: {:?}", t.entries());
        // Alpha resumed all the same.
        t.wait_event(0, "101 got RESUME");
    }
}

#[test]
fn an_agent_that_disconnects_once_suspended_aborts() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    ok(&checkpoint(&t));
    let _b = t.agent(102, "beta", Behaviour::DisconnectOnSnapshot);
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
fn an_agent_that_disconnects_before_suspending_leaves_the_round() {
    // Its process exited, or exec'd: the others are checkpointed without it.
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    let _b = t.agent(102, "beta", Behaviour::Disconnect);
    t.wait_processes(2);
    let reply = checkpoint(&t);
    assert_eq!(ok(&reply).get("processes"), Some("1"));
    assert_eq!(images(&t), ["alpha-101.img"]);
    let st = t.command(&[("what", "status")]);
    assert_eq!(st.get("last_error"), None, "{st:?}");
}

/// The image files of the newest generation, sorted.
fn images(t: &Test) -> Vec<String> {
    let mut images: Vec<String> = CheckpointDir::open(&t.ck)
        .and_then(|d| d.latest()?.image_paths())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    images.sort();
    images
}

fn count(events: &[String], e: &str) -> usize {
    events.iter().filter(|x| *x == e).count()
}

#[test]
fn a_child_that_connects_during_the_suspend_joins_the_checkpoint() {
    let t = Test::new();
    let _coord = t.start();
    let both = Children { first: vec![202], relisted: vec![202] };
    let _parent = t.parent(201, "bash", Behaviour::Write, both);
    t.wait_processes(1);
    let sock = t.sock.clone();
    let client = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    // The parent is stopped and names its child, whose agent connects only now.
    t.wait_event(0, "201 sent SUSPENDED");
    let _child = t.agent(202, "sleep", Behaviour::Write);
    let reply = client.join().unwrap();
    assert_eq!(ok(&reply).get("processes"), Some("2"));
    assert_eq!(images(&t), ["bash-201.img", "sleep-202.img"]);
    let ev = t.events();
    assert_eq!(count(&ev, "202 got SUSPEND"), 1, "{ev:?}");
    // Both were stopped before either snapshotted.
    for p in [201, 202] {
        for q in [201, 202] {
            assert!(at(&ev, &format!("{p} sent SUSPENDED")) < at(&ev, &format!("{q} got SNAPSHOT")), "{ev:?}");
        }
    }
}

#[test]
fn a_child_that_died_before_connecting_is_dropped_when_its_parent_relists() {
    let t = Test::new();
    let _coord = t.start();
    let gone = Children { first: vec![202], relisted: vec![] };
    let _parent = t.parent(201, "bash", Behaviour::Write, gone);
    t.wait_processes(1);
    let reply = checkpoint(&t);
    assert_eq!(ok(&reply).get("processes"), Some("1"));
    assert_eq!(images(&t), ["bash-201.img"]);
    let ev = t.events();
    assert!(at(&ev, "201 got CHILDREN") < at(&ev, "201 got SNAPSHOT"), "{ev:?}");
}

#[test]
fn a_child_that_never_connects_fails_the_checkpoint_by_name() {
    let t = Test::new();
    let _coord = t.start_with(|c| c.checkpoint_timeout = Duration::from_millis(1200));
    let _other = t.agent(101, "alpha", Behaviour::Write);
    let stuck = Children { first: vec![202], relisted: vec![202] };
    let _parent = t.parent(201, "bash", Behaviour::Write, stuck);
    t.wait_processes(2);
    let why = err(&checkpoint(&t));
    assert!(why.contains("timed out") && why.contains("process 202") && why.contains("201 (bash)"), "{why}");
    assert!(!why.contains("101"), "{why}");
    assert_eq!(t.latest(), None);
    assert!(t.entries().is_empty(), "{:?}", t.entries());
    // Everyone was resumed, nobody snapshotted.
    t.wait_event(0, "201 got RESUME");
    t.wait_event(0, "101 got RESUME");
    assert_eq!(count(&t.events(), "201 got SNAPSHOT"), 0, "{:?}", t.events());
}

#[test]
fn a_newcomer_after_the_snapshot_waits_for_the_next_checkpoint() {
    let t = Test::new();
    let _coord = t.start();
    let raw = UnixStream::connect(&t.sock).unwrap();
    (&raw).write_all(b"HELLO pid=300 name=slow\n").unwrap();
    t.wait_processes(1);
    let sock = t.sock.clone();
    let client = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    let mut reader = BufReader::new(&raw);
    let m = Message::decode(&next_line(&mut reader, "SUSPEND")).unwrap();
    let g = m.get("generation").unwrap().to_string();
    let dir = PathBuf::from(m.get("dir").unwrap());
    let computation = u64::from_str_radix(m.get("computation").unwrap(), 16).unwrap();
    (&raw).write_all(Message::new("SUSPENDED").with("generation", &g).encode().as_bytes()).unwrap();
    next_line(&mut reader, "SNAPSHOT");
    // Connected (its HELLO counted) once the snapshots began: not in this round.
    let _late = t.agent(301, "late", Behaviour::Write);
    t.wait_processes(2);
    (&raw).write_all(Message::new("SNAPSHOTTED").with("generation", &g).encode().as_bytes()).unwrap();
    next_line(&mut reader, "RESUME");
    write_image(&dir.join("slow.img"), 300, "slow", g.parse().unwrap(), computation).unwrap();
    let answer = Message::new("WRITTEN").with("generation", &g).with("image", "slow.img");
    (&raw).write_all(answer.encode().as_bytes()).unwrap();
    let reply = client.join().unwrap();
    assert_eq!(ok(&reply).get("processes"), Some("1"));
    assert_eq!(count(&t.events(), "301 got SUSPEND"), 0, "{:?}", t.events());
    // It takes part in the next one (alone: the raw agent leaves first).
    drop(reader);
    drop(raw);
    t.wait_processes(1);
    assert_eq!(ok(&checkpoint(&t)).get("processes"), Some("1"));
    assert_eq!(images(&t), ["late-301.img"]);
}

#[test]
fn a_silent_agent_times_out() {
    let t = Test::new();
    let _coord = t.start_with(|c| c.checkpoint_timeout = Duration::from_millis(300));
    let _a = t.agent(101, "alpha", Behaviour::Write);
    let _b = t.agent(102, "beta", Behaviour::Ignore);
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
    assert_eq!(err(&t.command(&[("what", "checkpoint"), ("wait", "started")])), "no process connected");
}

#[test]
fn a_checkpoint_can_be_asked_for_without_waiting_for_it() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let reply = t.command(&[("what", "checkpoint"), ("wait", "started")]);
    assert_eq!(ok(&reply).get("started"), Some("1"));
    assert_eq!(reply.get("generation"), Some("1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.latest() != Some(1) {
        assert!(Instant::now() < deadline, "the started checkpoint never committed");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_interval_timer_checkpoints() {
    let t = Test::new();
    let _coord = t.start_with(|c| c.interval_s = 1);
    let _a = t.agent(101, "alpha", Behaviour::Write);
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
    let _a = t.agent(101, "alpha", Behaviour::Write);
    let _b = t.agent(102, "beta", Behaviour::Write);
    t.wait_processes(2);
    let st = ok(&t.command(&[("what", "status")])).clone();
    assert_eq!(st.get("state"), Some("running"));
    assert_eq!(st.get("interval"), Some("0"));
    assert_eq!(st.get("generation"), Some("0"));
    assert_eq!(st.get("last_checkpoint"), Some("0"));
    assert_eq!(st.get("computation").map(str::len), Some(16));
    assert_eq!(st.get("socket").map(PathBuf::from), Some(t.sock.clone()));
    assert_eq!(st.get("port"), None);
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
    let a = t.agent(101, "alpha", Behaviour::Write);
    let b = t.agent(102, "beta", Behaviour::Write);
    t.wait_processes(2);
    assert_eq!(ok(&t.command(&[("what", "kill")])).get("processes"), Some("2"));
    let timeout = Duration::from_secs(5);
    assert_eq!(a.kills.recv_timeout(timeout), Ok(101));
    assert_eq!(b.kills.recv_timeout(timeout), Ok(102));
}

#[test]
fn quit_kills_and_ends_the_coordinator() {
    let t = Test::new();
    let coord = t.start();
    let a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    // Not while a process is there, when only asked to quit if idle.
    let r = t.command(&[("what", "quit"), ("if_idle", "1")]);
    assert_eq!((ok(&r).get("quit"), r.get("processes")), (Some("0"), Some("1")));
    let r = t.command(&[("what", "quit")]);
    assert_eq!((ok(&r).get("quit"), r.get("processes")), (Some("1"), Some("1")));
    assert_eq!(a.kills.recv_timeout(Duration::from_secs(5)), Ok(101));
    assert_eq!(coord.wait_end(EndWhen::default()), End::Quit);
}

#[test]
fn exit_after_checkpoint_kills_once_a_generation_is_committed() {
    let t = Test::new();
    let coord = t.start_with(|c| c.kill_after_checkpoint = true);
    let a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let sock = t.sock.clone();
    let client = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    let when = EndWhen { after_checkpoint: true, ..Default::default() };
    assert_eq!(coord.wait_end(when), End::AfterCheckpoint);
    ok(&client.join().unwrap());
    assert_eq!(a.kills.recv_timeout(Duration::from_secs(5)), Ok(101));
    // Held from the snapshot to the kill, as for a checkpoint then kill.
    let ev = t.events();
    assert!(at(&ev, "101 got RESUME hold") < at(&ev, "101 got KILL"), "{ev:?}");
    assert!(!ev.contains(&"101 got RESUME".to_string()), "{ev:?}");
}

#[test]
fn checkpoint_then_kill_holds_the_programs_until_the_kill() {
    let t = Test::new();
    let _coord = t.start();
    let a = t.agent(101, "alpha", Behaviour::Write);
    let b = t.agent(102, "beta", Behaviour::Write);
    t.wait_processes(2);
    let r = t.command(&[("what", "checkpoint"), ("then", "kill")]);
    assert_eq!((ok(&r).get("generation"), r.get("processes"), r.get("killed")), (Some("1"), Some("2"), Some("2")));
    assert_eq!(t.latest(), Some(1));
    let timeout = Duration::from_secs(5);
    assert_eq!(a.kills.recv_timeout(timeout), Ok(101));
    assert_eq!(b.kills.recv_timeout(timeout), Ok(102));
    let ev = t.events();
    for p in [101, 102] {
        // Written while held, killed after the commit, never resumed.
        assert!(at(&ev, &format!("{p} got RESUME hold")) < at(&ev, &format!("{p} sent WRITTEN")), "{ev:?}");
        assert!(at(&ev, &format!("{p} sent WRITTEN")) < at(&ev, &format!("{p} got KILL")), "{ev:?}");
        assert!(!ev.contains(&format!("{p} got RESUME")), "{ev:?}");
    }
}

#[test]
fn a_failed_checkpoint_then_kill_resumes_and_kills_nothing() {
    let t = Test::new();
    let _coord = t.start();
    let a = t.agent(101, "alpha", Behaviour::Write);
    let _b = t.agent(102, "beta", Behaviour::FailWrite);
    t.wait_processes(2);
    let why = err(&t.command(&[("what", "checkpoint"), ("then", "kill")]));
    assert!(why.contains("102") && why.contains("disk on fire"), "{why}");
    assert_eq!(t.latest(), None);
    // Alpha, held while it wrote, is told to resume.
    let held = at(&t.events(), "101 got RESUME hold");
    t.wait_event(held, "101 got RESUME");
    assert!(a.kills.recv_timeout(Duration::from_millis(200)).is_err(), "{:?}", t.events());
    assert_eq!(t.command(&[("what", "status")]).get("processes"), Some("2"));
}

#[test]
fn then_kill_is_checked() {
    let t = Test::new();
    let _coord = t.start();
    let why = err(&t.command(&[("what", "checkpoint"), ("then", "kill"), ("wait", "started")]));
    assert!(why.contains("wait=started"), "{why}");
    let why = err(&t.command(&[("what", "checkpoint"), ("then", "quit")]));
    assert!(why.contains("then=kill"), "{why}");
    // No process: nothing to checkpoint, nothing killed.
    assert_eq!(err(&t.command(&[("what", "checkpoint"), ("then", "kill")])), "no process connected");
}

#[test]
fn exit_on_last_waits_for_the_last_process() {
    let t = Test::new();
    let coord = t.start();
    let a = t.agent(101, "alpha", Behaviour::Write);
    let b = t.agent(102, "beta", Behaviour::Write);
    t.wait_processes(2);
    drop(a);
    t.wait_processes(1);
    drop(b);
    assert_eq!(coord.wait_end(EndWhen { last_gone: true, ..Default::default() }), End::LastGone);
    // A coordinator that nobody ever joined ends when told to give up.
    let other = Test::new();
    let idle = other.start();
    let when = EndWhen { last_gone: true, idle: Some(Duration::from_millis(100)), ..Default::default() };
    assert_eq!(idle.wait_end(when), End::Idle);
    let control = idle.control();
    thread::spawn(move || control.stop());
    assert_eq!(idle.wait_end(EndWhen::default()), End::Stopped);
    let r = other.command(&[("what", "quit"), ("if_idle", "1")]);
    assert_eq!(ok(&r).get("quit"), Some("1"));
}

#[test]
fn requests_during_a_checkpoint_wait_for_the_next_one() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
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
        Stream::Unix(theirs),
        4242,
        "restored",
        Behaviour::Write,
        &[("restored", "1"), ("computation", "00000000deadbeef"), ("generation", "7")],
        &t.log,
    );
    t.wait_processes(1);
    assert_eq!(coord.computation_id(), 0xdead_beef);
    let st = t.command(&[("what", "status")]);
    assert_eq!(st.get("computation"), Some("00000000deadbeef"));
    assert_eq!(st.get("proc.0.restored"), Some("1"));
    assert_eq!(ok(&checkpoint(&t)).get("generation"), Some("8"));
}

#[test]
fn an_agent_that_comes_back_brings_its_computation_to_a_new_coordinator() {
    let t = Test::new();
    let _coord = t.start();
    let _a = FakeAgent::on_stream(
        Stream::Unix(UnixStream::connect(&t.sock).unwrap()),
        4242,
        "back",
        Behaviour::Write,
        &[("computation", "00000000cafe0001"), ("generation", "3")],
        &t.log,
    );
    t.wait_processes(1);
    assert_eq!(t.command(&[("what", "status")]).get("computation"), Some("00000000cafe0001"));
    assert_eq!(ok(&checkpoint(&t)).get("generation"), Some("4"));
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
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let odd = UnixStream::connect(&t.sock).unwrap();
    (&odd).write_all(b"HELLO pid=5 name=odd\nCOMMAND what=status\n").unwrap();
    let mut reader = BufReader::new(&odd);
    let line = next_line(&mut reader, "ERROR");
    assert!(line.starts_with("ERROR"), "{line:?}");
    t.wait_processes(1);
    ok(&checkpoint(&t));
}

/// Reads lines until one starts with `verb`.
fn next_line(reader: &mut impl BufRead, verb: &str) -> String {
    loop {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "the connection ended before {verb}");
        if line.starts_with(verb) {
            return line;
        }
    }
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
    let first = Message::decode(&next_line(&mut reader, "SUSPEND")).unwrap();
    let abort = Message::decode(&next_line(&mut reader, "RESUME")).unwrap();
    assert_eq!(abort.get("generation"), first.get("generation"));
    // Answer the first request late, while a second one is running.
    let sock = t.sock.clone();
    let second = thread::spawn(move || command(&sock, &[("what", "checkpoint")]));
    let next = Message::decode(&next_line(&mut reader, "SUSPEND")).unwrap();
    assert_ne!(next.get("generation"), first.get("generation"));
    let late = Message::new("SUSPENDED").with("generation", first.get("generation").unwrap());
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
    let mut reader = BufReader::new(&raw);
    let m = Message::decode(&next_line(&mut reader, "SUSPEND")).unwrap();
    let g = m.get("generation").unwrap().to_string();
    (&raw).write_all(Message::new("SUSPENDED").with("generation", &g).encode().as_bytes()).unwrap();
    next_line(&mut reader, "SNAPSHOT");
    (&raw).write_all(Message::new("SNAPSHOTTED").with("generation", &g).encode().as_bytes()).unwrap();
    next_line(&mut reader, "RESUME");
    let answer = Message::new("WRITTEN").with("generation", &g).with("image", "../escape.img");
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
    let a = t.agent(101, "alpha", Behaviour::Ignore);
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

// ---------------------------------------------------------------------------
// TCP

fn secret(byte: u8) -> Secret {
    Secret { bytes: vec![byte; 32], origin: "test".into() }
}

/// A coordinator that also listens on TCP (loopback, a free port).
fn start_tcp(t: &Test) -> (CoordHandle, u16) {
    let mut coord = Coordinator::bind(t.config()).unwrap();
    coord.listen_tcp(TcpListener::bind("127.0.0.1:0").unwrap(), secret(7)).unwrap();
    let port = coord.tcp_port().unwrap();
    (coord.spawn().unwrap(), port)
}

#[test]
fn tcp_peers_must_prove_the_secret() {
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let addr = Addr::Tcp { host: "127.0.0.1".into(), port };

    let s = client::connect(&addr, Some(&secret(7))).unwrap();
    let st = client::ask(&s, &request(&[("what", "status")])).unwrap();
    assert_eq!(ok(&st).get("port"), Some(port.to_string().as_str()));

    match client::connect(&addr, Some(&secret(8))) {
        Err(ClientError::Refused(why)) => assert!(why.contains("wrong secret"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(client::connect(&addr, None), Err(ClientError::NoSecret)));

    // A client that ignores the challenge gets a clear refusal, and the
    // computation is untouched.
    let raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    (&raw).write_all(request(&[("what", "kill")]).encode().as_bytes()).unwrap();
    let mut reader = BufReader::new(&raw);
    assert!(next_line(&mut reader, "CHALLENGE").contains("nonce="));
    let refusal = Message::decode(&next_line(&mut reader, "ERROR")).unwrap();
    assert!(err(&refusal).contains("authentication required"), "{refusal:?}");
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "not closed: {rest:?}");
}

#[test]
fn an_agent_over_tcp_checkpoints_and_learns_its_tcp_address() {
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let addr = Addr::Tcp { host: "127.0.0.1".into(), port };
    let stream = client::connect(&addr, Some(&secret(7))).unwrap();
    let a = FakeAgent::on_stream(stream, 555, "remote", Behaviour::Write, &[], &t.log);
    let back = a.coordinator.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(back, format!("tcp:127.0.0.1:{port}"));
    t.wait_processes(1);
    assert_eq!(ok(&checkpoint(&t)).get("generation"), Some("1"));
}

#[test]
fn nothing_listening_is_told_apart() {
    let t = Test::new();
    assert!(matches!(client::connect(&Addr::Unix(t.sock.clone()), None), Err(ClientError::NotListening(_))));
    // A port nobody listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = Addr::Tcp { host: "127.0.0.1".into(), port };
    assert!(matches!(client::connect(&addr, None), Err(ClientError::NotListening(_))));
}

// ---------------------------------------------------------------------------
// Mutual authentication, impostors, floods

/// What an impostor listening on a port does once it has the client's AUTH.
#[derive(Clone, Copy, Debug)]
enum Impostor {
    /// `OK` with no proof at all.
    NoProof,
    /// `OK proof=` something made up.
    WrongProof,
    /// `OK proof=` the client's own proof, sent back.
    Reflect,
}

/// An impostor on a port of its own: it challenges the client as a
/// coordinator would, answers as `how` says, and returns the AUTH line it
/// got and everything the client said after it.
fn impostor(how: Impostor) -> (Addr, thread::JoinHandle<(Message, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let nonce = stasis_proto::auth::to_hex(&[0x42; 32]);
        (&s).write_all(Message::new("CHALLENGE").with("nonce", nonce).encode().as_bytes()).unwrap();
        let mut reader = BufReader::new(&s);
        let auth = Message::decode(&next_line(&mut reader, "AUTH")).unwrap();
        let reply = match how {
            Impostor::NoProof => Message::new("OK"),
            Impostor::WrongProof => Message::new("OK").with("proof", "00".repeat(32)),
            Impostor::Reflect => Message::new("OK").with("proof", auth.get("proof").unwrap()),
        };
        (&s).write_all(reply.encode().as_bytes()).unwrap();
        // Then a command any agent would obey from its coordinator.
        let _ = (&s).write_all(Message::new("KILL").encode().as_bytes());
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        (auth, rest)
    });
    (Addr::Tcp { host: "127.0.0.1".into(), port }, thread)
}

#[test]
fn an_impostor_that_cannot_prove_the_secret_is_refused_and_learns_nothing_usable() {
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    for how in [Impostor::NoProof, Impostor::WrongProof, Impostor::Reflect] {
        let (addr, fake) = impostor(how);
        let e = client::connect(&addr, Some(&secret(7))).err().unwrap_or_else(|| panic!("{how:?}: connected"));
        assert!(matches!(&e, ClientError::Impostor(at) if *at == addr.to_string()), "{how:?}: {e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the peer at {addr} did not prove the computation's secret: it is not this computation's coordinator"
            )
        );
        let (auth, rest) = fake.join().unwrap();
        // The client said nothing after its AUTH: no HELLO, no COMMAND.
        assert_eq!(rest, "", "{how:?}");
        // What it did say is worth nothing to the real coordinator, which
        // draws its own challenge.
        let raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut reader = BufReader::new(&raw);
        next_line(&mut reader, "CHALLENGE");
        (&raw).write_all(auth.encode().as_bytes()).unwrap();
        let refusal = Message::decode(&next_line(&mut reader, "ERROR")).unwrap();
        assert!(err(&refusal).contains("wrong secret"), "{how:?}: {refusal:?}");
    }
    // The real coordinator proves itself, and the computation is untouched.
    let s = client::connect(&Addr::Tcp { host: "127.0.0.1".into(), port }, Some(&secret(7))).unwrap();
    assert_eq!(ok(&client::ask(&s, &request(&[("what", "status")])).unwrap()).get("processes"), Some("1"));
    assert!(a.kills.try_recv().is_err());
}

#[test]
fn the_coordinator_proves_the_secret_in_return() {
    use stasis_proto::auth::{self, Role};
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = BufReader::new(&raw);
    let challenge = Message::decode(&next_line(&mut reader, "CHALLENGE")).unwrap();
    let nc = auth::nonce_from_hex(challenge.get("nonce").unwrap()).unwrap();
    let nk = [0x17; 32];
    let p1 = auth::prove(&secret(7).bytes, Role::Client, &nc, &nk);
    let line = Message::new("AUTH").with("nonce", auth::to_hex(&nk)).with("proof", &p1);
    (&raw).write_all(line.encode().as_bytes()).unwrap();
    let answer = Message::decode(&next_line(&mut reader, "OK")).unwrap();
    let p2 = answer.get("proof").unwrap();
    assert!(auth::verify(&secret(7).bytes, Role::Coordinator, &nc, &nk, p2));
    assert_ne!(p2, p1);

    // A proof made with another secret is refused, and no proof comes back.
    let raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = BufReader::new(&raw);
    let challenge = Message::decode(&next_line(&mut reader, "CHALLENGE")).unwrap();
    let nc = auth::nonce_from_hex(challenge.get("nonce").unwrap()).unwrap();
    let bad = auth::prove(&secret(8).bytes, Role::Client, &nc, &nk);
    let line = Message::new("AUTH").with("nonce", auth::to_hex(&nk)).with("proof", bad);
    (&raw).write_all(line.encode().as_bytes()).unwrap();
    let refusal = Message::decode(&next_line(&mut reader, "ERROR")).unwrap();
    assert!(err(&refusal).contains("wrong secret"), "{refusal:?}");
    assert_eq!(refusal.get("proof"), None);
}

#[test]
fn a_unix_socket_served_by_us_is_accepted() {
    // Another user's socket cannot be made in a test run by one user; the
    // check itself runs on every connection, and passes for our own.
    let t = Test::new();
    let _coord = t.start();
    let s = client::connect(&Addr::Unix(t.sock.clone()), None).unwrap();
    ok(&client::ask(&s, &request(&[("what", "status")])).unwrap());
    let e = ClientError::NotYours(t.sock.clone(), 1234);
    assert_eq!(e.to_string(), format!("the coordinator socket {} is served by uid 1234, not by you", t.sock.display()));
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from`
/// (any of 127.0.0.0/8 is this machine's): how one machine poses as many
/// peers.
fn connect_from(from: std::net::Ipv4Addr, port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket creation; the descriptor is owned by the stream at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let (src, dst) = (sa(from, 0), sa(std::net::Ipv4Addr::LOCALHOST, port));
    // SAFETY: bind and connect read one sockaddr_in each.
    unsafe {
        assert_eq!(libc::bind(fd, (&raw const src).cast(), len), 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::connect(fd, (&raw const dst).cast(), len), 0, "connect: {}", std::io::Error::last_os_error());
    }
    stream
}

/// The open TCP connections of this process whose local port is `port`:
/// the coordinator's side of its TCP connections (not the listener).
fn coordinator_tcp_conns(port: u16) -> usize {
    let mine: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_string_lossy().strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            // f[3]: the state (0A: listening); f[9]: the inode.
            local_port == Some(port) && f[3] != "0A" && mine.contains(f[9])
        })
        .count()
}

#[test]
fn a_flood_of_strangers_neither_exhausts_the_coordinator_nor_delays_its_owner() {
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let stranger = std::net::Ipv4Addr::new(127, 0, 0, 2);
    // Several hundred connections from one address, all held open; some
    // trickle a byte now and then and never finish a line.
    let flood: Vec<std::net::TcpStream> = (0..300).map(|_| connect_from(stranger, port)).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tricklers: Vec<_> = flood
        .iter()
        .take(40)
        .map(|s| {
            let (s, stop) = (s.try_clone().unwrap(), stop.clone());
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && (&s).write_all(b"A").is_ok() {
                    thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    // The owner is served meanwhile: on the Unix socket, and over TCP from
    // another address.
    assert_eq!(ok(&t.command(&[("what", "status")])).get("processes"), Some("1"));
    let s = client::connect(&Addr::Tcp { host: "127.0.0.1".into(), port }, Some(&secret(7))).unwrap();
    assert_eq!(ok(&client::ask(&s, &request(&[("what", "status")])).unwrap()).get("processes"), Some("1"));
    ok(&checkpoint(&t));
    // The coordinator holds a bounded number of the strangers' connections
    // (those it has not closed), whatever they do: the per-address cap,
    // plus our authenticated client.
    let held = coordinator_tcp_conns(port);
    assert!(held <= stasis_coord::MAX_UNAUTHENTICATED_PER_PEER + 1, "the coordinator holds {held} connections");
    // Those beyond the cap were closed at once, with a word why (or, on a
    // machine so slow that the first ones' deadline passed meanwhile, were
    // let in and cut off at their own deadline).
    let mut refused = BufReader::new(&flood[299]);
    let line = next_line(&mut refused, "ERROR");
    assert!(line.contains("too%20many") || line.contains("too%20slow"), "{line:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for th in tricklers {
        th.join().unwrap();
    }
}

#[test]
fn strangers_from_many_addresses_are_capped_overall_and_the_unix_socket_is_still_served() {
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let mut flood = Vec::new();
    for host in 1..=20u8 {
        for _ in 0..stasis_coord::MAX_UNAUTHENTICATED_PER_PEER {
            flood.push(connect_from(std::net::Ipv4Addr::new(127, 0, 1, host), port));
        }
    }
    assert_eq!(ok(&t.command(&[("what", "status")])).get("processes"), Some("1"));
    ok(&checkpoint(&t));
    let held = coordinator_tcp_conns(port);
    assert!(held <= stasis_coord::MAX_UNAUTHENTICATED, "the coordinator holds {held} connections");
    drop(flood);
}

#[test]
fn a_peer_that_trickles_is_cut_off_at_the_handshake_deadline() {
    let t = Test::new();
    let (_coord, port) = start_tcp(&t);
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let writer = s.try_clone().unwrap();
    // One byte every 100 ms, never a whole line: each read is quick, the
    // whole is not. (Stops by itself once the connection is closed.)
    let trickle = thread::spawn(move || {
        for _ in 0..1200 {
            if (&writer).write_all(b"A").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let mut reader = BufReader::new(&s);
    next_line(&mut reader, "CHALLENGE");
    let refusal = Message::decode(&next_line(&mut reader, "ERROR")).unwrap();
    assert!(err(&refusal).contains("too slow"), "{refusal:?}");
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).unwrap_or(0), 0, "not closed: {rest:?}");
    drop(reader);
    let _ = s.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
}

#[test]
fn a_second_process_with_a_pid_already_connected_is_refused() {
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    let twin = UnixStream::connect(&t.sock).unwrap();
    (&twin).write_all(b"HELLO pid=101 name=twin restored=1 computation=0 generation=0\n").unwrap();
    let mut reader = BufReader::new(&twin);
    let refusal = Message::decode(&next_line(&mut reader, "ERROR")).unwrap();
    assert_eq!(
        err(&refusal),
        "process 101 is already connected to this coordinator (is the computation running twice? restarted twice?)"
    );
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "not closed: {rest:?}");
    // The first one is still there, and checkpointed alone.
    t.wait_processes(1);
    let reply = checkpoint(&t);
    assert_eq!(ok(&reply).get("processes"), Some("1"));
}

#[test]
fn a_pid_whose_connection_hung_up_may_connect_again() {
    // A program that exec'd: its old connection closed on the way, and the
    // new program's agent greets with the same pid.
    let t = Test::new();
    let _coord = t.start();
    let _a = t.agent(101, "alpha", Behaviour::Write);
    for round in 0..5 {
        let old = UnixStream::connect(&t.sock).unwrap();
        (&old).write_all(format!("HELLO pid=202 name=before{round}\n").as_bytes()).unwrap();
        t.wait_processes(2);
        drop(old);
        let new = t.agent(202, "after", Behaviour::Write);
        let back = new.coordinator.recv_timeout(Duration::from_secs(10));
        assert!(back.is_ok(), "round {round}: the new program was not greeted: {:?}", t.events());
        t.wait_processes(2);
        assert_eq!(ok(&checkpoint(&t)).get("processes"), Some("2"));
        drop(new);
        t.wait_processes(1);
    }
}

#[test]
fn the_checkpoint_directory_moves_only_while_no_process_is_here() {
    let t = Test::new();
    let _coord = t.start();
    let other = t._tmp.path().join("other");
    let moved = ok(&t.command(&[("what", "ckptdir"), ("dir", other.to_str().unwrap())])).clone();
    let canonical = other.canonicalize().unwrap();
    assert_eq!(moved.get("ckptdir"), Some(canonical.to_str().unwrap()));
    assert_eq!(t.command(&[("what", "status")]).get("ckptdir"), Some(canonical.to_str().unwrap()));
    assert!(err(&t.command(&[("what", "ckptdir"), ("dir", "relative")])).contains("absolute"));

    let _a = t.agent(101, "alpha", Behaviour::Write);
    t.wait_processes(1);
    ok(&checkpoint(&t));
    assert_eq!(CheckpointDir::open(&other).unwrap().latest().ok().map(|g| g.number), Some(1));
    assert_eq!(t.latest(), None, "{:?}", t.entries());
    // With a process here, its directory stays.
    let third = t._tmp.path().join("third");
    let refused = err(&t.command(&[("what", "ckptdir"), ("dir", third.to_str().unwrap())]));
    assert!(refused.contains("process") && refused.contains("does not change"), "{refused}");
    assert_eq!(t.command(&[("what", "status")]).get("ckptdir"), Some(canonical.to_str().unwrap()));
}
