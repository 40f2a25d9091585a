//! The `stasis` command line, parsed into the plain option structs that
//! the commands take. Parsing stays here, apart from the doing, so that
//! DMTCP's command names and flags can be parsed into the same structs.
//!
//! `launch`, `restart` and `command` take `--help` but not `-h`: DMTCP's
//! commands use `-h` for the coordinator's host.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};

use crate::commands::command::{Action, CommandOpts};
use crate::commands::inspect::InspectOpts;
use crate::commands::launch::LaunchOpts;
use crate::commands::restart::RestartOpts;
use crate::coord_socket::CoordOpts;

/// What to do, with its options.
#[derive(Debug)]
pub enum Verb {
    Launch(LaunchOpts),
    Restart(RestartOpts),
    Command(CommandOpts),
    Inspect(InspectOpts),
}

/// Why the command line is not a command.
#[derive(Debug)]
pub enum NotRun {
    /// Help or version text was asked for: print it on stdout, exit 0.
    Asked(String),
    /// A usage error, in one line.
    Usage(String),
}

#[derive(Parser, Debug)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint and restart unmodified Linux programs",
    color = clap::ColorChoice::Never
)]
struct Cli {
    #[command(subcommand)]
    verb: VerbArgs,
}

#[derive(Subcommand, Debug)]
enum VerbArgs {
    /// Run a program under stasis, checkpointable
    #[command(disable_help_flag = true, override_usage = "stasis launch [OPTIONS] [--] PROGRAM [ARGS]...")]
    Launch(LaunchArgs),
    /// Bring a checkpointed program back
    #[command(disable_help_flag = true)]
    Restart(RestartArgs),
    /// Ask a running computation's coordinator to checkpoint, report, change the interval or kill
    #[command(disable_help_flag = true)]
    Command(CommandArgs),
    /// Show what an image holds
    Inspect(InspectArgs),
}

/// How to reach the coordinator.
#[derive(Args, Debug)]
struct CoordArgs {
    /// The coordinator's port; names its socket (default 7779, or STASIS_COORD_PORT)
    #[arg(short = 'p', long = "coord-port", value_name = "PORT")]
    port: Option<u16>,
    /// The coordinator's socket (default: STASIS_COORD_SOCKET, else from the port)
    #[arg(long = "coord-socket", value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl From<CoordArgs> for CoordOpts {
    fn from(a: CoordArgs) -> Self {
        CoordOpts { socket: a.socket, port: a.port }
    }
}

#[derive(Args, Debug)]
struct LaunchArgs {
    /// Checkpoint every SECONDS (counted from the end of the last checkpoint; 0: only on request)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Where generations are written (created if missing; default: the current directory)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// How many committed generations to keep
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    #[command(flatten)]
    coord: CoordArgs,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// The program to run, and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

#[derive(Args, Debug)]
struct RestartArgs {
    /// Checkpoint every SECONDS (default: the interval the checkpoint was taken with)
    #[arg(short = 'i', long = "interval", value_name = "SECONDS")]
    interval: Option<u32>,
    /// Where later generations go (default: the checkpoint directory restarted from)
    #[arg(long = "ckptdir", value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// How many committed generations to keep
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    #[command(flatten)]
    coord: CoordArgs,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// A checkpoint directory (its newest committed generation), a generation directory, or an image
    #[arg(value_name = "DIR|IMAGE")]
    target: PathBuf,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").required(true).multiple(false)))]
struct CommandArgs {
    #[command(flatten)]
    coord: CoordArgs,
    /// Checkpoint now; wait until the generation is committed
    #[arg(short = 'c', long, group = "action")]
    checkpoint: bool,
    /// Checkpoint now and wait until the generation is committed
    #[arg(long, group = "action")]
    bcheckpoint: bool,
    /// Report the computation's state
    #[arg(short = 's', long, group = "action")]
    status: bool,
    /// Checkpoint every SECONDS from now on (0: only on request)
    #[arg(short = 'i', long, value_name = "SECONDS", group = "action")]
    interval: Option<u32>,
    /// Kill every process of the computation
    #[arg(short = 'k', long, group = "action")]
    kill: bool,
    /// Print the answer as one JSON object
    #[arg(long)]
    json: bool,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Read the whole payload and check every checksum (the default)
    #[arg(long, overrides_with = "no_verify")]
    verify: bool,
    /// Only read the header and the metadata (quick, for large images)
    #[arg(long, overrides_with = "verify")]
    no_verify: bool,
    /// The image file
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
}

/// Parses `stasis VERB ...`.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Verb, NotRun> {
    let cli = Cli::try_parse_from(args).map_err(not_run)?;
    Ok(match cli.verb {
        VerbArgs::Launch(a) => Verb::Launch(LaunchOpts {
            coord: a.coord.into(),
            interval_s: a.interval,
            ckpt_dir: a.ckpt_dir,
            keep: a.keep as usize,
            program: a.program,
        }),
        VerbArgs::Restart(a) => Verb::Restart(RestartOpts {
            coord: a.coord.into(),
            interval_s: a.interval,
            ckpt_dir: a.ckpt_dir,
            keep: a.keep as usize,
            target: a.target,
        }),
        VerbArgs::Command(a) => {
            let action = if a.checkpoint {
                Action::Checkpoint
            } else if a.bcheckpoint {
                Action::BlockingCheckpoint
            } else if a.status {
                Action::Status
            } else if a.kill {
                Action::Kill
            } else if let Some(s) = a.interval {
                Action::Interval(s)
            } else {
                unreachable!("clap requires one action")
            };
            Verb::Command(CommandOpts { coord: a.coord.into(), action, json: a.json })
        }
        VerbArgs::Inspect(a) => Verb::Inspect(InspectOpts { image: a.image, verify: a.verify || !a.no_verify }),
    })
}

fn not_run(e: clap::Error) -> NotRun {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => NotRun::Asked(text),
        _ => {
            // The message is the first paragraph; usage and tips follow.
            let first: Vec<&str> =
                text.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            NotRun::Usage(format!("{first} (see stasis --help)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Verb, NotRun> {
        parse(std::iter::once("stasis").chain(args.iter().copied()).map(OsString::from))
    }

    #[test]
    fn launch_takes_the_program_and_its_flags() {
        let Ok(Verb::Launch(o)) = parse_str(&["launch", "-i", "60", "--ckptdir", "ck", "./prog", "-i", "--help"])
        else {
            panic!()
        };
        assert_eq!(o.interval_s, Some(60));
        assert_eq!(o.ckpt_dir, Some(PathBuf::from("ck")));
        assert_eq!(o.keep, 2);
        assert_eq!(o.program, ["./prog", "-i", "--help"]);
        let Ok(Verb::Launch(o)) = parse_str(&["launch", "--keep", "5", "-p", "9000", "--", "-weird", "x"]) else {
            panic!()
        };
        assert_eq!((o.keep, o.coord.port), (5, Some(9000)));
        assert_eq!(o.program, ["-weird", "x"]);
    }

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &["launch"][..],
            &["launch", "-h", "host", "prog"],
            &["launch", "--keep", "0", "prog"],
            &["command"],
            &["command", "-c", "-s"],
            &["command", "-i", "soon"],
            &["restart"],
            &["nonsense"],
        ] {
            match parse_str(args) {
                Err(NotRun::Usage(m)) => assert!(!m.contains('\n') && !m.starts_with("error"), "{args:?}: {m}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn help_is_long_only_for_the_dmtcp_like_verbs() {
        for verb in ["launch", "restart", "command"] {
            assert!(matches!(parse_str(&[verb, "--help"]), Err(NotRun::Asked(_))), "{verb}");
        }
        assert!(matches!(parse_str(&["inspect", "-h"]), Err(NotRun::Asked(_))));
        assert!(matches!(parse_str(&["--version"]), Err(NotRun::Asked(_))));
    }

    #[test]
    fn command_actions() {
        let action = |args: &[&str]| match parse_str(args) {
            Ok(Verb::Command(o)) => (o.action, o.json),
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(action(&["command", "-c"]), (Action::Checkpoint, false));
        assert_eq!(action(&["command", "--bcheckpoint", "--json"]), (Action::BlockingCheckpoint, true));
        assert_eq!(action(&["command", "-s"]), (Action::Status, false));
        assert_eq!(action(&["command", "--interval", "30"]), (Action::Interval(30), false));
        assert_eq!(action(&["command", "-k", "--coord-socket", "/s"]), (Action::Kill, false));
    }

    #[test]
    fn inspect_verifies_unless_told_not_to() {
        let verify = |args: &[&str]| match parse_str(args) {
            Ok(Verb::Inspect(o)) => o.verify,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(verify(&["inspect", "x.img"]));
        assert!(verify(&["inspect", "--verify", "x.img"]));
        assert!(!verify(&["inspect", "--no-verify", "x.img"]));
        assert!(verify(&["inspect", "--no-verify", "--verify", "x.img"]));
    }

    #[test]
    fn restart_target() {
        let Ok(Verb::Restart(o)) = parse_str(&["restart", "--coord-socket", "/s.sock", "ck"]) else { panic!() };
        assert_eq!(o.target, PathBuf::from("ck"));
        assert_eq!(o.coord.socket, Some(PathBuf::from("/s.sock")));
        assert_eq!(o.interval_s, None);
    }
}
