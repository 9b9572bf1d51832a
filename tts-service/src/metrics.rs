//! arbiter-tts's Prometheus metrics, served at `GET /metrics` with `--metrics-listen` (the
//! listener is `arbiter::scrape`, shared with the supervisor).
//!
//! - `arbiter_tts_time_to_first_audio_seconds`: from a Synthesize call's arrival to its
//!   first audio chunk handed to the stream (what a listener waits before hearing speech);
//! - `arbiter_tts_real_time_factor`: per sentence, the time spent synthesizing it over the
//!   length of its audio (below 1: faster than real time);
//! - `arbiter_tts_lip_sync_renders_total{device}`: lip-sync model windows rendered, by
//!   where they ran (`cuda` under the lease, `cpu` meanwhile);
//! - `arbiter_tts_requests_total{method,code}`: calls by method and the gRPC code they
//!   were answered with (a stream's later failure is not counted again).
//!
//! A domain module: it knows method names and codes as text, not gRPC; the service records
//! into it and the server renders it.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// From the call to the first chunk: a sentence of eSpeak NG takes milliseconds, a
/// TorchScript voice on the CPU up to seconds.
const FIRST_AUDIO_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Synthesis time over audio time.
const REAL_TIME_BUCKETS: [f64; 11] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct TtsMetrics {
    registry: Registry,
    first_audio: Histogram,
    real_time: Histogram,
    renders: Family<DeviceLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl Default for TtsMetrics {
    fn default() -> TtsMetrics {
        TtsMetrics::new()
    }
}

impl TtsMetrics {
    pub fn new() -> TtsMetrics {
        let first_audio = Histogram::new(FIRST_AUDIO_BUCKETS);
        let real_time = Histogram::new(REAL_TIME_BUCKETS);
        let renders = Family::<DeviceLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let mut registry = Registry::with_prefix("arbiter_tts");
        registry.register_with_unit(
            "time_to_first_audio",
            "From a Synthesize call's arrival to its first audio chunk",
            Unit::Seconds,
            first_audio.clone(),
        );
        registry.register(
            "real_time_factor",
            "Per sentence, synthesis time over the audio's duration (below 1: faster than real time)",
            real_time.clone(),
        );
        registry.register(
            "lip_sync_renders",
            "Lip-sync model windows rendered, by device (cuda under the lease, cpu without)",
            renders.clone(),
        );
        registry.register(
            "requests",
            "Calls by method and the gRPC code they were answered with",
            requests.clone(),
        );
        // Both devices from the start, so a dashboard sees 0 rather than no series.
        for device in ["cpu", "cuda"] {
            renders
                .get_or_create(&DeviceLabels {
                    device: device.into(),
                })
                .inc_by(0);
        }
        TtsMetrics {
            registry,
            first_audio,
            real_time,
            renders,
            requests,
        }
    }

    pub fn first_audio(&self, after: Duration) {
        self.first_audio.observe(after.as_secs_f64());
    }

    /// One sentence took `took` to synthesize `audio` of speech.
    pub fn sentence(&self, took: Duration, audio: Duration) {
        if !audio.is_zero() {
            self.real_time
                .observe(took.as_secs_f64() / audio.as_secs_f64());
        }
    }

    /// A window rendered on `device` (libtorch's name: `cpu`, `cuda:0`), counted as `cpu`
    /// or `cuda`.
    pub fn render(&self, device: &str) {
        let device = device.split(':').next().unwrap_or(device);
        self.renders
            .get_or_create(&DeviceLabels {
                device: device.into(),
            })
            .inc();
    }

    /// A call to `method` answered with `code` (gRPC's name, such as `OK`).
    pub fn request(&self, method: &str, code: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                code: code.into(),
            })
            .inc();
    }

    /// The exposition text (OpenMetrics).
    pub fn render_text(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
    }

    #[test]
    fn the_exposition_names_what_was_recorded() {
        let metrics = TtsMetrics::new();
        metrics.first_audio(Duration::from_millis(40));
        metrics.sentence(Duration::from_millis(100), Duration::from_secs(1));
        metrics.sentence(Duration::from_millis(100), Duration::ZERO);
        metrics.render("cuda:0");
        metrics.render("cuda:0");
        metrics.render("cpu");
        metrics.request("Synthesize", "OK");
        metrics.request("Synthesize", "INVALID_ARGUMENT");
        let text = metrics.render_text();
        assert_eq!(
            line(&text, "arbiter_tts_time_to_first_audio_seconds_count"),
            Some("1")
        );
        assert_eq!(
            line(&text, "arbiter_tts_time_to_first_audio_seconds_sum"),
            Some("0.04")
        );
        assert_eq!(line(&text, "arbiter_tts_real_time_factor_count"), Some("1"));
        assert_eq!(line(&text, "arbiter_tts_real_time_factor_sum"), Some("0.1"));
        assert_eq!(
            line(
                &text,
                r#"arbiter_tts_lip_sync_renders_total{device="cuda"}"#
            ),
            Some("2")
        );
        assert_eq!(
            line(&text, r#"arbiter_tts_lip_sync_renders_total{device="cpu"}"#),
            Some("1")
        );
        assert_eq!(
            line(
                &text,
                r#"arbiter_tts_requests_total{method="Synthesize",code="INVALID_ARGUMENT"}"#
            ),
            Some("1")
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
