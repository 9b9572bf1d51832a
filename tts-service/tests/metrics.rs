//! The real `arbiter-tts serve` with `--metrics-listen`: after a Synthesize its `/metrics`
//! holds the time to first audio and the real-time factor, calls are counted by method and
//! code, and every arbiter-tts metric the Grafana dashboard queries is exported (the
//! supervisor's are checked by the root crate's `tests/metrics.rs`).

use std::net::SocketAddr;

use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::metrics::{
    dashboard, dashboard_queries, exported, get, metric_names, sample, scrape,
};
use arbiter_test_kit::supervisor::free_port;
use arbiter_test_kit::tts::{self, SERVING};
use arbiter_test_kit::waiting::{SOON, eventually};

#[tokio::test]
async fn synthesize_records_the_time_to_first_audio() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let endpoint: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _tts = tts::serve(&socket, &["--metrics-listen", &endpoint.to_string()]);
    let (mut client, health) = tts::answering(&socket).await;
    assert_eq!(health, SERVING);

    let before = scrape(endpoint).await.expect("GET /metrics");
    assert_eq!(
        sample(&before, "arbiter_tts_time_to_first_audio_seconds_count"),
        Some(0.0),
        "{before}"
    );

    let mut stream = client
        .synthesize(pb::SynthesizeRequest {
            text: "Hello world. Metrics are on.".into(),
            ..Default::default()
        })
        .await
        .expect("Synthesize")
        .into_inner();
    let mut chunks = 0;
    while let Some(_chunk) = stream.message().await.expect("a chunk") {
        chunks += 1;
    }
    assert_eq!(chunks, 2, "one chunk per sentence");
    let refused = client
        .synthesize(pb::SynthesizeRequest {
            text: "Too fast.".into(),
            speaking_rate: 9.0,
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "a rate of 9 is refused");

    // The stream has ended, so the service has recorded its first chunk; a scrape that
    // races the last bookkeeping is retried (bounded).
    let text = eventually(SOON, "the Synthesize in /metrics", || async {
        let text = scrape(endpoint).await.ok()?;
        (sample(&text, "arbiter_tts_real_time_factor_count")? >= 2.0).then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "arbiter_tts_time_to_first_audio_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "arbiter_tts_time_to_first_audio_seconds_sum").is_some_and(|s| s > 0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "arbiter_tts_real_time_factor_count"),
        Some(2.0),
        "one per sentence: {text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"arbiter_tts_requests_total{method="Synthesize",code="OK"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"arbiter_tts_requests_total{method="Synthesize",code="INVALID_ARGUMENT"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"arbiter_tts_lip_sync_renders_total{device="cuda"}"#
        ),
        Some(0.0),
        "no lip-sync model here: {text}"
    );
    assert_eq!(get(endpoint, "/other").await.expect("GET /other").0, 404);

    let names = exported(&text);
    for expr in dashboard_queries(&dashboard()) {
        for name in metric_names(&expr)
            .into_iter()
            .filter(|n| n.starts_with("arbiter_tts_"))
        {
            assert!(
                names.contains(&name),
                "the dashboard queries {name}, which arbiter-tts does not export (query: {expr}); exported: {names:?}"
            );
        }
    }
}
