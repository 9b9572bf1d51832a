//! The job's side of the request's media: which of them its pipeline takes, decoded by
//! [`crate::input`] to exactly what the model was built for.
//!
//! The manifest decides: a staged pipeline's model fixes the audio's rate and channels and
//! the image's size, and only a pipeline with an image stage takes a reference image; the
//! built-in model takes neither and muxes the soundtrack as it is.

use std::path::PathBuf;

use arbiter::pipeline::{Manifest, Shape, Stage};

use super::error::JobError;
use crate::input::audio::{Audio, AudioSpec, load_audio};
use crate::input::image::{Image, load_image};
use crate::mux::MuxError;
use crate::worker::Job;

/// The request's media, decoded and normalized before any model work, so that a bad file
/// fails the job before the GPU is touched.
pub struct Inputs {
    pub audio: Option<Audio>,
    pub image: Option<Image>,
    /// What the MP4's audio track is made from.
    pub soundtrack: Option<PathBuf>,
}

impl Inputs {
    pub fn prepare(job: &Job, manifest: &Manifest, shape: &Shape) -> Result<Inputs, JobError> {
        let Some(model) = manifest
            .model
            .as_ref()
            .filter(|_| !manifest.stages.is_empty())
        else {
            // The built-in model takes neither; the soundtrack is muxed as it is.
            if let Some(audio) = job.request.audio.as_deref().filter(|a| !a.is_file()) {
                return Err(MuxError::NoAudio(audio.to_path_buf()).into());
            }
            if job.request.reference_image.is_some() {
                tracing::warn!(pipeline = %manifest.name, "this pipeline takes no reference image; ignoring it");
            }
            return Ok(Inputs {
                audio: None,
                image: None,
                soundtrack: job.request.audio.clone(),
            });
        };
        let duration = f64::from(shape.frames) / f64::from(shape.fps);
        let audio = job
            .request
            .audio
            .as_deref()
            .map(|path| {
                load_audio(
                    path,
                    AudioSpec {
                        sample_rate: model.audio_sample_rate,
                        channels: model.audio_channels,
                    },
                    duration,
                )
            })
            .transpose()?;
        let soundtrack = match &audio {
            Some(audio) => {
                let path = job.output_dir.join("audio.wav");
                audio.write_wav(&path)?;
                Some(path)
            }
            None => None,
        };
        let image = match job.request.reference_image.as_deref() {
            None => None,
            Some(path) => {
                if !manifest.stages.iter().any(|s| s.stage == Stage::Image) {
                    return Err(JobError::NoImageStage(manifest.name.clone()));
                }
                Some(load_image(path, shape.width, shape.height)?)
            }
        };
        Ok(Inputs {
            audio,
            image,
            soundtrack,
        })
    }

    /// What came in and what was done to it, for the metadata.
    pub fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "audio": self.audio.as_ref().map(|a| &a.source),
            "image": self.image.as_ref().map(|i| &i.source),
        })
    }
}
