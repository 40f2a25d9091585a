//! The control protocol: one message per line, `VERB key=value key=value`.
//!
//! Text, so that a person can speak it with `socat` while debugging, and
//! without dependencies, because the agent links it into every process of
//! the computation. Values are percent-escaped (`%`, space, `=`, control
//! characters), so any byte string survives. docs/protocol.md lists the verbs.
#![forbid(unsafe_code)]

pub mod auth;

use std::fmt;

/// Longest line a peer may send; longer ones are a protocol error.
pub const MAX_LINE: usize = 64 * 1024;

/// Agent → coordinator, first message on a connection.
pub const HELLO: &str = "HELLO";
/// Coordinator → agent: write your image into `dir` for `generation`.
pub const CHECKPOINT: &str = "CHECKPOINT";
/// Agent → coordinator: the image is written (`image=` file name in dir).
pub const WRITTEN: &str = "WRITTEN";
/// Agent → coordinator: the checkpoint failed (`reason=`); program runs on.
pub const FAILED: &str = "FAILED";
/// Client → coordinator: a command (`what=checkpoint|status|kill|interval`).
pub const COMMAND: &str = "COMMAND";
/// Coordinator → client: success, with fields that depend on the command.
pub const OK: &str = "OK";
/// Coordinator → client: refusal or failure (`reason=`).
pub const ERROR: &str = "ERROR";
/// Coordinator → agent: stop your threads for `generation` (checkpoint
/// phase 1); the agent answers `SUSPENDED`.
pub const SUSPEND: &str = "SUSPEND";
/// Agent → coordinator: every thread of the program is stopped for
/// `generation`. `children=` lists the pids of the process's live children
/// ([`format_pid_list`]), so that the coordinator waits for their agents
/// too: a checkpoint holds the whole process tree or nothing. Sent again,
/// still stopped, to answer `CHILDREN`.
pub const SUSPENDED: &str = "SUSPENDED";
/// Coordinator → agent, while the agent is suspended for `generation`:
/// list your live children again (not zombies, not the exited) and answer
/// `SUSPENDED` with the new list. Sent when a child the agent named has not
/// connected: it may have died before its agent could.
pub const CHILDREN: &str = "CHILDREN";
/// Coordinator → agent: every process is stopped; take the snapshot
/// (phase 2). The agent answers `SNAPSHOTTED` once its writer holds
/// everything the program could still change; the program stays stopped.
pub const SNAPSHOT: &str = "SNAPSHOT";
pub const SNAPSHOTTED: &str = "SNAPSHOTTED";
/// Coordinator → agent: resume the program (phase 3, or an abort before
/// it). No answer; `WRITTEN` or `FAILED` follow once the image is done.
pub const RESUME: &str = "RESUME";
/// Coordinator → agent: where to reconnect if the connection drops
/// (`addr=unix:PATH` or `addr=tcp:HOST:PORT`).
pub const COORDINATOR: &str = "COORDINATOR";
/// Coordinator → agent: kill your own process.
pub const KILL: &str = "KILL";

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub verb: String,
    pub fields: Vec<(String, String)>,
}

/// Why a line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad protocol line: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

impl Message {
    pub fn new(verb: &str) -> Self {
        Message { verb: verb.to_string(), fields: Vec::new() }
    }

    /// Adds a field (builder style).
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// The value of the first field named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as a number or other `FromStr` type.
    pub fn get_parsed<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// The line to send, newline included.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        escape_into(&self.verb, &mut out);
        for (k, v) in &self.fields {
            out.push(' ');
            escape_into(k, &mut out);
            out.push('=');
            escape_into(v, &mut out);
        }
        out.push('\n');
        out
    }

    /// Parses one line (with or without its newline).
    pub fn decode(line: &str) -> Result<Self, ParseError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(ParseError("line too long".into()));
        }
        let mut words = line.split(' ');
        let verb = unescape(words.next().unwrap_or(""))?;
        if verb.is_empty() || !verb.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(ParseError(format!("invalid verb {verb:?}")));
        }
        let mut fields = Vec::new();
        for word in words {
            let (k, v) = word.split_once('=').ok_or_else(|| ParseError(format!("field without '=': {word:?}")))?;
            fields.push((unescape(k)?, unescape(v)?));
        }
        Ok(Message { verb, fields })
    }
}

/// Reads a list of pids (`children=12,15`): comma-separated, possibly
/// empty. An entry that is not a positive pid is left out rather than
/// spoiling the whole list.
pub fn parse_pid_list(value: &str) -> Vec<i32> {
    value.split(',').filter_map(|p| p.trim().parse::<i32>().ok()).filter(|&p| p > 0).collect()
}

/// Writes a list of pids as [`parse_pid_list`] reads it.
pub fn format_pid_list(pids: &[i32]) -> String {
    pids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        if c == '%' || c == ' ' || c == '=' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

fn unescape(s: &str) -> Result<String, ParseError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ParseError(format!("bad escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ParseError(format!("invalid UTF-8 in {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_awkward_values() {
        let m = Message::new(CHECKPOINT).with("dir", "/tmp/a dir/with=signs%and\nnewline").with("generation", 7);
        let line = m.encode();
        assert_eq!(line.matches('\n').count(), 1);
        let back = Message::decode(&line).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.get_parsed::<u64>("generation"), Some(7));
    }

    #[test]
    fn pid_lists() {
        assert_eq!(parse_pid_list(""), Vec::<i32>::new());
        assert_eq!(parse_pid_list("12"), [12]);
        assert_eq!(parse_pid_list("12,15"), [12, 15]);
        // Bad entries are dropped, the good ones kept.
        assert_eq!(parse_pid_list("12,,x,-3,0,15,"), [12, 15]);
        assert_eq!(format_pid_list(&[]), "");
        assert_eq!(format_pid_list(&[12, 15]), "12,15");
        let m = Message::new(SUSPENDED).with("generation", 3).with("children", format_pid_list(&[7, 9]));
        let back = Message::decode(&m.encode()).unwrap();
        assert_eq!(back.get("children").map(parse_pid_list), Some(vec![7, 9]));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Message::decode("lower case").is_err());
        assert!(Message::decode("HELLO novalue").is_err());
        assert!(Message::decode("HELLO a=%G1").is_err());
        assert!(Message::decode("").is_err());
    }
}
