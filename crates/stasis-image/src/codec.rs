//! The metadata encoding: little-endian integers, u32-length-prefixed
//! strings and vectors, u8 tags for enums. Decoding never panics and never
//! allocates more than the input could describe.

use std::path::PathBuf;

use crate::model::*;
use crate::{Error, Result};

pub(crate) const UCONTEXT_LEN: usize = 304;

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(v as u8);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i128(&mut self, v: i128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn vec<T>(&mut self, v: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.u32(v.len() as u32);
        for x in v {
            f(self, x);
        }
    }
}

/// A saved file's name must stay inside the generation's directory.
fn saved_name_checked(name: String) -> Result<String> {
    if crate::savedfiles::is_saved_name(&name) {
        Ok(name)
    } else {
        Err(corrupt(format!("saved file name {name:?} is not one the agent makes")))
    }
}

struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt { path: PathBuf::new(), what: what.into() }
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(corrupt(format!("metadata ends early (at byte {})", self.pos)));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(format!("invalid boolean {b}"))),
        }
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.arr()?))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| corrupt("invalid UTF-8 in a string"))
    }
    /// A vector of items each at least `min_item` bytes long: the count is
    /// checked against what is left before anything is allocated.
    fn vec<T>(&mut self, min_item: usize, mut f: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.data.len() - self.pos {
            return Err(corrupt(format!("a list of {n} items does not fit in the metadata")));
        }
        (0..n).map(|_| f(self)).collect()
    }
}

/// Encodes the metadata section.
pub fn encode_meta(meta: &ProcessMeta) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(4096));
    e.u64(meta.generation);
    e.u64(meta.computation_id);
    e.u64(meta.created_unix);
    e.i32(meta.pid);
    e.i32(meta.ppid);
    e.i32(meta.pgid);
    e.i32(meta.sid);
    e.vec(&meta.zombies, |e, z| {
        e.i32(z.pid);
        e.i32(z.status);
    });
    e.str(&meta.name);
    e.str(&meta.exe);
    e.vec(&meta.cmdline, |e, s| e.str(s));
    e.str(&meta.cwd);
    e.u32(meta.umask);
    e.vec(&meta.rlimits, |e, r| {
        e.u32(r.resource);
        e.u64(r.soft);
        e.u64(r.hard);
    });
    let m = &meta.mm;
    for v in [
        m.start_code,
        m.end_code,
        m.start_data,
        m.end_data,
        m.start_brk,
        m.brk,
        m.start_stack,
        m.arg_start,
        m.arg_end,
        m.env_start,
        m.env_end,
    ] {
        e.u64(v);
    }
    e.vec(&m.auxv, |e, v| e.u64(*v));
    e.vec(&meta.regions, |e, r| {
        e.u64(r.start);
        e.u64(r.end);
        e.u8(r.prot);
        e.bool(r.shared);
        e.bool(r.growsdown);
        match &r.kind {
            RegionKind::Anonymous => e.u8(0),
            RegionKind::File { path, offset, id } => {
                e.u8(1);
                e.str(path);
                e.u64(*offset);
                e.u64(id.size);
                e.i128(id.mtime_ns);
                e.i128(id.ctime_ns);
                e.u64(id.inode);
                e.bytes(&id.build_id);
                e.u64(id.head_hash);
            }
            RegionKind::Vdso => e.u8(2),
            RegionKind::Vvar => e.u8(3),
            RegionKind::SharedMemory { dev, inode, offset } => {
                e.u8(4);
                e.u64(*dev);
                e.u64(*inode);
                e.u64(*offset);
            }
        }
        e.str(&r.name);
        e.u8(r.fork_advice);
    });
    e.vec(&meta.threads, |e, t| {
        e.i32(t.tid);
        e.bytes(&t.ucontext);
        e.bytes(&t.fpstate);
        for v in [t.fs_base, t.gs_base, t.clear_child_tid, t.robust_list, t.robust_list_len, t.rseq_addr] {
            e.u64(v);
        }
        e.u32(t.rseq_len);
        e.u32(t.rseq_sig);
        e.u64(t.pending);
        e.str(&t.name);
    });
    e.vec(&meta.fds, |e, f| {
        e.i32(f.fd);
        e.bool(f.cloexec);
        match &f.kind {
            FdKind::File { path, flags, offset, size, deleted, dev, inode, saved } => {
                e.u8(0);
                e.str(path);
                e.u32(*flags);
                e.u64(*offset);
                e.u64(*size);
                e.bool(*deleted);
                e.u64(*dev);
                e.u64(*inode);
                match saved {
                    FileSave::None => e.u8(0),
                    FileSave::Copy { name } => {
                        e.u8(1);
                        e.str(name);
                    }
                    FileSave::Left { why } => {
                        e.u8(2);
                        e.str(why);
                    }
                }
            }
            FdKind::Directory { path, flags } => {
                e.u8(1);
                e.str(path);
                e.u32(*flags);
            }
            FdKind::Device { path, flags } => {
                e.u8(2);
                e.str(path);
                e.u32(*flags);
            }
            FdKind::Inherited { what } => {
                e.u8(3);
                e.str(what);
            }
            FdKind::Agent => e.u8(4),
            FdKind::Unsupported => e.u8(5),
            FdKind::EventFd { count, semaphore, flags } => {
                e.u8(6);
                e.u64(*count);
                e.bool(*semaphore);
                e.u32(*flags);
            }
            FdKind::SignalFd { mask, flags } => {
                e.u8(7);
                e.u64(*mask);
                e.u32(*flags);
            }
            FdKind::TimerFd { clock, flags, value_ns, interval_ns, ticks } => {
                e.u8(8);
                e.i32(*clock);
                e.u32(*flags);
                e.u64(*value_ns);
                e.u64(*interval_ns);
                e.u64(*ticks);
            }
            FdKind::Epoll { flags, targets } => {
                e.u8(9);
                e.u32(*flags);
                e.vec(targets, |e, t| {
                    e.i32(t.fd);
                    e.u32(t.events);
                    e.u64(t.data);
                });
            }
            FdKind::Pipe { id, write, flags, size, fifo, peer_gone } => {
                e.u8(10);
                e.u64(*id);
                e.bool(*write);
                e.u32(*flags);
                e.u32(*size);
                e.str(fifo);
                e.bool(*peer_gone);
            }
            FdKind::Socket { id, domain, kind, protocol, flags, listening, local, peer, peer_id, options } => {
                e.u8(11);
                e.u64(*id);
                e.i32(*domain);
                e.i32(*kind);
                e.i32(*protocol);
                e.u32(*flags);
                e.bool(*listening);
                e.bytes(local);
                e.bytes(peer);
                e.u64(*peer_id);
                e.vec(options, |e, o| {
                    e.i32(o.level);
                    e.i32(o.name);
                    e.bytes(&o.value);
                });
            }
            FdKind::Inotify { flags, watches, unread } => {
                e.u8(13);
                e.u32(*flags);
                e.vec(watches, |e, w| {
                    e.i32(w.wd);
                    e.u32(w.mask);
                    e.str(&w.path);
                });
                e.u32(*unread);
            }
            FdKind::MessageQueue { id, name, flags, mode, maxmsg, msgsize, messages, notify } => {
                e.u8(20);
                e.u64(*id);
                e.str(name);
                e.u32(*flags);
                e.u32(*mode);
                e.u64(*maxmsg);
                e.u64(*msgsize);
                e.vec(messages, |e, m| {
                    e.u32(m.priority);
                    e.bytes(&m.data);
                });
                e.bool(notify.is_some());
                if let Some(n) = notify {
                    e.i32(n.pid);
                    e.i32(n.notify);
                    e.i32(n.signal);
                    e.u64(n.value);
                }
            }
            FdKind::Terminal { flags, termios, controlling, foreground, window, pty, unread } => {
                e.u8(12);
                e.u32(*flags);
                e.bytes(termios);
                e.bool(*controlling);
                e.i32(*foreground);
                for v in window {
                    e.u16(*v);
                }
                e.bool(pty.is_some());
                if let Some(p) = pty {
                    e.bool(p.master);
                    e.u32(p.index);
                    e.bool(p.locked);
                    e.bool(p.packet);
                }
                e.bytes(unread);
            }
        }
        // 0: none; k + 1: outside stdio k.
        e.u8(f.outside_stdio.map_or(0, |k| k + 1));
    });
    e.vec(&meta.sigactions, |e, a| {
        for v in [a.handler, a.flags, a.restorer, a.mask] {
            e.u64(v);
        }
    });
    e.u64(meta.shared_pending);
    e.vec(&meta.itimers, |e, t| {
        e.u64(t.interval_us);
        e.u64(t.value_us);
    });
    e.vec(&meta.posix_timers, |e, t| {
        for v in [t.id, t.clock, t.notify, t.signal] {
            e.i32(v);
        }
        e.u64(t.sigev_value);
        e.i32(t.notify_tid);
        e.u64(t.interval_ns);
        e.u64(t.value_ns);
        e.i32(t.overrun);
    });
    e.u64(meta.agent.restore_info_addr);
    e.i32(meta.agent.ckpt_signal);
    e.u32(meta.agent.interval_s);
    e.bool(meta.agent.compress);
    e.vec(&meta.chunks, |e, c| {
        match c.kind {
            ChunkKind::Memory { region, offset } => {
                e.u8(0);
                e.u32(region);
                e.u64(offset);
            }
            ChunkKind::FileContents { fd_index, offset } => {
                e.u8(1);
                e.u32(fd_index);
                e.u64(offset);
            }
        }
        e.u64(c.file_offset);
        e.u64(c.len);
        e.u64(c.checksum);
        e.u8(match c.compression {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        });
        e.u64(c.data_len);
    });
    e.vec(&meta.inherited, |e, r| {
        e.u32(r.region);
        e.u64(r.offset);
        e.u64(r.len);
        e.u64(r.generation);
    });
    e.vec(&meta.sockets_peer_shut, |e, id| e.u64(*id));
    e.vec(&meta.sysv_ipc, |e, o| match o {
        SysvObject::MessageQueue { id, key, mode, qbytes, messages } => {
            e.u8(0);
            e.i32(*id);
            e.i32(*key);
            e.u32(*mode);
            e.u64(*qbytes);
            e.vec(messages, |e, m| {
                e.u64(m.mtype as u64);
                e.bytes(&m.data);
            });
        }
        SysvObject::Semaphores { id, key, mode, values } => {
            e.u8(1);
            e.i32(*id);
            e.i32(*key);
            e.u32(*mode);
            e.vec(values, |e, v| e.u16(*v));
        }
    });
    // Version 8: the regions mapped MAP_NORESERVE, by index.
    let noreserve: Vec<u32> =
        meta.regions.iter().enumerate().filter(|(_, r)| r.noreserve).map(|(i, _)| i as u32).collect();
    e.vec(&noreserve, |e, i| e.u32(*i));
    e.bool(meta.allow_file_overwrite);
    e.0
}

/// Decodes the metadata section of this build's version; never panics,
/// whatever the bytes.
pub fn decode_meta(bytes: &[u8]) -> Result<ProcessMeta> {
    decode_meta_version(bytes, crate::VERSION)
}

/// Decodes the metadata section of an image of format `version` (6, 7 or
/// 8: version 6 has no `inherited` list; 6 and 7 no `sockets_peer_shut`,
/// `sysv_ipc`, MAP_NORESERVE regions nor `allow_file_overwrite`).
pub fn decode_meta_version(bytes: &[u8], version: u32) -> Result<ProcessMeta> {
    let mut d = Dec { data: bytes, pos: 0 };
    let mut m = ProcessMeta {
        generation: d.u64()?,
        computation_id: d.u64()?,
        created_unix: d.u64()?,
        pid: d.i32()?,
        ppid: d.i32()?,
        pgid: d.i32()?,
        sid: d.i32()?,
        zombies: d.vec(8, |d| Ok(Zombie { pid: d.i32()?, status: d.i32()? }))?,
        name: d.str()?,
        exe: d.str()?,
        cmdline: d.vec(4, |d| d.str())?,
        cwd: d.str()?,
        umask: d.u32()?,
        rlimits: d.vec(20, |d| Ok(Rlimit { resource: d.u32()?, soft: d.u64()?, hard: d.u64()? }))?,
        ..Default::default()
    };
    m.mm = MmLayout {
        start_code: d.u64()?,
        end_code: d.u64()?,
        start_data: d.u64()?,
        end_data: d.u64()?,
        start_brk: d.u64()?,
        brk: d.u64()?,
        start_stack: d.u64()?,
        arg_start: d.u64()?,
        arg_end: d.u64()?,
        env_start: d.u64()?,
        env_end: d.u64()?,
        auxv: d.vec(8, |d| d.u64())?,
    };
    m.regions = d.vec(25, |d| {
        let (start, end, prot, shared, growsdown) = (d.u64()?, d.u64()?, d.u8()?, d.bool()?, d.bool()?);
        let kind = match d.u8()? {
            0 => RegionKind::Anonymous,
            1 => RegionKind::File {
                path: d.str()?,
                offset: d.u64()?,
                id: FileId {
                    size: d.u64()?,
                    mtime_ns: d.i128()?,
                    ctime_ns: d.i128()?,
                    inode: d.u64()?,
                    build_id: d.bytes()?,
                    head_hash: d.u64()?,
                },
            },
            2 => RegionKind::Vdso,
            3 => RegionKind::Vvar,
            4 => RegionKind::SharedMemory { dev: d.u64()?, inode: d.u64()?, offset: d.u64()? },
            t => return Err(corrupt(format!("unknown region kind {t}"))),
        };
        let name = d.str()?;
        let fork_advice = d.u8()?;
        if fork_advice & !(ADVICE_DONTFORK | ADVICE_WIPEONFORK) != 0 {
            return Err(corrupt(format!("unknown fork advice {fork_advice:#x}")));
        }
        Ok(Region { start, end, prot, shared, growsdown, kind, name, fork_advice, noreserve: false })
    })?;
    m.threads = d.vec(70, |d| {
        Ok(Thread {
            tid: d.i32()?,
            ucontext: d.bytes()?,
            fpstate: d.bytes()?,
            fs_base: d.u64()?,
            gs_base: d.u64()?,
            clear_child_tid: d.u64()?,
            robust_list: d.u64()?,
            robust_list_len: d.u64()?,
            rseq_addr: d.u64()?,
            rseq_len: d.u32()?,
            rseq_sig: d.u32()?,
            pending: d.u64()?,
            name: d.str()?,
        })
    })?;
    m.fds = d.vec(6, |d| {
        let (fd, cloexec) = (d.i32()?, d.bool()?);
        let kind = match d.u8()? {
            0 => FdKind::File {
                path: d.str()?,
                flags: d.u32()?,
                offset: d.u64()?,
                size: d.u64()?,
                deleted: d.bool()?,
                dev: d.u64()?,
                inode: d.u64()?,
                saved: match d.u8()? {
                    0 => FileSave::None,
                    1 => FileSave::Copy { name: saved_name_checked(d.str()?)? },
                    2 => FileSave::Left { why: d.str()? },
                    t => return Err(corrupt(format!("unknown saved-file tag {t}"))),
                },
            },
            1 => FdKind::Directory { path: d.str()?, flags: d.u32()? },
            2 => FdKind::Device { path: d.str()?, flags: d.u32()? },
            3 => FdKind::Inherited { what: d.str()? },
            4 => FdKind::Agent,
            5 => FdKind::Unsupported,
            6 => FdKind::EventFd { count: d.u64()?, semaphore: d.bool()?, flags: d.u32()? },
            7 => FdKind::SignalFd { mask: d.u64()?, flags: d.u32()? },
            8 => FdKind::TimerFd {
                clock: d.i32()?,
                flags: d.u32()?,
                value_ns: d.u64()?,
                interval_ns: d.u64()?,
                ticks: d.u64()?,
            },
            9 => FdKind::Epoll {
                flags: d.u32()?,
                targets: d.vec(16, |d| Ok(EpollTarget { fd: d.i32()?, events: d.u32()?, data: d.u64()? }))?,
            },
            10 => FdKind::Pipe {
                id: d.u64()?,
                write: d.bool()?,
                flags: d.u32()?,
                size: d.u32()?,
                fifo: d.str()?,
                peer_gone: d.bool()?,
            },
            11 => FdKind::Socket {
                id: d.u64()?,
                domain: d.i32()?,
                kind: d.i32()?,
                protocol: d.i32()?,
                flags: d.u32()?,
                listening: d.bool()?,
                local: d.bytes()?,
                peer: d.bytes()?,
                peer_id: d.u64()?,
                options: d.vec(12, |d| Ok(SockOpt { level: d.i32()?, name: d.i32()?, value: d.bytes()? }))?,
            },
            13 => FdKind::Inotify {
                flags: d.u32()?,
                watches: d.vec(12, |d| Ok(InotifyWatch { wd: d.i32()?, mask: d.u32()?, path: d.str()? }))?,
                unread: d.u32()?,
            },
            12 => FdKind::Terminal {
                flags: d.u32()?,
                termios: d.bytes()?,
                controlling: d.bool()?,
                foreground: d.i32()?,
                window: [d.u16()?, d.u16()?, d.u16()?, d.u16()?],
                pty: if d.bool()? {
                    Some(PtyEnd { master: d.bool()?, index: d.u32()?, locked: d.bool()?, packet: d.bool()? })
                } else {
                    None
                },
                unread: d.bytes()?,
            },
            20 => FdKind::MessageQueue {
                id: d.u64()?,
                name: d.str()?,
                flags: d.u32()?,
                mode: d.u32()?,
                maxmsg: d.u64()?,
                msgsize: d.u64()?,
                messages: d.vec(8, |d| Ok(MqMessage { priority: d.u32()?, data: d.bytes()? }))?,
                notify: if d.bool()? {
                    Some(MqNotify { pid: d.i32()?, notify: d.i32()?, signal: d.i32()?, value: d.u64()? })
                } else {
                    None
                },
            },
            t => return Err(corrupt(format!("unknown descriptor kind {t}"))),
        };
        let outside_stdio = match d.u8()? {
            0 => None,
            k @ 1..=3 => Some(k - 1),
            t => return Err(corrupt(format!("outside stdio {t} is none of 0, 1, 2"))),
        };
        Ok(Fd { fd, cloexec, kind, outside_stdio })
    })?;
    m.sigactions =
        d.vec(32, |d| Ok(SigAction { handler: d.u64()?, flags: d.u64()?, restorer: d.u64()?, mask: d.u64()? }))?;
    m.shared_pending = d.u64()?;
    m.itimers = d.vec(16, |d| Ok(ITimer { interval_us: d.u64()?, value_us: d.u64()? }))?;
    m.posix_timers = d.vec(48, |d| {
        Ok(PosixTimer {
            id: d.i32()?,
            clock: d.i32()?,
            notify: d.i32()?,
            signal: d.i32()?,
            sigev_value: d.u64()?,
            notify_tid: d.i32()?,
            interval_ns: d.u64()?,
            value_ns: d.u64()?,
            overrun: d.i32()?,
        })
    })?;
    m.agent =
        AgentInfo { restore_info_addr: d.u64()?, ckpt_signal: d.i32()?, interval_s: d.u32()?, compress: d.bool()? };
    m.chunks = d.vec(46, |d| {
        let kind = match d.u8()? {
            0 => ChunkKind::Memory { region: d.u32()?, offset: d.u64()? },
            1 => ChunkKind::FileContents { fd_index: d.u32()?, offset: d.u64()? },
            t => return Err(corrupt(format!("unknown chunk kind {t}"))),
        };
        let (file_offset, len, checksum) = (d.u64()?, d.u64()?, d.u64()?);
        let compression = match d.u8()? {
            0 => Compression::None,
            1 => Compression::Lz4,
            2 => Compression::Zstd,
            t => return Err(corrupt(format!("unknown compression {t}"))),
        };
        Ok(Chunk { kind, file_offset, len, checksum, compression, data_len: d.u64()? })
    })?;
    if version >= 7 {
        m.inherited =
            d.vec(28, |d| Ok(Inherited { region: d.u32()?, offset: d.u64()?, len: d.u64()?, generation: d.u64()? }))?;
    }
    if version >= 8 {
        m.sockets_peer_shut = d.vec(8, |d| d.u64())?;
        m.sysv_ipc = d.vec(13, |d| {
            Ok(match d.u8()? {
                0 => SysvObject::MessageQueue {
                    id: d.i32()?,
                    key: d.i32()?,
                    mode: d.u32()?,
                    qbytes: d.u64()?,
                    messages: d.vec(12, |d| Ok(SysvMessage { mtype: d.u64()? as i64, data: d.bytes()? }))?,
                },
                1 => SysvObject::Semaphores {
                    id: d.i32()?,
                    key: d.i32()?,
                    mode: d.u32()?,
                    values: d.vec(2, |d| d.u16())?,
                },
                t => return Err(corrupt(format!("unknown System V object kind {t}"))),
            })
        })?;
        for i in d.vec(4, |d| d.u32())? {
            let n = m.regions.len();
            let r = m.regions.get_mut(i as usize).ok_or_else(|| {
                corrupt(format!("MAP_NORESERVE region {i} does not exist (the image has {n} regions)"))
            })?;
            if r.noreserve {
                return Err(corrupt(format!("MAP_NORESERVE region {i} is listed twice")));
            }
            r.noreserve = true;
        }
        m.allow_file_overwrite = d.bool()?;
    }
    if d.pos != bytes.len() {
        return Err(corrupt(format!("{} unexpected bytes after the metadata", bytes.len() - d.pos)));
    }
    validate(&m)?;
    Ok(m)
}

/// Checks the relations between fields that the encoding alone cannot.
/// The writer runs it too, so that a bad image fails at checkpoint time
/// rather than at restart.
pub(crate) fn validate(m: &ProcessMeta) -> Result<()> {
    let page = crate::PAGE_SIZE;
    let mut prev_end = 0;
    for (i, r) in m.regions.iter().enumerate() {
        let range = format!("region {i} ({:#x}-{:#x})", r.start, r.end);
        if r.start >= r.end {
            return Err(corrupt(format!("{range} is empty")));
        }
        if r.start % page != 0 || r.end % page != 0 {
            return Err(corrupt(format!("{range} is not page aligned")));
        }
        if r.start < prev_end {
            return Err(corrupt(format!("{range} overlaps or precedes the region before it")));
        }
        if r.prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
            return Err(corrupt(format!("{range} has unknown protection bits {:#x}", r.prot)));
        }
        // Restart maps the file at this offset, and mmap wants it aligned.
        if let RegionKind::File { offset, .. } | RegionKind::SharedMemory { offset, .. } = r.kind
            && offset % page != 0
        {
            return Err(corrupt(format!("{range} maps its file at unaligned offset {offset:#x}")));
        }
        prev_end = r.end;
    }
    for t in &m.threads {
        if t.ucontext.len() != UCONTEXT_LEN {
            return Err(corrupt(format!(
                "thread {} has a {}-byte context (expected {UCONTEXT_LEN})",
                t.tid,
                t.ucontext.len()
            )));
        }
    }
    if m.sigactions.len() > 64 {
        return Err(corrupt(format!("{} signal actions (at most 64)", m.sigactions.len())));
    }
    if m.itimers.len() > 3 {
        return Err(corrupt(format!("{} interval timers (at most 3)", m.itimers.len())));
    }
    for (i, c) in m.chunks.iter().enumerate() {
        let lengths_agree = match c.compression {
            Compression::None => c.data_len == c.len,
            Compression::Lz4 | Compression::Zstd => c.data_len <= crate::MAX_CHUNK_LEN,
        };
        if !lengths_agree {
            return Err(corrupt(format!("chunk {i} holds {} bytes in {} stored ones", c.data_len, c.len)));
        }
        match c.kind {
            ChunkKind::Memory { region, offset } => {
                let r = m
                    .regions
                    .get(region as usize)
                    .ok_or_else(|| corrupt(format!("memory chunk {i} names region {region}, which does not exist")))?;
                // Page aligned within the region, as it is in the file, so
                // that restart can map the chunk where it belongs.
                if offset % page != 0 {
                    return Err(corrupt(format!("memory chunk {i} starts at unaligned offset {offset:#x}")));
                }
                let end = offset.checked_add(c.data_len).and_then(|e| r.start.checked_add(e));
                if end.is_none_or(|e| e > r.end) {
                    return Err(corrupt(format!(
                        "memory chunk {i} ({} bytes at offset {offset:#x}) lies outside region {region} ({:#x}-{:#x})",
                        c.data_len, r.start, r.end
                    )));
                }
            }
            ChunkKind::FileContents { fd_index, offset } => {
                if m.fds.get(fd_index as usize).is_none() {
                    return Err(corrupt(format!(
                        "file contents chunk {i} names descriptor #{fd_index}, which does not exist"
                    )));
                }
                if offset.checked_add(c.data_len).is_none() {
                    return Err(corrupt(format!("file contents chunk {i} ends past the largest file offset")));
                }
            }
        }
    }
    for (i, r) in m.inherited.iter().enumerate() {
        let region = m
            .regions
            .get(r.region as usize)
            .ok_or_else(|| corrupt(format!("inherited memory {i} names region {}, which does not exist", r.region)))?;
        let end = r.offset.checked_add(r.len).and_then(|e| region.start.checked_add(e));
        if r.offset % page != 0 || r.len % page != 0 || r.len == 0 || end.is_none_or(|e| e > region.end) {
            return Err(corrupt(format!(
                "inherited memory {i} ({} bytes at offset {:#x}) is not whole pages of region {}",
                r.len, r.offset, r.region
            )));
        }
        if r.generation == 0 || r.generation >= m.generation {
            return Err(corrupt(format!(
                "inherited memory {i} refers to generation {}, not an earlier one than {}",
                r.generation, m.generation
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ProcessMeta {
        ProcessMeta {
            name: "p".into(),
            regions: vec![
                Region { start: 0x1000, end: 0x3000, prot: PROT_READ, ..Default::default() },
                Region {
                    start: 0x3000,
                    end: 0x4000,
                    kind: RegionKind::File { path: "/f".into(), offset: 0x2000, id: FileId::default() },
                    ..Default::default()
                },
            ],
            threads: vec![Thread { tid: 1, ucontext: vec![0; UCONTEXT_LEN], ..Default::default() }],
            fds: vec![Fd { fd: 0, cloexec: false, kind: FdKind::Agent, outside_stdio: None }],
            sigactions: vec![SigAction::default(); 64],
            itimers: vec![ITimer::default(); 3],
            chunks: vec![
                Chunk {
                    kind: ChunkKind::Memory { region: 0, offset: 0x1000 },
                    file_offset: 4096,
                    len: 4096,
                    checksum: 1,
                    compression: Compression::None,
                    data_len: 4096,
                },
                Chunk {
                    kind: ChunkKind::FileContents { fd_index: 0, offset: 3 },
                    file_offset: 8192,
                    len: 9,
                    checksum: 2,
                    compression: Compression::None,
                    data_len: 9,
                },
            ],
            ..Default::default()
        }
    }

    fn what(e: Error) -> String {
        match e {
            Error::Corrupt { what, .. } => what,
            other => panic!("expected corrupt, got {other}"),
        }
    }

    fn refused(f: impl FnOnce(&mut ProcessMeta), want: &str) {
        let mut m = valid();
        f(&mut m);
        let w = what(decode_meta(&encode_meta(&m)).unwrap_err());
        assert!(w.contains(want), "{w:?} should mention {want:?}");
    }

    #[test]
    fn round_trip_and_canonical() {
        let bytes = encode_meta(&valid());
        let back = decode_meta(&bytes).unwrap();
        assert_eq!(back, valid());
        assert_eq!(encode_meta(&back), bytes);
        assert_eq!(decode_meta(&encode_meta(&ProcessMeta::default())).unwrap(), ProcessMeta::default());
    }

    #[test]
    fn relations_are_checked() {
        refused(|m| m.regions[0].end = m.regions[0].start, "is empty");
        refused(|m| m.regions[0].end = 0x2800, "not page aligned");
        refused(|m| m.regions.swap(0, 1), "overlaps or precedes");
        refused(|m| m.regions[1].start = 0x2000, "overlaps or precedes");
        refused(|m| m.regions[0].prot = 8, "unknown protection bits");
        refused(
            |m| m.regions[1].kind = RegionKind::File { path: "/f".into(), offset: 5, id: FileId::default() },
            "unaligned offset 0x5",
        );
        refused(|m| m.threads[0].ucontext.pop().map_or((), drop), "303-byte context (expected 304)");
        refused(|m| m.threads[0].ucontext.push(0), "305-byte context");
        refused(|m| m.sigactions.push(SigAction::default()), "65 signal actions");
        refused(|m| m.itimers.push(ITimer::default()), "4 interval timers");
        refused(|m| m.chunks[0].kind = ChunkKind::Memory { region: 2, offset: 0 }, "region 2, which does not exist");
        refused(|m| m.chunks[0].kind = ChunkKind::Memory { region: 0, offset: 0x1800 }, "unaligned offset");
        refused(
            |m| {
                m.chunks[0].len = 4097;
                m.chunks[0].data_len = 4097;
            },
            "lies outside region 0",
        );
        refused(|m| m.chunks[0].len = 4097, "holds 4096 bytes in 4097 stored ones");
        refused(|m| m.chunks[0].kind = ChunkKind::Memory { region: 0, offset: !0xfff }, "outside");
        refused(
            |m| m.chunks[1].kind = ChunkKind::FileContents { fd_index: 1, offset: 0 },
            "descriptor #1, which does not exist",
        );
        refused(|m| m.chunks[1].kind = ChunkKind::FileContents { fd_index: 0, offset: u64::MAX }, "past the largest");
    }

    /// Version 8's fields with nothing in them: the counts of the empty
    /// sockets_peer_shut, sysv_ipc and MAP_NORESERVE region lists, and
    /// `allow_file_overwrite`.
    const V8_TAIL: usize = 4 + 4 + 4 + 1;

    #[test]
    fn noreserve_regions_and_file_overwrite() {
        let mut m = valid();
        m.regions[0].noreserve = true;
        m.allow_file_overwrite = true;
        let bytes = encode_meta(&m);
        assert_eq!(decode_meta(&bytes).unwrap(), m);
        // Version 7 ends before them (and the empty sockets_peer_shut and
        // sysv_ipc lists before them).
        let v7 = &bytes[..bytes.len() - 4 - 4 - 4 - 4 - 1];
        let back = decode_meta_version(v7, 7).unwrap();
        assert!(!back.regions[0].noreserve && !back.allow_file_overwrite);
        // A region index past the list, or one listed twice.
        let mut v = bytes.clone();
        let at = v.len() - 5;
        v[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        assert!(what(decode_meta(&v).unwrap_err()).contains("MAP_NORESERVE region 9 does not exist"));
        let mut v = bytes[..bytes.len() - 9].to_vec();
        v.extend(2u32.to_le_bytes());
        v.extend([0u8; 8]);
        v.push(0);
        assert!(what(decode_meta(&v).unwrap_err()).contains("listed twice"));
    }

    #[test]
    fn half_closed_sockets() {
        let mut m = valid();
        m.sockets_peer_shut = vec![7, 1 << 40];
        let bytes = encode_meta(&m);
        assert_eq!(decode_meta(&bytes).unwrap(), m);
        // Version 7 has no list.
        assert!(decode_meta_version(&bytes, 7).is_err());
        let v7 = &bytes[..bytes.len() - 4 - 16 - (V8_TAIL - 4)];
        assert!(decode_meta_version(v7, 7).unwrap().sockets_peer_shut.is_empty());
    }

    #[test]
    fn system_v_objects() {
        let mut m = valid();
        m.sysv_ipc = vec![
            SysvObject::MessageQueue {
                id: 32768,
                key: 9977,
                mode: 0o666,
                qbytes: 16384,
                messages: vec![SysvMessage { mtype: 3, data: b"abc".to_vec() }],
            },
            SysvObject::Semaphores { id: 5, key: 0, mode: 0o600, values: vec![0, 7] },
        ];
        let bytes = encode_meta(&m);
        assert_eq!(decode_meta(&bytes).unwrap(), m);
        assert!(decode_meta_version(&bytes, 7).is_err());
        let mut bad = bytes.clone();
        // The set is the last object; the MAP_NORESERVE count and
        // allow_file_overwrite (5 bytes) follow the list.
        let at = bad.len() - (1 + 4 + 4 + 4 + 4 + 2 * 2) - 5;
        bad[at] = 2;
        assert!(what(decode_meta(&bad).unwrap_err()).contains("System V object kind 2"));
    }

    #[test]
    fn inherited_memory() {
        let mut m = valid();
        m.generation = 5;
        m.inherited = vec![Inherited { region: 0, offset: 0, len: 0x1000, generation: 3 }];
        let bytes = encode_meta(&m);
        assert_eq!(decode_meta(&bytes).unwrap(), m);
        // Version 6 has no list: its bytes end before it (and before
        // version 8's fields, empty here: V8_TAIL bytes).
        let v7 = &bytes[..bytes.len() - V8_TAIL];
        assert_eq!(decode_meta_version(v7, 7).unwrap(), m);
        let v6 = &bytes[..bytes.len() - V8_TAIL - 4 - 28];
        let back = decode_meta_version(v6, 6).unwrap();
        assert!(back.inherited.is_empty());
        assert!(decode_meta_version(&bytes, 6).is_err());
        assert!(decode_meta_version(&bytes, 7).is_err());
        refused(|m| m.inherited = vec![Inherited { region: 9, offset: 0, len: 0x1000, generation: 1 }], "region 9");
        refused(
            |m| m.inherited = vec![Inherited { region: 0, offset: 0x800, len: 0x1000, generation: 1 }],
            "whole pages",
        );
        refused(|m| m.inherited = vec![Inherited { region: 0, offset: 0, len: 0, generation: 1 }], "whole pages");
        refused(|m| m.inherited = vec![Inherited { region: 0, offset: 0, len: 1 << 40, generation: 1 }], "whole pages");
        refused(
            |m| m.inherited = vec![Inherited { region: 0, offset: 0, len: 0x1000, generation: m.generation }],
            "not an earlier one",
        );
    }

    #[test]
    fn encoding_errors() {
        let good = encode_meta(&valid());
        for cut in 0..good.len() {
            let w = what(decode_meta(&good[..cut]).unwrap_err());
            assert!(w.contains("ends early") || w.contains("does not fit"), "cut at {cut}: {w}");
        }
        let mut v = good.clone();
        v.push(0);
        assert_eq!(what(decode_meta(&v).unwrap_err()), "1 unexpected bytes after the metadata");

        // name is the first string, after three u64s, four i32s and the
        // empty zombie list: u32 length at 44, one byte at 48.
        let mut v = good.clone();
        v[48] = 0xff;
        assert!(what(decode_meta(&v).unwrap_err()).contains("UTF-8"));
        let mut v = good.clone();
        v[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(what(decode_meta(&v).unwrap_err()).contains("ends early"));

        // exe is empty, then cmdline's count: a huge count must not allocate.
        let mut v = good.clone();
        v[53..57].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(what(decode_meta(&v).unwrap_err()).contains("does not fit"));
    }

    #[test]
    fn compression_fields() {
        let mut m = valid();
        m.chunks[1].compression = Compression::Lz4;
        m.chunks[1].data_len = crate::MAX_CHUNK_LEN;
        assert!(decode_meta(&encode_meta(&m)).is_ok());
        refused(
            |m| {
                m.chunks[1].compression = Compression::Lz4;
                m.chunks[1].data_len = crate::MAX_CHUNK_LEN + 1;
            },
            "holds 67108865 bytes in 9 stored ones",
        );
        refused(|m| m.chunks[1].data_len = 10, "holds 10 bytes in 9 stored ones");
        // The compression tag is the second last field of the last chunk
        // (an empty inherited list follows, then version 8's 5 bytes).
        let mut v = encode_meta(&valid());
        let at = v.len() - 9 - 4 - V8_TAIL;
        v[at] = 2;
        assert_eq!(decode_meta(&v).unwrap().chunks[1].compression, Compression::Zstd);
        v[at] = 3;
        assert_eq!(what(decode_meta(&v).unwrap_err()), "unknown compression 3");
    }

    #[test]
    fn tags_and_booleans() {
        let m = ProcessMeta {
            regions: vec![Region { start: 0x1000, end: 0x2000, ..Default::default() }],
            fds: vec![Fd { fd: 0, cloexec: false, kind: FdKind::Agent, outside_stdio: None }],
            ..Default::default()
        };
        let good = encode_meta(&m);
        // Find the region's fields: start, end, prot, shared, growsdown, kind.
        let at = good.windows(16).position(|w| w[..8] == 0x1000u64.to_le_bytes()).unwrap();
        let cases =
            [(at + 17, 2, "invalid boolean 2"), (at + 18, 7, "invalid boolean 7"), (at + 19, 5, "region kind 5")];
        for (pos, val, want) in cases {
            let mut v = good.clone();
            v[pos] = val;
            let w = what(decode_meta(&v).unwrap_err());
            assert!(w.contains(want), "{w:?} should mention {want:?}");
        }
        // The descriptor's tag is followed by its outside-stdio byte and 53
        // bytes: four empty lists' counts, shared_pending, the agent's 17
        // bytes and the empty inherited list's count; then version 8's.
        let fd_tag = good.len() - 47 - V8_TAIL;
        let mut v = good.clone();
        v[fd_tag] = 99;
        assert!(what(decode_meta(&v).unwrap_err()).contains("descriptor kind 99"));
        let mut v = good.clone();
        v[fd_tag + 1] = 3;
        assert_eq!(decode_meta(&v).unwrap().fds[0].outside_stdio, Some(2));
        v[fd_tag + 1] = 4;
        assert!(what(decode_meta(&v).unwrap_err()).contains("outside stdio 4"));
    }
}
