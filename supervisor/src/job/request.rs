//! A video request as the job module takes it: plain values, not yet checked.
//!
//! The gRPC edge (`rpc::convert`) turns the wire message into this, so nothing under `job`
//! knows the protocol; `spec::check` then validates it into the [`super::JobSpec`] that is
//! persisted.

use std::path::PathBuf;
use std::time::Duration;

use arbiter::pipeline::Shape;

use crate::lease::Priority;

/// An input file as the caller sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Media {
    /// The bytes themselves, to be saved into the job's directory.
    Inline(Vec<u8>),
    /// A path on this host, which must lie inside an allowed input directory.
    Path(PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub audio: Option<Media>,
    pub reference_image: Option<Media>,
    /// The sizes as asked (0: the pipeline's default).
    pub shape: Shape,
    /// None: a random seed.
    pub seed: Option<u64>,
    /// Empty: the default pipeline.
    pub pipeline: String,
    pub priority: Priority,
    /// None: the configured default.
    pub timeout: Option<Duration>,
    /// Component name to placement name, as given.
    pub placement: Vec<(String, String)>,
}
