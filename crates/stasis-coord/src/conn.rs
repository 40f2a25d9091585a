//! One thread per connection. A TCP peer first proves that it knows the
//! computation's secret; then the first line says who the peer is: an
//! agent (`HELLO`) or a client (`COMMAND`).

use std::io::{BufRead, BufReader, Read};
use std::net::Shutdown;
use std::sync::{Arc, PoisonError, mpsc};
use std::time::Duration;

use stasis_proto::{self as proto, MAX_LINE, Message, auth};

use crate::client::Addr;
use crate::socket;
use crate::state::{Agent, Conn, Shared, Stage, State, Waiter, error};
use crate::stream::Stream;

/// Registers a new connection and starts its thread. Refused (closed) once
/// shutdown has begun, so that shutdown knows every connection to close.
pub(crate) fn start(shared: &Arc<Shared>, stream: Stream) {
    if let Stream::Unix(s) = &stream {
        match socket::peer_uid(s) {
            Ok(uid) if uid == socket::my_uid() => {}
            Ok(uid) => {
                let _ = Conn::new(stream).send(&error(format!("uid {uid} may not use this coordinator")));
                return;
            }
            Err(e) => {
                let _ = Conn::new(stream).send(&error(format!("cannot tell who you are: {e}")));
                return;
            }
        }
    }
    let link = Arc::new(Conn::new(stream));
    let conn = {
        let mut st = shared.lock();
        if st.shutdown {
            return;
        }
        let conn = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(conn, link.clone());
        conn
    };
    let thread_shared = shared.clone();
    let spawned =
        std::thread::Builder::new().name("stasis-coord-conn".into()).spawn(move || serve(&thread_shared, conn, &link));
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock().unwrap_or_else(PoisonError::into_inner);
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
        Err(e) => {
            crate::warn(&format!("cannot start a thread for a new connection: {e}"));
            if let Some(s) = shared.lock().conns.remove(&conn) {
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
/// How long a TCP peer has to answer the challenge.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

fn serve(shared: &Shared, conn: u64, link: &Arc<Conn>) {
    let mut reader = BufReader::new(&link.stream);
    if link.stream.is_tcp() && !authenticate(shared, link, &mut reader) {
        end(shared, conn, link);
        return;
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
    shared.changed.notify_all();
}

/// The challenge every TCP connection must pass before anything else.
fn authenticate(shared: &Shared, link: &Conn, reader: &mut Reader<'_>) -> bool {
    let peer = match &link.stream {
        Stream::Tcp(s) => s.peer_addr().map_or_else(|_| "an unknown peer".to_string(), |a| a.ip().to_string()),
        Stream::Unix(_) => "a local peer".to_string(),
    };
    let Some(secret) = &shared.secret else {
        send(link, &error("this coordinator takes no TCP connections"));
        return false;
    };
    let mut nonce = [0u8; 32];
    if crate::random::fill(&mut nonce).is_err() {
        send(link, &error("the coordinator cannot draw a challenge"));
        return false;
    }
    if link.send(&Message::new(auth::CHALLENGE).with("nonce", auth::to_hex(&nonce))).is_err() {
        return false;
    }
    let _ = link.stream.set_read_timeout(Some(AUTH_TIMEOUT));
    let answer = read_message(reader);
    let _ = link.stream.set_read_timeout(None);
    let refusal = match answer {
        Ok(Some(m)) if m.verb == auth::AUTH => match m.get("proof") {
            Some(p) if auth::verify(secret, &nonce, p) => None,
            _ => Some(
                "wrong secret: prove the secret in the checkpoint directory's .stasis-coord-secret \
                 (or STASIS_COORD_SECRET)"
                    .to_string(),
            ),
        },
        Ok(Some(m)) => Some(format!(
            "authentication required: answer the challenge with AUTH proof=<hmac>, not {} \
             (the secret is in the checkpoint directory's .stasis-coord-secret)",
            m.verb
        )),
        Ok(None) => return false,
        Err(why) => Some(why),
    };
    match refusal {
        None => link.send(&Message::new(proto::OK)).is_ok(),
        Some(why) => {
            crate::warn(&format!("refused a connection from {peer}: {}", why.split(':').next().unwrap_or(&why)));
            send(link, &error(why));
            false
        }
    }
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

/// Carries out one client command and returns the answer.
pub(crate) fn command(shared: &Shared, msg: &Message) -> Message {
    match msg.get("what") {
        Some("checkpoint") => {
            let started_only = msg.get("wait") == Some("started");
            let (tx, rx) = mpsc::channel();
            {
                let mut st = shared.lock();
                if st.shutdown {
                    return error("the coordinator is shutting down");
                }
                st.waiters.push(Waiter { tx, started_only });
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
        Some("kill") => Message::new(proto::OK).with("processes", kill_all(shared)),
        Some("quit") => {
            let if_idle = msg.get("if_idle") == Some("1");
            {
                let mut st = shared.lock();
                if if_idle {
                    let live = st.live_agents();
                    if live + st.pending_conns() > 0 {
                        return Message::new(proto::OK).with("quit", 0).with("processes", live);
                    }
                }
                st.quit = true;
                shared.changed.notify_all();
            }
            Message::new(proto::OK).with("quit", 1).with("processes", kill_all(shared))
        }
        Some(other) => error(format!("unknown command {other:?}")),
        None => error("COMMAND needs what=checkpoint|status|interval|kill|quit"),
    }
}

/// Sends KILL to every agent; returns how many there were.
fn kill_all(shared: &Shared) -> usize {
    let targets: Vec<_> = shared.lock().agents.iter().map(|a| a.link.clone()).collect();
    let line = Message::new(KILL);
    for link in &targets {
        let _ = link.send(&line);
    }
    targets.len()
}
