//! Frames, and the request's audio if it has any, into an MP4, with the system's ffmpeg.
//!
//! ffmpeg reads the frames as raw `rgb24` on its stdin (no temporary image files) and
//! writes H.264 in yuv420p (what every player takes) with `+faststart`, so the file plays
//! while it downloads. The audio is encoded to AAC and padded with silence to the video's
//! length (`apad` + `-shortest`): the video keeps every frame whatever the soundtrack's
//! length.
//!
//! ffmpeg writes to a hidden file next to the target, renamed once ffmpeg succeeds, so a
//! `video.mp4` in an output directory is always a whole video. Without ffmpeg the job
//! fails and says how to install it; nothing stands in for the video.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::frames::Frames;

/// Why the video could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error(
        "ffmpeg was not found on PATH ({path}): the worker needs it to write the MP4; install it (apt-get install ffmpeg, or run scripts/setup.sh) and make sure the supervisor's PATH reaches it"
    )]
    NotInstalled { path: String },
    #[error("the audio file {0} does not exist or is not a file")]
    NoAudio(PathBuf),
    #[error("cannot start {ffmpeg}: {source}")]
    Spawn {
        ffmpeg: PathBuf,
        source: std::io::Error,
    },
    #[error("ffmpeg {status} while writing {output}: {stderr}")]
    Failed {
        status: ExitStatus,
        output: PathBuf,
        stderr: String,
    },
    #[error("cannot feed frames to ffmpeg: {0}")]
    Feed(std::io::Error),
    #[error("cannot move the finished video to {path}: {source}")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Finds `ffmpeg` on this process's PATH.
pub fn ffmpeg() -> Result<PathBuf, MuxError> {
    find_program("ffmpeg", std::env::var_os("PATH").as_deref())
}

/// Finds an executable `name` in the directories of `path` (a PATH value).
pub fn find_program(name: &str, path: Option<&OsStr>) -> Result<PathBuf, MuxError> {
    use std::os::unix::fs::PermissionsExt;
    let found = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    found.ok_or_else(|| MuxError::NotInstalled {
        path: path
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unset".into()),
    })
}

/// What to write: the frames at `fps`, with `audio` (a WAV file) as the soundtrack.
pub struct Video<'a> {
    pub frames: &'a Frames,
    pub fps: u32,
    pub audio: Option<&'a Path>,
}

/// Encodes `video` into `output` with the `ffmpeg` binary; returns the file's size.
pub fn encode(ffmpeg: &Path, video: &Video<'_>, output: &Path) -> Result<u64, MuxError> {
    if let Some(audio) = video.audio.filter(|a| !a.is_file()) {
        return Err(MuxError::NoAudio(audio.to_path_buf()));
    }
    let partial = partial_path(output);
    let frames = video.frames;
    let mut command = Command::new(ffmpeg);
    command
        .args(["-y", "-nostdin", "-loglevel", "error"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
        .arg("-s")
        .arg(format!("{}x{}", frames.width, frames.height))
        .arg("-r")
        .arg(video.fps.to_string())
        .args(["-i", "-"]);
    if let Some(audio) = video.audio {
        command
            .arg("-i")
            .arg(audio)
            .args(["-map", "0:v:0", "-map", "1:a:0"])
            .args(["-c:a", "aac", "-af", "apad", "-shortest"]);
    }
    command
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .args(["-movflags", "+faststart", "-f", "mp4"])
        .arg(&partial)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| MuxError::Spawn {
        ffmpeg: ffmpeg.to_path_buf(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Feed and drain at once: ffmpeg stalls if its stderr fills while we still write.
    let (fed, finished) = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || {
            let result = stdin.write_all(&frames.rgb);
            drop(stdin); // EOF: the last frame
            result
        });
        let finished = child.wait_with_output();
        (feeder.join().expect("the feeder does not panic"), finished)
    });
    let finished = finished.map_err(|source| MuxError::Spawn {
        ffmpeg: ffmpeg.to_path_buf(),
        source,
    })?;
    if !finished.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(MuxError::Failed {
            status: finished.status,
            output: output.to_path_buf(),
            stderr: tail(&finished.stderr),
        });
    }
    // ffmpeg succeeded, so it read every frame; a write error with a failed ffmpeg is a
    // broken pipe, which the status above reports better.
    if let Err(error) = fed {
        let _ = std::fs::remove_file(&partial);
        return Err(MuxError::Feed(error));
    }
    std::fs::rename(&partial, output).map_err(|source| MuxError::Rename {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(std::fs::metadata(output).map(|m| m.len()).unwrap_or(0))
}

/// `dir/.video.mp4.partial` for `dir/video.mp4`.
fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "video.mp4".into());
    output.with_file_name(format!(".{name}.partial"))
}

/// The last lines of ffmpeg's stderr, on one line: enough to say what went wrong.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = &lines[lines.len().saturating_sub(5)..];
    if last.is_empty() {
        "(it printed nothing)".into()
    } else {
        last.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter_test_kit::media;

    /// Frames whose colour changes each frame, so the encoder cannot collapse them.
    fn frames(width: u32, height: u32, count: u32) -> Frames {
        let len = (width * height * 3) as usize;
        let rgb = (0..count)
            .flat_map(|i| std::iter::repeat_n((i * 20) as u8, len))
            .collect();
        Frames {
            width,
            height,
            count,
            rgb,
        }
    }

    /// (frames, width, height) of the first video stream as ffprobe counts them, and the
    /// codec of each stream.
    fn probe(video: &Path) -> ((u32, u32, u32), Vec<String>) {
        let run = |args: &[&str]| media::ffprobe(video, args);
        // key=value lines: ffprobe prints fields in its own order, not the order asked.
        let counts = run(&[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "default=noprint_wrappers=1",
        ]);
        let field = |key: &str| -> u32 {
            counts
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key} in {counts}"))
                .parse()
                .unwrap()
        };
        let codecs = run(&["-show_entries", "stream=codec_name", "-of", "csv=p=0"]);
        (
            (field("nb_read_frames"), field("width"), field("height")),
            codecs.lines().map(str::to_string).collect(),
        )
    }

    fn silence_wav(path: &Path, seconds: f64) {
        let rate = 16_000u32;
        let samples = vec![0; (f64::from(rate) * seconds) as usize];
        std::fs::write(path, media::wav(&samples, rate, 1)).unwrap();
    }

    #[test]
    fn mux_writes_an_mp4_with_every_frame_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("video.mp4");
        let frames = frames(96, 64, 17);
        let video = Video {
            frames: &frames,
            fps: 8,
            audio: None,
        };
        let bytes = encode(&ffmpeg().unwrap(), &video, &output).unwrap();
        assert_eq!(bytes, std::fs::metadata(&output).unwrap().len());
        assert_eq!(probe(&output), ((17, 96, 64), vec!["h264".to_string()]));
        assert!(!partial_path(&output).exists());
    }

    #[test]
    fn mux_adds_the_audio_and_keeps_every_frame_whatever_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let frames = frames(64, 64, 9);
        for (name, seconds) in [("short", 0.3), ("long", 5.0)] {
            let wav = dir.path().join(format!("{name}.wav"));
            silence_wav(&wav, seconds);
            let output = dir.path().join(format!("{name}.mp4"));
            let video = Video {
                frames: &frames,
                fps: 8,
                audio: Some(&wav),
            };
            encode(&ffmpeg().unwrap(), &video, &output).unwrap();
            let (counts, codecs) = probe(&output);
            assert_eq!(counts, (9, 64, 64), "{name}");
            assert_eq!(codecs, ["h264", "aac"], "{name}");
        }
    }

    #[test]
    fn a_bad_audio_file_fails_with_ffmpegs_reason_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("bad.wav");
        std::fs::write(&wav, b"not a wav").unwrap();
        let output = dir.path().join("video.mp4");
        let frames = frames(64, 64, 1);
        let video = Video {
            frames: &frames,
            fps: 8,
            audio: Some(&wav),
        };
        let error = encode(&ffmpeg().unwrap(), &video, &output).unwrap_err();
        assert!(matches!(error, MuxError::Failed { .. }), "{error}");
        assert!(error.to_string().contains("bad.wav"), "{error}");
        assert!(!output.exists() && !partial_path(&output).exists());
        let missing = Video {
            audio: Some(Path::new("/nonexistent.wav")),
            ..video
        };
        assert!(matches!(
            encode(&ffmpeg().unwrap(), &missing, &output),
            Err(MuxError::NoAudio(_))
        ));
    }

    #[test]
    fn a_missing_ffmpeg_says_how_to_install_it() {
        let error = find_program("ffmpeg", Some(OsStr::new("/nonexistent:/also-not"))).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("apt-get install ffmpeg"), "{message}");
        assert!(message.contains("/nonexistent:/also-not"), "{message}");
        assert!(find_program("ffmpeg", None).is_err());
    }
}
