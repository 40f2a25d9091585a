//! What `stasis inspect` prints: a summary of an image for people.
//!
//! Everything here takes whatever it is given: an image is hostile input,
//! so nothing indexes without a check and every string from the image is
//! escaped before it reaches a terminal.

use std::fmt::Write;

use crate::{
    ChunkKind, Compression, FdKind, FileSave, Header, PROT_EXEC, PROT_READ, PROT_WRITE, ProcessMeta, RegionKind,
    SysvObject,
};

/// Where the kernel's x86_64 `struct ucontext` keeps what we show:
/// uc_mcontext starts at byte 40, its gregs run r8..r15, rdi, rsi, rbp,
/// rbx, rdx, rax, rcx, rsp, rip; the signal mask is at byte 296.
const UC_GREGS: usize = 40;
const UC_RSP: usize = UC_GREGS + 15 * 8;
const UC_RIP: usize = UC_GREGS + 16 * 8;
const UC_SIGMASK: usize = 296;

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
}

/// A human size: exact bytes below 10 KiB, then the largest unit that
/// keeps at least two digits.
fn size(n: u64) -> String {
    match n {
        n if n >= 10 << 30 => format!("{} GiB", n >> 30),
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Kibibytes, rounded up, for the region table (regions are whole pages).
fn kib(n: u64) -> String {
    format!("{}K", n.div_ceil(1024))
}

/// A string from the image, with control characters escaped so that a
/// crafted name cannot drive the terminal or forge output lines.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A civil date (UTC) from seconds since the epoch:
/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to year/month/day in the proleptic Gregorian calendar, counting
    // in 400-year eras that start on March 1st (so leap days come last).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

fn signal_name(n: usize) -> String {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
        "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
        "WINCH", "IO", "PWR", "SYS",
    ];
    match n {
        1..=31 => format!("SIG{}", NAMES[n - 1]),
        // glibc keeps 32 and 33 for itself and starts SIGRTMIN at 34.
        34..=64 => format!("SIGRTMIN+{}", n - 34),
        _ => format!("signal {n}"),
    }
}

fn prot(p: u8, shared: bool) -> String {
    [(PROT_READ, 'r'), (PROT_WRITE, 'w'), (PROT_EXEC, 'x')]
        .iter()
        .map(|&(b, c)| if p & b != 0 { c } else { '-' })
        .chain([if shared { 's' } else { 'p' }])
        .collect()
}

fn family_name(domain: i32) -> String {
    match domain {
        1 => "unix".into(),
        2 => "ipv4".into(),
        10 => "ipv6".into(),
        d => format!("family {d}"),
    }
}

fn kind_name(kind: i32) -> String {
    match kind {
        1 => "stream".into(),
        2 => "datagram".into(),
        5 => "seqpacket".into(),
        k => format!("type {k}"),
    }
}

/// A raw `struct sockaddr` for people: a path, @abstract, ip:port.
fn sockaddr(b: &[u8]) -> String {
    let family = b.get(..2).map_or(0, |f| u16::from_ne_bytes([f[0], f[1]]));
    let port = |at: usize| b.get(at..at + 2).map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
    match family {
        1 => match b.get(2..) {
            None | Some([]) => "(unnamed)".into(),
            Some([0, rest @ ..]) => format!("@{}", clean(&String::from_utf8_lossy(rest))),
            Some(path) => {
                let path = path.split(|&c| c == 0).next().unwrap_or_default();
                clean(&String::from_utf8_lossy(path))
            }
        },
        2 if b.len() >= 8 => format!("{}.{}.{}.{}:{}", b[4], b[5], b[6], b[7], port(2)),
        10 if b.len() >= 24 => {
            let ip: [u8; 16] = b[8..24].try_into().unwrap_or_default();
            format!("[{}]:{}", std::net::Ipv6Addr::from(ip), port(2))
        }
        f => format!("(address family {f}, {} bytes)", b.len()),
    }
}

/// What `stasis inspect` prints.
pub fn render(m: &ProcessMeta) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "process {} {} (parent {})", m.pid, clean(&m.name), m.ppid);
    let _ = writeln!(o, "  group        process group {}, session {}", m.pgid, m.sid);
    if !m.zombies.is_empty() {
        let z: Vec<String> = m.zombies.iter().map(|z| format!("{} (wait status {:#x})", z.pid, z.status)).collect();
        let _ = writeln!(o, "  zombies      {}", z.join(", "));
    }
    let _ = writeln!(o, "  generation   {}", m.generation);
    let _ = writeln!(o, "  computation  {:016x}", m.computation_id);
    let _ = writeln!(o, "  created      {} ({})", utc(m.created_unix), m.created_unix);
    let _ = writeln!(o, "  exe          {}", clean(&m.exe));
    let cmdline: Vec<String> = m.cmdline.iter().map(|a| format!("{:?}", a)).collect();
    let _ = writeln!(o, "  cmdline      {}", cmdline.join(" "));
    let _ = writeln!(o, "  cwd          {}", clean(&m.cwd));
    let _ = writeln!(o, "  umask        {:04o}", m.umask);
    let _ = writeln!(
        o,
        "  agent        checkpoint signal {}, interval {}{}, restore info at {:#x}",
        m.agent.ckpt_signal,
        if m.agent.interval_s == 0 { "none".to_string() } else { format!("{}s", m.agent.interval_s) },
        if m.agent.compress { ", compressed" } else { "" },
        m.agent.restore_info_addr
    );

    // What the payload holds for each region, and for files, counted
    // before compression; `stored` is what it takes in the file.
    let mut saved = vec![0u64; m.regions.len()];
    let mut files = 0u64;
    let (mut stored, mut compressed) = (0u64, 0usize);
    for c in &m.chunks {
        match c.kind {
            ChunkKind::Memory { region, .. } => {
                if let Some(s) = saved.get_mut(region as usize) {
                    *s = s.saturating_add(c.data_len);
                }
            }
            ChunkKind::FileContents { .. } => files = files.saturating_add(c.data_len),
        }
        stored = stored.saturating_add(c.len);
        compressed += usize::from(c.compression != Compression::None);
    }

    let _ = writeln!(o, "\nmemory: {} regions", m.regions.len());
    let _ = writeln!(o, "  {:<29} {:>9} {:>9} {:<4} {:<4} name", "range", "size", "saved", "prot", "kind");
    for (r, s) in m.regions.iter().zip(&saved) {
        let kind = match &r.kind {
            RegionKind::Anonymous => "anon",
            RegionKind::File { .. } => "file",
            RegionKind::Vdso => "vdso",
            RegionKind::Vvar => "vvar",
            RegionKind::SharedMemory { .. } => "shm",
        };
        let mut name = clean(&r.name);
        if let RegionKind::File { path, offset, .. } = &r.kind {
            if path != &r.name {
                name = format!("{name} ({})", clean(path));
            }
            if *offset != 0 {
                name = format!("{name} @ {offset:#x}");
            }
        }
        if let RegionKind::SharedMemory { dev, inode, offset } = &r.kind {
            name = format!(
                "{name} [object {:x}:{:x}:{inode}{}]",
                dev >> 32,
                dev & 0xffff_ffff,
                if *offset != 0 { format!(" @ {offset:#x}") } else { String::new() }
            );
        }
        if r.growsdown {
            name.push_str(" (grows down)");
        }
        if r.fork_advice & crate::ADVICE_DONTFORK != 0 {
            name.push_str(" (dontfork)");
        }
        if r.fork_advice & crate::ADVICE_WIPEONFORK != 0 {
            name.push_str(" (wipeonfork)");
        }
        if r.noreserve {
            name.push_str(" (noreserve)");
        }
        let line = format!(
            "  {:014x}-{:014x} {:>9} {:>9} {} {kind:<4} {name}",
            r.start,
            r.end,
            kib(r.end.saturating_sub(r.start)),
            kib(*s),
            prot(r.prot, r.shared),
        );
        let _ = writeln!(o, "{}", line.trim_end());
    }
    let mapped = m.regions.iter().fold(0u64, |a, r| a.saturating_add(r.end.saturating_sub(r.start)));
    let memory: u64 = saved.iter().fold(0, |a, s| a.saturating_add(*s));
    let _ = writeln!(
        o,
        "  mapped {}, saved {} ({} chunks), file contents {}",
        size(mapped),
        size(memory),
        m.chunks.iter().filter(|c| matches!(c.kind, ChunkKind::Memory { .. })).count(),
        size(files)
    );
    if !m.inherited.is_empty() {
        let mut gens: Vec<u64> = m.inherited.iter().map(|r| r.generation).collect();
        gens.sort_unstable();
        gens.dedup();
        let list: Vec<String> = gens.iter().map(u64::to_string).collect();
        let bytes = m.inherited.iter().fold(0u64, |a, r| a.saturating_add(r.len));
        let _ = writeln!(
            o,
            "  inherited {} (unchanged since, in {} ranges) from generations {}",
            size(bytes),
            m.inherited.len(),
            list.join(" ")
        );
    }

    // What restart checks each mapped file against (once per file).
    let mut seen: Vec<(&str, &crate::FileId)> = Vec::new();
    for r in &m.regions {
        if let RegionKind::File { path, id, .. } = &r.kind
            && !seen.iter().any(|(p, i)| p == path && *i == id)
        {
            seen.push((path, id));
        }
    }
    if !seen.is_empty() {
        let _ = writeln!(o, "\nmapped files: {}", seen.len());
        for (path, id) in seen {
            let _ = writeln!(o, "  {}", clean(path));
            let _ = writeln!(o, "    {}", file_identity(id));
        }
    }

    let _ = writeln!(o, "\nthreads: {}", m.threads.len());
    for t in &m.threads {
        let uc = &t.ucontext;
        let reg = |off| u64_at(uc, off).map_or_else(|| "?".to_string(), |v| format!("{v:#x}"));
        let _ = writeln!(
            o,
            "  tid {:<7} {:<16} rip {} rsp {} fs_base {:#x} mask {} pending {:#x}",
            t.tid,
            clean(&t.name),
            reg(UC_RIP),
            reg(UC_RSP),
            t.fs_base,
            reg(UC_SIGMASK),
            t.pending,
        );
    }

    let _ = writeln!(o, "\ndescriptors: {}", m.fds.len());
    for f in &m.fds {
        let what = match &f.kind {
            FdKind::File { path, flags, offset, size: sz, deleted, saved, .. } => format!(
                "file {}{} flags {flags:#o} offset {offset} size {sz}{}",
                clean(path),
                if *deleted { " (deleted, contents saved)" } else { "" },
                match saved {
                    FileSave::None => String::new(),
                    FileSave::Copy { name } => format!(", contents saved as {}", clean(name)),
                    FileSave::Left { why } => format!(", contents not saved ({})", clean(why)),
                }
            ),
            FdKind::Directory { path, flags } => format!("directory {} flags {flags:#o}", clean(path)),
            FdKind::Device { path, flags } => format!("device {} flags {flags:#o}", clean(path)),
            FdKind::Inherited { what } => format!("inherited from restart ({})", clean(what)),
            FdKind::Agent => "the agent's coordinator connection".into(),
            FdKind::Unsupported => "not restorable (left closed)".into(),
            FdKind::EventFd { count, semaphore, flags } => {
                format!("eventfd count {count}{} flags {flags:#o}", if *semaphore { " (semaphore)" } else { "" })
            }
            FdKind::SignalFd { mask, flags } => format!("signalfd mask {mask:#x} flags {flags:#o}"),
            FdKind::TimerFd { clock, flags, value_ns, interval_ns, ticks } => format!(
                "timerfd clock {clock} flags {flags:#o} next in {value_ns} ns, every {interval_ns} ns, {ticks} unread"
            ),
            FdKind::Epoll { flags, targets } => {
                let watched: Vec<String> = targets.iter().map(|t| format!("{}:{:#x}", t.fd, t.events)).collect();
                format!("epoll flags {flags:#o} watching [{}]", watched.join(" "))
            }
            FdKind::Pipe { id, write, flags, size, fifo, peer_gone } => {
                let what = if fifo.is_empty() { format!("pipe {id}") } else { format!("fifo {}", clean(fifo)) };
                let gone = if *peer_gone { ", other end closed" } else { "" };
                format!("{what} {} end flags {flags:#o} capacity {size}{gone}", if *write { "write" } else { "read" })
            }
            FdKind::Inotify { flags, watches, unread } => {
                let w: Vec<String> =
                    watches.iter().map(|w| format!("{}:{}:{:#x}", w.wd, clean(&w.path), w.mask)).collect();
                format!("inotify flags {flags:#o} watching [{}], {unread} bytes of events unread", w.join(" "))
            }
            FdKind::MessageQueue { id, name, flags, maxmsg, msgsize, messages, notify, .. } => {
                let name = if name.is_empty() { "unlinked".to_string() } else { clean(name) };
                let bytes: usize = messages.iter().map(|m| m.data.len()).sum();
                let notify = match notify {
                    Some(n) => format!(", notifies process {} (signal {})", n.pid, n.signal),
                    None => String::new(),
                };
                format!(
                    "message queue {id} {name} flags {flags:#o} up to {maxmsg} of {msgsize} bytes, {} messages \
                     ({bytes} bytes) saved{notify}",
                    messages.len()
                )
            }
            FdKind::Terminal { flags, controlling, foreground, pty, unread, .. } => {
                let ctty =
                    if *controlling { format!(" (controlling, foreground group {foreground})") } else { String::new() };
                let end = match pty {
                    Some(p) if p.master => format!(" pseudo-terminal {} master", p.index),
                    Some(p) => format!(" pseudo-terminal {} slave", p.index),
                    None => String::new(),
                };
                let unread = if unread.is_empty() { String::new() } else { format!(", {} bytes unread", unread.len()) };
                format!("terminal{end}{ctty} flags {flags:#o}{unread}")
            }
            FdKind::Socket { id, domain, kind, flags, listening, local, peer, peer_id, .. } => {
                let mut s = format!("socket {id} {} {}", family_name(*domain), kind_name(*kind));
                if *listening {
                    s.push_str(" listening");
                }
                if !local.is_empty() {
                    s.push_str(&format!(" at {}", sockaddr(local)));
                }
                if !peer.is_empty() {
                    s.push_str(&format!(" to {}", sockaddr(peer)));
                }
                if *peer_id != 0 {
                    s.push_str(&format!(" (peer socket {peer_id})"));
                }
                format!("{s} flags {flags:#o}")
            }
        };
        let outside = match f.outside_stdio {
            Some(k) => format!("; launch's stdio {k}, comes back as restart's own {k}"),
            None => String::new(),
        };
        let _ = writeln!(o, "  {:>4}{} {what}{outside}", f.fd, if f.cloexec { " cloexec" } else { "        " });
    }

    if !m.sysv_ipc.is_empty() {
        let _ = writeln!(o, "\nSystem V IPC:");
        for obj in &m.sysv_ipc {
            let line = match obj {
                SysvObject::MessageQueue { id, key, mode, qbytes, messages } => format!(
                    "message queue {id} key {key:#x} mode {mode:#o} capacity {qbytes}: {} messages ({} bytes)",
                    messages.len(),
                    messages.iter().map(|m| m.data.len()).sum::<usize>()
                ),
                SysvObject::Semaphores { id, key, mode, values } => {
                    format!("semaphore set {id} key {key:#x} mode {mode:#o} values {values:?}")
                }
            };
            let _ = writeln!(o, "  {line}");
        }
    }

    let _ = writeln!(o, "\nsignals: pending for the process {:#x}", m.shared_pending);
    let mut all_default = true;
    for (i, a) in m.sigactions.iter().enumerate() {
        if a.handler == 0 && a.flags == 0 && a.mask == 0 {
            continue;
        }
        all_default = false;
        let handler = match a.handler {
            0 => "default".to_string(),
            1 => "ignore".to_string(),
            h => format!("handler {h:#x}"),
        };
        let _ = writeln!(o, "  {:<12} {handler} flags {:#x} mask {:#x}", signal_name(i + 1), a.flags, a.mask);
    }
    if all_default {
        let _ = writeln!(o, "  every action is the default");
    }

    let _ = writeln!(o, "\ntimers:");
    let mut timers = false;
    for (name, t) in ["real", "virtual", "prof"].iter().zip(&m.itimers) {
        if t.value_us != 0 || t.interval_us != 0 {
            timers = true;
            let _ = writeln!(o, "  itimer {name}: next in {} us, then every {} us", t.value_us, t.interval_us);
        }
    }
    for t in &m.posix_timers {
        timers = true;
        let _ = writeln!(
            o,
            "  posix timer {}: clock {} notify {} signal {} tid {}: next in {} ns, then every {} ns, overrun {}",
            t.id, t.clock, t.notify, t.signal, t.notify_tid, t.value_ns, t.interval_ns, t.overrun
        );
    }
    if !timers {
        let _ = writeln!(o, "  no timers armed");
    }

    let _ = writeln!(
        o,
        "\ntotals: {} mapped, {} saved in {} chunks ({} stored, {compressed} chunks compressed), {} regions, \
         {} threads, {} descriptors",
        size(mapped),
        size(memory.saturating_add(files)),
        m.chunks.len(),
        size(stored),
        m.regions.len(),
        m.threads.len(),
        m.fds.len()
    );
    o
}

/// One line on the file itself: its size and how it splits.
/// A mapped file's identity as restart compares it.
fn file_identity(id: &crate::FileId) -> String {
    use crate::identity::{hex, time};
    let build_id = if id.build_id.is_empty() { "none".to_string() } else { hex(&id.build_id) };
    format!(
        "build-id {build_id}, size {}, mtime {}, ctime {}, inode {}, head xxh3 {:016x}",
        id.size,
        time(id.mtime_ns),
        time(id.ctime_ns),
        id.inode,
        id.head_hash
    )
}

pub fn render_header(h: &Header) -> String {
    format!(
        "image format {}, {} in all: payload {} at {}, metadata {} at {}\n",
        h.version,
        size(h.file_len()),
        size(h.payload_len),
        h.payload_offset,
        size(h.meta_len),
        h.meta_offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Chunk, Fd, ITimer, Region, SigAction, Thread, UCONTEXT_LEN};

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_512_610), "2026-11-24 09:30:10 UTC");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
        let _ = utc(u64::MAX);
    }

    #[test]
    fn shows_registers_regions_and_signals() {
        let mut uc = vec![0u8; UCONTEXT_LEN];
        uc[UC_RIP..UC_RIP + 8].copy_from_slice(&0x4011_2233u64.to_le_bytes());
        uc[UC_RSP..UC_RSP + 8].copy_from_slice(&0x7ffd_0000u64.to_le_bytes());
        uc[UC_SIGMASK..UC_SIGMASK + 8].copy_from_slice(&0x4000u64.to_le_bytes());
        let mut sigactions = vec![SigAction::default(); 64];
        sigactions[1] = SigAction { handler: 1, ..Default::default() };
        sigactions[9] = SigAction { handler: 0x401000, flags: 0x0400_0000, ..Default::default() };
        let m = ProcessMeta {
            pid: 42,
            name: "evil\x1b[2J".into(),
            cmdline: vec!["prog".into(), "two words".into()],
            regions: vec![
                Region { start: 0x1000, end: 0x5000, prot: PROT_READ | PROT_WRITE, ..Default::default() },
                Region {
                    start: 0x7000,
                    end: 0x8000,
                    prot: PROT_READ,
                    shared: true,
                    name: "/dev/shm/x".into(),
                    ..Default::default()
                },
            ],
            threads: vec![Thread { tid: 42, ucontext: uc, fs_base: 0x1234, ..Default::default() }],
            fds: vec![Fd {
                fd: 1,
                cloexec: true,
                kind: FdKind::Inherited { what: "pipe:[1]".into() },
                outside_stdio: Some(1),
            }],
            sigactions,
            itimers: vec![ITimer { interval_us: 0, value_us: 5 }, ITimer::default(), ITimer::default()],
            chunks: vec![Chunk {
                kind: ChunkKind::Memory { region: 0, offset: 0 },
                file_offset: 4096,
                len: 8192,
                checksum: 0,
                compression: crate::Compression::None,
                data_len: 8192,
            }],
            inherited: vec![
                crate::Inherited { region: 0, offset: 0x2000, len: 0x1000, generation: 2 },
                crate::Inherited { region: 0, offset: 0x3000, len: 0x1000, generation: 1 },
            ],
            generation: 3,
            ..Default::default()
        };
        let text = render(&m);
        assert!(text.contains("inherited 8192 B (unchanged since, in 2 ranges) from generations 1 2"), "{text}");
        assert!(text.contains("rip 0x40112233 rsp 0x7ffd0000 fs_base 0x1234 mask 0x4000"), "{text}");
        assert!(text.contains("00000000001000-00000000005000       16K        8K rw-p anon"), "{text}");
        assert!(text.contains("r--s anon /dev/shm/x"), "{text}");
        assert!(text.contains("SIGINT       ignore"), "{text}");
        assert!(text.contains("SIGUSR1      handler 0x401000 flags 0x4000000"), "{text}");
        assert!(text.contains("\"two words\""), "{text}");
        assert!(text.contains("itimer real: next in 5 us"), "{text}");
        assert!(text.contains("launch's stdio 1, comes back as restart's own 1"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("totals: 20 KiB mapped, 8192 B saved in 1 chunks (8192 B stored, 0 chunks"), "{text}");
    }

    #[test]
    fn never_panics_on_nonsense() {
        let m = ProcessMeta {
            regions: vec![Region { start: 9, end: 1, ..Default::default() }],
            threads: vec![Thread::default()],
            sigactions: vec![SigAction { handler: 5, ..Default::default() }; 70],
            chunks: vec![Chunk {
                kind: ChunkKind::Memory { region: 7, offset: 0 },
                file_offset: 0,
                len: u64::MAX,
                checksum: 0,
                compression: crate::Compression::None,
                data_len: u64::MAX,
            }],
            ..Default::default()
        };
        let text = render(&m);
        assert!(text.contains("rip ? rsp ?"), "{text}");
        assert!(text.contains("signal 70"), "{text}");
        let h = Header { meta_offset: u64::MAX, meta_len: 5, ..Default::default() };
        assert!(render_header(&h).contains("in all"));
    }
}
