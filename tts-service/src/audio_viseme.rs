//! Visemes from audio alone, for speech that comes without its phonemes (a recording, or a
//! Synthesize result sent back as audio).
//!
//! Without phonemes nothing can tell a `PP` from an `FF`, so this does not pretend to: it
//! follows how far the mouth is open, which tracks loudness well enough for an avatar. The
//! method, in order:
//!
//! 1. **Frames.** The audio is cut into 10 ms frames ([`FRAME_MS`]); the last may be shorter.
//! 2. **Level.** Each frame's RMS level in dBFS (full scale is a sample of ±1).
//! 3. **Speech level.** The 90th percentile of the levels of frames above the silence floor
//!    ([`FLOOR_DBFS`], -55 dBFS): the level of loud vowels, robust to a click or two. When
//!    no frame is above the floor, the audio is silence and the mouth stays closed.
//! 4. **Openness.** A frame below the floor, or more than 30 dB under the speech level
//!    ([`CLOSED_BELOW_DB`]), is *closed* (`sil`); one within 10 dB of it ([`OPEN_WITHIN_DB`])
//!    is *open* (`aa`, jaw open); anything between is *half open* (`E`, mid open).
//! 5. **Smoothing.** A running median over 5 frames (50 ms) removes flicker shorter than
//!    30 ms that no mouth could follow.
//! 6. **Timeline.** Runs of equal openness become [`Viseme`]s: contiguous from 0 to the
//!    audio's length (rounded to the millisecond), in order, as the phoneme path gives.
//!
//! So a renderer sees only 3 of the 15 visemes (`sil`, `E`, `aa`) from audio, and all of
//! them from text (see [`crate::viseme`]).

use crate::viseme::{NAMES, SIL, Viseme};

/// Length of one analysis frame.
pub const FRAME_MS: u32 = 10;
/// Frames quieter than this are silence, whatever the rest of the audio does.
pub const FLOOR_DBFS: f32 = -55.0;
/// Frames this far under the speech level are closed.
pub const CLOSED_BELOW_DB: f32 = -30.0;
/// Frames within this much of the speech level are open.
pub const OPEN_WITHIN_DB: f32 = -10.0;
/// Width of the running median, in frames.
pub const SMOOTH_FRAMES: usize = 5;

/// The visemes shown, by openness: closed, half open, open.
pub const CLOSED: u8 = SIL;
pub const HALF_OPEN: u8 = 11; // E
pub const OPEN: u8 = 10; // aa

/// The sample range of frame `i` of `n` samples at `rate` Hz.
fn frame_range(i: usize, n: usize, rate: u32) -> std::ops::Range<usize> {
    let at = |i: usize| {
        let sample = i as u64 * u64::from(rate) * u64::from(FRAME_MS) / 1000;
        (sample as usize).min(n)
    };
    at(i)..at(i + 1)
}

/// The RMS level of each 10 ms frame, in dBFS (`-inf` for digital silence), with the
/// frame's end in milliseconds; the last frame ends at `total_ms`.
pub fn levels(samples: &[f32], rate: u32, total_ms: u32) -> Vec<(f32, u32)> {
    let frames = total_ms.div_ceil(FRAME_MS) as usize;
    (0..frames)
        .map(|i| {
            let range = frame_range(i, samples.len(), rate);
            let frame = &samples[range];
            let level = if frame.is_empty() {
                f32::NEG_INFINITY
            } else {
                let power = frame
                    .iter()
                    .map(|&s| f64::from(s) * f64::from(s))
                    .sum::<f64>()
                    / frame.len() as f64;
                (10.0 * power.log10()) as f32
            };
            let end = ((i as u32 + 1) * FRAME_MS).min(total_ms);
            (level, end)
        })
        .collect()
}

/// The speech level: the 90th percentile of the levels above the floor, if any.
pub fn speech_level(levels: &[f32]) -> Option<f32> {
    let mut loud: Vec<f32> = levels.iter().copied().filter(|&l| l > FLOOR_DBFS).collect();
    if loud.is_empty() {
        return None;
    }
    loud.sort_by(f32::total_cmp);
    let at = ((loud.len() - 1) as f32 * 0.9).round() as usize;
    Some(loud[at])
}

/// The openness of one frame: 0 closed, 1 half open, 2 open.
pub fn openness(level: f32, speech: Option<f32>) -> u8 {
    let Some(speech) = speech else {
        return 0;
    };
    let relative = level - speech;
    if level <= FLOOR_DBFS || relative < CLOSED_BELOW_DB {
        0
    } else if relative >= OPEN_WITHIN_DB {
        2
    } else {
        1
    }
}

/// A running median of `width` (odd) over `values`, the window clipped at the ends.
fn median(values: &[u8], width: usize) -> Vec<u8> {
    let half = width / 2;
    (0..values.len())
        .map(|i| {
            let window = &values[i.saturating_sub(half)..(i + half + 1).min(values.len())];
            let mut sorted = window.to_vec();
            sorted.sort_unstable();
            sorted[sorted.len() / 2]
        })
        .collect()
}

/// The viseme timeline of mono `samples` at `rate` Hz, ending at `total_ms` (the audio's
/// length; see the module docs for the method).
pub fn visemes(samples: &[f32], rate: u32, total_ms: u32) -> Vec<Viseme> {
    let frames = levels(samples, rate, total_ms);
    let speech = speech_level(&frames.iter().map(|f| f.0).collect::<Vec<_>>());
    let open: Vec<u8> = frames.iter().map(|f| openness(f.0, speech)).collect();
    let open = median(&open, SMOOTH_FRAMES);
    let mut out: Vec<Viseme> = Vec::new();
    let mut start = 0u32;
    for (&degree, &(_, end)) in open.iter().zip(&frames) {
        let id = [CLOSED, HALF_OPEN, OPEN][usize::from(degree)];
        match out.last_mut() {
            Some(last) if last.id == id => last.duration_ms = end - last.start_ms,
            _ => out.push(Viseme {
                id,
                name: NAMES[usize::from(id)],
                start_ms: start,
                duration_ms: end - start,
            }),
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16000;

    /// A tone of `amplitude` for `ms` milliseconds.
    fn tone(amplitude: f32, ms: u32) -> Vec<f32> {
        (0..(RATE * ms / 1000))
            .map(|i| {
                amplitude * (i as f32 * 2.0 * std::f32::consts::PI * 220.0 / RATE as f32).sin()
            })
            .collect()
    }

    fn spans(samples: &[f32]) -> Vec<(&'static str, u32, u32)> {
        let total = (samples.len() as u64 * 1000 / u64::from(RATE)) as u32;
        visemes(samples, RATE, total)
            .into_iter()
            .map(|v| (v.name, v.start_ms, v.duration_ms))
            .collect()
    }

    #[test]
    fn silence_is_one_closed_mouth() {
        assert_eq!(spans(&vec![0.0; 16000]), [("sil", 0, 1000)]);
        // Quiet noise under the floor is silence too.
        let hiss: Vec<f32> = (0..16000)
            .map(|i| if i % 2 == 0 { 1e-4 } else { -1e-4 })
            .collect();
        assert_eq!(spans(&hiss), [("sil", 0, 1000)]);
    }

    #[test]
    fn loudness_opens_the_mouth_in_order() {
        let mut audio = vec![0.0; 3200]; // 200 ms silence
        audio.extend(tone(0.5, 300)); // loud: open
        audio.extend(tone(0.05, 300)); // 20 dB under: half open
        audio.extend(vec![0.0; 3200]); // silence: closed
        assert_eq!(
            spans(&audio),
            [
                ("sil", 0, 200),
                ("aa", 200, 300),
                ("E", 500, 300),
                ("sil", 800, 200)
            ]
        );
    }

    #[test]
    fn blips_shorter_than_the_median_are_smoothed_away() {
        let mut audio = vec![0.0; 3200];
        audio.extend(tone(0.5, 20)); // a 20 ms click
        audio.extend(vec![0.0; 3200]);
        let total = (audio.len() as u64 * 1000 / u64::from(RATE)) as u32;
        let v = visemes(&audio, RATE, total);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].id, CLOSED);
    }

    #[test]
    fn the_timeline_is_contiguous_and_ends_at_the_total_even_mid_frame() {
        // 22050 Hz: frames are 220.5 samples; 1234 ms of varying loudness.
        let rate = 22050;
        let samples: Vec<f32> = (0..(rate * 1234 / 1000))
            .map(|i| ((i / 2000) % 3) as f32 * 0.2 * ((i as f32) * 0.05).sin())
            .collect();
        let v = visemes(&samples, rate, 1234);
        let mut at = 0;
        for w in &v {
            assert_eq!(w.start_ms, at);
            assert!(w.duration_ms > 0);
            at += w.duration_ms;
        }
        assert_eq!(at, 1234);
        assert!(v.windows(2).all(|w| w[0].id != w[1].id));
        assert!(visemes(&[], rate, 0).is_empty());
    }

    #[test]
    fn openness_thresholds() {
        let speech = Some(-10.0);
        assert_eq!(openness(-10.0, speech), 2);
        assert_eq!(openness(-19.9, speech), 2);
        assert_eq!(openness(-20.1, speech), 1);
        assert_eq!(openness(-39.9, speech), 1);
        assert_eq!(openness(-40.1, speech), 0);
        assert_eq!(openness(-56.0, Some(-50.0)), 0, "under the floor");
        assert_eq!(openness(-10.0, None), 0);
        assert_eq!(speech_level(&[f32::NEG_INFINITY, -60.0]), None);
    }
}
