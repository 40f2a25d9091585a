//! One thread per connection. A TCP peer first proves that it knows the
//! computation's secret, and the coordinator proves it back; then the
//! first line says who the peer is: an agent (`HELLO`) or a client
//! (`COMMAND`).
//!
//! Until a TCP peer has proven the secret it costs us as little as we can
//! make it: the whole handshake must end within [`HANDSHAKE_DEADLINE`] of
//! the accept (a peer that trickles a byte at a time is cut off then, not
//! at the next quiet read), and at most [`MAX_UNAUTHENTICATED`] such
//! connections, [`MAX_UNAUTHENTICATED_PER_PEER`] from one address, are
//! served at once; beyond that a new one is closed at once, so that
//! strangers can exhaust neither descriptors nor threads. Unix peers (our
//! own uid) and authenticated peers are not counted, and the Unix socket
//! has an acceptor of its own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::{Arc, PoisonError, mpsc};
use std::time::{Duration, Instant};

use stasis_proto::{self as proto, MAX_LINE, Message, auth};

use crate::client::Addr;
use crate::socket;
use crate::state::{Agent, Conn, Shared, Stage, State, Waiter, error};
use crate::stream::Stream;

/// How long a TCP peer has, from the accept, to prove the secret.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// TCP connections that have not yet proven the secret, at most, at once.
pub const MAX_UNAUTHENTICATED: usize = 64;
/// As [`MAX_UNAUTHENTICATED`], from one peer address (one IPv6 /64).
pub const MAX_UNAUTHENTICATED_PER_PEER: usize = 8;
/// At most one log line about refused TCP peers per this long.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);
/// Longest line a peer may send before it has proven the secret (an
/// `AUTH` line is about 150 bytes).
const MAX_HANDSHAKE_LINE: usize = 1024;
/// How long a new agent's `HELLO` waits for the connection of another
/// agent with its pid to close: a program that exec'd closed it on the
/// way, and its end may not have reached us yet.
const EXEC_GRACE: Duration = Duration::from_millis(500);

/// The TCP peers still authenticating, and the log of refusals.
#[derive(Default)]
pub(crate) struct Gate {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
    /// Refusals not yet logged, and when the last line was.
    untold: u64,
    last_logged: Option<Instant>,
}

impl Gate {
    fn admit(&mut self, peer: IpAddr) -> bool {
        let from_peer = self.per_peer.get(&peer).copied().unwrap_or(0);
        if self.total >= MAX_UNAUTHENTICATED || from_peer >= MAX_UNAUTHENTICATED_PER_PEER {
            return false;
        }
        self.total += 1;
        self.per_peer.insert(peer, from_peer + 1);
        true
    }

    fn release(&mut self, peer: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// Logs a refusal, or counts it for the next line: a flood must not
    /// flood the log too.
    fn refused(&mut self, peer: &str, why: &str) {
        self.untold += 1;
        if self.last_logged.is_some_and(|t| t.elapsed() < REFUSALS_LOGGED_EVERY) {
            return;
        }
        let n = std::mem::take(&mut self.untold);
        if n == 1 {
            crate::warn(&format!("refused a TCP connection from {peer}: {why}"));
        } else {
            crate::warn(&format!("refused {n} TCP connections since the last such line, the last from {peer}: {why}"));
        }
        self.last_logged = Some(Instant::now());
    }
}

/// The address a peer is counted under: IPv4 as such (also when mapped
/// into IPv6), IPv6 by its /64, which one host usually has whole.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A place at the gate, given back when the handshake ends either way.
struct Admitted<'a> {
    shared: &'a Shared,
    peer: IpAddr,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.shared.gate().release(self.peer);
    }
}

/// Registers a new connection and starts its thread. Refused (closed) once
/// shutdown has begun, so that shutdown knows every connection to close.
pub(crate) fn start(shared: &Arc<Shared>, stream: Stream) {
    let accepted = Instant::now();
    let mut admitted = None;
    match &stream {
        Stream::Unix(s) => match socket::peer_uid(s) {
            Ok(uid) if uid == socket::my_uid() => {}
            Ok(uid) => {
                let _ = Conn::new(stream).send(&error(format!("uid {uid} may not use this coordinator")));
                return;
            }
            Err(e) => {
                let _ = Conn::new(stream).send(&error(format!("cannot tell who you are: {e}")));
                return;
            }
        },
        Stream::Tcp(s) => {
            let Ok(addr) = s.peer_addr() else { return };
            let peer = peer_key(addr.ip());
            let mut gate = shared.gate();
            if !gate.admit(peer) {
                gate.refused(&addr.ip().to_string(), "too many connections waiting to authenticate");
                drop(gate);
                // A word for a peer that means well, without ever waiting.
                let _ = s.set_nonblocking(true);
                let busy = error(format!(
                    "too many connections are waiting to authenticate (at most {MAX_UNAUTHENTICATED}, \
                     {MAX_UNAUTHENTICATED_PER_PEER} from one address); try again"
                ));
                let _ = (&*s).write(busy.encode().as_bytes());
                return;
            }
            admitted = Some(peer);
        }
    }
    let link = Arc::new(Conn::new(stream));
    let conn = {
        let mut st = shared.lock();
        if st.shutdown {
            drop(st);
            if let Some(peer) = admitted {
                shared.gate().release(peer);
            }
            return;
        }
        let conn = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(conn, link.clone());
        if admitted.is_some() {
            st.authenticating.insert(conn);
        }
        conn
    };
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new().name("stasis-coord-conn".into()).spawn(move || {
        let ticket = admitted.map(|peer| Admitted { shared: &thread_shared, peer });
        serve(&thread_shared, conn, &link, ticket.map(|t| (t, accepted + HANDSHAKE_DEADLINE)));
    });
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock().unwrap_or_else(PoisonError::into_inner);
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
        Err(e) => {
            crate::warn(&format!("cannot start a thread for a new connection: {e}"));
            if let Some(peer) = admitted {
                shared.gate().release(peer);
            }
            let mut st = shared.lock();
            st.authenticating.remove(&conn);
            if let Some(s) = st.conns.remove(&conn) {
                let _ = s.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

type Reader<'a> = BufReader<&'a Stream>;

/// Coordinator → agent: kill your own process. (Sent to the agent rather
/// than by kill(2), because a restored process's pid belongs to another pid
/// namespace.)
pub const KILL: &str = proto::KILL;

/// How long a write to an agent may block before the agent counts as gone.
const AGENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection; a TCP one first passes the handshake, holding
/// its place at the gate until then (`ticket`, and the deadline).
fn serve(shared: &Shared, conn: u64, link: &Arc<Conn>, ticket: Option<(Admitted<'_>, Instant)>) {
    let mut reader = BufReader::new(&link.stream);
    if let Some((ticket, deadline)) = ticket {
        let passed = authenticate(shared, link, &mut reader, deadline);
        let _ = link.stream.set_read_timeout(None);
        let _ = link.stream.set_write_timeout(None);
        shared.lock().authenticating.remove(&conn);
        drop(ticket);
        if !passed {
            end(shared, conn, link);
            return;
        }
    }
    let first = read_message(&mut reader);
    shared.lock().identified.insert(conn);
    match first {
        Ok(Some(m)) if m.verb == proto::HELLO => serve_agent(shared, conn, link, &mut reader, &m),
        Ok(Some(m)) if m.verb == proto::COMMAND => serve_client(shared, link, &mut reader, m),
        Ok(Some(m)) => send(link, &error(format!("expected HELLO or COMMAND, not {}", m.verb))),
        Ok(None) => {}
        Err(why) => send(link, &error(why)),
    }
    end(shared, conn, link);
}

fn end(shared: &Shared, conn: u64, link: &Conn) {
    let _ = link.stream.shutdown(Shutdown::Both);
    let mut st = shared.lock();
    st.conns.remove(&conn);
    st.identified.remove(&conn);
    st.authenticating.remove(&conn);
    shared.changed.notify_all();
}

/// Reads one handshake line by `deadline`, however the peer spreads its
/// bytes. `Ok(None)` when the peer closed; `Err` says why we give up.
fn read_line_by(reader: &mut Reader<'_>, deadline: Instant) -> Result<Option<Message>, String> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "too slow: the handshake must be over within {} s of connecting",
                HANDSHAKE_DEADLINE.as_secs()
            ));
        }
        let _ = reader.get_ref().set_read_timeout(Some(left));
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return Ok(None),
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let (taken, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..taken]);
        reader.consume(taken);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(format!("a handshake line is at most {MAX_HANDSHAKE_LINE} bytes"));
        }
        if done {
            let text = String::from_utf8(line).map_err(|_| "line is not UTF-8".to_string())?;
            return Message::decode(&text).map(Some).map_err(|e| e.to_string());
        }
    }
}

/// The challenge every TCP connection must pass before anything else, and
/// our proof in return (stasis_proto::auth).
fn authenticate(shared: &Shared, link: &Conn, reader: &mut Reader<'_>, deadline: Instant) -> bool {
    let peer = match &link.stream {
        Stream::Tcp(s) => s.peer_addr().map_or_else(|_| "an unknown peer".to_string(), |a| a.ip().to_string()),
        Stream::Unix(_) => "a local peer".to_string(),
    };
    let Some(secret) = &shared.secret else {
        send(link, &error("this coordinator takes no TCP connections"));
        return false;
    };
    // Our own lines are short and the socket's buffer empty, but a peer
    // that never reads must not hold us past the deadline either.
    let _ = link
        .stream
        .set_write_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
    let mut ours = [0u8; auth::NONCE_LEN];
    if crate::random::fill(&mut ours).is_err() {
        send(link, &error("the coordinator cannot draw a challenge"));
        return false;
    }
    if link.send(&Message::new(auth::CHALLENGE).with("nonce", auth::to_hex(&ours))).is_err() {
        return false;
    }
    let wrong = "wrong secret: prove the secret in the checkpoint directory's .stasis-coord-secret \
                 (or STASIS_COORD_SECRET)";
    let refusal = match read_line_by(reader, deadline) {
        Ok(Some(m)) if m.verb == auth::AUTH => match (m.get("nonce").and_then(auth::nonce_from_hex), m.get("proof")) {
            (Some(theirs), Some(p)) if auth::verify(secret, auth::Role::Client, &ours, &theirs, p) => {
                let proof = auth::prove(secret, auth::Role::Coordinator, &ours, &theirs);
                return link.send(&Message::new(proto::OK).with("proof", proof)).is_ok();
            }
            (None, _) => format!(
                "{wrong}; AUTH needs nonce=<{} hex digits of your own> and proof=<hmac> \
                 (mutual authentication, stasis-auth-2)",
                2 * auth::NONCE_LEN
            ),
            _ => wrong.to_string(),
        },
        Ok(Some(m)) => format!(
            "authentication required: answer the challenge with AUTH nonce=<hex> proof=<hmac>, not {} \
             (the secret is in the checkpoint directory's .stasis-coord-secret)",
            m.verb
        ),
        Ok(None) => return false,
        Err(why) => why,
    };
    shared.gate().refused(&peer, refusal.split(':').next().unwrap_or(&refusal));
    send(link, &error(refusal));
    false
}

/// Reads one line and parses it. `Ok(None)` at the end of the stream (or
/// on a read error: the peer is gone either way); `Err` says why a line is
/// not a message.
fn read_message(reader: &mut Reader<'_>) -> Result<Option<Message>, String> {
    let mut buf = Vec::new();
    let limit = MAX_LINE as u64 + 1;
    match reader.by_ref().take(limit).read_until(b'\n', &mut buf) {
        Ok(0) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    if buf.last() != Some(&b'\n') && buf.len() as u64 >= limit {
        return Err(format!("line longer than {MAX_LINE} bytes"));
    }
    let line = String::from_utf8(buf).map_err(|_| "line is not UTF-8".to_string())?;
    Message::decode(&line).map(Some).map_err(|e| e.to_string())
}

fn send(link: &Conn, m: &Message) {
    let _ = link.send(m);
}

/// What an agent's HELLO says about it. True on its first HELLO.
fn greet(st: &mut State, conn: u64, link: &Arc<Conn>, hello: &Message) -> Result<bool, String> {
    let pid = hello.get_parsed::<i32>("pid").filter(|&p| p > 0).ok_or("HELLO needs pid=<process id>")?;
    let restored = hello.get("restored") == Some("1");
    let computation = match hello.get("computation") {
        None => 0,
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| format!("HELLO has a bad computation={hex:?}"))?,
    };
    let generation = match hello.get("generation") {
        None => 0,
        Some(g) => g.parse::<u64>().map_err(|_| format!("HELLO has a bad generation={g:?}"))?,
    };
    // A restored process brings its computation; so does one that comes
    // back after its coordinator died, to a new one that has not yet
    // checkpointed anything of its own.
    if computation != 0 && (restored || st.last_attempt == 0) {
        st.computation_id = computation;
    }
    st.reported_generation = st.reported_generation.max(generation);
    st.had_agent = true;
    st.empty_since = None;
    // One process, one connection: a second process with a pid we hold
    // is the same computation run twice (or restarted twice), and its
    // checkpoints would collide. The first one's connection may be closed
    // but not yet read to its end: a program that exec'd.
    if let Some(other) = st.agents.iter().find(|a| a.pid == pid && a.conn != conn) {
        if !other.link.stream.peer_gone() {
            return Err(format!(
                "process {pid} is already connected to this coordinator \
                 (is the computation running twice? restarted twice?)"
            ));
        }
        let gone = other.conn;
        st.remove_agent(gone, "disconnected (its pid connected again: exec)");
    }
    let name = hello.get("name").unwrap_or("").to_string();
    match st.agents.iter_mut().find(|a| a.conn == conn) {
        // A second HELLO on one connection updates what we know.
        Some(a) => {
            (a.pid, a.name, a.restored, a.generation) = (pid, name, restored, generation);
            Ok(false)
        }
        None => {
            st.agents.push(Agent { conn, pid, name, restored, generation, link: link.clone(), stats: Vec::new() });
            Ok(true)
        }
    }
}

/// The address an agent on `link` should come back to if it loses us.
fn reach(shared: &Shared, link: &Conn) -> Addr {
    match &link.stream {
        Stream::Tcp(s) => s.local_addr().map_or_else(|_| shared.unix_addr.clone(), crate::client::tcp_addr_for),
        Stream::Unix(_) => shared.unix_addr.clone(),
    }
}

fn serve_agent(shared: &Shared, conn: u64, link: &Arc<Conn>, reader: &mut Reader<'_>, hello: &Message) {
    // A stuck agent must not block the coordinator's writes for long.
    let _ = link.stream.set_write_timeout(Some(AGENT_WRITE_TIMEOUT));
    // A program that exec'd closed its old connection on the way; give its
    // end a moment to reach us before its pid counts as taken (greet).
    if let Some(pid) = hello.get_parsed::<i32>("pid") {
        let holder = shared.lock().agents.iter().find(|a| a.pid == pid && a.conn != conn).map(|a| a.link.clone());
        if let Some(holder) = holder {
            holder.stream.peer_gone_within(EXEC_GRACE);
        }
    }
    let mut msg = hello.clone();
    let why_gone = loop {
        // A newcomer's SUSPEND, and the hold on its connection that keeps
        // the driver's next line to it (CHILDREN, RESUME) behind it.
        let mut suspend = None;
        let outcome = {
            let mut st = shared.lock();
            let outcome = match msg.verb.as_str() {
                proto::HELLO => greet(&mut st, conn, link, &msg).inspect(|&first| {
                    if first && let Some(m) = st.join_round(conn) {
                        suspend = Some((m, link.writer()));
                    }
                }),
                proto::SUSPENDED => {
                    let g = msg.get_parsed("generation");
                    let children = msg.get("children").map(proto::parse_pid_list).unwrap_or_default();
                    st.suspended(conn, g, children);
                    Ok(false)
                }
                proto::SNAPSHOTTED => {
                    let g = msg.get_parsed("generation");
                    st.record(conn, g, Stage::Snapshotted);
                    Ok(false)
                }
                proto::WRITTEN => written(&mut st, conn, &msg).map(|()| false),
                proto::FAILED => {
                    let reason = msg.get("reason").unwrap_or("no reason given").to_string();
                    st.record(conn, msg.get_parsed("generation"), Stage::Failed(reason));
                    Ok(false)
                }
                other => Err(format!("unexpected {other} from an agent")),
            };
            shared.changed.notify_all();
            outcome
        };
        match outcome {
            // The computation is being killed: so is a newcomer to it.
            Ok(true) if shared.lock().killing > 0 => {
                let _ = link.send(&Message::new(KILL));
            }
            Ok(true) => {
                let addr = reach(shared, link);
                let coordinator = Message::new(proto::COORDINATOR).with("addr", addr);
                let sent = match &suspend {
                    Some((m, writer)) => writer.send(&coordinator).and_then(|()| writer.send(m)),
                    None => link.send(&coordinator),
                };
                drop(suspend);
                if sent.is_err() {
                    break "cannot be reached".to_string();
                }
            }
            Ok(false) => {}
            Err(why) => {
                send(link, &error(&why));
                break format!("sent a bad message ({why})");
            }
        }
        msg = match read_message(reader) {
            Ok(Some(m)) => m,
            Ok(None) => break "disconnected".to_string(),
            Err(why) => {
                send(link, &error(&why));
                break format!("sent a bad line ({why})");
            }
        };
    };
    let mut st = shared.lock();
    st.remove_agent(conn, &why_gone);
    shared.changed.notify_all();
}

fn written(st: &mut State, conn: u64, msg: &Message) -> Result<(), String> {
    let generation = msg.get_parsed::<u64>("generation").ok_or("WRITTEN needs generation=<number>")?;
    let image = msg.get("image").ok_or("WRITTEN needs image=<file name>")?.to_string();
    let stats = msg.fields.iter().filter(|(k, _)| k != "generation" && k != "image").cloned().collect();
    st.record(conn, Some(generation), Stage::Written { image, stats });
    Ok(())
}

fn serve_client(shared: &Shared, link: &Conn, reader: &mut Reader<'_>, first: Message) {
    let mut msg = first;
    loop {
        if msg.verb != proto::COMMAND {
            send(link, &error(format!("expected COMMAND, not {}", msg.verb)));
            return;
        }
        send(link, &command(shared, &msg));
        msg = match read_message(reader) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(why) => {
                send(link, &error(why));
                return;
            }
        };
    }
}

/// `COMMAND what=ckptdir dir=PATH`: checkpoints go to PATH from now on.
/// Only while no process is here (nor being restored, nor a checkpoint
/// under way): a launch or restart that joins with a checkpoint directory
/// of its own, as DMTCP's `--ckptdir` does. A computation's generations
/// are never split between two directories. The next checkpoint is full:
/// the generations incremental ones would refer to are in the old one.
/// How long a move waits for processes that are going away.
const MOVE_SETTLE: Duration = Duration::from_secs(2);

fn move_ckpt_dir(shared: &Shared, msg: &Message) -> Message {
    let Some(path) = msg.get("dir").filter(|d| d.starts_with('/')) else {
        return error("ckptdir needs dir=<absolute path>");
    };
    // Opened (created 0700 if missing) and checked as at start, outside
    // the lock: a slow file system must not stall the coordinator.
    let dir = match stasis_image::CheckpointDir::open_or_create(std::path::Path::new(path)) {
        Ok(d) => d,
        Err(e) => return error(format!("cannot checkpoint into {path}: {e}")),
    };
    let mut st = shared.lock();
    if st.ckpt_dir == dir.path {
        return Message::new(proto::OK).with("ckptdir", dir.path.display());
    }
    // Processes of a computation killed a moment ago for this restart may
    // still be closing their connections: give them a little while.
    let settle = Instant::now() + MOVE_SETTLE;
    let mut live = st.live_agents() + st.pending_conns();
    while (live > 0 || st.busy) && Instant::now() < settle {
        st = shared.wait_timeout(st, Duration::from_millis(20));
        live = st.live_agents() + st.pending_conns();
    }
    if live > 0 || st.busy {
        let who = if live > 0 { format!("{live} process(es) checkpoint") } else { "a checkpoint is under way".into() };
        return error(format!(
            "{who} into {}: their checkpoint directory does not change under them",
            st.ckpt_dir.display()
        ));
    }
    st.ckpt_dir = dir.path.clone();
    st.last_full = 0;
    st.move_to = Some(dir);
    Message::new(proto::OK).with("ckptdir", st.ckpt_dir.display())
}

/// Carries out one client command and returns the answer.
pub(crate) fn command(shared: &Shared, msg: &Message) -> Message {
    match msg.get("what") {
        Some("checkpoint") => {
            let started_only = msg.get("wait") == Some("started");
            let then_kill = match msg.get("then") {
                None => false,
                Some("kill") => true,
                Some(other) => return error(format!("unknown then={other:?} (then=kill is the one known)")),
            };
            if started_only && then_kill {
                return error("then=kill answers once the computation is killed: not with wait=started");
            }
            let (tx, rx) = mpsc::channel();
            {
                let mut st = shared.lock();
                if st.shutdown {
                    return error("the coordinator is shutting down");
                }
                st.waiters.push(Waiter { tx, started_only, then_kill });
                shared.changed.notify_all();
            }
            rx.recv().unwrap_or_else(|_| error("the coordinator is shutting down"))
        }
        Some("status") => {
            let st = shared.lock();
            st.status(shared)
        }
        Some("interval") => {
            let Some(seconds) = msg.get_parsed::<u32>("seconds") else {
                return error("interval needs seconds=<whole seconds, 0 for none>");
            };
            let mut st = shared.lock();
            st.interval_s = seconds;
            st.timer_base = std::time::Instant::now();
            shared.changed.notify_all();
            Message::new(proto::OK).with("interval", seconds)
        }
        Some("ckptdir") => move_ckpt_dir(shared, msg),
        Some("unique") => {
            let on = match msg.get("on") {
                Some("1") => true,
                Some("0") => false,
                _ => return error("unique needs on=1 or on=0"),
            };
            shared.lock().unique_names = on;
            Message::new(proto::OK).with("unique", u8::from(on))
        }
        Some("kill") => {
            let (killed, left) = kill_all(shared);
            Message::new(proto::OK).with("processes", killed).with("survivors", left)
        }
        Some("quit") => {
            let if_idle = msg.get("if_idle") == Some("1");
            if if_idle {
                let st = shared.lock();
                let live = st.live_agents();
                if live + st.pending_conns() > 0 {
                    return Message::new(proto::OK).with("quit", 0).with("processes", live);
                }
            }
            // Every process first, then the coordinator: a coordinator that
            // ended midway would leave the rest running, out of reach.
            let (killed, left) = kill_all(shared);
            let mut st = shared.lock();
            st.quit = true;
            shared.changed.notify_all();
            Message::new(proto::OK).with("quit", 1).with("processes", killed).with("survivors", left)
        }
        Some(other) => error(format!("unknown command {other:?}")),
        None => error("COMMAND needs what=checkpoint|status|interval|kill|quit"),
    }
}

/// How long a kill waits for every process to be gone.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Sends KILL to every agent, and to every one that connects meanwhile,
/// and waits until their connections are gone (each process kills itself,
/// closing its connection as it dies) or `KILL_DEADLINE` passes. Returns
/// how many processes were told, and how many were still connected at the
/// end.
pub(crate) fn kill_all(shared: &Shared) -> (usize, usize) {
    let line = Message::new(KILL);
    let mut told: Vec<u64> = Vec::new();
    let deadline = Instant::now() + KILL_DEADLINE;
    let mut st = shared.lock();
    st.killing += 1;
    st.killed_on_request = true;
    let left = loop {
        let targets: Vec<(u64, Arc<Conn>)> = st
            .agents
            .iter()
            .filter(|a| !told.contains(&a.conn) && !a.link.stream.peer_gone())
            .map(|a| (a.conn, a.link.clone()))
            .collect();
        if !targets.is_empty() {
            drop(st);
            for (conn, link) in &targets {
                let _ = link.send(&line);
                told.push(*conn);
            }
            st = shared.lock();
            continue;
        }
        let left = st.live_agents() + st.pending_conns();
        if left == 0 || Instant::now() >= deadline {
            break left;
        }
        st = shared.wait_timeout(st, Duration::from_millis(50));
    };
    st.killing -= 1;
    (told.len(), left)
}
