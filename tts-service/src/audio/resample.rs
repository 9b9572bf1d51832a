//! Resampling audio that arrives in pieces (a text's sentences, as they are spoken) so that
//! the pieces together give exactly the samples that resampling the whole gives
//! ([`super::Audio::resampled`] is this, fed once). The lip-sync model then sees the same
//! audio whether a text's mouth frames are rendered a sentence at a time or all at once.
//!
//! Linear interpolation: output sample `i` sits at `i * from / to` in the input and mixes
//! the two input samples around that point. It is final once the later of the two has
//! arrived, so a piece's last output sample or two wait for the next piece (or for
//! [`Resampler::finish`]); the output never grows past what the whole would have if the
//! input ended there. At the end, as for the whole, the last input sample is repeated past
//! the end and the length is the input's times `to / from`, rounded half up.

/// A resampler from `from` Hz to `to` Hz, fed in pieces.
#[derive(Debug, Clone)]
pub struct Resampler {
    from: u32,
    to: u32,
    /// Input samples per output sample.
    step: f64,
    /// The input that later output still needs: `kept[0]` is input sample `base`.
    kept: Vec<f32>,
    base: usize,
    /// Input samples pushed so far.
    received: usize,
    /// Output samples given so far.
    given: u64,
}

impl Resampler {
    pub fn new(from: u32, to: u32) -> Resampler {
        let (from, to) = (from.max(1), to.max(1));
        Resampler {
            from,
            to,
            step: f64::from(from) / f64::from(to),
            kept: Vec::new(),
            base: 0,
            received: 0,
            given: 0,
        }
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Takes the next piece of input; returns the output samples that are now final.
    pub fn push(&mut self, input: &[f32]) -> Vec<f32> {
        self.received += input.len();
        if self.from == self.to {
            self.given += input.len() as u64;
            return input.to_vec();
        }
        self.kept.extend_from_slice(input);
        let limit = length(self.received, self.from, self.to);
        let mut out = Vec::new();
        while self.given < limit {
            let at = self.given as f64 * self.step;
            let k = at.floor() as usize;
            if k + 1 >= self.received {
                break; // its later input sample is in the next piece
            }
            out.push(self.interpolate(at, k, k + 1));
            self.given += 1;
        }
        // Keep what the next output needs, and always the last sample, which the end repeats.
        let next = (self.given as f64 * self.step).floor() as usize;
        let keep_from = next.min(self.received.saturating_sub(1));
        let drained = keep_from.saturating_sub(self.base).min(self.kept.len());
        self.kept.drain(..drained);
        self.base += drained;
        out
    }

    /// The output samples left once the input has ended.
    pub fn finish(mut self) -> Vec<f32> {
        if self.from == self.to || self.received == 0 {
            return Vec::new();
        }
        let last = self.received - 1;
        let len = length(self.received, self.from, self.to);
        let mut out = Vec::with_capacity(len.saturating_sub(self.given) as usize);
        while self.given < len {
            let at = self.given as f64 * self.step;
            let k = (at.floor() as usize).min(last);
            out.push(self.interpolate(at, k, (k + 1).min(last)));
            self.given += 1;
        }
        out
    }

    /// The output at input position `at`, between input samples `k` and `next`.
    fn interpolate(&self, at: f64, k: usize, next: usize) -> f32 {
        let frac = (at - k as f64) as f32;
        let (a, b) = (self.kept[k - self.base], self.kept[next - self.base]);
        a + (b - a) * frac
    }
}

/// Output samples for `n` input samples: `n * to / from`, rounded half up.
fn length(n: usize, from: u32, to: u32) -> u64 {
    let (from, to) = (u64::from(from), u64::from(to));
    (2 * n as u64 * to + from) / (2 * from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Something speech-like enough: a chirp with a few steps in it.
    fn signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32;
                (t * 0.01 + t * t * 1e-7).sin() * if (i / 997) % 3 == 0 { 0.2 } else { 0.9 }
            })
            .collect()
    }

    fn whole(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
        let mut resampler = Resampler::new(from, to);
        let mut out = resampler.push(samples);
        out.extend(resampler.finish());
        out
    }

    #[test]
    fn pieces_give_exactly_what_the_whole_gives() {
        let input = signal(50_000);
        for (from, to) in [
            (22050, 16000),
            (16000, 22050),
            (48000, 16000),
            (22050, 8000),
            (44100, 48000),
            (16000, 16000),
        ] {
            let expected = whole(&input, from, to);
            assert_eq!(expected.len() as u64, length(input.len(), from, to));
            // Sentence-sized pieces, tiny ones, empty ones, one sample at a time at the end.
            let mut cuts = vec![0, 0, 1, 2, 3, 7, 12_345, 12_345, 30_001];
            cuts.extend(49_990..50_000);
            cuts.push(50_000);
            let mut resampler = Resampler::new(from, to);
            let mut pieces = Vec::new();
            for pair in cuts.windows(2) {
                let out = resampler.push(&input[pair[0]..pair[1]]);
                // Never more than the whole would have if the input ended here.
                assert!(pieces.len() + out.len() <= length(pair[1], from, to) as usize);
                pieces.extend(out);
            }
            pieces.extend(resampler.finish());
            assert_eq!(pieces, expected, "{from} Hz to {to} Hz");
        }
    }

    #[test]
    fn edges() {
        assert!(whole(&[], 22050, 16000).is_empty());
        assert_eq!(whole(&[0.5], 22050, 16000), [0.5]);
        assert_eq!(whole(&[0.5], 8000, 16000), [0.5, 0.5]);
        // Output waits for the sample after it, then the end repeats the last one.
        let mut resampler = Resampler::new(8000, 16000);
        assert_eq!(resampler.push(&[0.0, 1.0]), [0.0, 0.5]);
        assert_eq!(resampler.finish(), [1.0, 1.0]);
    }
}
