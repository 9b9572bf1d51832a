//! The lip-sync model's render windows over audio that grows a sentence at a time, so that
//! a text's mouth frames can stream per sentence and still be the frames of its whole
//! audio: frame `i` shows the audio from `i / fps` seconds of the whole, none is missing or
//! rendered twice at a sentence's end, and there are as many as the whole audio implies.
//!
//! Over audio given at once the model renders one-second windows from the start (a second is
//! a whole number of frames and of samples), the last one shorter, its frame count rounded
//! half up ([`frame_count`]). [`Windows`] renders the same windows, with one addition: at the
//! end of a sentence other than the last ([`Windows::take`] before the last audio is in) it
//! also renders the part of the current window that holds whole frames, up to the last frame
//! boundary that falls on a whole sample (every `fps / gcd(fps, rate)` frames: every frame at
//! 25 fps and 16 kHz, every fourth at 24 fps and 22050 Hz), and keeps the samples after it for
//! the next sentence. A window that a sentence ends inside is so rendered in two calls (or
//! more), split on a frame boundary; every other window is the whole's. The audio is the
//! whole's too: [`Resampler`] gives the same samples in pieces as at once.
//!
//! What the splits change, bounded:
//! - nothing about the frames' indices, times and count: each piece but the last holds a
//!   whole number of frames, and the last one rounds as the whole's last window does;
//! - nothing in the frames of a model that draws each frame from its own audio only (the
//!   generated test model at 16 kHz and 25 fps does: a frame's energy bins are the same
//!   samples however its window is cut), except in the last window when a sentence's end
//!   splits it, since a last window's frames share its rounding;
//! - for a model that looks at the audio around a frame, only the frames within its reach of
//!   a split: it sees the split as it sees any window's edge.
//!
//! What waits at a sentence's end for the next one: the samples after that boundary (less
//! than `fps / gcd(fps, rate)` frames), and the resampler's last output sample, which needs
//! the next sentence's first input sample.

use crate::audio::resample::Resampler;
use crate::lip_sync::model::frame_count;

/// One model call: its audio and the frames it renders.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The index of its first frame in the whole audio.
    pub first: u64,
    /// How many frames the model renders for `samples` ([`frame_count`] of their length).
    pub frames: usize,
    /// Its audio, at the model's rate.
    pub samples: Vec<f32>,
}

/// The render windows of one stream's audio (see the module docs).
#[derive(Debug)]
pub struct Windows {
    /// None once the last audio is in.
    resampler: Option<Resampler>,
    from: u32,
    fps: u32,
    rate: u32,
    /// Samples in a whole window.
    window: usize,
    /// Samples between the frame boundaries that fall on a whole sample.
    step: usize,
    /// Audio received and not yet rendered: `pending[0]` is sample `start` of the whole.
    pending: Vec<f32>,
    start: usize,
}

impl Windows {
    /// Windows of `window` samples (the model's [`super::LipSyncModel::window_samples`]: a
    /// second; rounded up to whole frames on a whole sample if it is not) for a model of
    /// `fps` frames a second at `rate` Hz, over audio at `from` Hz.
    pub fn new(from: u32, fps: u32, rate: u32, window: usize) -> Windows {
        let (fps, rate) = (fps.max(1), rate.max(1));
        let step = (rate / gcd(rate, fps)) as usize;
        Windows {
            resampler: Some(Resampler::new(from, rate)),
            from,
            fps,
            rate,
            window: window.max(1).div_ceil(step) * step,
            step,
            pending: Vec::new(),
            start: 0,
        }
    }

    /// The rate of the audio [`Windows::extend`] takes.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Adds the audio of the next sentence (at [`Windows::from_rate`]); `last` when none
    /// follows. Audio after the last is ignored.
    pub fn extend(&mut self, audio: &[f32], last: bool) {
        let Some(resampler) = self.resampler.as_mut() else {
            return;
        };
        self.pending.extend(resampler.push(audio));
        if last && let Some(resampler) = self.resampler.take() {
            self.pending.extend(resampler.finish());
        }
    }

    /// The frames of the audio so far: of the whole audio once the last of it is in.
    pub fn frame_count(&self) -> usize {
        frame_count(self.start + self.pending.len(), self.fps, self.rate)
    }

    /// The windows to render now, in order: every whole window the audio so far holds, then
    /// the whole frames of the next one; once the last audio is in, every window left.
    pub fn take(&mut self) -> Vec<Window> {
        let end = self.start + self.pending.len();
        let mut windows = Vec::new();
        while self.start < end {
            let edge = (self.start / self.window + 1) * self.window;
            let until = if edge <= end {
                edge
            } else if self.resampler.is_none() {
                end
            } else {
                end / self.step * self.step
            };
            if until <= self.start {
                break;
            }
            let window = self.cut(until);
            // A tail shorter than half a frame has no frame of its own: no model call.
            if window.frames > 0 {
                windows.push(window);
            }
        }
        windows
    }

    /// The window from `start` to sample `until` of the whole.
    fn cut(&mut self, until: usize) -> Window {
        let samples: Vec<f32> = self.pending.drain(..until - self.start).collect();
        // Exact: `start` is always a frame boundary on a whole sample.
        let first = self.start as u64 * u64::from(self.fps) / u64::from(self.rate);
        self.start = until;
        Window {
            first,
            frames: frame_count(samples.len(), self.fps, self.rate),
            samples,
        }
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chirp with loud and quiet stretches, `n` samples of it.
    fn signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32;
                (t * 0.02 + t * t * 1e-8).sin() * if (i / 3001) % 2 == 0 { 0.1 } else { 0.8 }
            })
            .collect()
    }

    /// Feeds `sentences` (their lengths, at `from` Hz) one at a time; returns the windows
    /// taken after each, and what the audio so far was at the model's rate after each.
    fn stream(
        sentences: &[usize],
        from: u32,
        fps: u32,
        rate: u32,
    ) -> (Vec<Vec<Window>>, Vec<usize>, Vec<f32>) {
        let audio = signal(sentences.iter().sum());
        let mut windows = Windows::new(from, fps, rate, rate as usize);
        let (mut taken, mut received, mut at) = (Vec::new(), Vec::new(), 0);
        for (i, &n) in sentences.iter().enumerate() {
            windows.extend(&audio[at..at + n], i + 1 == sentences.len());
            at += n;
            taken.push(windows.take());
            received.push(windows.start + windows.pending.len());
        }
        let whole = crate::audio::Audio {
            samples: audio,
            sample_rate: from,
        }
        .resampled(rate);
        (taken, received, whole)
    }

    /// Checks what must hold of any stream: frames contiguous from 0 and as many as the
    /// whole audio implies, each window the model's count for its samples, and the windows'
    /// audio the whole's, in order.
    fn check(windows: &[Window], whole: &[f32], fps: u32, rate: u32) {
        let mut next = 0u64;
        let mut audio = Vec::new();
        for w in windows {
            assert_eq!(w.first, next, "no gap and no frame twice: {:?}", w.first);
            assert!(w.frames > 0);
            assert_eq!(w.frames, frame_count(w.samples.len(), fps, rate));
            assert!(w.samples.len() <= rate as usize, "at most a second");
            next += w.frames as u64;
            audio.extend_from_slice(&w.samples);
        }
        assert_eq!(next as usize, frame_count(whole.len(), fps, rate));
        // The audio of a tail without a frame is not rendered.
        assert_eq!(audio[..], whole[..audio.len()]);
        assert!(whole.len() - audio.len() < (rate / fps) as usize);
    }

    #[test]
    fn one_sentence_is_rendered_in_the_whole_audios_windows() {
        // 3.3 s and a bit at 16 kHz, 25 fps: three whole seconds, then 0.3 s rounded.
        let n = 16_000 * 3 + 4_800 + 500;
        let (taken, _, whole) = stream(&[n], 16_000, 25, 16_000);
        let windows = &taken[0];
        let bounds: Vec<(u64, usize, usize)> = windows
            .iter()
            .map(|w| (w.first, w.frames, w.samples.len()))
            .collect();
        assert_eq!(
            bounds,
            [
                (0, 25, 16_000),
                (25, 25, 16_000),
                (50, 25, 16_000),
                (75, 8, 5_300)
            ]
        );
        check(windows, &whole, 25, 16_000);

        // A tail shorter than half a frame has no window.
        let (taken, _, whole) = stream(&[16_000 + 319], 16_000, 25, 16_000);
        assert_eq!(taken[0].len(), 1);
        check(&taken[0], &whole, 25, 16_000);
    }

    #[test]
    fn frames_continue_across_sentence_ends_that_are_not_frame_boundaries() {
        let sentences = [12_345, 7_001, 22_050, 555, 30_000, 1];
        for (from, fps, rate) in [
            (16_000, 25, 16_000),
            (22_050, 25, 16_000),
            (22_050, 24, 22_050),
            (22_050, 30, 16_000),
            (16_000, 7, 8_000),
        ] {
            let (taken, received, whole) = stream(&sentences, from, fps, rate);
            let all: Vec<Window> = taken.iter().flatten().cloned().collect();
            check(&all, &whole, fps, rate);
            // After each sentence but the last: exactly the frames whole within the audio
            // so far, up to the last boundary on a whole sample; the rest waits.
            let step = (rate / gcd(rate, fps)) as usize;
            let mut sent = 0;
            for (windows, &received) in taken.iter().zip(&received).take(sentences.len() - 1) {
                sent += windows.iter().map(|w| w.samples.len()).sum::<usize>();
                assert_eq!(sent, received / step * step, "{from} {fps} {rate}");
            }
        }
    }

    #[test]
    fn empty_sentences_add_nothing() {
        let audio = signal(20_000);
        let mut windows = Windows::new(16_000, 25, 16_000, 16_000);
        windows.extend(&[], false);
        assert!(windows.take().is_empty());
        windows.extend(&audio[..10_000], false);
        let first = windows.take();
        windows.extend(&[], false);
        assert!(windows.take().is_empty(), "nothing twice");
        windows.extend(&audio[10_000..], false);
        let second = windows.take();
        windows.extend(&[], true);
        let rest = windows.take();
        let all: Vec<Window> = [first, second, rest].concat();
        check(&all, &audio, 25, 16_000);
        windows.extend(&audio, false);
        assert!(windows.take().is_empty(), "nothing after the last");

        let mut silent = Windows::new(22_050, 25, 16_000, 16_000);
        silent.extend(&[], false);
        silent.extend(&[], true);
        assert!(silent.take().is_empty());
        assert_eq!(silent.frame_count(), 0);
    }

    /// A stand-in for a model whose frames each see only their own audio: frame `i` of a
    /// window is the sum of its `i`-th share of the samples.
    fn frame_local(window: &Window) -> Vec<f64> {
        let (n, t) = (window.samples.len(), window.frames);
        (0..t)
            .map(|i| {
                window.samples[i * n / t..(i + 1) * n / t]
                    .iter()
                    .map(|&s| f64::from(s))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn a_model_that_sees_only_each_frames_audio_draws_the_whole_audios_frames() {
        // The last sentence is longer than a second, so no sentence's end splits the last
        // window: every frame is the whole's.
        let sentences = [9_999, 20_001, 333, 17_000];
        let (taken, _, whole) = stream(&sentences, 22_050, 25, 16_000);
        let streamed: Vec<f64> = taken.iter().flatten().flat_map(frame_local).collect();
        let mut at_once = Windows::new(16_000, 25, 16_000, 16_000);
        at_once.extend(&whole, true);
        let expected: Vec<f64> = at_once.take().iter().flat_map(frame_local).collect();
        assert_eq!(streamed, expected);

        // A last sentence inside the last window: only that window's frames may differ.
        let sentences = [20_000, 9_000, 2_000];
        let (taken, _, whole) = stream(&sentences, 16_000, 25, 16_000);
        let streamed: Vec<f64> = taken.iter().flatten().flat_map(frame_local).collect();
        let mut at_once = Windows::new(16_000, 25, 16_000, 16_000);
        at_once.extend(&whole, true);
        let expected: Vec<f64> = at_once.take().iter().flat_map(frame_local).collect();
        assert_eq!(streamed.len(), expected.len());
        assert_eq!(streamed[..25], expected[..25]);
    }
}
