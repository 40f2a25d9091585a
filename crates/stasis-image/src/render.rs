//! What `stasis inspect` prints: a summary of an image for people.

use std::fmt::Write;

use crate::{ChunkKind, FdKind, PROT_EXEC, PROT_READ, PROT_WRITE, ProcessMeta, RegionKind};

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn size(n: u64) -> String {
    match n {
        n if n >= 10 << 30 => format!("{} GiB", n >> 30),
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// What `stasis inspect` prints.
pub fn render(m: &ProcessMeta) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "generation {}  computation {:016x}  created {} (unix)",
        m.generation, m.computation_id, m.created_unix
    );
    let _ = writeln!(o, "process {} (parent {})  {}  exe {}", m.pid, m.ppid, m.name, m.exe);
    let _ = writeln!(o, "command {}", m.cmdline.join(" "));
    let _ = writeln!(
        o,
        "cwd {}  umask {:04o}  checkpoint signal {}  interval {}s",
        m.cwd, m.umask, m.agent.ckpt_signal, m.agent.interval_s
    );

    let mut saved = vec![0u64; m.regions.len()];
    let mut files = 0u64;
    for c in &m.chunks {
        match c.kind {
            ChunkKind::Memory { region, .. } => saved[region as usize] += c.len,
            ChunkKind::FileContents { .. } => files += c.len,
        }
    }
    let _ = writeln!(o, "\nmemory: {} regions", m.regions.len());
    let _ = writeln!(o, "  {:<33} {:>9} {:>9}  {:<4} {:<5} name", "range", "size", "saved", "prot", "kind");
    for (r, s) in m.regions.iter().zip(&saved) {
        let prot: String = [(PROT_READ, 'r'), (PROT_WRITE, 'w'), (PROT_EXEC, 'x')]
            .iter()
            .map(|&(b, c)| if r.prot & b != 0 { c } else { '-' })
            .chain([if r.shared { 's' } else { 'p' }])
            .collect();
        let kind = match &r.kind {
            RegionKind::Anonymous => "anon",
            RegionKind::File { .. } => "file",
            RegionKind::Vdso => "vdso",
            RegionKind::Vvar => "vvar",
        };
        let _ = writeln!(
            o,
            "  {:#014x}-{:#014x} {:>9} {:>9}  {prot} {kind:<5} {}",
            r.start,
            r.end,
            size(r.end - r.start),
            size(*s),
            r.name
        );
    }
    let mapped: u64 = m.regions.iter().map(|r| r.end - r.start).sum();
    let _ = writeln!(
        o,
        "  total mapped {}, saved {} in {} chunks, file contents {}",
        size(mapped),
        size(saved.iter().sum()),
        m.chunks.len(),
        size(files)
    );

    let _ = writeln!(o, "\nthreads: {}", m.threads.len());
    for t in &m.threads {
        let uc = &t.ucontext;
        let _ = writeln!(
            o,
            "  tid {:<7} {:<16} rip {:#x} rsp {:#x} fs {:#x} mask {:#x} pending {:#x} fpu {} B",
            t.tid,
            t.name,
            u64_at(uc, 40 + 128),
            u64_at(uc, 40 + 120),
            t.fs_base,
            u64_at(uc, 40 + 256),
            t.pending,
            t.fpstate.len()
        );
    }

    let _ = writeln!(o, "\ndescriptors: {}", m.fds.len());
    for f in &m.fds {
        let what = match &f.kind {
            FdKind::File { path, flags, offset, size: sz, deleted } => format!(
                "file {path}{} flags {flags:#o} offset {offset} size {sz}",
                if *deleted { " (deleted, contents saved)" } else { "" }
            ),
            FdKind::Directory { path, .. } => format!("directory {path}"),
            FdKind::Device { path, flags } => format!("device {path} flags {flags:#o}"),
            FdKind::Inherited { what } => format!("inherited from restart ({what})"),
            FdKind::Agent => "the agent's coordinator connection".into(),
            FdKind::Unsupported => "not restorable".into(),
        };
        let _ = writeln!(o, "  {:>4}{} {what}", f.fd, if f.cloexec { "c" } else { " " });
    }

    let handled: Vec<String> = m
        .sigactions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.handler != 0)
        .map(|(i, a)| match a.handler {
            1 => format!("{}:ignore", i + 1),
            _ => format!("{}:handler", i + 1),
        })
        .collect();
    let _ = writeln!(o, "\nsignals: {}", if handled.is_empty() { "all default".into() } else { handled.join(" ") });
    let _ = writeln!(o, "  pending for the process {:#x}", m.shared_pending);
    for (name, t) in ["real", "virtual", "prof"].iter().zip(&m.itimers) {
        if t.value_us != 0 {
            let _ = writeln!(o, "  itimer {name}: next in {} us, every {} us", t.value_us, t.interval_us);
        }
    }
    for t in &m.posix_timers {
        let _ = writeln!(
            o,
            "  posix timer {} clock {} signal {}: next in {} ns, every {} ns",
            t.id, t.clock, t.signal, t.value_ns, t.interval_ns
        );
    }
    o
}
