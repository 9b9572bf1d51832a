//! A job's files in its output directory: the video (an MP4 through ffmpeg, or PNG frames
//! where there is no ffmpeg and the job allows it) and `metadata.json` beside it. Jobs and
//! local runs write them through the same two functions, so both leave the same files.

use std::path::PathBuf;

use super::device::device_name;
use super::error::JobError;
use super::prepare::Prepared;
use crate::frames::Frames;
use crate::metadata::{Metadata, StageMetrics, StageRecord, millis};
use crate::mux::{self, Video};
use crate::worker::Job;

/// The video's file name in the output directory.
pub const VIDEO_FILE: &str = "video.mp4";
/// The metadata's file name in the output directory.
pub const METADATA_FILE: &str = "metadata.json";
/// The frames-only output's directory, inside the output directory.
pub const FRAMES_DIR: &str = "frames";

/// The written video: where it is, its name in the metadata, and its bytes.
pub struct VideoFile {
    /// The MP4, or the frames directory.
    pub path: PathBuf,
    pub name: String,
    pub bytes: u64,
}

/// Writes the video: an MP4 with the soundtrack when there is an ffmpeg, else the frames as
/// `frames/000001.png`, ...
pub fn write_output(
    job: &Job,
    prepared: &Prepared,
    frames: &Frames,
) -> Result<VideoFile, JobError> {
    let Some(ffmpeg) = prepared.ffmpeg.as_deref() else {
        return write_frames(job, frames);
    };
    let path = job.output_dir.join(VIDEO_FILE);
    let bytes = mux::encode(
        ffmpeg,
        &Video {
            frames,
            fps: prepared.shape.fps,
            audio: prepared.inputs.soundtrack.as_deref(),
        },
        &path,
    )?;
    Ok(VideoFile {
        path,
        name: VIDEO_FILE.to_string(),
        bytes,
    })
}

/// The frames-only output: one PNG a frame in [`FRAMES_DIR`].
fn write_frames(job: &Job, frames: &Frames) -> Result<VideoFile, JobError> {
    let dir = job.output_dir.join(FRAMES_DIR);
    let error = |source| JobError::OutputDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(error)?;
    let mut total = 0;
    for (index, pixels) in frames.rgb.chunks(frames.frame_len()).enumerate() {
        let path = dir.join(format!("{:06}.png", index + 1));
        image::save_buffer(
            &path,
            pixels,
            frames.width,
            frames.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| error(std::io::Error::other(e)))?;
        total += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    Ok(VideoFile {
        path: dir,
        name: format!("{FRAMES_DIR}/"),
        bytes: total,
    })
}

/// Writes `metadata.json` for the finished run: the job, its stages as timed (`stages`) and
/// as the pipeline measured them (`pipeline_stages`), its start-up, and the video. Returns
/// its path.
pub fn write_metadata(
    job: &Job,
    prepared: &Prepared,
    stages: Vec<StageRecord>,
    pipeline_stages: Vec<StageMetrics>,
    video: &VideoFile,
) -> Result<PathBuf, JobError> {
    let path = job.output_dir.join(METADATA_FILE);
    Metadata::of(
        job,
        &prepared.manifest,
        &prepared.shape,
        device_name(prepared.device),
    )
    .with_startup(prepared.startup)
    .with_spawn(prepared.spawned)
    .with_prestart(prepared.prestart)
    .with_run(stages, pipeline_stages, prepared.inputs.record())
    .finish(millis(prepared.started), &video.name, video.bytes)
    .write(&path)?;
    Ok(path)
}
