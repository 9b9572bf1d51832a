//! The per-job video worker: one `arbiter-video run` process per video job.
//!
//! The supervisor spawns the worker under a lease with a one-time token; the worker claims
//! its job over the supervisor's Unix socket, runs the pipeline stage by stage (reporting
//! progress and what it holds on the GPU), writes `video.mp4` and `metadata.json`, reports
//! the outcome and exits, so that its CUDA context and every byte it allocated go back to
//! the GPU. The library holds everything the binary does, so that tests call into it.
//!
//! Layout, one concept per module, each importing only those listed after it (the job
//! ties the others together; nothing below it imports it):
//! - [`parking`]: `generate --park`, resident components parked between runs and woken;
//! - [`standby`]: `standby`, a worker started before its job (its pipeline's code read,
//!   no CUDA yet), handed the job by the supervisor;
//! - [`local`]: `generate`, one job run in this process without a supervisor;
//! - [`job`]: the lifecycle of one job, from claim to exit code, one step per module;
//! - [`compare`]: `compare-encoders`, text encoders (bf16, fp8, NF4) measured and their
//!   outputs compared on the same prompts;
//! - [`inspect`]: a manifest with the memory each stage holds;
//! - [`make`]: `make-pipeline`, generated pipelines of realistic shapes (random weights);
//! - [`pipeline`]: which pipeline a job runs: the staged pipeline ([`pipeline::staged`]:
//!   components loaded stage by stage with their placements) or the built-in model
//!   ([`pipeline::tiny`]);
//! - [`progress`]: how a running pipeline reports its stages and is told to stop;
//! - [`metadata`]: the `metadata.json` written next to the video, and the records (per
//!   stage, start-up) it is made of;
//! - [`input`]: the request's audio and image, normalized to exactly what the model takes;
//! - [`mux`]: frames (and the request's audio) into an MP4 with ffmpeg;
//! - [`residency`]: what the process holds on the GPU at each stage, as the supervisor sees
//!   it (written to the simulated GPU's process table when the GPU is simulated);
//! - [`frames`]: decoded video, as the pipelines hand it to the muxer;
//! - [`gpu_memory`]: this process's GPU memory as NVML counts it;
//! - [`worker`]: the edge to the supervisor (`arbiter.worker.v1.Worker`): claim, report,
//!   complete, fail, and the assignment converted once into a [`worker::Job`].
//!
//! The stages themselves are the root crate's `arbiter::pipeline::Stage`.

pub mod compare;
pub mod frames;
pub mod gpu_memory;
pub mod input;
pub mod inspect;
pub mod job;
pub mod local;
pub mod make;
pub mod metadata;
pub mod mux;
pub mod parking;
pub mod pipeline;
pub mod progress;
pub mod residency;
pub mod standby;
pub mod worker;
