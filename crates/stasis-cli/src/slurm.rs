//! What a SLURM job tells about itself: its environment (job, array, step,
//! task, restart count) and, through SLURM's own commands, its time left
//! and whether it may be requeued. Outside SLURM every field is empty.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli::Env;

/// The job this process runs in, from SLURM's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    /// SLURM_JOB_ID: the same across requeues, new at each submission.
    pub id: Option<String>,
    pub name: Option<String>,
    pub submit_dir: Option<PathBuf>,
    /// SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID, for a task of an array.
    pub array: Option<(String, String)>,
    /// SLURM_RESTART_COUNT: how many times it was requeued.
    pub restart_count: u32,
    /// SLURM_STEP_ID (none in the batch script itself).
    pub step: Option<String>,
    /// SLURM_PROCID and SLURM_NTASKS, in a step of several tasks.
    pub rank: u32,
    pub ntasks: u32,
}

impl Job {
    pub fn from_env(env: Env) -> Job {
        let get = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let number = |k: &str, default: u32| get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        Job {
            id: get("SLURM_JOB_ID").or_else(|| get("SLURM_JOBID")),
            name: get("SLURM_JOB_NAME"),
            submit_dir: get("SLURM_SUBMIT_DIR").map(PathBuf::from),
            array: get("SLURM_ARRAY_JOB_ID").zip(get("SLURM_ARRAY_TASK_ID")),
            restart_count: number("SLURM_RESTART_COUNT", 0),
            step: get("SLURM_STEP_ID").or_else(|| get("SLURM_STEPID")),
            rank: number("SLURM_PROCID", 0),
            ntasks: number("SLURM_NTASKS", 1).max(1),
        }
    }

    /// The job's identity for its coordinator, `JOB` or `JOB.STEP`.
    pub fn identity(&self) -> Option<String> {
        let id = self.id.as_ref()?;
        Some(match &self.step {
            Some(s) => format!("{id}.{s}"),
            None => id.clone(),
        })
    }

    /// The default checkpoint directory of `stasis job`:
    /// `SUBMIT_DIR/stasis-ckpt/NAME` (`NAME_TASK` for a task of an array).
    /// Not the job id: a job resubmitted after scancel resumes where the
    /// cancelled one stopped. (A requeued job keeps its id anyway.)
    pub fn default_ckpt_dir(&self) -> Option<PathBuf> {
        let dir = self.submit_dir.as_ref()?;
        let name = self.name.as_deref().unwrap_or("job");
        let name: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let name = match &self.array {
            Some((_, task)) => format!("{name}_{task}"),
            None => name,
        };
        Some(dir.join("stasis-ckpt").join(name))
    }
}

impl Job {
    /// In a step of several tasks (`srun -n N stasis restart DIR`), the
    /// images of this task's processes (task_rank.rs); else all of them.
    pub fn restart_share(
        &self,
        images: Vec<stasis_image::ImageReader>,
    ) -> anyhow::Result<Vec<stasis_image::ImageReader>> {
        if self.ntasks <= 1 || self.step.is_none() {
            return Ok(images);
        }
        let mine = crate::task_rank::images_of_task(images, self.rank);
        if mine.is_empty() {
            anyhow::bail!(
                "task {} of {}: the checkpoint holds no process of this task (SLURM_PROCID {}): restart it with as many tasks as it was taken with",
                self.rank,
                self.ntasks,
                self.rank
            );
        }
        Ok(mine)
    }
}

/// Runs a SLURM command and returns its stdout, or None (not installed,
/// failed, or took over 10 s).
fn slurm_output(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long the job has left (`squeue -o %L`); None when unlimited or
/// unknown.
pub fn time_left(job_id: &str) -> Option<Duration> {
    parse_time_left(slurm_output("squeue", &["-h", "-j", job_id, "-o", "%L"])?.trim())
}

/// SLURM's `[D-][HH:]MM:SS` (or UNLIMITED, NOT_SET, INVALID).
pub fn parse_time_left(s: &str) -> Option<Duration> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let secs = match parts[..] {
        [m, s] => m * 60 + s,
        [h, m, s] => h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(Duration::from_secs(days * 86_400 + secs))
}

/// Whether the job may be requeued (`scontrol show job`: `Requeue=1`).
pub fn requeueable(job_id: &str) -> bool {
    slurm_output("scontrol", &["show", "job", "-o", job_id])
        .is_some_and(|out| out.split_whitespace().any(|f| f == "Requeue=1"))
}

/// Asks SLURM to requeue the job (`scontrol requeue`).
pub fn requeue(job_id: &str) -> Result<(), String> {
    let out = Command::new("scontrol")
        .args(["requeue", job_id])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scontrol: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("scontrol requeue {job_id}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(vars: &[(&str, &str)]) -> Job {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Job::from_env(&move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn outside_slurm_nothing_is_known() {
        let j = job(&[]);
        assert!(j.id.is_none());
        assert_eq!((j.identity(), j.default_ckpt_dir(), j.rank, j.ntasks), (None, None, 0, 1));
    }

    #[test]
    fn the_default_directory_survives_requeue_and_resubmission() {
        let j = job(&[
            ("SLURM_JOB_ID", "41"),
            ("SLURM_JOB_NAME", "my run"),
            ("SLURM_SUBMIT_DIR", "/home/u/w"),
            ("SLURM_RESTART_COUNT", "2"),
        ]);
        assert_eq!(j.default_ckpt_dir(), Some(PathBuf::from("/home/u/w/stasis-ckpt/my_run")));
        assert_eq!((j.identity().as_deref(), j.restart_count), (Some("41"), 2));
        let a = job(&[
            ("SLURM_JOB_ID", "50"),
            ("SLURM_JOB_NAME", "sweep"),
            ("SLURM_SUBMIT_DIR", "/w"),
            ("SLURM_ARRAY_JOB_ID", "49"),
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
        ]);
        assert_eq!(a.default_ckpt_dir(), Some(PathBuf::from("/w/stasis-ckpt/sweep_3")));
        assert_eq!((a.identity().as_deref(), a.rank, a.ntasks), (Some("50.0"), 1, 2));
    }

    #[test]
    fn time_left_formats() {
        assert_eq!(parse_time_left("4:05"), Some(Duration::from_secs(245)));
        assert_eq!(parse_time_left("1:00:00"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_time_left("2-01:00:10"), Some(Duration::from_secs(2 * 86_400 + 3610)));
        assert_eq!(parse_time_left("UNLIMITED"), None);
        assert_eq!(parse_time_left("INVALID"), None);
    }
}
