//! A client of the service for scripts: lip-sync a face to a WAV file (or to a text the
//! service speaks), write the mouth frames as PNG files, and report where they were rendered
//! (which device, under the lip-sync lease or not, and why not) and how long the first and
//! all frames took. With `--json` the same report, and the service's `GetLipSyncStatus`
//! after the render, go to a file for benchmark scripts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arbiter::pb::tts::v1 as pb;
use serde::Serialize;

use super::ClientError;

/// What to lip-sync the face to.
pub enum Speech {
    /// A WAV file, sent as it is.
    Audio(PathBuf),
    /// A text the service speaks with `voice` (empty: its default).
    Text { text: String, voice: String },
}

/// What one render did, as `--json` writes it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Where the first frames were rendered, and whether under the lip-sync lease.
    pub device: String,
    pub leased: bool,
    pub note: String,
    /// Frames per device ("cuda:0", "cpu"): a reclaim can move the model mid-render.
    pub frames_on: Vec<(String, usize)>,
    pub first_frame_ms: f64,
    pub all_frames_ms: f64,
    pub out: PathBuf,
    /// The service's lip-sync status right after the render.
    pub residency: String,
    pub lease_id: String,
    pub reclaims: u64,
    /// From the last reclaim request to the lease being released.
    pub last_reclaim_answer_ms: Option<f64>,
    pub leases_granted: u64,
    pub failures: u32,
    pub status_note: String,
}

/// Renders the mouth frames of `face` following `speech` through the service on `socket`,
/// writes them to `out` (created if need be) and reports where they were rendered.
pub async fn lip_sync(
    socket: &Path,
    face: &Path,
    speech: Speech,
    out: &Path,
) -> Result<Report, ClientError> {
    let face_image = std::fs::read(face).map_err(|source| ClientError::Read {
        what: "face",
        path: face.to_path_buf(),
        source,
    })?;
    let (input, voice) = match speech {
        Speech::Audio(path) => {
            let data = std::fs::read(&path).map_err(|source| ClientError::Read {
                what: "audio",
                path: path.clone(),
                source,
            })?;
            let audio = pb::AudioInput {
                data,
                format: pb::AudioFormat::Wav as i32,
                sample_rate: 0,
            };
            (pb::lip_sync_request::Input::Audio(audio), String::new())
        }
        Speech::Text { text, voice } => (pb::lip_sync_request::Input::Text(text), voice),
    };
    std::fs::create_dir_all(out).map_err(|source| ClientError::CreateDir {
        path: out.to_path_buf(),
        source,
    })?;
    let mut client = super::tts(socket).await?;
    let start = Instant::now();
    let mut stream = client
        .lip_sync_stream(pb::LipSyncRequest {
            input: Some(input),
            voice,
            face_image,
            frame_format: pb::FrameFormat::Png as i32,
            // The service's default (--keep-alive).
            keep_alive: None,
        })
        .await?
        .into_inner();
    let mut render = None;
    let mut first = None;
    let mut frames = 0;
    let mut frames_on: Vec<(String, usize)> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if let Some(r) = chunk.render {
            render = Some(r);
        }
        let Some(frame) = chunk.frame else { continue };
        first.get_or_insert_with(|| start.elapsed());
        let path = out.join(format!("frame-{:05}.png", frame.index));
        std::fs::write(&path, &frame.image).map_err(|source| ClientError::Write {
            path: path.clone(),
            source,
        })?;
        frames += 1;
        match frames_on
            .iter_mut()
            .find(|(device, _)| *device == frame.device)
        {
            Some((_, count)) => *count += 1,
            None => frames_on.push((frame.device, 1)),
        }
    }
    let all = start.elapsed();
    let render = render.ok_or(ClientError::NoRenderHeader)?;
    let status = client
        .get_lip_sync_status(pb::GetLipSyncStatusRequest {})
        .await?
        .into_inner();
    Ok(Report {
        frames,
        width: render.width,
        height: render.height,
        fps: render.fps,
        device: render.device,
        leased: render.leased,
        note: render.note,
        frames_on,
        first_frame_ms: first.unwrap_or(all).as_secs_f64() * 1e3,
        all_frames_ms: all.as_secs_f64() * 1e3,
        out: out.to_path_buf(),
        residency: status.residency().as_str_name().to_string(),
        lease_id: status.lease_id,
        reclaims: status.reclaims,
        last_reclaim_answer_ms: status
            .last_reclaim_answer
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .map(|d| d.as_secs_f64() * 1e3),
        leases_granted: status.leases_granted,
        failures: status.failures,
        status_note: status.note,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<String> = self
            .frames_on
            .iter()
            .map(|(device, n)| format!("{n} on {device}"))
            .collect();
        write!(
            f,
            "wrote {} frames ({}x{} at {} fps) to {}: {}, {}; first frame after {:.0} ms, all after {:.0} ms",
            self.frames,
            self.width,
            self.height,
            self.fps,
            self.out.display(),
            on.join(", "),
            if self.leased {
                "under the lip-sync lease".to_string()
            } else if self.note.is_empty() {
                "without a lease".to_string()
            } else {
                format!("without a lease ({})", self.note)
            },
            self.first_frame_ms,
            self.all_frames_ms,
        )
    }
}
