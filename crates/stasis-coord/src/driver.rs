//! The thread that runs checkpoints, one at a time: on request, and on the
//! interval timer.
//!
//! Requests that arrive while a checkpoint runs are answered by the next
//! one, which starts as soon as the current one ends: every client gets a
//! checkpoint taken after it asked, and a burst of requests costs one
//! checkpoint, not one each.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stasis_image::{CheckpointDir, Manifest, ManifestProcess, PendingGeneration};
use stasis_proto::{self as proto, Message};

use crate::state::{Participant, Progress, Round, Shared, error};
use crate::warn;

const NO_PROCESS: &str = "no process connected";
const SHUTTING_DOWN: &str = "the coordinator is shutting down";

pub(crate) fn run(shared: Arc<Shared>, dir: CheckpointDir) {
    loop {
        let mut st = shared.lock();
        let by_timer = loop {
            if st.shutdown {
                st.waiters.clear();
                return;
            }
            if !st.waiters.is_empty() {
                break false;
            }
            if st.interval_s == 0 {
                st = shared.wait(st);
                continue;
            }
            let due = st.timer_base + Duration::from_secs(st.interval_s.into());
            let now = Instant::now();
            if now >= due {
                break true;
            }
            st = shared.wait_timeout(st, due - now);
        };
        let waiters = std::mem::take(&mut st.waiters);
        st.busy = true;
        drop(st);

        let outcome = checkpoint(&shared, &dir);

        let mut st = shared.lock();
        st.busy = false;
        st.timer_base = Instant::now();
        let reply = match outcome {
            Ok((generation, path, processes)) => {
                st.last_error = None;
                Message::new(proto::OK)
                    .with("generation", generation)
                    .with("dir", path.display())
                    .with("processes", processes)
            }
            Err(reason) => {
                if reason != NO_PROCESS && reason != SHUTTING_DOWN {
                    if by_timer {
                        warn(&format!("interval checkpoint failed: {reason}"));
                    }
                    st.last_error = Some(reason.clone());
                }
                error(reason)
            }
        };
        drop(st);
        for w in waiters {
            let _ = w.send(reply.clone());
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One checkpoint, from choosing its number to committing or aborting it.
/// Returns the generation, its directory and the number of processes.
fn checkpoint(shared: &Shared, dir: &CheckpointDir) -> Result<(u64, PathBuf, usize), String> {
    let floor = {
        let st = shared.lock();
        if st.agents.is_empty() {
            return Err(NO_PROCESS.into());
        }
        st.reported_generation.max(st.last_attempt).max(st.last_generation)
    };
    let generation = dir.next_number().max(floor + 1);
    shared.lock().last_attempt = generation;
    let created_unix = unix_now();
    let pending = dir.begin(generation).map_err(|e| e.to_string())?;

    let manifest = match gather(shared, &pending) {
        Ok(m) => Manifest { created_unix, ..m },
        Err(reason) => return Err(abort(dir, pending, reason)),
    };
    if let Err(reason) = check_images(&pending, &manifest.processes) {
        return Err(abort(dir, pending, reason));
    }
    let committed = dir.commit(pending, &manifest).map_err(|e| e.to_string())?;
    if let Err(e) = dir.prune(shared.keep.max(1)) {
        warn(&format!("cannot remove old generations: {e}"));
    }

    let mut st = shared.lock();
    st.last_generation = committed.number;
    st.last_checkpoint_unix = unix_now();
    Ok((committed.number, committed.path, manifest.processes.len()))
}

fn abort(dir: &CheckpointDir, pending: PendingGeneration, reason: String) -> String {
    let path = pending.path.clone();
    if let Err(e) = dir.abort(pending) {
        warn(&format!("cannot remove {}: {e}", path.display()));
    }
    reason
}

/// Sends CHECKPOINT to every agent and waits until all have written, one
/// has failed, or the time is up. Returns the manifest less its time.
fn gather(shared: &Shared, pending: &PendingGeneration) -> Result<Manifest, String> {
    let generation = pending.number;
    let mut st = shared.lock();
    if st.shutdown {
        return Err(SHUTTING_DOWN.into());
    }
    if st.agents.is_empty() {
        return Err(NO_PROCESS.into());
    }
    let line = Message::new(proto::CHECKPOINT)
        .with("generation", generation)
        .with("dir", pending.path.display())
        .with("interval", st.interval_s)
        .with("computation", format!("{:016x}", st.computation_id))
        .encode();
    let (computation_id, interval_s) = (st.computation_id, st.interval_s);
    let targets: Vec<_> = st.agents.iter().map(|a| (a.conn, a.stream.clone())).collect();
    st.round = Some(Round {
        generation,
        participants: st
            .agents
            .iter()
            .map(|a| Participant { conn: a.conn, pid: a.pid, name: a.name.clone(), progress: Progress::Waiting })
            .collect(),
    });
    drop(st);

    // Written without the lock: a stuck agent must not stall the others.
    for (conn, stream) in targets {
        if let Err(e) = (&*stream).write_all(line.as_bytes()) {
            // Half a line may have gone out: this connection is done for.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let mut st = shared.lock();
            st.record(conn, None, Progress::Failed(format!("cannot be reached: {e}")));
        }
    }

    let deadline = Instant::now() + shared.checkpoint_timeout;
    let mut st = shared.lock();
    let outcome = loop {
        // First: shutdown also ends the agents' connections.
        if st.shutdown {
            break Err(SHUTTING_DOWN.into());
        }
        let round = st.round.as_ref().expect("the round lives until gather ends");
        if let Some((p, why)) = round.participants.iter().find_map(|p| match &p.progress {
            Progress::Failed(why) => Some((p, why)),
            _ => None,
        }) {
            break Err(format!("{} failed: {why}", p.describe()));
        }
        if round.participants.iter().all(|p| matches!(p.progress, Progress::Written { .. })) {
            break Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let late: Vec<String> = round
                .participants
                .iter()
                .filter(|p| matches!(p.progress, Progress::Waiting))
                .map(Participant::describe)
                .collect();
            break Err(format!(
                "timed out after {} s waiting for {}",
                shared.checkpoint_timeout.as_secs(),
                late.join(", ")
            ));
        }
        st = shared.wait_timeout(st, deadline - now);
    };
    let round = st.round.take().expect("the round lives until gather ends");
    outcome?;

    let mut processes = Vec::with_capacity(round.participants.len());
    for p in round.participants {
        let Progress::Written { image, stats } = p.progress else { unreachable!("every participant has written") };
        if let Some(a) = st.agents.iter_mut().find(|a| a.conn == p.conn) {
            a.generation = generation;
            a.stats = stats;
        }
        processes.push(ManifestProcess { pid: p.pid, name: p.name, image });
    }
    Ok(Manifest { generation, computation_id, created_unix: 0, interval_s, processes })
}

/// Every image is a plain file name, named once, and present: a
/// generation never commits with an image missing.
fn check_images(pending: &PendingGeneration, processes: &[ManifestProcess]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for p in processes {
        let who = format!("process {} ({})", p.pid, p.name);
        // One word, as the manifest needs it.
        let plain = !p.image.is_empty()
            && !p.image.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control())
            && p.image != "."
            && p.image != ".."
            && !p.image.starts_with(stasis_image::MANIFEST);
        if !plain {
            return Err(format!("{who} named its image {:?}, not a plain file name", p.image));
        }
        if !seen.insert(p.image.as_str()) {
            return Err(format!("{who} named its image {:?} like another process", p.image));
        }
        if !pending.path.join(&p.image).is_file() {
            return Err(format!(
                "{who} said it wrote {} but there is no such file",
                pending.path.join(&p.image).display()
            ));
        }
    }
    Ok(())
}
