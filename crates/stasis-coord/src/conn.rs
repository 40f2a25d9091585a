//! One thread per connection. The first line says who the peer is: an
//! agent (`HELLO`) or a client (`COMMAND`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, PoisonError, mpsc};

use stasis_proto::{self as proto, MAX_LINE, Message};

use crate::socket;
use crate::state::{Agent, Progress, Shared, State, error};

/// Registers a new connection and starts its thread. Refused (closed) once
/// shutdown has begun, so that shutdown knows every connection to close.
pub(crate) fn start(shared: &Arc<Shared>, stream: UnixStream) {
    match socket::peer_uid(&stream) {
        Ok(uid) if uid == socket::my_uid() => {}
        Ok(uid) => {
            send(&stream, &error(format!("uid {uid} may not use this coordinator")));
            return;
        }
        Err(e) => {
            send(&stream, &error(format!("cannot tell who you are: {e}")));
            return;
        }
    }
    let stream = Arc::new(stream);
    let conn = {
        let mut st = shared.lock();
        if st.shutdown {
            return;
        }
        let conn = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(conn, stream.clone());
        conn
    };
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("stasis-coord-conn".into())
        .spawn(move || serve(&thread_shared, conn, &stream));
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock().unwrap_or_else(PoisonError::into_inner);
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
        Err(e) => {
            crate::warn(&format!("cannot start a thread for a new connection: {e}"));
            if let Some(s) = shared.lock().conns.remove(&conn) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

type Reader<'a> = BufReader<&'a UnixStream>;

/// Coordinator → agent: kill your own process. (Sent to the agent rather
/// than by kill(2), because a restored process's pid belongs to another pid
/// namespace.)
pub const KILL: &str = "KILL";

/// How long a write to an agent may block before the agent counts as gone.
const AGENT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn serve(shared: &Shared, conn: u64, stream: &Arc<UnixStream>) {
    let mut reader = BufReader::new(&**stream);
    match read_message(&mut reader) {
        Ok(Some(m)) if m.verb == proto::HELLO => serve_agent(shared, conn, stream, &mut reader, &m),
        Ok(Some(m)) if m.verb == proto::COMMAND => serve_client(shared, stream, &mut reader, m),
        Ok(Some(m)) => send(stream, &error(format!("expected HELLO or COMMAND, not {}", m.verb))),
        Ok(None) => {}
        Err(why) => send(stream, &error(why)),
    }
    let _ = stream.shutdown(Shutdown::Both);
    shared.lock().conns.remove(&conn);
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

fn send(mut stream: &UnixStream, m: &Message) {
    let _ = stream.write_all(m.encode().as_bytes());
}

/// What an agent's HELLO says about it.
fn greet(st: &mut State, conn: u64, stream: &Arc<UnixStream>, hello: &Message) -> Result<(), String> {
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
    if restored && computation != 0 {
        st.computation_id = computation;
    }
    st.reported_generation = st.reported_generation.max(generation);
    let name = hello.get("name").unwrap_or("").to_string();
    match st.agents.iter_mut().find(|a| a.conn == conn) {
        // A second HELLO on one connection updates what we know.
        Some(a) => {
            (a.pid, a.name, a.restored, a.generation) = (pid, name, restored, generation);
        }
        None => {
            st.agents.push(Agent { conn, pid, name, restored, generation, stream: stream.clone(), stats: Vec::new() })
        }
    }
    Ok(())
}

fn serve_agent(shared: &Shared, conn: u64, stream: &Arc<UnixStream>, reader: &mut Reader<'_>, hello: &Message) {
    // A stuck agent must not block the coordinator's writes for long.
    let _ = stream.set_write_timeout(Some(AGENT_WRITE_TIMEOUT));
    let mut msg = hello.clone();
    let why_gone = loop {
        let outcome = {
            let mut st = shared.lock();
            let outcome = match msg.verb.as_str() {
                proto::HELLO => greet(&mut st, conn, stream, &msg),
                proto::WRITTEN => written(&mut st, conn, &msg),
                proto::FAILED => {
                    let reason = msg.get("reason").unwrap_or("no reason given").to_string();
                    st.record(conn, msg.get_parsed("generation"), Progress::Failed(reason));
                    Ok(())
                }
                other => Err(format!("unexpected {other} from an agent")),
            };
            shared.changed.notify_all();
            outcome
        };
        if let Err(why) = outcome {
            send(stream, &error(&why));
            break format!("sent a bad message ({why})");
        }
        msg = match read_message(reader) {
            Ok(Some(m)) => m,
            Ok(None) => break "disconnected".to_string(),
            Err(why) => {
                send(stream, &error(&why));
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
    st.record(conn, Some(generation), Progress::Written { image, stats });
    Ok(())
}

fn serve_client(shared: &Shared, stream: &UnixStream, reader: &mut Reader<'_>, first: Message) {
    let mut msg = first;
    loop {
        if msg.verb != proto::COMMAND {
            send(stream, &error(format!("expected COMMAND, not {}", msg.verb)));
            return;
        }
        send(stream, &command(shared, &msg));
        msg = match read_message(reader) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(why) => {
                send(stream, &error(why));
                return;
            }
        };
    }
}

/// Carries out one client command and returns the answer.
fn command(shared: &Shared, msg: &Message) -> Message {
    match msg.get("what") {
        Some("checkpoint") => {
            let (tx, rx) = mpsc::channel();
            {
                let mut st = shared.lock();
                if st.shutdown {
                    return error("the coordinator is shutting down");
                }
                st.waiters.push(tx);
                shared.changed.notify_all();
            }
            rx.recv().unwrap_or_else(|_| error("the coordinator is shutting down"))
        }
        Some("status") => shared.lock().status(&shared.ckpt_dir),
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
        Some("kill") => {
            let targets: Vec<_> = shared.lock().agents.iter().map(|a| a.stream.clone()).collect();
            let line = Message::new(KILL).encode();
            for s in &targets {
                let _ = (&**s).write_all(line.as_bytes());
            }
            Message::new(proto::OK).with("processes", targets.len())
        }
        Some(other) => error(format!("unknown command {other:?}")),
        None => error("COMMAND needs what=checkpoint|status|interval|kill"),
    }
}
