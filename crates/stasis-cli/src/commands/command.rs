//! `stasis command` (and `dmtcp_command`): requests to a running
//! coordinator, the answers printed for people or as JSON.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use stasis_coord::client;
use stasis_proto::{self as proto, Message};

use super::WithCode;
use crate::coord_socket::{self, CoordOpts, Target};
use crate::exit::Exit;
use crate::output::print;
use crate::reach::{self, Reached};

pub(crate) mod dmtcp_json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Checkpoint and wait until the generation is committed.
    Checkpoint,
    /// Same, under the name DMTCP gives it (`--bcheckpoint`).
    BlockingCheckpoint,
    /// Start a checkpoint and return once it has begun (`dmtcp_command -c`).
    StartCheckpoint,
    /// Checkpoint, wait for the commit, then kill (`--kcheckpoint`).
    CheckpointThenKill,
    Status,
    /// The processes only.
    List,
    Interval(u32),
    Kill,
    /// Kill the computation and end the coordinator.
    Quit,
    /// A command line dmtcp_command could not read, with `--json`: the
    /// answer says so in DMTCP's schema (without `--json` it is a usage
    /// error before anything runs).
    Invalid,
}

impl Action {
    pub(crate) fn what(self) -> &'static str {
        match self {
            Action::Checkpoint | Action::BlockingCheckpoint | Action::StartCheckpoint | Action::CheckpointThenKill => {
                "checkpoint"
            }
            Action::Status | Action::List => "status",
            Action::Interval(_) => "interval",
            Action::Kill => "kill",
            Action::Quit => "quit",
            Action::Invalid => "invalid",
        }
    }

    pub(crate) fn request(self) -> Message {
        let m = Message::new(proto::COMMAND).with("what", self.what());
        match self {
            Action::Interval(s) => m.with("seconds", s),
            Action::StartCheckpoint => m.with("wait", "started"),
            // One step in the coordinator: the program is held stopped from
            // its snapshot until it is killed.
            Action::CheckpointThenKill => m.with("then", "kill"),
            _ => m,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOpts {
    pub coord: CoordOpts,
    pub action: Action,
    pub json: bool,
    /// Where to look for the computation's secret when the coordinator is
    /// reached over TCP (after STASIS_COORD_SECRET).
    pub secret_dirs: Vec<PathBuf>,
    /// Called as dmtcp_command: the status also says NUM_PEERS=..., as
    /// scripts written for DMTCP look for.
    pub dmtcp: bool,
}

pub fn run(opts: CommandOpts) -> Result<Exit> {
    if opts.dmtcp && opts.json {
        return dmtcp_json::run(&opts);
    }
    // DMTCP's dmtcp_command exits 2 when the command did not succeed.
    let failure = if opts.dmtcp { 2 } else { 1 };
    let reached = find(&opts).map_err(|e| WithCode(failure, format!("{e:#}")))?;
    let action = opts.action;
    let reply = client::ask(&reached.stream, &action.request())
        .with_context(|| format!("talking to the coordinator at {}", reached.addr))?;
    let ok = reply.verb == proto::OK;
    if opts.json {
        print(&format!("{}\n", to_json(&reply)))?;
    } else if ok {
        let mut text = human(action, &reply, unix_now());
        if opts.dmtcp && action == Action::Status {
            text = format!("{}{text}", dmtcp_keys(&reply));
        }
        print(&text)?;
    } else {
        let reason = reply.get("reason").unwrap_or("no reason given");
        eprintln!("stasis: {} failed: {reason}", action.what());
    }
    if !ok {
        return Ok(Exit::Code(failure));
    }
    // A kill or quit that could not confirm every process gone.
    if let Some(n) = reply.get("survivors").filter(|n| *n != "0") {
        eprintln!("stasis: {n} process(es) of the computation did not end when told (still connected)");
        return Ok(Exit::Code(failure));
    }
    Ok(Exit::Code(0))
}

/// The computation's coordinator, where coord_socket.rs says to look:
/// what is named, else the checkpoint directory's (`--ckptdir`), else the
/// current directory's, then port 7779's socket.
pub(crate) fn find(opts: &CommandOpts) -> Result<Reached> {
    let ckpt = opts.coord.ckpt_dir.as_deref().map(coord_socket::canonical_dir).transpose()?;
    let cwd = std::env::current_dir().ok().and_then(|d| d.canonicalize().ok());
    let targets = coord_socket::command_targets(&opts.coord, ckpt.as_deref(), cwd.as_deref())?;
    let mut tried = Vec::new();
    for t in &targets {
        match reach::reach(t, &opts.secret_dirs)? {
            Ok(r) => return Ok(r),
            Err(why) => tried.push(why),
        }
    }
    if let [one] = &tried[..] {
        bail!("{one}");
    }
    let places: Vec<String> = targets.iter().map(Target::describe).collect();
    bail!(
        "no coordinator at {}: is the computation running? name it with --ckptdir DIR, -p PORT or --coord-socket PATH",
        places.join(", nor at ")
    )
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The lines of DMTCP's status that scripts look for.
fn dmtcp_keys(reply: &Message) -> String {
    let get = |k: &str| reply.get(k).unwrap_or("0");
    format!(
        "NUM_PEERS={}\nRUNNING={}\nCKPT_INTERVAL={}\n",
        get("processes"),
        if get("state") == "running" && get("processes") != "0" { "yes" } else { "no" },
        get("interval")
    )
}

/// Fields of one process in a status answer: `proc.<i>.<key>`.
fn processes(reply: &Message) -> Vec<Vec<(&str, &str)>> {
    let mut out: Vec<Vec<(&str, &str)>> = Vec::new();
    for (k, v) in &reply.fields {
        let Some((i, key)) = k.strip_prefix("proc.").and_then(|r| r.split_once('.')) else {
            continue;
        };
        let Ok(i) = i.parse::<usize>() else { continue };
        if out.len() <= i {
            out.resize_with(i + 1, Vec::new);
        }
        out[i].push((key, v.as_str()));
    }
    out
}

/// One process of a status answer, for people.
fn process_line(p: &[(&str, &str)]) -> String {
    let field = |k: &str| p.iter().find(|(key, _)| *key == k).map_or("?", |(_, v)| *v);
    let mut l = format!("  pid {} {}", field("pid"), field("name"));
    if field("restored") == "1" {
        l.push_str(" (restored)");
    }
    for (k, v) in p {
        if !matches!(*k, "pid" | "name" | "restored") {
            l.push_str(&format!(" {k}={v}"));
        }
    }
    l.push('\n');
    l
}

/// The answer for people.
pub(crate) fn human(action: Action, reply: &Message, now: u64) -> String {
    let get = |k: &str| reply.get(k).unwrap_or("?");
    match action {
        Action::StartCheckpoint => format!(
            "checkpoint started: generation {} ({} process{})\n",
            get("generation"),
            get("processes"),
            if get("processes") == "1" { "" } else { "es" }
        ),
        Action::Quit => match get("quit") {
            "1" => format!("the coordinator quits; kill sent to {} process(es)\n", get("processes")),
            _ => format!("the coordinator stays: {} process(es) still connected\n", get("processes")),
        },
        Action::List => {
            let procs = processes(reply);
            if procs.is_empty() {
                return "no process connected\n".to_string();
            }
            procs.iter().map(|p| process_line(p)).collect()
        }
        Action::Checkpoint | Action::BlockingCheckpoint => format!(
            "checkpoint committed: generation {} in {} ({} process{})\n",
            get("generation"),
            get("dir"),
            get("processes"),
            if get("processes") == "1" { "" } else { "es" }
        ),
        Action::CheckpointThenKill => format!(
            "checkpoint committed: generation {} in {} ({} process{}); kill sent to {} process(es)\n",
            get("generation"),
            get("dir"),
            get("processes"),
            if get("processes") == "1" { "" } else { "es" },
            get("killed")
        ),
        Action::Invalid => String::new(),
        Action::Interval(_) => match get("interval") {
            "0" => "checkpoint interval: none (checkpoints on request only)\n".to_string(),
            s => format!("checkpoint interval: {s} s\n"),
        },
        Action::Kill => format!("kill sent to {} process(es)\n", get("processes")),
        Action::Status => {
            let mut s = String::new();
            let line = |s: &mut String, k: &str, v: &str| s.push_str(&format!("{k:<17}{v}\n"));
            line(&mut s, "state:", get("state"));
            line(&mut s, "processes:", get("processes"));
            line(&mut s, "computation:", get("computation"));
            line(&mut s, "checkpoint dir:", get("ckptdir"));
            if let Some(port) = reply.get("port") {
                line(&mut s, "port:", port);
            }
            if let Some(socket) = reply.get("socket") {
                line(&mut s, "socket:", socket);
            }
            let interval = match get("interval") {
                "0" => "none".to_string(),
                i => format!("{i} s"),
            };
            line(&mut s, "interval:", &interval);
            let last = match (get("generation"), reply.get_parsed::<u64>("last_checkpoint")) {
                ("0", _) => "none".to_string(),
                (g, Some(t)) if t > 0 => format!("generation {g}, {} s ago", now.saturating_sub(t)),
                (g, _) => format!("generation {g} (before this coordinator)"),
            };
            line(&mut s, "last checkpoint:", &last);
            if let Some(e) = reply.get("last_error") {
                line(&mut s, "last error:", e);
            }
            for p in processes(reply) {
                s.push_str(&process_line(&p));
            }
            s
        }
    }
}

/// Fields whose values are text even when they look like numbers.
const TEXT_FIELDS: [&str; 9] =
    ["reason", "dir", "ckptdir", "state", "computation", "name", "image", "last_error", "socket"];

/// The answer as one JSON object: `ok`, the fields, and for a status the
/// processes as an array of objects.
fn to_json(reply: &Message) -> String {
    let mut members = vec![format!("\"ok\":{}", reply.verb == proto::OK)];
    for (k, v) in &reply.fields {
        if !k.starts_with("proc.") {
            members.push(format!("{}:{}", json_string(k), json_value(k, v)));
        }
    }
    let procs = processes(reply);
    if !procs.is_empty() || reply.get("processes").is_some() && reply.get("state").is_some() {
        let items: Vec<String> = procs
            .iter()
            .map(|p| {
                let fields: Vec<String> =
                    p.iter().map(|(k, v)| format!("{}:{}", json_string(k), json_value(k, v))).collect();
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        members.push(format!("\"process_list\":[{}]", items.join(",")));
    }
    format!("{{{}}}", members.join(","))
}

fn json_value(key: &str, v: &str) -> String {
    let numeric = !TEXT_FIELDS.contains(&key)
        && !v.is_empty()
        && v.len() <= 19
        && v.bytes().all(|b| b.is_ascii_digit())
        && (v == "0" || !v.starts_with('0'));
    if numeric { v.to_string() } else { json_string(v) }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Message {
        Message::new("OK")
            .with("processes", 1)
            .with("state", "running")
            .with("interval", 60)
            .with("generation", 3)
            .with("last_checkpoint", 1000)
            .with("computation", "0000000000001234")
            .with("ckptdir", "/ck \"dir\"")
            .with("proc.0.pid", 42)
            .with("proc.0.name", "007")
            .with("proc.0.restored", 1)
            .with("proc.0.bytes", 4096)
    }

    #[test]
    fn json_of_a_status() {
        assert_eq!(
            to_json(&status()),
            "{\"ok\":true,\"processes\":1,\"state\":\"running\",\"interval\":60,\"generation\":3,\
             \"last_checkpoint\":1000,\"computation\":\"0000000000001234\",\"ckptdir\":\"/ck \\\"dir\\\"\",\
             \"process_list\":[{\"pid\":42,\"name\":\"007\",\"restored\":1,\"bytes\":4096}]}"
        );
        let err = Message::new("ERROR").with("reason", "no process connected");
        assert_eq!(to_json(&err), "{\"ok\":false,\"reason\":\"no process connected\"}");
        assert_eq!(json_value("x", "0123"), "\"0123\"");
        assert_eq!(json_value("x", "99999999999999999999"), "\"99999999999999999999\"");
        assert_eq!(json_string("a\u{1}\tb"), "\"a\\u0001\\tb\"");
    }

    #[test]
    fn status_for_people() {
        let text = human(Action::Status, &status(), 1012);
        assert!(text.contains("interval:        60 s"), "{text}");
        assert!(text.contains("generation 3, 12 s ago"), "{text}");
        assert!(text.contains("  pid 42 007 (restored) bytes=4096"), "{text}");
        let ck = Message::new("OK").with("generation", 4).with("dir", "/ck/gen-000004").with("processes", 1);
        assert_eq!(
            human(Action::Checkpoint, &ck, 0),
            "checkpoint committed: generation 4 in /ck/gen-000004 (1 process)\n"
        );
    }
}
