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
//! - [`windows`]: the audio of one render cut into the model's windows, also as it grows a
//!   sentence at a time (a text's frames stream per sentence), with the frames of the whole.
//!
//! [`LipSync`] ties them together for the service: it renders a second of audio at a time,
//! so a reclaim that arrives mid-stream moves the remaining windows to the CPU.
//! [`LipSyncRequestError`] is here rather than in the service's handlers so that
//! [`crate::status`] can map it without depending on the service.
//!
//! This module knows nothing of the Tts service or of gRPC statuses: the handlers in
//! `service` call it, never the reverse.

pub mod face;
pub mod frames;
pub mod model;
pub mod residency;
pub mod windows;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use model::{LipSyncModel, LipSyncModelError};
pub use residency::{Lender, Placement, RenderUse, Residency, ResidencySettings, Sizing, Snapshot};

use crate::keep_alive::KeepAlive;
use crate::model_sizes::peak_during;

/// Why a render has no lease when the service holds none for the model.
const NO_LEASE: &str = "no lip-sync lease: no CUDA device here and no --lipsync-lease-bytes";

/// A lip-sync request the service refuses, besides bad audio ([`crate::audio::AudioError`])
/// and bad faces ([`face::FaceError`]). Each message says what to send instead, since the
/// client sees it as the status message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LipSyncRequestError {
    #[error("input is missing: give text to speak, or audio (such as a Synthesize result)")]
    NoInput,
    #[error("voice is for text input; audio is lip-synced as it is: leave voice empty")]
    VoiceWithAudio,
    #[error(
        "face_image is for LipSyncStream, which streams the mouth frames; LipSync answers with the timeline only"
    )]
    FaceOnUnary,
    #[error("frame_format {0} is not a FrameFormat: use 0 or 1 (PNG) or 2 (RGB24)")]
    FrameFormat(i32),
    #[error(
        "face_image is set but this service has no lip-sync model: start it with --lipsync-dir, or leave face_image empty for the timeline only"
    )]
    NoModel,
}

/// The lip-sync model as the service serves it: the model, its lease, and the counts of
/// where windows were rendered, which `GetLipSyncStatus` reports so an operator can see how
/// often reclaims sent renders to the CPU.
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
    /// the short wait) and says where the render stands. The model stays on the GPU while
    /// the returned use is held, and `keep` after (the request's keep-alive, or the
    /// service's default).
    pub async fn prepare(&self, keep: Option<KeepAlive>) -> (Placement, Option<RenderUse>) {
        match &self.residency {
            Some(residency) => {
                let keep = keep.unwrap_or_else(|| residency.keep_alive());
                let (placement, held) = residency.ensure_for(keep).await;
                (placement, Some(held))
            }
            None => (
                Placement {
                    leased: false,
                    note: NO_LEASE.into(),
                },
                None,
            ),
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
        match &self.residency {
            // A render's activations are what parameter counts miss: its peak sizes the
            // next lease.
            Some(residency) if leased => {
                let (rendered, peak) = peak_during(|| self.model.render(face, audio));
                if let (Ok(r), Some(peak)) = (&rendered, peak)
                    && r.device.is_cuda()
                {
                    residency.learn_render(peak.peak);
                }
                rendered
            }
            _ => self.model.render(face, audio),
        }
    }

    /// Windows rendered under the lease and without it.
    pub fn windows(&self) -> (u64, u64) {
        (
            self.leased_windows.load(Ordering::Relaxed),
            self.fallback_windows.load(Ordering::Relaxed),
        )
    }
}
