//! The checkpoint thread's loop: obey the coordinator.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use stasis_proto::{self as proto, Message};

use crate::ckpt::{self, Outcome, Request};
use crate::{signals, sys};

fn log(msg: &str) {
    sys::write_stderr(format!("stasis agent[{}]: {msg}\n", sys::getpid()).as_bytes());
}

/// Blocks every signal in the calling thread except the checkpoint signal,
/// so that the program's signals are delivered to the program's threads.
fn block_program_signals(sig: i32) {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigdelset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn hello(restored: bool, generation: u64, computation: u64) -> Message {
    let name = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    Message::new(proto::HELLO)
        .with("pid", sys::getpid())
        .with("name", name.trim_end())
        .with("restored", restored as u8)
        .with("computation", format!("{computation:x}"))
        .with("generation", generation)
}

pub fn run(socket: PathBuf) {
    let sig = signals::CKPT_SIGNAL.load(Ordering::Acquire);
    block_program_signals(sig);
    signals::CT_TID.store(sys::gettid(), Ordering::Release);
    let stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            log(&format!("cannot reach the coordinator at {}: {e}; running without checkpoints", socket.display()));
            return;
        }
    };
    let fd = stream.as_raw_fd();
    let mut interval_s = 0u32;
    let mut generation = 0u64;
    let mut computation = 0u64;
    let mut greeting = hello(false, 0, 0);
    'connection: loop {
        let mut writer = &stream;
        if writer.write_all(greeting.encode().as_bytes()).is_err() {
            return;
        }
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return, // coordinator gone: the program runs on
                Ok(_) => {}
            }
            let Ok(msg) = Message::decode(&line) else {
                log(&format!("ignoring a bad line from the coordinator: {:?}", line.trim_end()));
                continue;
            };
            match msg.verb.as_str() {
                proto::CHECKPOINT => {
                    let generation_no: u64 = msg.get_parsed("generation").unwrap_or(generation + 1);
                    interval_s = msg.get_parsed("interval").unwrap_or(interval_s);
                    if let Some(id) = msg.get("computation").and_then(|c| u64::from_str_radix(c, 16).ok()) {
                        computation = id;
                    }
                    let Some(dir) = msg.get("dir") else {
                        let _ = writer.write_all(
                            Message::new(proto::FAILED)
                                .with("generation", generation_no)
                                .with("reason", "no dir")
                                .encode()
                                .as_bytes(),
                        );
                        continue;
                    };
                    let req = Request {
                        generation: generation_no,
                        computation,
                        dir: PathBuf::from(dir),
                        agent_fd: fd,
                        interval_s,
                    };
                    let reply = match ckpt::checkpoint(req) {
                        Ok(Outcome::Written { image, bytes, pause }) => {
                            generation = generation_no;
                            Message::new(proto::WRITTEN)
                                .with("generation", generation_no)
                                .with("image", image)
                                .with("bytes", bytes)
                                .with("pause_us", pause.as_micros())
                        }
                        Ok(Outcome::Restored { generation: g }) => {
                            // The descriptor now holds a new connection to
                            // the restart's coordinator: greet it afresh.
                            generation = g;
                            greeting = hello(true, g, computation);
                            continue 'connection;
                        }
                        Err(reason) => {
                            log(&format!("checkpoint {generation_no} failed: {reason}"));
                            Message::new(proto::FAILED).with("generation", generation_no).with("reason", reason)
                        }
                    };
                    if writer.write_all(reply.encode().as_bytes()).is_err() {
                        return;
                    }
                }
                "KILL" => {
                    let _ = sys::kill(sys::getpid(), libc::SIGKILL);
                }
                _ => {}
            }
        }
    }
}
