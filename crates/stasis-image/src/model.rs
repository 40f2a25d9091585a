//! What an image says about one process: plain data, no behaviour.
//!
//! Every field is filled by the agent at checkpoint time and read by
//! `stasis restart` and `stasis inspect`. Addresses are virtual addresses of
//! the checkpointed process; sizes are bytes.

/// Everything but the memory contents of one checkpointed process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessMeta {
    /// Generation number of the checkpoint this image belongs to.
    pub generation: u64,
    /// Identifies the computation across generations (random, chosen at launch).
    pub computation_id: u64,
    /// Wall-clock time of the checkpoint, seconds since the epoch.
    pub created_unix: u64,
    /// Pid as the process saw it (getpid), also its thread-group id.
    pub pid: i32,
    /// Parent pid as the process saw it.
    pub ppid: i32,
    /// Process group and session (getpgrp, getsid), restored when their
    /// leaders are part of the computation.
    pub pgid: i32,
    pub sid: i32,
    /// Children that had exited but were not yet waited for: restart makes
    /// them again as zombies with the same pid and wait status.
    pub zombies: Vec<Zombie>,
    /// Short program name (`comm`).
    pub name: String,
    /// Path of the executable at checkpoint time.
    pub exe: String,
    pub cmdline: Vec<String>,
    pub cwd: String,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmLayout,
    pub regions: Vec<Region>,
    pub threads: Vec<Thread>,
    pub fds: Vec<Fd>,
    /// Signal dispositions, indexed by signal number minus one (1..=64).
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (bit n-1 is signal n).
    pub shared_pending: u64,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, in that order.
    pub itimers: Vec<ITimer>,
    pub posix_timers: Vec<PosixTimer>,
    pub agent: AgentInfo,
    /// Where each piece of saved data lies in the payload.
    pub chunks: Vec<Chunk>,
    /// Memory this image does not hold because it had not changed since an
    /// earlier generation's image, which holds it (an incremental
    /// checkpoint). Format version 7.
    pub inherited: Vec<Inherited>,
    /// Connected stream and seqpacket sockets (by `FdKind::Socket` id)
    /// whose peer had shut down writing: once the bytes they had not read
    /// are read, they read end of file (a half-closed connection). Format
    /// version 8.
    pub sockets_peer_shut: Vec<u64>,
    /// The System V message queues and semaphore sets the process used,
    /// with their contents (format version 8). Restart makes each again
    /// once, with its id, in the computation's own IPC namespace.
    pub sysv_ipc: Vec<SysvObject>,
    /// Launched with `--allow-file-overwrite`: a file open read-only whose
    /// contents `--checkpoint-open-files` saved replaces, at restart, a
    /// file of the same path that differs from it (the one found is kept
    /// beside it as `PATH-DATE.bk`). Without it such a restart is refused.
    /// Format version 8.
    pub allow_file_overwrite: bool,
}

/// A System V IPC object, by its id as the program knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysvObject {
    /// A message queue: its messages in the order msgrcv would take them,
    /// and its capacity in bytes (`msg_qbytes`).
    MessageQueue { id: i32, key: i32, mode: u32, qbytes: u64, messages: Vec<SysvMessage> },
    /// A semaphore set: each semaphore's value, in order.
    Semaphores { id: i32, key: i32, mode: u32, values: Vec<u16> },
}

impl SysvObject {
    pub fn id(&self) -> i32 {
        match self {
            SysvObject::MessageQueue { id, .. } | SysvObject::Semaphores { id, .. } => *id,
        }
    }
}

/// One message of a System V queue: its type and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SysvMessage {
    pub mtype: i64,
    pub data: Vec<u8>,
}

/// One message of a POSIX message queue: its priority and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MqMessage {
    pub priority: u32,
    pub data: Vec<u8>,
}

/// A process's mq_notify registration on a POSIX message queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MqNotify {
    /// The process that registered (its pid as the program saw it).
    pub pid: i32,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD.
    pub notify: i32,
    pub signal: i32,
    /// The `sigev_value` the program gave, when the agent saw the call.
    pub value: u64,
}

/// `len` bytes of `regions[region]` from `offset` are as the image of the
/// same process in generation `generation` holds them: that image's memory
/// chunks of the same address range (pages it has no chunk for are zero).
/// Always the generation that holds the bytes in its own chunks, never one
/// that refers further: a restart reads at most one image per page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inherited {
    pub region: u32,
    pub offset: u64,
    pub len: u64,
    pub generation: u64,
}

/// A child that has exited and not been reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Zombie {
    pub pid: i32,
    /// Its status as wait(2) reports it (exit code << 8, or the signal).
    pub status: i32,
}

/// One resource limit (getrlimit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The fields of the kernel's `mm_struct` that PR_SET_MM_MAP restores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The auxiliary vector as /proc/self/auxv gives it, as u64 words.
    pub auxv: Vec<u64>,
}

pub const PROT_READ: u8 = 1;
pub const PROT_WRITE: u8 = 2;
pub const PROT_EXEC: u8 = 4;

/// `Region::fork_advice` bits: what madvise said about the region's
/// behaviour across fork (smaps VmFlags `dc` and `wf`), put back at restart.
pub const ADVICE_DONTFORK: u8 = 1;
pub const ADVICE_WIPEONFORK: u8 = 2;

/// One virtual memory area, as /proc/self/smaps lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC bits.
    pub prot: u8,
    /// MAP_SHARED (otherwise MAP_PRIVATE).
    pub shared: bool,
    /// VM_GROWSDOWN: a stack that the kernel extends on faults below it.
    pub growsdown: bool,
    pub kind: RegionKind,
    /// The name column of /proc/self/maps (`"[heap]"`, a path, or empty).
    pub name: String,
    /// `ADVICE_DONTFORK` | `ADVICE_WIPEONFORK`: madvise flags to apply again.
    pub fork_advice: u8,
    /// Mapped MAP_NORESERVE (smaps VmFlags `nr`): no swap space was
    /// committed for it, and a restart commits none either (a 2 TiB
    /// reservation of a sanitizer). Format version 8.
    pub noreserve: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RegionKind {
    /// Anonymous memory: pages not in the payload are zero.
    #[default]
    Anonymous,
    /// A mapping of a file that still exists: pages not in the payload come
    /// from the file, which must be unchanged at restart (see `FileId`).
    File {
        path: String,
        offset: u64,
        id: FileId,
    },
    /// The vdso or one of the vvar areas: recreated by the kernel, moved into place.
    Vdso,
    Vvar,
    /// Shared memory with no file to come back from: MAP_SHARED|MAP_ANONYMOUS
    /// (inherited across fork), a deleted /dev/shm file, a memfd, SysV
    /// shared memory. `dev` and `inode` name the object, shared by every
    /// process that maps it; `offset` is where in it the region starts.
    /// Restart makes one object per name, filled from the images, and maps
    /// it in each of those processes.
    SharedMemory {
        dev: u64,
        inode: u64,
        offset: u64,
    },
}

/// Enough of a mapped file's identity to tell whether it is still the file
/// the program mapped: pages not in the payload are read from it at their
/// offsets, so another build of it would run the wrong code. The rule that
/// restart applies is `crate::identity::compare` (docs/image-format.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileId {
    pub size: u64,
    pub mtime_ns: i128,
    /// The inode change time: unlike the mtime, no unprivileged user can
    /// set it back after changing the file.
    pub ctime_ns: i128,
    pub inode: u64,
    /// The ELF build-id (the `NT_GNU_BUILD_ID` note); empty for a file that
    /// is not ELF or has none.
    pub build_id: Vec<u8>,
    /// xxh3-64 of the file's first `identity::HEAD_LEN` bytes (the whole
    /// file if shorter). 0 where the writer did not compute it (writable
    /// shared mappings, which are saved whole and written back).
    pub head_hash: u64,
}

/// One thread: its saved signal frame is its whole user-space context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Thread {
    pub tid: i32,
    /// The kernel's `struct ucontext` (uc_flags .. uc_sigmask) as the signal
    /// handler received it: general registers, alternate stack, signal mask.
    pub ucontext: Vec<u8>,
    /// The FPU/vector state the ucontext pointed to (XSAVE layout).
    pub fpstate: Vec<u8>,
    pub fs_base: u64,
    pub gs_base: u64,
    /// set_tid_address() of the thread (glibc: its `pthread.tid` field).
    pub clear_child_tid: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// rseq registration (address, length, signature); address 0 if none.
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// Signals pending for this thread only (bit n-1 is signal n).
    pub pending: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    pub kind: FdKind,
    /// `Some(k)`: this descriptor holds the open file that was descriptor
    /// `k` (0, 1 or 2) of the computation's launch (or of the restart that
    /// made the computation again), inherited from outside the computation:
    /// a file, a pipe, a socket or a terminal of whoever started it.
    /// Restart gives it restart's own descriptor `k` instead, whatever
    /// `kind` says; a checkpoint never saves its contents nor peeks into it.
    pub outside_stdio: Option<u8>,
}

/// What a checkpoint kept of the contents of a file open for writing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FileSave {
    /// Nothing to keep: open read-only, or deleted (its contents are chunks
    /// of the image).
    #[default]
    None,
    /// A copy of the whole file at the checkpoint, in the generation's
    /// directory under `name` (see `savedfiles::saved_name`); restart writes
    /// it back into the file before any process runs.
    Copy { name: String },
    /// Not saved (`why`: over the size limit, or excluded by the user):
    /// restart leaves the file as it finds it, and says so.
    Left { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FdKind {
    /// A regular file: reopened at its path with its flags and offset.
    /// `size` is its size at checkpoint time. `deleted` files come back
    /// from the chunks of kind `FileContents` for this fd, as an unlinked
    /// file (never at their old path). `dev` and `inode` name the file
    /// (a deleted file mapped MAP_SHARED is one object with its mapping).
    /// `saved` says whether the contents of a file open for writing were
    /// saved beside the image (docs/files.md).
    File {
        path: String,
        flags: u32,
        offset: u64,
        size: u64,
        deleted: bool,
        dev: u64,
        inode: u64,
        saved: FileSave,
    },
    Directory {
        path: String,
        flags: u32,
    },
    /// A device or other path that is simply reopened (/dev/null, /dev/zero...).
    Device {
        path: String,
        flags: u32,
    },
    /// Pointed outside the computation (terminal, pipe, socket). At 0-2,
    /// restart hands it the descriptor of the same number that `stasis
    /// restart` itself has; above, a pipe or socket becomes a connection
    /// whose peer is gone (end of file, EPIPE) and anything else is closed.
    Inherited {
        what: String,
    },
    /// The agent's own connection to its coordinator, reconnected at restart.
    Agent,
    /// An eventfd: its counter, and whether it counts as a semaphore.
    /// `flags` are the open flags (O_NONBLOCK matters).
    EventFd {
        count: u64,
        semaphore: bool,
        flags: u32,
    },
    /// A signalfd: the signals it takes (bit N-1 for signal N).
    SignalFd {
        mask: u64,
        flags: u32,
    },
    /// A timerfd: re-armed at restart with the time that was left
    /// (`value_ns`, 0 for disarmed) and its period; `ticks` are the
    /// expirations the program had not read yet.
    TimerFd {
        clock: i32,
        flags: u32,
        value_ns: u64,
        interval_ns: u64,
        ticks: u64,
    },
    /// An epoll instance and what it watches, by descriptor number; it is
    /// rebuilt after every other descriptor is in place.
    Epoll {
        flags: u32,
        targets: Vec<EpollTarget>,
    },
    /// One end of a pipe. `id` (the pipe's inode) is shared by every
    /// descriptor of one pipe, in every process of the computation; `size`
    /// is its capacity; `fifo` is the path of a named pipe (empty for a
    /// pipe(2)), which restart opens again whoever holds its other end;
    /// `peer_gone` says that no process at all held the other end any more
    /// (a reader whose writers have all exited still has bytes to read,
    /// then end of file). The bytes in flight are `FileContents` chunks of the
    /// pipe's first descriptor in `fds` (every process holding the pipe
    /// saves them; all copies are of one instant). A pipe with only one end
    /// in the computation leads outside it: at 0-2 restart hands it its own
    /// descriptor, above it comes back disconnected.
    Pipe {
        id: u64,
        write: bool,
        flags: u32,
        size: u32,
        fifo: String,
        peer_gone: bool,
    },
    /// A socket. `id` (its inode) is shared by every descriptor of it in
    /// every process; `local` and `peer` are its addresses as getsockname
    /// and getpeername give them (raw `struct sockaddr` bytes, empty when
    /// it has none); `peer_id` is a Unix socket's peer, by inode (0: none).
    /// Restart pairs the connected sockets whose two ends are in the
    /// computation (Unix: by `peer_id`; TCP: by their addresses) and makes
    /// them again, listening sockets too; the others lead outside it. The
    /// bytes waiting to be read are `FileContents` chunks of its first
    /// descriptor in `fds`.
    Socket {
        id: u64,
        domain: i32,
        kind: i32,
        protocol: i32,
        flags: u32,
        listening: bool,
        local: Vec<u8>,
        peer: Vec<u8>,
        peer_id: u64,
        /// The options restart sets again (IPV6_V6ONLY, SO_REUSEADDR,
        /// SO_RCVBUF, SO_LINGER, TCP keepalive...): those whose value
        /// differs from a new socket's of the same kind.
        options: Vec<SockOpt>,
    },
    /// A terminal (a pseudo-terminal slave or master, a console). A
    /// pseudo-terminal whose master is in the computation (`pty`) comes
    /// back as a new pair shared the same way; any other terminal becomes
    /// one of restart's making, relayed to the terminal `stasis restart`
    /// runs in. Either gets these `termios` settings (glibc's `struct
    /// termios` bytes) and `window` size (rows, columns, x and y pixels)
    /// and, where it was the process's controlling terminal
    /// (`controlling`), its foreground process group.
    Terminal {
        flags: u32,
        termios: Vec<u8>,
        controlling: bool,
        foreground: i32,
        window: [u16; 4],
        /// Which end of which pseudo-terminal; None for other terminals.
        pty: Option<PtyEnd>,
        /// On a master: the output its slave's side wrote that had not
        /// been read from it yet.
        unread: Vec<u8>,
    },
    /// An inotify instance and its watches, in the order of their watch
    /// descriptors (restart makes them again with the same numbers). A
    /// watch's `path` is the one the program gave inotify_add_watch (made
    /// absolute), as the agent's wrapper recorded it; empty if unknown.
    /// Events not read yet are not saved: `unread` counts their bytes.
    Inotify {
        flags: u32,
        watches: Vec<InotifyWatch>,
        unread: u32,
    },
    /// A POSIX message queue (a descriptor of the mqueue filesystem).
    /// `id` (its inode) is shared by every descriptor of it in every
    /// process; `name` is its name ("/q"), empty once unlinked. `flags`
    /// are the descriptor's (access mode, O_NONBLOCK). The messages, in
    /// the order mq_receive takes them, and its mq_notify registration
    /// are those of the checkpoint (every holder saves them alike).
    MessageQueue {
        id: u64,
        name: String,
        flags: u32,
        mode: u32,
        maxmsg: u64,
        msgsize: u64,
        messages: Vec<MqMessage>,
        notify: Option<MqNotify>,
    },
    /// Not restorable: left closed at restart, with `what` in the log.
    #[default]
    Unsupported,
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    pub path: String,
}

/// One end of a Unix 98 pseudo-terminal pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PtyEnd {
    /// The master (/dev/ptmx) rather than the slave (/dev/pts/N).
    pub master: bool,
    /// N of /dev/pts/N (TIOCGPTN on a master).
    pub index: u32,
    /// The slave still locked (TIOCGPTLCK; masters only).
    pub locked: bool,
    /// Packet mode (TIOCGPKT; masters only).
    pub packet: bool,
}

/// One socket option: `value` is the bytes setsockopt takes to set it
/// again (an int, a `struct linger`, a `struct timeval`, a name), in the
/// machine's byte order. SO_RCVBUF and SO_SNDBUF hold what the program
/// asked, half of what getsockopt reads (the kernel doubles it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

/// One descriptor an epoll instance watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpollTarget {
    pub fd: i32,
    /// The event mask, flags (EPOLLET, EPOLLONESHOT...) included.
    pub events: u32,
    /// The program's `epoll_data`, returned with every event.
    pub data: u64,
}

/// sigaction() as the kernel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// setitimer() state: time to the next expiry and the reload interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

/// One timer_create() timer, as /proc/self/timers and timer_gettime show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID.
    pub notify: i32,
    pub signal: i32,
    pub sigev_value: u64,
    /// Target thread for SIGEV_THREAD_ID.
    pub notify_tid: i32,
    pub interval_ns: u64,
    pub value_ns: u64,
    pub overrun: i32,
}

/// Where the agent keeps what restart must tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentInfo {
    /// Address of the agent's `RestoreInfo` block, written by the restorer.
    pub restore_info_addr: u64,
    /// The signal the agent uses to suspend threads.
    pub ckpt_signal: i32,
    /// The checkpoint interval in force, seconds (0 = none).
    pub interval_s: u32,
    /// The image was written compressed on request (`--compress`): a
    /// restart asks the same of its coordinator, as it does the interval.
    pub compress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// Bytes of `regions[region]` starting `offset` bytes into it.
    Memory { region: u32, offset: u64 },
    /// Bytes of the file behind `fds[fd_index]` starting at `offset` (for a
    /// pipe: the bytes in flight, in order).
    FileContents { fd_index: u32, offset: u64 },
}

/// A run of saved bytes in the payload, with its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub kind: ChunkKind,
    /// Offset of the bytes in the image file (page-aligned for memory).
    pub file_offset: u64,
    /// Bytes in the file.
    pub len: u64,
    /// xxh3-64 of the bytes in the file, so that checking an image needs
    /// no decompression.
    pub checksum: u64,
    pub compression: Compression,
    /// Bytes the chunk holds once decompressed (`len` when not compressed).
    pub data_len: u64,
}

/// How a chunk's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As they are: page aligned, so a restart could map them directly.
    #[default]
    None,
    /// One LZ4 block (written by images of format version 6).
    Lz4,
    /// One zstd frame (the `--gzip` of DMTCP's command line).
    Zstd,
}

impl Compression {
    /// The name messages and `stasis inspect` use.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}
