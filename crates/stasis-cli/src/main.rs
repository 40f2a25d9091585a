//! `stasis`: launch, restart, command, inspect. See docs/architecture.md
//! for the whole story and docs/protocol.md for what the coordinator speaks.
//!
//! Errors go to stderr as one line, `stasis: ...`, and exit 1 (usage and
//! configuration errors alike); launch and restart otherwise exit as the
//! program did.

mod agent_lib;
mod cli;
mod commands;
mod coord_socket;
mod exit;
mod output;
mod signals;

use cli::{NotRun, Verb};
use commands::WithCode;
use exit::Exit;

fn main() {
    let exit = match cli::parse(std::env::args_os()) {
        Ok(verb) => run(verb).unwrap_or_else(|e| {
            let code = e.downcast_ref::<WithCode>().map_or(1, |w| w.0);
            eprintln!("stasis: {}", one_line(&chain(&e)));
            Exit::Code(code)
        }),
        Err(NotRun::Asked(text)) => {
            let _ = output::print(&text);
            Exit::Code(0)
        }
        Err(NotRun::Usage(msg)) => {
            eprintln!("stasis: {msg}");
            Exit::Code(1)
        }
    };
    exit.leave()
}

fn run(verb: Verb) -> anyhow::Result<Exit> {
    match verb {
        Verb::Launch(o) => commands::launch::run(o),
        Verb::Restart(o) => commands::restart::run(o),
        Verb::Command(o) => commands::command::run(o),
        Verb::Inspect(o) => commands::inspect::run(o),
    }
}

/// The error and its causes, `a: b: c`, leaving out a cause that an outer
/// message already quotes (stasis_image errors include their io::Error).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Error messages stay on one line, whatever a lower layer put in them.
fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}
