//! The exposition after known events: names, labels and values, read back from the text a
//! scrape returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::feed::{Feed, Fold};
use super::jobs::JobMetrics;
use super::snapshot::Snapshot;
use crate::gpu::{GpuSample, ProcessUsage};
use crate::job::{JobRecord, JobState};
use crate::lease::broker::Broker;
use crate::lease::events::Event;
use crate::lease::{Ask, Form, GpuChoice, Peer, Priority};

const GIB: u64 = 1 << 30;

fn broker(capacity: u64) -> Arc<Broker> {
    crate::lease::broker::test_broker(capacity, GIB)
}

fn ask(holder: &str, bytes: u64, priority: Priority, peer: Option<Peer>) -> Ask {
    Ask {
        holder: holder.into(),
        gpu: GpuChoice::Any,
        bytes,
        priority,
        preemptible: false,
        reload: Default::default(),
        max_wait: None,
        form: Form::Stream,
        peer,
        owner: String::new(),
        quota: None,
    }
}

fn encode(register: impl FnOnce(&mut Registry)) -> String {
    let mut registry = Registry::with_prefix("arbiter");
    register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// The value of the one sample named exactly `series` (name and labels as exposed).
fn value(text: &str, series: &str) -> f64 {
    let found: Vec<f64> = text
        .lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .collect();
    assert_eq!(found.len(), 1, "one sample {series} in:\n{text}");
    found[0]
}

fn drain(events: &mut tokio::sync::broadcast::Receiver<Event>, feed: &Feed, fold: &mut Fold) {
    while let Ok(event) = events.try_recv() {
        feed.fold(&event.kind, fold);
    }
}

#[tokio::test]
async fn grants_waits_releases_and_expiries_are_counted_from_the_feed() {
    let broker = broker(11 * GIB);
    let feed = Feed::new();
    let mut fold = Fold::default();
    let mut events = broker.feed().subscribe();

    // An immediate grant, then a waiter granted when the first goes.
    let mut first = broker
        .hold(ask("first", 8 * GIB, Priority::Normal, None))
        .unwrap();
    assert!(matches!(
        first.notes.recv().await,
        Some(crate::lease::broker::Note::Granted(_))
    ));
    let mut second = broker
        .hold(ask("second", 8 * GIB, Priority::Interactive, None))
        .unwrap();
    assert!(matches!(
        second.notes.recv().await,
        Some(crate::lease::broker::Note::Queued { .. })
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(first);
    assert!(matches!(
        second.notes.recv().await,
        Some(crate::lease::broker::Note::Granted(_))
    ));
    // A unary wait that reaches its deadline.
    let mut expiring = broker
        .hold(Ask {
            max_wait: Some(Duration::from_millis(10)),
            form: Form::Unary {
                ttl: Duration::from_secs(30),
            },
            ..ask("late", 8 * GIB, Priority::Batch, None)
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        broker.tick();
        match expiring.notes.try_recv() {
            Ok(crate::lease::broker::Note::WaitEnded { .. }) => break,
            _ if Instant::now() > deadline => panic!("the wait did not end within 10s"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    drop(second);
    drain(&mut events, &feed, &mut fold);

    let text = encode(|r| feed.register(r));
    assert_eq!(
        value(
            &text,
            r#"arbiter_lease_grants_total{priority="normal",form="stream"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_lease_grants_total{priority="interactive",form="stream"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_lease_releases_total{reason="stream_closed"}"#
        ),
        2.0
    );
    assert_eq!(value(&text, "arbiter_lease_deadline_expiries_total"), 1.0);
    assert_eq!(value(&text, "arbiter_lease_wait_seconds_count"), 2.0);
    // The immediate grant waited 0, the queued one at least the 20ms it was kept waiting.
    assert_eq!(
        value(&text, r#"arbiter_lease_wait_seconds_bucket{le="0.001"}"#),
        1.0
    );
    assert!(
        value(&text, "arbiter_lease_wait_seconds_sum") >= 0.02,
        "{text}"
    );
    assert_eq!(value(&text, "arbiter_metrics_events_skipped_total"), 0.0);
    assert!(text.contains("# TYPE arbiter_lease_wait_seconds histogram"));
    assert!(text.contains("# UNIT arbiter_lease_wait_seconds seconds"));
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn gauges_follow_the_broker_at_each_snapshot() {
    let broker = broker(24 * GIB);
    let me = Peer {
        pid: std::process::id(),
        uid: nix::unistd::getuid().as_raw(),
    };
    let mut visible = broker
        .hold(ask(
            "arbiter-tts (pid 1)",
            3 * GIB,
            Priority::Critical,
            Some(me),
        ))
        .unwrap();
    let lease = match visible.notes.recv().await {
        Some(crate::lease::broker::Note::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    };
    let _unary = broker
        .acquire(Ask {
            form: Form::Unary {
                ttl: Duration::from_secs(300),
            },
            ..ask("grpcurl", 2 * GIB, Priority::Normal, None)
        })
        .await
        .unwrap();
    let _waiting = broker
        .hold(ask("too big", 20 * GIB, Priority::Batch, None))
        .unwrap();
    // The holder's process uses 2.5GiB; a foreign one 1GiB.
    broker.observe(
        0,
        GpuSample {
            total: 24 * GIB,
            used: 3 * GIB + GIB / 2,
            free: 20 * GIB + GIB / 2,
            processes: vec![
                ProcessUsage {
                    pid: me.pid,
                    used: Some(2 * GIB + GIB / 2),
                },
                ProcessUsage {
                    pid: 1,
                    used: Some(GIB),
                },
            ],
        },
        Instant::now(),
    );

    let snapshot = Snapshot::default();
    let (gpus, waiting) = broker.status();
    let leases: Vec<_> = broker.leases(None).into_iter().map(|(l, _)| l).collect();
    snapshot.update(&gpus, waiting.len(), &leases);
    let text = encode(|r| snapshot.register(r));
    let gib = GIB as f64;
    assert_eq!(
        value(&text, r#"arbiter_gpu_total_bytes{gpu="0"}"#),
        24.0 * gib
    );
    assert_eq!(
        value(&text, r#"arbiter_gpu_used_bytes{gpu="0"}"#),
        3.5 * gib
    );
    assert_eq!(
        value(&text, r#"arbiter_gpu_granted_bytes{gpu="0"}"#),
        5.0 * gib
    );
    assert_eq!(
        value(&text, r#"arbiter_gpu_granted_bytes{gpu="0"}"#),
        gpus[0].granted as f64
    );
    assert_eq!(value(&text, r#"arbiter_gpu_foreign_bytes{gpu="0"}"#), gib);
    assert_eq!(
        value(&text, r#"arbiter_gpu_budget_bytes{gpu="0"}"#),
        gpus[0].budget as f64
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_gpu_info{gpu="0",uuid="GPU-test",name="simulated"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_leases{priority="critical",form="stream"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&text, r#"arbiter_leases{priority="normal",form="unary"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"arbiter_leases{priority="batch",form="stream"}"#),
        0.0
    );
    assert_eq!(value(&text, "arbiter_lease_queue_length"), 1.0);
    let process = format!(
        r#"arbiter_lease_process_bytes{{gpu="0",pid="{}",holder="arbiter-tts (pid 1)",lease="{}"}}"#,
        me.pid, lease.id
    );
    assert_eq!(value(&text, &process), 2.5 * gib);
    assert!(
        !text.contains(r#"pid="1","#),
        "a foreign process is no lease's: {text}"
    );

    // Once the lease is gone its series go too.
    drop(visible);
    let (gpus, waiting) = broker.status();
    let leases: Vec<_> = broker.leases(None).into_iter().map(|(l, _)| l).collect();
    snapshot.update(&gpus, waiting.len(), &leases);
    let text = encode(|r| snapshot.register(r));
    assert!(!text.contains(&lease.id), "{text}");
    assert_eq!(
        value(
            &text,
            r#"arbiter_leases{priority="critical",form="stream"}"#
        ),
        0.0
    );
}

/// A succeeded job as an older supervisor stored it (the fixture of `job`'s own test).
fn succeeded(metadata: &std::path::Path) -> JobRecord {
    let mut record: JobRecord =
        serde_json::from_str(include_str!("../job/testdata/record-2026-12.json")).unwrap();
    if let Some(result) = record.result.as_mut() {
        result.metadata_path = metadata.to_path_buf();
    }
    record
}

#[test]
fn ended_jobs_are_observed_once_with_their_stages_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = dir.path().join("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"stages":[{"name":"text","ms":250.0},{"name":"denoise","ms":4000.0}],
            "pipeline_stages":[{"stage":"text","load_ms":500.0,"load_bytes":2000000000},
                               {"stage":"denoise","load_ms":0.0,"load_bytes":0}]}"#,
    )
    .unwrap();
    let done = succeeded(&metadata);
    let mut queued = done.clone();
    queued.id = "job-queued".into();
    queued.state = JobState::Queued;
    queued.result = None;

    let metrics = JobMetrics::new(std::slice::from_ref(&queued));
    metrics.update(&[queued.clone(), done.clone()]);
    // A second scrape does not count the same job again.
    metrics.update(&[queued.clone(), done.clone()]);
    let text = encode(|r| metrics.register(r));
    assert_eq!(value(&text, r#"arbiter_jobs{state="queued"}"#), 1.0);
    assert_eq!(value(&text, r#"arbiter_jobs{state="succeeded"}"#), 1.0);
    assert_eq!(value(&text, r#"arbiter_jobs{state="running"}"#), 0.0);
    assert_eq!(
        value(
            &text,
            r#"arbiter_job_duration_seconds_count{state="succeeded"}"#
        ),
        1.0
    );
    // Created at 1796000000 s, finished 9 s later.
    assert_eq!(
        value(
            &text,
            r#"arbiter_job_duration_seconds_sum{state="succeeded"}"#
        ),
        9.0
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_job_stage_duration_seconds_sum{stage="denoise"}"#
        ),
        4.0
    );
    assert_eq!(
        value(&text, r#"arbiter_job_stage_load_bytes_total{stage="text"}"#),
        2e9
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_job_stage_load_seconds_total{stage="text"}"#
        ),
        0.5
    );
    assert_eq!(
        value(
            &text,
            r#"arbiter_job_stage_load_bytes_total{stage="denoise"}"#
        ),
        0.0,
        "a stage that loaded nothing adds nothing"
    );
    assert_eq!(value(&text, "arbiter_job_memory_return_seconds_count"), 1.0);
    assert_eq!(
        value(&text, "arbiter_job_memory_return_seconds_sum"),
        0.00025
    );

    // A job that had already ended when the supervisor started is not observed.
    let restarted = JobMetrics::new(std::slice::from_ref(&done));
    restarted.update(&[done]);
    let text = encode(|r| restarted.register(r));
    assert_eq!(value(&text, r#"arbiter_jobs{state="succeeded"}"#), 1.0);
    assert_eq!(
        value(
            &text,
            r#"arbiter_job_duration_seconds_count{state="succeeded"}"#
        ),
        0.0,
        "{text}"
    );
}

#[test]
fn prestarted_jobs_are_counted_once_and_standbys_show_per_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let done = succeeded(&dir.path().join("metadata.json"));
    let mut prestarted = done.clone();
    prestarted.id = "job-prestarted".into();
    prestarted.prestarted = true;

    let metrics = JobMetrics::new(&[]);
    metrics.update(&[done.clone(), prestarted.clone()]);
    metrics.update(&[done, prestarted]);
    metrics.update_standby(&[("ltx".into(), true), ("tiny-staged".into(), false)]);
    let text = encode(|r| metrics.register(r));
    assert_eq!(value(&text, "arbiter_job_prestarted_total"), 1.0);
    assert_eq!(
        value(&text, r#"arbiter_standby_ready{pipeline="ltx"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"arbiter_standby_ready{pipeline="tiny-staged"}"#),
        0.0
    );
}

#[test]
fn the_weight_pool_is_read_at_each_scrape_and_its_counters_follow_its_counts() {
    let figures = super::pool::PoolMetrics::default();
    let mut registry = Registry::with_prefix("arbiter");
    figures.register(&mut registry);
    let render = |registry: &Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    };
    let mut status = crate::pool::Status {
        budget: 1 << 30,
        bytes: 3 << 20,
        files: 2,
        hits: 5,
        fills: 2,
        fill_bytes: 3 << 20,
        locked_files: 2,
        ..Default::default()
    };
    figures.update(&status);
    let text = render(&registry);
    assert_eq!(
        value(&text, "arbiter_weight_pool_held_bytes"),
        (3 << 20) as f64
    );
    assert_eq!(
        value(&text, "arbiter_weight_pool_budget_bytes"),
        (1u64 << 30) as f64
    );
    assert_eq!(value(&text, "arbiter_weight_pool_files"), 2.0);
    assert_eq!(value(&text, "arbiter_weight_pool_hits_total"), 5.0);
    // Later counts move the counters by the difference, and a scrape with nothing new keeps them.
    status.hits = 9;
    status.evictions = 1;
    figures.update(&status);
    figures.update(&status);
    let text = render(&registry);
    assert_eq!(value(&text, "arbiter_weight_pool_hits_total"), 9.0);
    assert_eq!(value(&text, "arbiter_weight_pool_evictions_total"), 1.0);
    assert_eq!(
        value(&text, "arbiter_weight_pool_filled_bytes_total"),
        (3 << 20) as f64
    );
}
