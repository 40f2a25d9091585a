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
pub const SUSPENDED: &str = "SUSPENDED";
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
    fn rejects_garbage() {
        assert!(Message::decode("lower case").is_err());
        assert!(Message::decode("HELLO novalue").is_err());
        assert!(Message::decode("HELLO a=%G1").is_err());
        assert!(Message::decode("").is_err());
    }
}
