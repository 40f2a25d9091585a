//! `stasis coordinator` (and `dmtcp_coordinator`): the coordinator as a
//! process of its own. It listens on a Unix socket for this node (the one
//! of its port, 7779 by default, or `--coord-socket`), on TCP only when
//! asked (a port or host named, or `--listen`; every connection proves
//! the computation's secret) and then on the address asked, never on
//! every interface; and, on a terminal, takes console commands.
//!
//! It ends when told to quit (`q`, `stasis command --quit`), with
//! `--exit-on-last` when the computation's last process is gone, with
//! `--timeout` after that long without any process, or on SIGTERM, SIGINT
//! or SIGHUP. Killed or ended, it leaves the computation running: the
//! agents wait for a coordinator at the same address.

use std::fs::OpenOptions;
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use stasis_coord::{Control, CoordConfig, Coordinator, End, EndWhen, secret};
use stasis_proto::{self as proto, Message};

use super::command::{Action, human};
use crate::coord_socket::{self, CoordOpts};
use crate::exit::Exit;
use crate::output::print;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorOpts {
    /// The socket and port to listen on (a host is meaningless here).
    pub coord: CoordOpts,
    /// The TCP address (`--listen`); None: the host named, else 127.0.0.1.
    pub listen: Option<IpAddr>,
    /// None: the current directory.
    pub ckpt_dir: Option<PathBuf>,
    pub interval_s: u32,
    pub keep: usize,
    /// Compress images with zstd (a coordinator started here, or this one).
    pub compress: bool,
    /// A full checkpoint every this many generations.
    pub full_every: u32,
    pub exit_on_last: bool,
    pub exit_after_ckpt: bool,
    /// Seconds without any process after which it exits.
    pub idle_timeout: Option<u32>,
    pub daemon: bool,
    pub port_file: Option<PathBuf>,
    pub coord_logfile: Option<PathBuf>,
    pub quiet: bool,
    /// Report readiness (or why not) on this descriptor (launch does).
    pub ready_fd: Option<i32>,
}

/// A bound coordinator and what to say about it.
struct Bound {
    coord: Coordinator,
    /// The TCP address, when it listens on TCP.
    tcp: Option<SocketAddr>,
}

/// Binds the TCP port (if any), the socket and the checkpoint directory.
fn bind(opts: &CoordinatorOpts) -> Result<Bound> {
    let ckpt_dir = super::launch::ckpt_dir_or_cwd(opts.ckpt_dir.as_deref())?;
    // TCP only when asked, on the address asked (coord_socket.rs).
    let wanted = coord_socket::listening(&opts.coord, opts.listen);
    let tcp = match &wanted.tcp {
        None => None,
        Some((host, port)) => {
            let ip = coord_socket::bind_ip(host)?;
            let l = TcpListener::bind(SocketAddr::new(ip, *port)).map_err(|e| {
                let hint = match (e.kind() == io::ErrorKind::AddrInUse, opts.ready_fd.is_some()) {
                    (false, _) => "",
                    // Started by launch or restart, which were given the port.
                    (true, true) => {
                        " (another coordinator, or another program, has it: choose another with -p PORT, or leave -p \
                         out for a coordinator of this computation's own)"
                    }
                    (true, false) => {
                        " (another coordinator, or another program, has it: choose another with -p PORT, or -p 0 for \
                         any free one)"
                    }
                };
                anyhow!("cannot listen on TCP port {port} at {ip}: {e}{hint}")
            })?;
            Some(l)
        }
    };
    let tcp_addr = match &tcp {
        Some(l) => Some(l.local_addr().context("cannot tell the TCP port")?),
        None => None,
    };
    let port = tcp_addr.map(|a| a.port());
    let socket = match wanted.socket {
        Some(s) => s,
        None => coord_socket::socket_for_port(
            opts.coord.tmpdir.as_deref(),
            coord_socket::uid(),
            port.unwrap_or(wanted.port),
        ),
    };
    let socket = std::path::absolute(&socket).with_context(|| format!("cannot make {} absolute", socket.display()))?;
    let mut cfg = CoordConfig::new(socket.clone(), ckpt_dir);
    cfg.kill_after_checkpoint = opts.exit_after_ckpt;
    cfg.interval_s = opts.interval_s;
    cfg.keep = opts.keep;
    cfg.compress = opts.compress;
    cfg.full_every = opts.full_every;
    let mut coord = Coordinator::bind(cfg).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse { " (choose another port with -p PORT)" } else { "" };
        anyhow!("{e}{hint}").context(format!("cannot start the coordinator at {}", socket.display()))
    })?;
    if let Some(l) = tcp {
        let secret = secret::load_or_create(coord.ckpt_dir()).context("cannot set up the computation's secret")?;
        coord.listen_tcp(l, secret).context("cannot listen on TCP")?;
    }
    if let Some(f) = &opts.port_file {
        let text = port.map_or_else(String::new, |p| format!("{p}\n"));
        std::fs::write(f, text).with_context(|| format!("cannot write the port file {}", f.display()))?;
    }
    Ok(Bound { coord, tcp: tcp_addr })
}

/// Writes one line to the ready descriptor and closes it.
fn report(fd: Option<i32>, m: &Message) {
    if let Some(fd) = fd {
        // SAFETY: launch gave us this descriptor for this one line; we own
        // it from here and close it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = std::fs::File::from(owned);
        let _ = f.write_all(m.encode().as_bytes());
    }
}

pub fn run(opts: CoordinatorOpts) -> Result<Exit> {
    let bound = match bind(&opts) {
        Ok(b) => b,
        Err(e) if opts.ready_fd.is_some() => {
            report(opts.ready_fd, &Message::new(proto::ERROR).with("reason", crate::one_line(&crate::chain(&e))));
            return Ok(Exit::Code(1));
        }
        Err(e) => return Err(e),
    };
    let socket = bound.coord.socket_path().to_path_buf();
    let ckpt_dir = bound.coord.ckpt_dir().to_path_buf();
    let where_ = match bound.tcp {
        Some(a) => format!("port {} (TCP {a}, socket {})", a.port(), socket.display()),
        None => format!("socket {}", socket.display()),
    };
    if opts.daemon {
        daemonize(&opts, &where_)?;
    } else if let Some(f) = &opts.coord_logfile {
        log_to(f)?;
    }
    let console = !opts.daemon && io::stdin().is_terminal();
    let signals = block_end_signals().context("cannot block signals")?;
    let handle = bound.coord.spawn().context("cannot start the coordinator's threads")?;
    let control = handle.control();
    watch_signals(signals, control.clone());
    let ready = Message::new(proto::OK)
        .with("port", bound.tcp.map_or_else(String::new, |a| a.port().to_string()))
        .with("socket", socket.display());
    report(opts.ready_fd, &ready);
    let chatty = !opts.quiet && opts.ready_fd.is_none();
    if console {
        let _ = print(&format!(
            "stasis coordinator on {where_}\ncheckpoints go to {}; type ? for help\n",
            ckpt_dir.display()
        ));
        start_console(control);
    } else if chatty && !opts.daemon {
        eprintln!("stasis: coordinator on {where_}, checkpoints in {}", ckpt_dir.display());
    }
    let when = EndWhen {
        last_gone: opts.exit_on_last,
        after_checkpoint: opts.exit_after_ckpt,
        idle: opts.idle_timeout.map(|s| Duration::from_secs(s.into())),
    };
    let end = handle.wait_end(when);
    // A log file gets the line even when quiet: it is the record asked for.
    // Not the stderr file a coordinator started in the background shares
    // with launch or restart: there the line would be noise among theirs.
    let log_file = stderr_is_a_file() && (opts.ready_fd.is_none() || opts.coord_logfile.is_some());
    if chatty || log_file {
        let why = match end {
            End::Quit => "told to quit",
            End::LastGone => "the last process is gone",
            End::Idle => "no process came",
            End::AfterCheckpoint => "the checkpoint is written and the computation killed",
            End::Stopped => "stopped by a signal; the computation runs on",
        };
        // DMTCP's words too: scripts written for DMTCP wait for them.
        eprintln!("stasis: coordinator exits (DMTCP coordinator exiting): {why}");
    }
    handle.shutdown();
    Ok(Exit::Code(0))
}

/// Messages (stderr) go to `file` from now on, appended.
fn log_to(file: &std::path::Path) -> Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open the log file {}", file.display()))?;
    // SAFETY: dup2 on descriptors this process owns; no thread runs yet.
    if unsafe { libc::dup2(log.as_raw_fd(), 2) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("cannot log to {}", file.display()));
    }
    Ok(())
}

/// Whether messages go to a file (`--coord-logfile`), not a terminal or pipe.
fn stderr_is_a_file() -> bool {
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.is_file())
}

/// Leaves the foreground: the parent returns once the child listens.
fn daemonize(opts: &CoordinatorOpts, where_: &str) -> Result<()> {
    let log = match &opts.coord_logfile {
        Some(f) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .with_context(|| format!("cannot open the log file {}", f.display()))?,
        ),
        None => None,
    };
    let null = OpenOptions::new().read(true).write(true).open("/dev/null").context("cannot open /dev/null")?;
    // SAFETY: no thread has started yet (the coordinator's start after
    // this), so the child is a complete copy of this process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("cannot fork");
    }
    if pid > 0 {
        if !opts.quiet {
            eprintln!("stasis: coordinator {pid} runs in the background on {where_}");
        }
        // Not through destructors: the socket file is the child's now.
        std::process::exit(0);
    }
    let err = log.as_ref().unwrap_or(&null).as_raw_fd();
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err, 2);
    }
    Ok(())
}

/// The signals that end the coordinator, blocked before any thread starts;
/// not one ignored when it started (`stasis job` starts it so, for SLURM's
/// SIGTERM to every process of the job must not end it before the
/// checkpoint that SIGTERM asks for).
fn block_end_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the
    // calls only read and write the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].into_iter().filter(|&s| !crate::signals::ignored(s)) {
            libc::sigaddset(&mut set, sig);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

fn watch_signals(set: libc::sigset_t, control: Control) {
    let _ = std::thread::Builder::new().name("stasis-coord-signals".into()).spawn(move || {
        let mut sig = 0;
        // SAFETY: waits for one of `set`, which every thread keeps blocked.
        while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
        control.stop();
    });
}

const HELP: &str = "\
commands:
  c      checkpoint now (answers when the generation is committed)
  s      status: processes, state, interval, last checkpoint
  l      list the processes
  i N    checkpoint every N seconds (0: only on request)
  k      kill the computation
  q      kill the computation and quit
  ?      this help
";

fn start_console(control: Control) {
    let _ = std::thread::Builder::new().name("stasis-console".into()).spawn(move || console(&control));
}

fn command(what: &str) -> Message {
    Message::new(proto::COMMAND).with("what", what)
}

/// Reads console commands until the end of input.
fn console(control: &Control) {
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let show = |action: Action, reply: &Message| {
        let text = if reply.verb == proto::OK {
            human(action, reply, unix_now())
        } else {
            format!("{} failed: {}\n", action.what(), reply.get("reason").unwrap_or("no reason given"))
        };
        let _ = print(&text);
    };
    while let Some(Ok(line)) = lines.next() {
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        match cmd {
            "?" | "h" | "help" => {
                let _ = print(HELP);
            }
            "c" => show(Action::Checkpoint, &control.command(&Action::Checkpoint.request())),
            "s" => show(Action::Status, &control.command(&command("status"))),
            "l" => show(Action::List, &control.command(&command("status"))),
            "k" => show(Action::Kill, &control.command(&command("kill"))),
            "q" => {
                show(Action::Quit, &control.command(&command("quit")));
                return;
            }
            "i" => {
                let value = match words.next() {
                    Some(v) => Some(v.to_string()),
                    None => {
                        let _ = print("interval in seconds (0: only on request): ");
                        lines.next().and_then(Result::ok).map(|l| l.trim().to_string())
                    }
                };
                match value.as_deref().map(str::parse::<u32>) {
                    Some(Ok(n)) => show(Action::Interval(n), &control.command(&Action::Interval(n).request())),
                    _ => {
                        let _ = print("i needs a whole number of seconds, e.g. i 60\n");
                    }
                }
            }
            other => {
                let _ = print(&format!("unknown command {other:?}; type ? for help\n"));
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
