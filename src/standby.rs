//! The wire between the supervisor and a standby worker: a video worker started before its
//! job, which has already done what needs no job (process start, linking libtorch, reading
//! its pipeline's TorchScript) and waits to be handed one.
//!
//! A standby worker says it is ready with one line, [`READY`], on its stdout, and then
//! reads one line on its stdin: a [`Handoff`] as JSON, which carries what a worker spawned
//! for the job would have been given in its environment (the job's token, its lease, its
//! GPU, its output directory) and where its log goes. End of input instead of a line means
//! the supervisor no longer needs it: it exits quietly. A worker that was handed a job runs
//! it exactly as a spawned one does and exits after it, so every byte it touched goes back.
//!
//! The pipe is private to the two processes, so the token travels as safely as in the
//! environment of a spawned worker.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The line a standby worker prints on stdout once its pre-work is done.
pub const READY: &str = "READY";

/// One job handed to a standby worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The job's id (also in `env`), for the worker's logs before the claim.
    pub job_id: String,
    /// The variables a worker spawned for this job would have been started with, set in the
    /// standby's environment before anything reads them (CUDA reads `CUDA_VISIBLE_DEVICES`
    /// when it starts, which a standby has not done yet).
    pub env: Vec<(String, String)>,
    /// The job's log file: the worker's stdout and stderr go there from the handoff on, as a
    /// spawned worker's do from its start.
    pub log: PathBuf,
    /// The wall-clock time of the handoff (nanoseconds since the epoch): the job's start as
    /// the worker times it, in place of the spawn it did not have ([`crate::spawn`]).
    pub handed_at_ns: String,
}

/// A handoff line that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("the handoff line is not a job: {0}")]
    Parse(#[from] serde_json::Error),
}

impl Handoff {
    /// A handoff happening now.
    pub fn now(job_id: String, env: Vec<(String, String)>, log: PathBuf) -> Handoff {
        Handoff {
            job_id,
            env,
            log,
            handed_at_ns: crate::spawn::stamp_now(),
        }
    }

    /// The environment to set in the worker: `env`, with the handoff's time as the spawn
    /// time (`ARBITER_SPAWNED_AT_NS`), so its start-up is timed from the handoff.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(key, _)| key != crate::spawn::SPAWNED_AT_ENV)
            .cloned()
            .collect();
        env.push((
            crate::spawn::SPAWNED_AT_ENV.to_string(),
            self.handed_at_ns.clone(),
        ));
        env
    }

    /// The handoff as the one line written to the worker's stdin.
    pub fn line(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Reads a line written by [`Handoff::line`].
    pub fn parse(line: &str) -> Result<Handoff, HandoffError> {
        Ok(serde_json::from_str(line.trim_end())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        Handoff::now(
            "job-1".into(),
            vec![
                ("ARBITER_JOB_TOKEN".into(), "secret".into()),
                ("CUDA_VISIBLE_DEVICES".into(), "GPU-1".into()),
                (crate::spawn::SPAWNED_AT_ENV.into(), "1".into()),
            ],
            "/var/lib/arbiter/outputs/job-1/worker.log".into(),
        )
    }

    #[test]
    fn a_handoff_is_one_line_that_reads_back_the_same() {
        let handoff = handoff();
        let line = handoff.line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let read = Handoff::parse(std::str::from_utf8(&line).unwrap()).unwrap();
        assert_eq!(read, handoff);
    }

    #[test]
    fn the_worker_is_timed_from_the_handoff_not_from_its_spawn() {
        let handoff = handoff();
        let env = handoff.env();
        let stamps: Vec<&str> = env
            .iter()
            .filter(|(k, _)| k == crate::spawn::SPAWNED_AT_ENV)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(stamps, [handoff.handed_at_ns.as_str()]);
        assert!(env.contains(&("CUDA_VISIBLE_DEVICES".into(), "GPU-1".into())));
    }

    #[test]
    fn a_line_that_is_no_handoff_is_refused() {
        assert!(Handoff::parse("READY").is_err());
        assert!(Handoff::parse("{\"job_id\": 3}").is_err());
    }
}
