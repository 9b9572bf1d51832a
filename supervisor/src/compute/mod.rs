//! Compute priority (`[compute]`): giving interactive holders the GPU's time first, which the
//! driver otherwise time-slices evenly between processes. Two levers, measured against each
//! other in docs/benchmarks.md ("Compute priority: the levers"):
//!
//! - [`gates`]: the compute gate per GPU, where the tts service marks its GPU work and video
//!   workers pause between blocks meanwhile (on by default: no cost beyond its bounds);
//! - [`mps`]: NVIDIA MPS, its control daemon a child of the supervisor, video workers its
//!   clients at below-normal priority (`[compute.mps]`, off by default: the best measured
//!   tail latency, at the price of MPS's shared fault domain and single user).
//!
//! The supervisor only sets them up and says where they are (GetStatus, the workers'
//! environment: `job::ComputeEnv`); it never creates a CUDA context for either.

pub mod gates;
pub mod mps;

pub use gates::Gates;
pub use mps::Mps;
