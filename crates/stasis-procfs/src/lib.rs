//! Parsers for the /proc files Stasis reads.
//!
//! Pure functions over text, so the agent's collection code stays short and
//! the parsing is tested without a running process. Each parser names the
//! file it understands; malformed input gives `None`/an error, never a panic.
#![forbid(unsafe_code)]

/// One entry of /proc/PID/smaps (or maps: then `vm_flags` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    /// The backing object's device (major << 32 | minor) and inode.
    pub dev: u64,
    pub inode: u64,
    /// The path or pseudo-name ("[heap]", "[stack]", "[vdso]"), possibly
    /// ending in " (deleted)"; empty for anonymous memory.
    pub name: String,
    /// Two-letter VmFlags from smaps ("gd" grows down, "sh" shared, ...).
    pub vm_flags: Vec<[u8; 2]>,
    /// Bytes of anonymous pages in memory, and of pages swapped out (smaps'
    /// `Anonymous:` and `Swap:`; 0 from maps).
    pub anonymous: u64,
    pub swap: u64,
}

impl MapEntry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag.as_bytes())
    }

    /// The backing path without the " (deleted)" suffix, if the entry is a file.
    pub fn path(&self) -> Option<&str> {
        if self.name.starts_with('/') { Some(self.name.strip_suffix(" (deleted)").unwrap_or(&self.name)) } else { None }
    }

    pub fn is_deleted(&self) -> bool {
        self.name.starts_with('/') && self.name.ends_with(" (deleted)")
    }
}

/// Parses the header line of a maps/smaps entry.
pub fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut next = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (word, tail) = trimmed.split_at(end);
        rest = tail;
        word
    };
    let range = next();
    let perms = next().as_bytes();
    let offset = next();
    let dev = next();
    let inode = next();
    let name = rest.trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    if perms.len() != 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: {
            let (major, minor) = dev.split_once(':')?;
            u64::from_str_radix(major, 16).ok()? << 32 | u64::from_str_radix(minor, 16).ok()?
        },
        inode: inode.parse().ok()?,
        name,
        vm_flags: Vec::new(),
        anonymous: 0,
        swap: 0,
    })
}

/// Parses /proc/PID/smaps (or /proc/PID/maps).
pub fn parse_smaps(text: &str) -> Option<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        // Field lines start with a capital letter ("Rss:"), an entry's first
        // line with a hexadecimal address (digits and a-f).
        if line.as_bytes().first().is_some_and(u8::is_ascii_uppercase) {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                let entry = out.last_mut()?;
                entry.vm_flags = flags.split_whitespace().filter_map(|f| f.as_bytes().try_into().ok()).collect();
            } else if let Some(kb) = line.strip_prefix("Anonymous:") {
                out.last_mut()?.anonymous = kilobytes(kb)?;
            } else if let Some(kb) = line.strip_prefix("Swap:") {
                out.last_mut()?.swap = kilobytes(kb)?;
            }
            // Other smaps lines (Size:, Rss:, ...) are not needed.
        } else if line.split(' ').next().is_some_and(|w| w.contains('-')) {
            out.push(parse_map_line(line)?);
        }
    }
    Some(out)
}

/// "   1234 kB" as bytes.
fn kilobytes(text: &str) -> Option<u64> {
    Some(text.trim().strip_suffix("kB")?.trim_end().parse::<u64>().ok()? * 1024)
}

/// The fields of /proc/PID/fdinfo/FD that Stasis uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdInfo {
    pub pos: u64,
    /// open(2) flags, O_CLOEXEC included when set.
    pub flags: u32,
}

pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut info = FdInfo::default();
    let (mut have_pos, mut have_flags) = (false, false);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            info.pos = v.trim().parse().ok()?;
            have_pos = true;
        } else if let Some(v) = line.strip_prefix("flags:") {
            info.flags = u32::from_str_radix(v.trim(), 8).ok()?;
            have_flags = true;
        }
    }
    (have_pos && have_flags).then_some(info)
}

/// The value after `key:` on a line of an fdinfo text, trimmed.
fn fdinfo_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// An eventfd's state, from its fdinfo (`eventfd-count` is hexadecimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFdInfo {
    pub count: u64,
    pub semaphore: bool,
}

pub fn parse_eventfd(text: &str) -> Option<EventFdInfo> {
    let count = u64::from_str_radix(fdinfo_field(text, "eventfd-count")?, 16).ok()?;
    // Older kernels do not show it; semaphore mode is then unknown, and rare.
    let semaphore = fdinfo_field(text, "eventfd-semaphore").is_some_and(|v| v == "1");
    Some(EventFdInfo { count, semaphore })
}

/// A signalfd's signal mask (`sigmask`, hexadecimal, bit N-1 for signal N).
pub fn parse_signalfd(text: &str) -> Option<u64> {
    u64::from_str_radix(fdinfo_field(text, "sigmask")?, 16).ok()
}

/// A timerfd's state. `value_ns` is the time left until the next expiry
/// (0: disarmed), whatever the clock and flags it was set with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerFdInfo {
    pub clock: i32,
    /// Expirations not read yet.
    pub ticks: u64,
    pub settime_flags: u32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// `(SECONDS, NANOSECONDS)` as nanoseconds.
fn timespec_ns(v: &str) -> Option<u64> {
    let (s, ns) = v.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    s.trim().parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(ns.trim().parse().ok()?)
}

pub fn parse_timerfd(text: &str) -> Option<TimerFdInfo> {
    Some(TimerFdInfo {
        clock: fdinfo_field(text, "clockid")?.parse().ok()?,
        ticks: fdinfo_field(text, "ticks")?.parse().ok()?,
        settime_flags: u32::from_str_radix(fdinfo_field(text, "settime flags")?, 8).ok()?,
        value_ns: timespec_ns(fdinfo_field(text, "it_value")?)?,
        interval_ns: timespec_ns(fdinfo_field(text, "it_interval")?)?,
    })
}

/// One descriptor an epoll instance watches: `tfd: N events: HEX data: HEX ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollTarget {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

pub fn parse_epoll_targets(text: &str) -> Option<Vec<EpollTarget>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let mut words = line.split_whitespace();
        let mut value = |key: &str| words.find(|w| *w == key).and_then(|_| words.next());
        let fd = value("tfd:")?.parse().ok()?;
        let events = u32::from_str_radix(value("events:")?, 16).ok()?;
        let data = u64::from_str_radix(value("data:")?, 16).ok()?;
        out.push(EpollTarget { fd, events, data });
    }
    Some(out)
}

/// One watch of an inotify instance, from its fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InotifyWatch {
    pub wd: i32,
    pub inode: u64,
    /// The watched file's device, as the kernel prints it (`sdev:`).
    pub sdev: u64,
    pub mask: u32,
}

/// The `inotify wd:N ino:X sdev:Y mask:Z ...` lines of an inotify fdinfo.
pub fn parse_inotify(text: &str) -> Option<Vec<InotifyWatch>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("inotify ")) {
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        out.push(InotifyWatch {
            wd: field("wd:")?.parse().ok()?,
            inode: u64::from_str_radix(field("ino:")?, 16).ok()?,
            sdev: u64::from_str_radix(field("sdev:")?, 16).ok()?,
            mask: u32::from_str_radix(field("mask:")?, 16).ok()?,
        });
    }
    out.sort_by_key(|w| w.wd);
    Some(out)
}

/// The fields of /proc/PID/stat that Stasis uses (see proc(5)): the
/// process's place in the tree and its memory layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatMm {
    /// R, S, D, Z (zombie), X (dead), T, t, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Field 52: the wait status of a zombie (0 while it runs).
    pub exit_code: i32,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

pub fn parse_stat(text: &str) -> Option<StatMm> {
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. Field 3 (state) is then index 0.
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(StatMm {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        exit_code: f.get(52 - 3).and_then(|v| v.parse().ok()).unwrap_or(0),
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
    })
}

/// The pids in /proc/PID/task/TID/children: space-separated, in no order.
pub fn parse_children(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).filter(|&p| p > 0).collect()
}

/// What one read of a NETLINK_SOCK_DIAG dump of Unix sockets held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnixDiag {
    /// (socket inode, peer inode) for every socket that has a peer.
    pub peers: Vec<(u64, u64)>,
    /// The dump's NLMSG_DONE was seen.
    pub done: bool,
    /// The kernel answered with an error (its errno).
    pub error: Option<i32>,
}

/// Parses netlink messages answering a SOCK_DIAG_BY_FAMILY dump of AF_UNIX
/// sockets asked with UDIAG_SHOW_PEER (see sock_diag(7)): each message is
/// an nlmsghdr, a struct unix_diag_msg and attributes, UNIX_DIAG_PEER
/// among them. Malformed input ends the parse (what was read stays).
pub fn parse_unix_diag(buf: &[u8]) -> UnixDiag {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const UNIX_DIAG_PEER: u16 = 2;
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|v| u16::from_ne_bytes([v[0], v[1]]));
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
    let mut out = UnixDiag::default();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let msg = &buf[at + 16..at + len];
        match kind {
            NLMSG_DONE => {
                out.done = true;
                break;
            }
            NLMSG_ERROR => {
                out.error = Some(u32_at(msg, 0).map_or(0, |e| -(e as i32)));
                out.done = true;
                break;
            }
            _ => {
                // struct unix_diag_msg: family, type, state, pad (u8 each),
                // ino u32, cookie u32[2]; then the attributes.
                if let Some(ino) = u32_at(msg, 4) {
                    let mut a = 16;
                    while let (Some(alen), Some(akind)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
                        let alen = alen as usize;
                        if alen < 4 || a + alen > msg.len() {
                            break;
                        }
                        if akind == UNIX_DIAG_PEER
                            && let Some(peer) = u32_at(msg, a + 4)
                            && peer != 0
                        {
                            out.peers.push((u64::from(ino), u64::from(peer)));
                        }
                        a += alen.next_multiple_of(4);
                    }
                }
            }
        }
        at += len.next_multiple_of(4);
    }
    out
}

/// A hexadecimal field of /proc/PID/status ("SigPnd", "ShdPnd", ...).
pub fn status_hex(text: &str, key: &str) -> Option<u64> {
    status_field(text, key).and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// The value of a field of /proc/PID/status, trimmed.
pub fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// One timer of /proc/PID/timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerEntry {
    pub id: i32,
    pub signal: i32,
    pub sigev_value: u64,
    /// "signal", "none" or "thread" as the kernel prints it.
    pub notify: TimerNotify,
    /// Set for SIGEV_THREAD_ID ("tid" in the file).
    pub to_thread: bool,
    pub notify_pid: i32,
    pub clock: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimerNotify {
    #[default]
    Signal,
    None,
    Thread,
}

pub fn parse_timers(text: &str) -> Option<Vec<TimerEntry>> {
    let mut out: Vec<TimerEntry> = Vec::new();
    for line in text.lines() {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        if key == "ID" {
            out.push(TimerEntry { id: value.parse().ok()?, ..Default::default() });
            continue;
        }
        let t = out.last_mut()?;
        match key {
            "signal" => {
                let (sig, val) = value.split_once('/')?;
                t.signal = sig.parse().ok()?;
                let val = val.trim_start_matches("0x");
                t.sigev_value = u64::from_str_radix(val, 16).ok()?;
            }
            "notify" => {
                let (how, who) = value.split_once('/')?;
                t.notify = match how {
                    "signal" => TimerNotify::Signal,
                    "none" => TimerNotify::None,
                    "thread" => TimerNotify::Thread,
                    _ => return None,
                };
                let (kind, pid) = who.split_once('.')?;
                t.to_thread = kind == "tid";
                t.notify_pid = pid.parse().ok()?;
            }
            "ClockID" => t.clock = value.parse().ok()?,
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn anon_inode_fdinfo() {
        let head = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t17\n";
        let e = format!("{head}eventfd-count:                1f\neventfd-id: 1\neventfd-semaphore: 1\n");
        assert_eq!(parse_eventfd(&e), Some(EventFdInfo { count: 31, semaphore: true }));
        assert_eq!(parse_eventfd(head), None);
        assert_eq!(parse_signalfd(&format!("{head}sigmask:\t0000000000004200\n")), Some(0x4200));
        let t = format!(
            "{head}clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (1, 999557920)\nit_interval: (0, 50000000)\n"
        );
        let want =
            TimerFdInfo { clock: 1, ticks: 3, settime_flags: 1, value_ns: 1_999_557_920, interval_ns: 50_000_000 };
        assert_eq!(parse_timerfd(&t), Some(want));
        assert_eq!(parse_timerfd(&t.replace("(0, 50000000)", "(0 50000000)")), None);
        let ep = format!(
            "{head}tfd:        4 events:       1d data: 1122334400000004  pos:0 ino:11 sdev:10\n\
             tfd:        3 events: 80000019 data: 1122334455667788  pos:0 ino:11 sdev:10\n"
        );
        assert_eq!(
            parse_epoll_targets(&ep),
            Some(vec![
                EpollTarget { fd: 4, events: 0x1d, data: 0x1122_3344_0000_0004 },
                EpollTarget { fd: 3, events: 0x8000_0019, data: 0x1122_3344_5566_7788 },
            ])
        );
        assert_eq!(parse_epoll_targets(head), Some(vec![]));
        assert_eq!(parse_epoll_targets("tfd: x events: 1 data: 2\n"), None);
    }

    use super::*;

    #[test]
    fn smaps_entries_and_flags() {
        let text = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Anonymous:           128 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me ac sd
7f85d3682000-7f85d368c000 r--p 00027000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
VmFlags: rd mr mw me sd
7ffef233a000-7ffef235b000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
7f0000000000-7f0000001000 rw-s 00000000 00:01 99                         /tmp/x y (deleted)
";
        let e = parse_smaps(text).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].name, "[heap]");
        assert!(e[0].read && e[0].write && !e[0].exec && !e[0].shared);
        assert_eq!(e[1].offset, 0x27000);
        assert_eq!(e[1].path(), Some("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
        assert!(e[2].has_flag("gd"));
        assert!(e[3].shared && e[3].is_deleted());
        assert_eq!(e[3].path(), Some("/tmp/x y"));
        assert_eq!((e[0].anonymous, e[0].swap), (128 * 1024, 4 * 1024));
        assert_eq!((e[1].anonymous, e[1].swap), (0, 0));
    }

    #[test]
    fn fdinfo_and_status() {
        let fi = parse_fdinfo("pos:\t42\nflags:\t02100002\nmnt_id:\t21\nino:\t5\n").unwrap();
        assert_eq!(fi, FdInfo { pos: 42, flags: 0o2100002 });
        let st = "Name:\tx\nUmask:\t0022\nSigPnd:\t0000000000000200\nShdPnd:\t0000000000000001\n";
        assert_eq!(status_hex(st, "SigPnd"), Some(0x200));
        assert_eq!(status_hex(st, "ShdPnd"), Some(1));
        assert_eq!(status_field(st, "Umask"), Some("0022"));
        assert!(parse_fdinfo("garbage").is_none());
    }

    #[test]
    fn stat_with_awkward_name() {
        let mut s = String::from("1234 (a) b (c)) S 77");
        for n in 5..=52 {
            s.push_str(&format!(" {n}"));
        }
        let m = parse_stat(&s).unwrap();
        assert_eq!(m.ppid, 77);
        assert_eq!(m.start_code, 26);
        assert_eq!(m.start_stack, 28);
        assert_eq!(m.env_end, 51);
        assert_eq!((m.state, m.pgrp, m.session, m.exit_code), ('S', 5, 6, 52));
        assert!(parse_stat("1 (x) S").is_none());
        // A kernel older than 3.5 stops before the exit code.
        let short = s.rsplit_once(' ').unwrap().0;
        assert_eq!(parse_stat(short).unwrap().exit_code, 0);
    }

    #[test]
    fn unix_diag() {
        let mut buf = Vec::new();
        let mut msg = |kind: u16, body: &[u8]| {
            buf.extend(((16 + body.len()) as u32).to_ne_bytes());
            buf.extend(kind.to_ne_bytes());
            buf.extend([0u8; 10]);
            buf.extend(body);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
        };
        let sock = |ino: u32, peer: Option<u32>| {
            let mut b = vec![1u8, 1, 1, 0];
            b.extend(ino.to_ne_bytes());
            b.extend([0u8; 8]);
            b.extend([8u8, 0, 0, 0]); // UNIX_DIAG_NAME-like attribute of another kind
            b[16..20].copy_from_slice(&[4, 0, 0, 0]);
            if let Some(p) = peer {
                b.extend(8u16.to_ne_bytes());
                b.extend(2u16.to_ne_bytes());
                b.extend(p.to_ne_bytes());
            }
            b
        };
        msg(20, &sock(100, Some(101)));
        msg(20, &sock(102, None));
        msg(3, &[0, 0, 0, 0]);
        let d = parse_unix_diag(&buf);
        assert_eq!(d.peers, vec![(100, 101)]);
        assert!(d.done);
        assert_eq!(d.error, None);
        let d = parse_unix_diag(&buf[..20]);
        assert!(!d.done && d.peers.is_empty());
    }

    #[test]
    fn inotify() {
        let text = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1038\n\
            inotify wd:2 ino:13 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:13\n\
            inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7\n";
        let w = parse_inotify(text).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0], InotifyWatch { wd: 1, inode: 0x3c4a7, sdev: 0xfe00000, mask: 0x300 });
        assert_eq!(w[1].wd, 2);
        assert!(parse_inotify("inotify wd:x ino:1 sdev:0 mask:0").is_none());
    }

    #[test]
    fn children() {
        assert_eq!(parse_children("12 7 300 "), vec![12, 7, 300]);
        assert!(parse_children("").is_empty());
    }

    #[test]
    fn timers() {
        let t = "ID: 0\nsignal: 34/00000000deadbeef\nnotify: signal/pid.100\nClockID: 1\n\
                 ID: 3\nsignal: 14/0000000000000000\nnotify: thread/tid.101\nClockID: 0\n";
        let v = parse_timers(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].sigev_value, 0xdeadbeef);
        assert_eq!(v[0].clock, 1);
        assert_eq!(v[1].notify, TimerNotify::Thread);
        assert!(v[1].to_thread);
        assert_eq!(v[1].notify_pid, 101);
    }
}
