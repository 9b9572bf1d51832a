//! The stages of a video job, and the one channel between a running pipeline and the rest
//! of the worker.
//!
//! A pipeline knows its stages and its sampler steps but nothing about gRPC or the GPU
//! accounting: it calls [`Progress::begin`] when a stage starts and [`Progress::step`]
//! after each step, and stops at once when either answers [`Stop`]. The job behind the
//! trait turns those calls into reports to the supervisor (whose reply carries the cancel)
//! and into the memory the worker records; tests pass [`Ignore`].

use std::fmt;

use crate::residency::RecordError;
use crate::worker::WorkerError;

/// The stages of a job, in the order they run. Their names are what the supervisor shows
/// as the job's progress, so they are part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The prompt becomes an embedding.
    Text,
    /// The soundtrack becomes conditioning tokens.
    Audio,
    /// The reference image becomes a first-frame latent.
    Image,
    /// The sampler turns noise into latents, one report per step.
    Denoise,
    /// Latents are doubled in resolution.
    Upsample,
    /// The sampler refines the upsampled latents, one report per step.
    Refine,
    /// Latents become RGB frames.
    Decode,
    /// Frames (and the request's audio) become the MP4.
    Mux,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Text,
        Stage::Audio,
        Stage::Image,
        Stage::Denoise,
        Stage::Upsample,
        Stage::Refine,
        Stage::Decode,
        Stage::Mux,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Text => "text",
            Stage::Audio => "audio",
            Stage::Image => "image",
            Stage::Denoise => "denoise",
            Stage::Upsample => "upsample",
            Stage::Refine => "refine",
            Stage::Decode => "decode",
            Stage::Mux => "mux",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a pipeline must stop before it is done.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The supervisor answered a report with `cancel`: stop, and say nothing more.
    #[error("the job was cancelled")]
    Cancelled,
    /// A report could not be delivered: the supervisor is gone or no longer knows the job.
    #[error(transparent)]
    Supervisor(#[from] WorkerError),
    /// What the stage holds could not be recorded for the supervisor to see.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Where a pipeline is. Each call may answer [`Stop`], and the pipeline must then return
/// without doing more work.
pub trait Progress {
    /// `stage` starts; `total_steps` steps of it follow (1 for a stage without steps).
    fn begin(&mut self, stage: Stage, total_steps: u32) -> Result<(), Stop>;
    /// `step` of the current stage's steps are done (1-based: the last is `total_steps`).
    fn step(&mut self, step: u32) -> Result<(), Stop>;
}

/// Progress that goes nowhere and never stops: for running a pipeline outside a job.
pub struct Ignore;

impl Progress for Ignore {
    fn begin(&mut self, _: Stage, _: u32) -> Result<(), Stop> {
        Ok(())
    }

    fn step(&mut self, _: u32) -> Result<(), Stop> {
        Ok(())
    }
}
