//! `dmtcp_command --json`: the answer in DMTCP's schema, which DMTCP's
//! test harness and scripts written for DMTCP read: `schema_version` 1,
//! `command` and `command_status` under DMTCP's names, the coordinator's
//! host and port as asked for, then the command's own fields. Exit status
//! 0 on `DMT_COORD_SUCCESS`, else 2, with nothing on stderr. (`stasis
//! command --json` keeps stasis's own schema.)

use anyhow::Result;
use stasis_coord::client;
use stasis_proto::{self as proto, Message};

use super::{Action, CommandOpts, find, json_string, process_line, processes};
use crate::exit::Exit;
use crate::output::print;

/// DMTCP's default port: what it reports when none is named.
const DEFAULT_PORT: u16 = 7779;

pub(crate) const SUCCESS: &str = "DMT_COORD_SUCCESS";
const NOT_FOUND: &str = "DMT_COORD_NOT_FOUND";
const NOT_RUNNING: &str = "DMT_COORD_NOT_RUNNING";
const INVALID: &str = "DMT_COORD_INVALID_COMMAND";
/// Not one of DMTCP's: a checkpoint, kill or quit that failed for a
/// reason DMTCP has no name for (the image could not be written, a
/// process did not die); `reason` says which.
const FAILED: &str = "DMT_COORD_ERROR";

/// The coordinator's answers that DMTCP calls "not running": nothing to
/// checkpoint (these are the coordinator's reasons, stasis-coord/driver.rs).
const NOT_RUNNING_REASONS: [&str; 2] = ["no process connected", "the coordinator is shutting down"];

/// DMTCP's name for a command.
pub(crate) fn command_name(action: Action) -> &'static str {
    match action {
        Action::Status => "DMT_STATUS",
        Action::List => "DMT_LIST",
        Action::StartCheckpoint | Action::Checkpoint => "DMT_CHECKPOINT",
        Action::BlockingCheckpoint => "DMT_BLOCKING_CKPT",
        Action::CheckpointThenKill => "DMT_KILL_AFTER_CKPT",
        Action::Interval(_) => "DMT_UPDATE_CKPT_INTERVAL",
        Action::Kill => "DMT_KILL",
        Action::Quit => "DMT_QUIT",
        Action::Invalid => "DMT_INVALID_COORDINATOR_COMMAND",
    }
}

/// One JSON object, its members in order.
struct Answer(Vec<String>);

impl Answer {
    fn new(command: &str, status: &str) -> Answer {
        let mut a = Answer(Vec::new());
        a.num("schema_version", 1);
        a.text("command", command);
        a.text("command_status", status);
        a
    }

    fn text(&mut self, key: &str, value: &str) {
        self.0.push(format!("{}:{}", json_string(key), json_string(value)));
    }

    fn num(&mut self, key: &str, value: u64) {
        self.0.push(format!("{}:{value}", json_string(key)));
    }

    fn flag(&mut self, key: &str, value: bool) {
        self.0.push(format!("{}:{value}", json_string(key)));
    }

    fn coordinator(&mut self, host: &str, port: u16) {
        self.text("coordinator_host", host);
        self.num("coordinator_port", port.into());
    }

    fn line(&self) -> String {
        format!("{{{}}}\n", self.0.join(","))
    }
}

/// The coordinator as dmtcp_command reports it: the host and port asked
/// for, else DMTCP's defaults.
fn shown(opts: &CommandOpts) -> (&str, u16) {
    (opts.coord.host.as_deref().unwrap_or("localhost"), opts.coord.port.unwrap_or(DEFAULT_PORT))
}

/// `--help` (also `-h`, `h`, `?`) with `--json`.
pub(crate) fn help(host: &str, port: u16) -> String {
    let mut a = Answer::new("DMT_HELP", SUCCESS);
    a.coordinator(host, port);
    a.line()
}

/// `--version` with `--json`.
pub(crate) fn version(text: &str) -> String {
    let mut a = Answer::new("DMT_VERSION", SUCCESS);
    a.text("version", text);
    a.line()
}

pub(super) fn run(opts: &CommandOpts) -> Result<Exit> {
    let (text, code) = answer(opts);
    print(&text)?;
    Ok(Exit::Code(code))
}

fn answer(opts: &CommandOpts) -> (String, i32) {
    let (host, port) = shown(opts);
    let command = command_name(opts.action);
    let fail = |status: &str, reason: Option<&str>| {
        let mut a = Answer::new(command, status);
        a.coordinator(host, port);
        if let Some(r) = reason {
            a.text("reason", r);
        }
        (a.line(), 2)
    };
    if opts.action == Action::Invalid {
        return fail(INVALID, None);
    }
    let reached = match find(opts) {
        Ok(r) => r,
        Err(e) => return fail(NOT_FOUND, Some(&format!("{e:#}").replace('\n', " "))),
    };
    let reply = match client::ask(&reached.stream, &opts.action.request()) {
        Ok(r) => r,
        Err(e) => return fail(NOT_FOUND, Some(&format!("talking to the coordinator at {}: {e}", reached.addr))),
    };
    from_reply(opts.action, &reply, host, port)
}

/// The coordinator's answer in DMTCP's schema, and the exit status.
fn from_reply(action: Action, reply: &Message, host: &str, port: u16) -> (String, i32) {
    let command = command_name(action);
    if reply.verb != proto::OK {
        let reason = reply.get("reason").unwrap_or("no reason given");
        let status = if NOT_RUNNING_REASONS.contains(&reason) { NOT_RUNNING } else { FAILED };
        let mut a = Answer::new(command, status);
        a.coordinator(host, port);
        a.text("reason", reason);
        return (a.line(), 2);
    }
    let number = |k: &str| reply.get_parsed::<u64>(k).unwrap_or(0);
    let survivors = number("survivors");
    let mut a = Answer::new(command, if survivors == 0 { SUCCESS } else { FAILED });
    a.coordinator(host, port);
    match action {
        Action::Status => {
            let peers = number("processes");
            a.num("num_peers", peers);
            a.flag("running", peers > 0 && reply.get("state") == Some("running"));
            a.num("checkpoint_interval", number("interval"));
        }
        Action::List => {
            let workers: String = processes(reply).iter().map(|p| process_line(p)).collect();
            a.text("workers", &workers);
        }
        Action::StartCheckpoint | Action::Checkpoint | Action::BlockingCheckpoint | Action::CheckpointThenKill => {
            a.num("num_peers", number("processes"));
        }
        Action::Interval(_) => a.num("checkpoint_interval", number("interval")),
        Action::Kill | Action::Quit | Action::Invalid => {}
    }
    if survivors != 0 {
        a.text("reason", &format!("{survivors} process(es) of the computation did not end when told"));
        return (a.line(), 2);
    }
    (a.line(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"key":value` is in the object.
    #[track_caller]
    fn has(line: &str, members: &[&str]) {
        assert!(line.starts_with("{\"schema_version\":1,") && line.ends_with("}\n"), "{line}");
        for m in members {
            assert!(line.contains(m), "{m} not in {line}");
        }
    }

    #[test]
    fn a_status_in_dmtcp_schema() {
        let reply = Message::new(proto::OK).with("processes", 2).with("state", "running").with("interval", 60);
        let (line, code) = from_reply(Action::Status, &reply, "localhost", 7779);
        assert_eq!(code, 0);
        assert_eq!(
            line,
            "{\"schema_version\":1,\"command\":\"DMT_STATUS\",\"command_status\":\"DMT_COORD_SUCCESS\",\
             \"coordinator_host\":\"localhost\",\"coordinator_port\":7779,\"num_peers\":2,\"running\":true,\
             \"checkpoint_interval\":60}\n"
        );
        // No process: not running, whatever the state.
        let idle = Message::new(proto::OK).with("processes", 0).with("state", "running").with("interval", 0);
        has(&from_reply(Action::Status, &idle, "h", 1).0, &["\"num_peers\":0,\"running\":false"]);
    }

    #[test]
    fn errors_in_dmtcp_schema() {
        let none = Message::new(proto::ERROR).with("reason", "no process connected");
        let (line, code) = from_reply(Action::StartCheckpoint, &none, "localhost", 5);
        assert_eq!(code, 2);
        has(&line, &["\"command\":\"DMT_CHECKPOINT\"", "\"command_status\":\"DMT_COORD_NOT_RUNNING\""]);
        for absent in ["\"ok\"", "\"type\"", "\"phase\"", "num_peers"] {
            assert!(!line.contains(absent), "{absent} in {line}");
        }
        let failed = Message::new(proto::ERROR).with("reason", "pid 4 (a) failed: disk full");
        let (line, code) = from_reply(Action::CheckpointThenKill, &failed, "localhost", 5);
        assert_eq!(code, 2);
        has(
            &line,
            &[
                "\"DMT_KILL_AFTER_CKPT\"",
                "\"command_status\":\"DMT_COORD_ERROR\"",
                "\"reason\":\"pid 4 (a) failed: disk full\"",
            ],
        );
        // A kill that left a process behind is no success.
        let kill = Message::new(proto::OK).with("processes", 2).with("survivors", 1);
        let (line, code) = from_reply(Action::Kill, &kill, "localhost", 5);
        assert_eq!(code, 2);
        has(&line, &["\"command_status\":\"DMT_COORD_ERROR\""]);
    }

    #[test]
    fn each_command_its_fields() {
        let ck = Message::new(proto::OK).with("generation", 3).with("dir", "/c/gen-000003").with("processes", 1);
        for (action, name) in [
            (Action::StartCheckpoint, "DMT_CHECKPOINT"),
            (Action::BlockingCheckpoint, "DMT_BLOCKING_CKPT"),
            (Action::CheckpointThenKill, "DMT_KILL_AFTER_CKPT"),
        ] {
            has(&from_reply(action, &ck, "localhost", 5).0, &[&format!("\"command\":\"{name}\""), "\"num_peers\":1"]);
        }
        let (line, _) = from_reply(Action::Interval(7), &Message::new(proto::OK).with("interval", 7), "h", 5);
        has(&line, &["\"DMT_UPDATE_CKPT_INTERVAL\"", "\"checkpoint_interval\":7"]);
        let list = Message::new(proto::OK).with("proc.0.pid", 42).with("proc.0.name", "a");
        has(&from_reply(Action::List, &list, "h", 5).0, &["\"DMT_LIST\"", "\"workers\":\"  pid 42 a\\n\""]);
        has(&from_reply(Action::List, &Message::new(proto::OK), "h", 5).0, &["\"workers\":\"\""]);
        for (action, name) in [(Action::Kill, "DMT_KILL"), (Action::Quit, "DMT_QUIT")] {
            let (line, code) = from_reply(action, &Message::new(proto::OK).with("survivors", 0), "h", 5);
            assert_eq!(code, 0);
            has(&line, &[&format!("\"command\":\"{name}\""), "\"DMT_COORD_SUCCESS\""]);
        }
    }

    #[test]
    fn help_version_and_hosts_escaped() {
        has(
            &help("bad\"host\nname", 1),
            &[
                "\"DMT_HELP\"",
                "\"DMT_COORD_SUCCESS\"",
                "\"coordinator_host\":\"bad\\\"host\\nname\"",
                "\"coordinator_port\":1",
            ],
        );
        has(
            &version("dmtcp_command (DMTCP) 5.0"),
            &["\"command\":\"DMT_VERSION\"", "\"version\":\"dmtcp_command (DMTCP) 5.0\""],
        );
    }
}
