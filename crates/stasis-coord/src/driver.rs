//! The thread that runs checkpoints, one at a time: on request, and on the
//! interval timer.
//!
//! Requests that arrive while a checkpoint runs are answered by the next
//! one, which starts as soon as the current one ends: every client gets a
//! checkpoint taken after it asked, and a burst of requests costs one
//! checkpoint, not one each.
//!
//! A checkpoint passes through barriers, so that the images of all the
//! processes are of one instant: every agent suspends its process
//! (SUSPEND / SUSPENDED); once all are stopped, every agent snapshots it
//! (SNAPSHOT / SNAPSHOTTED); once all hold their snapshot, every process
//! resumes (RESUME) while its image is written, and the generation commits
//! when every image is (WRITTEN). A failure before the snapshots sends
//! RESUME to everyone and nothing is written.
//!
//! A computation is a tree of processes that may fork at any moment, and
//! each child's agent connects on its own a moment later. So until the
//! snapshots, a newcomer joins the round (conn.rs), each SUSPENDED names
//! the process's children, and the suspend barrier also waits for every
//! child named to be suspended: otherwise the checkpoint would miss a
//! process that existed at its instant.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stasis_image::{CheckpointDir, ImageReader, Manifest, ManifestProcess, PendingGeneration};
use stasis_proto::{self as proto, Message};

use crate::state::{Conn, Participant, Phase, Round, Shared, Stage, Waiter, error};
use crate::{publish, warn};

const NO_PROCESS: &str = "no process connected";
const SHUTTING_DOWN: &str = "the coordinator is shutting down";

/// The longest the processes may stay stopped waiting for the slowest of
/// them to suspend or to snapshot: well under the minute after which an
/// agent gives up and resumes on its own.
const PHASE_LIMIT: Duration = Duration::from_secs(40);
/// After a failure, how long to wait for images still being written
/// before their pending directory is removed.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How often a parent whose named child has not connected is asked to
/// list its children again: the child may have died before its agent
/// could connect, and only the parent can tell.
const CHILDREN_EVERY: Duration = Duration::from_millis(500);
/// How long every process may stay stopped for children that have not
/// joined (a static program, one run without the agent, never will): far
/// less than the whole phase, since the program pays it at every attempt.
const CHILDREN_LIMIT: Duration = Duration::from_secs(10);
/// How long a checkpoint waits for processes still being restored to join.
const RESTORING_LIMIT: Duration = Duration::from_secs(20);

pub(crate) fn run(shared: Arc<Shared>, mut dir: CheckpointDir) {
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
        let mut waiters = std::mem::take(&mut st.waiters);
        // `dmtcp_command -kc`: the program must not run between its
        // snapshot and its end, so the round holds it stopped.
        let then_kill = st.kill_after_checkpoint || waiters.iter().any(|w| w.then_kill);
        st.busy = true;
        // A directory moved to (`COMMAND what=ckptdir`) while no process
        // was here: this computation's checkpoints go there from now on.
        if let Some(moved) = st.move_to.take() {
            dir = moved;
        }
        drop(st);

        let outcome = checkpoint(&shared, &dir, &mut waiters, then_kill);
        let killed = match (&outcome, then_kill) {
            (Ok(_), true) => Some(crate::conn::kill_all(&shared)),
            // Held processes resume (one resumed already ignores it).
            (Err(_), true) => {
                release_held(&shared);
                None
            }
            _ => None,
        };

        let mut st = shared.lock();
        st.busy = false;
        st.timer_base = Instant::now();
        let reply = match outcome {
            Ok((generation, path, processes)) => {
                st.last_error = None;
                let ok = Message::new(proto::OK)
                    .with("generation", generation)
                    .with("dir", path.display())
                    .with("processes", processes);
                match killed {
                    Some((told, left)) => ok.with("killed", told).with("survivors", left),
                    None => ok,
                }
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
            let _ = w.tx.send(reply.clone());
        }
    }
}

/// Waits (up to RESTORING_LIMIT) until no connection is silent: those
/// `stasis restart` opened for the processes it is still restoring say
/// HELLO once their process runs. A checkpoint asked for meanwhile (the
/// program may print before its agent has said HELLO) would otherwise miss
/// them, or find no process at all.
fn wait_for_restoring(shared: &Shared) -> std::sync::MutexGuard<'_, crate::state::State> {
    let deadline = Instant::now() + RESTORING_LIMIT;
    let mut st = shared.lock();
    loop {
        let silent = st.conns.keys().any(|c| !st.identified.contains(c) && !st.authenticating.contains(c));
        if !silent || st.shutdown || Instant::now() >= deadline {
            return st;
        }
        // Connections end without a word to the condition variable: poll.
        st = shared.wait_timeout(st, Duration::from_millis(20));
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One checkpoint, from choosing its number to committing or aborting it.
/// Returns the generation, its directory and the number of processes.
fn checkpoint(
    shared: &Shared,
    dir: &CheckpointDir,
    waiters: &mut Vec<Waiter>,
    hold: bool,
) -> Result<(u64, PathBuf, usize), String> {
    let floor = {
        let st = wait_for_restoring(shared);
        if st.agents.is_empty() {
            return Err(NO_PROCESS.into());
        }
        st.reported_generation.max(st.last_attempt).max(st.last_generation)
    };
    let generation = dir.next_number().max(floor + 1);
    shared.lock().last_attempt = generation;
    let created_unix = unix_now();
    let pending = dir.begin(generation).map_err(|e| e.to_string())?;

    let gathered = gather(shared, &pending, waiters, hold);
    shared.lock().round = None;
    let manifest = match gathered {
        Ok(m) => Manifest { created_unix, ..m },
        Err(reason) => return Err(abort(dir, pending, reason)),
    };
    if let Err(reason) = check_images(&pending, &manifest.processes) {
        return Err(abort(dir, pending, reason));
    }
    let (manifest, programs) = match vouch(&pending, manifest) {
        Ok(vouched) => vouched,
        Err(reason) => return Err(abort(dir, pending, reason)),
    };
    if let Some(g) = manifest.needs.iter().find(|&&g| !dir.generations().is_ok_and(|c| c.iter().any(|c| c.number == g)))
    {
        let reason = format!("an image refers to generation {g}, which is not an intact committed generation");
        return Err(abort(dir, pending, reason));
    }
    let committed = dir.commit(pending, &manifest).map_err(|e| e.to_string())?;
    let unique = shared.lock().unique_names;
    for problem in publish::after_commit(dir, &committed, &manifest, &programs, unique) {
        warn(&problem);
    }
    if let Err(e) = dir.prune(shared.keep.max(1)) {
        warn(&format!("cannot remove old generations: {e}"));
    }
    for problem in publish::after_prune(dir) {
        warn(&problem);
    }

    let mut st = shared.lock();
    st.last_generation = committed.number;
    if manifest.needs.is_empty() {
        st.last_full = committed.number;
    }
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

/// After a held round failed: `RESUME` to every agent, so that none stays
/// stopped waiting for a kill that will not come.
fn release_held(shared: &Shared) {
    let links: Vec<_> = shared.lock().agents.iter().map(|a| (a.conn, a.link.clone())).collect();
    let generation = shared.lock().last_attempt;
    send_all(shared, links, &Message::new(proto::RESUME).with("generation", generation));
}

/// Moves the round to `phase` and sends `m` to every participant.
fn broadcast(shared: &Shared, phase: Phase, m: &Message) {
    let links: Vec<_> = {
        let mut st = shared.lock();
        let Some(round) = &mut st.round else { return };
        round.phase = phase;
        round.participants.iter().map(|p| (p.conn, p.link.clone())).collect()
    };
    send_all(shared, links, m);
}

/// Sends `m` on each link; one that cannot be reached is lost (State::lost).
fn send_all(shared: &Shared, links: Vec<(u64, Arc<Conn>)>, m: &Message) {
    // Written without the lock: a stuck agent must not stall the others.
    for (conn, link) in links {
        if let Err(e) = link.send(m) {
            let mut st = shared.lock();
            st.lost(conn, &format!("cannot be reached: {e}"));
            shared.changed.notify_all();
        }
    }
}

fn rank(s: &Stage) -> u8 {
    match s {
        Stage::Asked => 0,
        Stage::Suspended => 1,
        Stage::Snapshotted => 2,
        Stage::Written { .. } => 3,
        Stage::Failed(_) => 4,
    }
}

/// Why the round failed, if a participant did.
fn failure(round: &Round) -> Option<String> {
    round.participants.iter().find_map(|p| match &p.stage {
        Stage::Failed(why) => Some(format!("{} failed: {why}", p.describe())),
        _ => None,
    })
}

/// Waits until every participant has reached `target`, one has failed, or
/// `deadline` has passed.
fn wait_for(shared: &Shared, target: Stage, deadline: Instant, what: &str) -> Result<(), String> {
    let started = Instant::now();
    let mut st = shared.lock();
    loop {
        // First: shutdown also ends the agents' connections.
        if st.shutdown {
            return Err(SHUTTING_DOWN.into());
        }
        let round = st.round.as_ref().expect("the round lives until gather ends");
        if let Some(why) = failure(round) {
            return Err(why);
        }
        if round.participants.iter().all(|p| rank(&p.stage) >= rank(&target)) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let late: Vec<String> = round
                .participants
                .iter()
                .filter(|p| rank(&p.stage) < rank(&target))
                .map(Participant::describe)
                .collect();
            let waited = (now - started).as_secs_f64();
            return Err(format!("timed out after {waited:.0} s waiting for {} to {what}", late.join(", ")));
        }
        st = shared.wait_timeout(st, deadline - now);
    }
}

/// The suspend barrier: waits until every participant is suspended and
/// every child they name is a participant (so suspended too), one has
/// failed, or `deadline` has passed. Meanwhile newcomers join the round,
/// and parents whose children are missing are asked for their list again.
/// Before it returns, under the same lock, the round leaves its suspending
/// phase, so that no process joins once the outcome is known.
fn suspend_barrier(shared: &Shared, deadline: Instant) -> Result<(), String> {
    let started = Instant::now();
    // When to ask the parents of missing children for their list again;
    // none while none is missing. Not at once: a child just forked usually
    // connects a moment later.
    let mut next_ask: Option<Instant> = None;
    // Since when only missing children are waited for.
    let mut only_children_since: Option<Instant> = None;
    let mut st = shared.lock();
    let outcome = loop {
        if st.shutdown {
            break Err(SHUTTING_DOWN.to_string());
        }
        let round = st.round.as_ref().expect("the round lives until gather ends");
        if let Some(why) = failure(round) {
            break Err(why);
        }
        let missing = round.missing_children();
        if missing.is_empty() && round.participants.iter().all(|p| p.stage == Stage::Suspended) {
            // Every process left before suspending: there is nothing to save.
            if round.participants.is_empty() {
                break Err(NO_PROCESS.to_string());
            }
            break Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(suspend_timeout(round, &missing, now - started));
        }
        if !missing.is_empty() && round.participants.iter().all(|p| p.stage == Stage::Suspended) {
            let since = *only_children_since.get_or_insert(now);
            if now - since >= CHILDREN_LIMIT {
                break Err(suspend_timeout(round, &missing, now - started));
            }
        } else {
            only_children_since = None;
        }
        if missing.is_empty() {
            next_ask = None;
        } else if next_ask.is_none() {
            next_ask = Some(now + CHILDREN_EVERY);
        } else if next_ask.is_some_and(|t| now >= t) {
            let mut parents: Vec<(u64, Arc<Conn>)> = Vec::new();
            for (_, p) in &missing {
                if !parents.iter().any(|(c, _)| *c == p.conn) {
                    parents.push((p.conn, p.link.clone()));
                }
            }
            let ask = Message::new(proto::CHILDREN).with("generation", round.generation);
            drop(st);
            send_all(shared, parents, &ask);
            next_ask = Some(now + CHILDREN_EVERY);
            st = shared.lock();
            continue;
        }
        let wake = next_ask.map_or(deadline, |t| t.min(deadline));
        let wake = only_children_since.map_or(wake, |t| wake.min(t + CHILDREN_LIMIT));
        st = shared.wait_timeout(st, wake - now);
    };
    if let Some(round) = &mut st.round {
        round.phase = if outcome.is_ok() { Phase::Snapshotting } else { Phase::Abandoned };
    }
    outcome
}

/// Why the suspend barrier timed out: participants that did not suspend,
/// and children named that never connected.
fn suspend_timeout(round: &Round, missing: &[(i32, &Participant)], waited: Duration) -> String {
    let late: Vec<String> =
        round.participants.iter().filter(|p| p.stage != Stage::Suspended).map(Participant::describe).collect();
    let absent: Vec<String> =
        missing.iter().map(|(child, parent)| format!("process {child} (a child of {})", parent.describe())).collect();
    let waited = waited.as_secs_f64();
    let late = (!late.is_empty()).then(|| format!("{} to suspend", late.join(", ")));
    // The usual reason a child never joins: no agent was loaded into it.
    let absent = (!absent.is_empty()).then(|| {
        format!("{} to join the checkpoint: a static program, or one run without the agent?", absent.join(", "))
    });
    let what = match (late, absent) {
        (Some(l), Some(a)) => format!("{l} and for {a}"),
        (Some(w), None) | (None, Some(w)) => w,
        (None, None) => "the processes to suspend".to_string(),
    };
    format!("timed out after {waited:.0} s waiting for {what}")
}

/// After a failure past SNAPSHOT: waits (a bounded time) until no image is
/// still being written into the pending directory.
fn settle(shared: &Shared, deadline: Instant) {
    let mut st = shared.lock();
    loop {
        let busy = st
            .round
            .as_ref()
            .is_some_and(|r| r.participants.iter().any(|p| matches!(p.stage, Stage::Suspended | Stage::Snapshotted)));
        let now = Instant::now();
        if !busy || st.shutdown || now >= deadline {
            return;
        }
        st = shared.wait_timeout(st, deadline - now);
    }
}

/// Answers the clients that only wanted to know that a checkpoint began.
fn announce_start(waiters: &mut Vec<Waiter>, generation: u64, processes: usize) {
    let started =
        Message::new(proto::OK).with("generation", generation).with("started", 1).with("processes", processes);
    waiters.retain(|w| {
        if w.started_only {
            let _ = w.tx.send(started.clone());
        }
        !w.started_only
    });
}

/// Takes every agent through the barriers and waits until all have
/// written, one has failed, or the time is up. Returns the manifest less
/// its time. With `hold`, the programs stay stopped while their images
/// are written (`RESUME hold=1`), for a kill after the commit.
fn gather(
    shared: &Shared,
    pending: &PendingGeneration,
    waiters: &mut Vec<Waiter>,
    hold: bool,
) -> Result<Manifest, String> {
    let generation = pending.number;
    let deadline = Instant::now() + shared.checkpoint_timeout;
    let phase_deadline = || deadline.min(Instant::now() + PHASE_LIMIT);
    let (suspend, links, computation_id, interval_s, count) = {
        let mut st = shared.lock();
        if st.shutdown {
            return Err(SHUTTING_DOWN.into());
        }
        if st.agents.is_empty() {
            return Err(NO_PROCESS.into());
        }
        let suspend = Message::new(proto::SUSPEND)
            .with("generation", generation)
            .with("dir", pending.path.display())
            .with("interval", st.interval_s)
            .with("computation", format!("{:016x}", st.computation_id))
            .with("compression", if shared.compress { "zstd" } else { "none" })
            // Incremental checkpoints refer only to a committed generation;
            // a full one every `full_every` bounds the chain.
            .with("base", st.last_generation)
            .with("full", u8::from(full_due(st.last_generation, st.last_full, generation, shared.full_every)))
            // `--full-every 1`: no tracking at all (a program that uses
            // userfaultfd itself may need its regions left alone).
            .with("track", u8::from(shared.full_every > 1));
        let participants: Vec<Participant> = st.agents.iter().map(Participant::new).collect();
        let count = participants.len();
        // The agents connected now get SUSPEND below; from this moment on
        // (same lock) those that connect join the round by themselves.
        let links = participants.iter().map(|p| (p.conn, p.link.clone())).collect();
        st.round = Some(Round { generation, participants, suspend: suspend.clone(), phase: Phase::Suspending });
        (suspend, links, st.computation_id, st.interval_s, count)
    };
    let resume = Message::new(proto::RESUME).with("generation", generation);

    // 1. Suspend every process, and every process forked meanwhile.
    send_all(shared, links, &suspend);
    announce_start(waiters, generation, count);
    if let Err(why) = suspend_barrier(shared, phase_deadline()) {
        broadcast(shared, Phase::Abandoned, &resume);
        return Err(why);
    }
    // 2. Every process is stopped. (Issue 4 drains the bytes in flight
    // between them here.) Snapshot them all.
    broadcast(shared, Phase::Snapshotting, &Message::new(proto::SNAPSHOT).with("generation", generation));
    if let Err(why) = wait_for(shared, Stage::Snapshotted, phase_deadline(), "snapshot") {
        broadcast(shared, Phase::Abandoned, &resume);
        settle(shared, deadline.min(Instant::now() + SETTLE_LIMIT));
        return Err(why);
    }
    // 3. Every snapshot is taken: resume (or, held, only write), and wait
    // for the images.
    let write = if hold { resume.clone().with("hold", 1) } else { resume };
    broadcast(shared, Phase::Writing, &write);
    if let Err(why) = wait_for(shared, Stage::Written { image: String::new(), stats: Vec::new() }, deadline, "write") {
        settle(shared, deadline.min(Instant::now() + SETTLE_LIMIT));
        return Err(why);
    }

    let mut st = shared.lock();
    let round = st.round.take().expect("the round lives until gather ends");
    let mut processes = Vec::with_capacity(round.participants.len());
    for p in round.participants {
        let Stage::Written { image, stats } = p.stage else { unreachable!("every participant has written") };
        if let Some(a) = st.agents.iter_mut().find(|a| a.conn == p.conn) {
            a.generation = generation;
            a.stats = stats;
        }
        // Size and digest: filled from the image itself (vouch).
        processes.push(ManifestProcess { pid: p.pid, name: p.name, image, ..Default::default() });
    }
    Ok(Manifest {
        generation,
        computation_id,
        created_unix: 0,
        interval_s,
        processes,
        needs: Vec::new(),
        full_every: shared.full_every,
    })
}

/// Fills each process's image size and digest, reading only the header
/// and metadata of each image (through the pending directory, never
/// through a link), and checks that each image is the one its process
/// was asked for: of this computation, this generation and this pid. The
/// manifest takes the program name the image holds; the executable's name
/// is returned beside it, for the DMTCP names (publish.rs).
fn vouch(pending: &PendingGeneration, mut m: Manifest) -> Result<(Manifest, Vec<Option<String>>), String> {
    let dir = pending.dir();
    let mut programs = Vec::with_capacity(m.processes.len());
    for p in &mut m.processes {
        let path = pending.path.join(&p.image);
        let f = dir.open_file(&p.image).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let r = ImageReader::from_file(f, &path).map_err(|e| e.to_string())?;
        let meta = r.meta();
        if meta.pid != p.pid || meta.generation != m.generation || meta.computation_id != m.computation_id {
            return Err(format!(
                "{} is of pid {}, generation {}, computation {:016x}; process {} of generation {} of computation {:016x} was asked for",
                path.display(),
                meta.pid,
                meta.generation,
                meta.computation_id,
                p.pid,
                m.generation,
                m.computation_id
            ));
        }
        for r in &meta.inherited {
            if let Err(k) = m.needs.binary_search(&r.generation) {
                m.needs.insert(k, r.generation);
            }
        }
        p.name = stasis_image::word(&meta.name);
        p.size = r.len();
        p.digest = r.digest();
        programs.push(publish::program_of(meta));
    }
    Ok((m, programs))
}

/// Whether generation `generation` must be a full checkpoint: none is
/// committed yet, or the last full one is `full_every` generations back (or
/// not known). Agents write a full image on their own too, when what they
/// tracked is not of `last` (docs/protocol.md).
fn full_due(last: u64, last_full: u64, generation: u64, full_every: u32) -> bool {
    last == 0 || last_full == 0 || generation.saturating_sub(last_full) >= u64::from(full_every)
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

#[cfg(test)]
mod tests {
    use super::full_due;

    #[test]
    fn a_full_checkpoint_every_n_generations() {
        assert!(full_due(0, 0, 1, 8)); // the first
        assert!(!full_due(1, 1, 2, 3));
        assert!(!full_due(2, 1, 3, 3));
        assert!(full_due(3, 1, 4, 3)); // 4 - 1 >= 3
        assert!(full_due(7, 0, 8, 3)); // no full one known (a restart)
        assert!(full_due(5, 5, 6, 1)); // --full-every 1: always
        assert!(!full_due(9, 5, 10, 8)); // numbers may have gaps
        assert!(full_due(12, 5, 13, 8));
    }
}
