//! Lip-sync: mouth frames for a face and speech, from an optional TorchScript model
//! (`--lipsync-dir`), and the lease that keeps that model on the GPU while nobody needs the
//! memory more. docs/lipsync.md is the operator's description; in short:
//!
//! - [`model`]: the model's interface (`face [1,3,S,S]`, `audio [1,N]` in, `[T,3,S,S]`
//!   frames out, `T = N * fps / rate` rounded half up) and its config, loaded on the CPU
//!   always and on CUDA device 0 while leased. `scripts/make-test-lipsync.py` writes one
//!   with random weights: its mouths are noise.
//! - [`face`]: the client's PNG or JPEG, cropped and scaled to the model's face.
//! - [`frames`]: rendered frames as PNG or raw RGB.
//! - [`residency`]: the model's own preemptible lease: given back when the supervisor
//!   reclaims it (the model renders on the CPU meanwhile), asked for again by the next
//!   render.
//!
//! [`LipSync`] ties them together for the service: it renders a second of audio at a time,
//! so a reclaim that arrives mid-stream moves the remaining windows to the CPU.

pub mod face;
pub mod frames;
pub mod model;
pub mod residency;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use model::LipSyncModel;
pub use residency::{Placement, Residency, ResidencySettings, Snapshot};

/// Why a render has no lease when the service holds none for the model.
const NO_LEASE: &str = "no lip-sync lease: no CUDA device here and no --lipsync-lease-bytes";

/// The lip-sync model as the service serves it.
#[derive(Debug)]
pub struct LipSync {
    model: Arc<LipSyncModel>,
    /// None when the model never goes on a GPU (no CUDA, no lease size configured).
    residency: Option<Residency>,
    leased_windows: AtomicU64,
    fallback_windows: AtomicU64,
}

impl LipSync {
    pub fn new(model: Arc<LipSyncModel>, residency: Option<Residency>) -> LipSync {
        LipSync {
            model,
            residency,
            leased_windows: AtomicU64::new(0),
            fallback_windows: AtomicU64::new(0),
        }
    }

    pub fn model(&self) -> &Arc<LipSyncModel> {
        &self.model
    }

    pub fn residency(&self) -> Option<&Residency> {
        self.residency.as_ref()
    }

    /// Before a render: brings the model back under its lease if it left (waiting at most
    /// the short wait) and says where the render stands.
    pub async fn prepare(&self) -> Placement {
        match &self.residency {
            Some(residency) => residency.ensure().await,
            None => Placement {
                leased: false,
                note: NO_LEASE.into(),
            },
        }
    }

    /// Renders one window (blocking: call it on a blocking thread) and counts it as leased
    /// or as a fallback by the lease's state as it starts.
    pub fn render_window(
        &self,
        face: &face::Face,
        audio: &[f32],
    ) -> model::Result<model::Rendered> {
        let leased = self
            .residency
            .as_ref()
            .is_some_and(|r| r.placement().leased);
        let counter = if leased {
            &self.leased_windows
        } else {
            &self.fallback_windows
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.model.render(face, audio)
    }

    /// Windows rendered under the lease and without it.
    pub fn windows(&self) -> (u64, u64) {
        (
            self.leased_windows.load(Ordering::Relaxed),
            self.fallback_windows.load(Ordering::Relaxed),
        )
    }
}
