//! `stasis`: launch, restart, command, coordinator, inspect, job; and, called
//! by those names, `dmtcp_launch`, `dmtcp_restart`, `dmtcp_command` and
//! `dmtcp_coordinator`. See docs/architecture.md for the whole story,
//! docs/protocol.md for what the coordinator speaks, and
//! docs/dmtcp-compatibility.md for the DMTCP names.
//!
//! Errors go to stderr as one line, `stasis: ...`, and exit 1 (usage and
//! configuration errors alike); launch and restart otherwise exit as the
//! program did.

mod agent_lib;
mod cli;
mod commands;
mod coord_socket;
mod dmtcp;
mod exit;
mod nocheckpoint;
mod output;
mod pty;
mod reach;
mod signals;
mod slurm;
mod task_rank;

use std::ffi::OsString;

use cli::{NotRun, Parsed, Verb};
use commands::WithCode;
use exit::Exit;

pub use dmtcp::Name as DmtcpName;

/// `dmtcp_nocheckpoint PROGRAM...`: the program outside the computation
/// (`nocheckpoint.rs`), whatever the binary is called.
pub fn nocheckpoint_main() -> ! {
    let args: Vec<OsString> = std::env::args_os().collect();
    std::process::exit(nocheckpoint::run(&args))
}

/// The entry point of every binary: `stasis`, and the DMTCP names. The
/// name it was called by (argv[0]) decides, so that a symbolic link named
/// dmtcp_launch works, and so that stasis can run itself as `stasis ...`
/// whichever binary it is; any other name gets `default`, the binary's own.
pub fn main_as(default: Option<DmtcpName>) -> ! {
    let args: Vec<OsString> = std::env::args_os().collect();
    let called = args.first().map(|a| std::path::Path::new(a).file_name().unwrap_or(a.as_os_str()));
    if called.is_some_and(|c| c == "dmtcp_nocheckpoint") {
        std::process::exit(nocheckpoint::run(&args));
    }
    let name = match called {
        Some(c) if c == "stasis" => None,
        Some(c) => DmtcpName::from_program(c).or(default),
        None => default,
    };
    let parsed = match name {
        Some(n) => dmtcp::parse(n, args, &cli::real_env),
        None => cli::parse(args, &cli::real_env),
    };
    let exit = match parsed {
        Ok(parsed) => {
            if !parsed.quiet() {
                for n in &parsed.notes {
                    commands::note(false, n);
                }
            }
            run(parsed).unwrap_or_else(|e| {
                let code = e.downcast_ref::<WithCode>().map_or(1, |w| w.0);
                eprintln!("stasis: {}", one_line(&chain(&e)));
                Exit::Code(code)
            })
        }
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

fn run(parsed: Parsed) -> anyhow::Result<Exit> {
    match parsed.verb {
        Verb::Launch(o) => commands::launch::run(o),
        Verb::Restart(o) => commands::restart::run(o),
        Verb::Command(o) => commands::command::run(o),
        Verb::Coordinator(o) => commands::coordinator::run(o),
        Verb::Inspect(o) => commands::inspect::run(o),
        Verb::Job(o) => commands::job::run(o),
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
