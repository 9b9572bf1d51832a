//! The environment a process running under someone else's lease is given, so that it knows
//! its budget: set by the supervisor for its video workers and for `arbiter-supervisor run`,
//! and by its DRA driver in the containers of a claim; read by tts-service's
//! `--lease-from-env`.

/// The lease's bytes (for a claim of several GPUs, its lease on the first).
pub const LEASE_BYTES: &str = "ARBITER_LEASE_BYTES";
/// The lease's id; a claim's lease ids, comma-separated, one per GPU.
pub const LEASE_ID: &str = "ARBITER_LEASE_ID";
/// The Kubernetes ResourceClaim's uid, in a claim's containers.
pub const CLAIM_UID: &str = "ARBITER_CLAIM_UID";
/// CUDA's own: the leased GPU(s), by uuid.
pub const VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
/// The compute gate of the leased GPU ([`crate::gate`]), for a worker to yield at.
pub const COMPUTE_GATE: &str = "ARBITER_COMPUTE_GATE";
