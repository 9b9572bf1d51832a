//! Arbitrary bytes and arbitrary field values through every request decoder and validator:
//! each answer is a value or an error, never a panic, and what is accepted obeys the rules.

use arbiter::pb::supervisor::v1 as pb;
use arbiter::pb::video::v1 as vpb;
use proptest::prelude::*;
use prost::Message;

use super::job::{job_request, states_from_pb};
use super::lease::{Via, ask};
use crate::job::catalog::Catalog;
use crate::job::spec;
use crate::lease::broker::Broker;

fn broker() -> std::sync::Arc<Broker> {
    crate::lease::broker::test_broker(1 << 34, 0)
}

fn wire_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
        (0i64..100_000, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
    ]
}

fn well_formed(d: &Option<prost_types::Duration>) -> bool {
    d.is_none_or(|d| d.seconds >= 0 && (0..=999_999_999).contains(&d.nanos))
}

prop_compose! {
    fn lease_request()(
        holder in prop_oneof![Just(String::new()), "[a-z ]{1,20}", ".{0,200}"],
        gpu in prop_oneof![Just(String::new()), Just("0".to_string()), Just("GPU-test".to_string()), ".{0,80}"],
        bytes in prop_oneof![Just(0u64), 1u64..(1 << 35), any::<u64>()],
        priority in prop_oneof![0i32..5, any::<i32>()],
        preemptible in any::<bool>(),
        max_wait in wire_duration(),
        ttl in wire_duration(),
        reload in proptest::option::of(wire_reload()),
    ) -> pb::LeaseRequest {
        pb::LeaseRequest { holder, gpu, bytes, priority, preemptible, max_wait, ttl, reload }
    }
}

fn wire_reload() -> impl Strategy<Value = pb::ReloadCost> {
    (
        prop_oneof![0i32..5, any::<i32>()],
        proptest::option::of(prop_oneof![
            Just(0u64),
            Just(25),
            1_000_000u64..=10_000_000_000_000,
            any::<u64>()
        ]),
    )
        .prop_map(|(source, bytes_per_second)| pb::ReloadCost {
            source,
            bytes_per_second,
        })
}

prop_compose! {
    fn video_request()(
        prompt in prop_oneof![Just(String::new()), "[a-z ]{1,40}", ".{0,100}"],
        width in prop_oneof![Just(0u32), any::<u32>()],
        frames in prop_oneof![Just(0u32), 1u32..100, any::<u32>()],
        steps in prop_oneof![Just(0u32), any::<u32>()],
        pipeline in prop_oneof![Just(String::new()), Just("tiny".to_string()), ".{0,40}"],
        priority in prop_oneof![0i32..5, any::<i32>()],
        timeout in wire_duration(),
        placement in proptest::collection::btree_map(".{0,10}", ".{0,10}", 0..3),
        path in proptest::option::of(".{0,60}"),
    ) -> vpb::VideoRequest {
        vpb::VideoRequest {
            prompt,
            width,
            frames,
            steps,
            pipeline,
            priority,
            timeout,
            placement: placement.into_iter().collect(),
            audio: path.map(|p| vpb::Media { source: Some(vpb::media::Source::Path(p)) }),
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_decode_to_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let broker = broker();
        if let Ok(request) = pb::LeaseRequest::decode(bytes.as_slice()) {
            let _ = ask(request.clone(), &broker, Via::Hold, None, String::new(), None);
            let _ = ask(request, &broker, Via::Acquire, None, String::new(), None);
        }
        if let Ok(request) = vpb::VideoRequest::decode(bytes.as_slice()) {
            let _ = job_request(request);
        }
        if let Ok(request) = vpb::ListJobsRequest::decode(bytes.as_slice()) {
            let _ = states_from_pb(&request.states);
        }
        for decoded in [
            pb::KeepAliveRequest::decode(bytes.as_slice()).is_ok(),
            pb::ShrinkRequest::decode(bytes.as_slice()).is_ok(),
            pb::ReleaseRequest::decode(bytes.as_slice()).is_ok(),
            pb::ListLeasesRequest::decode(bytes.as_slice()).is_ok(),
            pb::WatchEventsRequest::decode(bytes.as_slice()).is_ok(),
            vpb::GetJobRequest::decode(bytes.as_slice()).is_ok(),
        ] {
            let _ = decoded;
        }
    }

    #[test]
    fn a_lease_request_is_accepted_only_within_the_rules(request in lease_request()) {
        let broker = broker();
        for via in [Via::Hold, Via::Acquire] {
            let accepted = ask(request.clone(), &broker, via, None, String::new(), None);
            if let Ok(ask) = accepted {
                prop_assert!(!ask.holder.is_empty());
                prop_assert!(ask.bytes > 0);
                prop_assert!((0..5).contains(&request.priority), "priority {} accepted", request.priority);
                prop_assert!(well_formed(&request.max_wait), "max_wait {:?} accepted", request.max_wait);
                prop_assert!(well_formed(&request.ttl), "ttl {:?} accepted", request.ttl);
                if let Some(reload) = &request.reload {
                    prop_assert!((0..5).contains(&reload.source), "reload source {} accepted", reload.source);
                    prop_assert!(reload.bytes_per_second.is_none_or(|r| (1_000_000..=10_000_000_000_000).contains(&r)),
                        "reload rate {:?} accepted", reload.bytes_per_second);
                    prop_assert_eq!(ask.reload.measured, reload.bytes_per_second);
                }
            }
        }
    }

    #[test]
    fn a_video_request_is_accepted_only_within_the_rules(request in video_request()) {
        let (priority, timeout) = (request.priority, request.timeout);
        match job_request(request) {
            Ok(plain) => {
                prop_assert!((0..5).contains(&priority), "priority {priority} accepted");
                prop_assert!(well_formed(&timeout), "timeout {timeout:?} accepted");
                // The rest of the rules: a spec or a refusal, never a panic.
                let catalog = Catalog::load(None, "tiny");
                let _ = spec::check(plain, &catalog, &crate::config::JobsConfig::default());
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn job_states_are_known_or_refused(states in proptest::collection::vec(any::<i32>(), 0..6)) {
        match states_from_pb(&states) {
            Ok(known) => {
                prop_assert_eq!(known.len(), states.len());
                prop_assert!(states.iter().all(|s| (1..=7).contains(s)));
            }
            Err(error) => prop_assert!(error.to_string().contains("states")),
        }
    }
}

fn reloading(source: pb::ReloadSource, bytes_per_second: Option<u64>) -> pb::LeaseRequest {
    pb::LeaseRequest {
        holder: "pooled".into(),
        bytes: 1 << 30,
        reload: Some(pb::ReloadCost {
            source: source as i32,
            bytes_per_second,
        }),
        ..Default::default()
    }
}

fn refusal(request: pb::LeaseRequest) -> tonic::Status {
    let error =
        ask(request, &broker(), Via::Hold, None, String::new(), None).expect_err("a refusal");
    tonic::Status::from(error)
}

#[test]
fn a_reload_rate_of_zero_or_beyond_any_link_is_refused_with_what_to_send() {
    for (rate, says) in [
        (0, "is 0:"),
        (25, "below 1 MB/s"),
        (u64::MAX, "above 10 TB/s"),
    ] {
        let status = refusal(reloading(pb::ReloadSource::HostPool, Some(rate)));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{rate}");
        let text = status.message();
        for part in [
            "reload.bytes_per_second",
            says,
            "bytes per second",
            "25000000000",
            "leave it unset",
        ] {
            assert!(text.contains(part), "{rate}: `{part}` missing from: {text}");
        }
    }
}

#[test]
fn an_unknown_reload_source_is_refused_and_the_known_ones_named() {
    let mut request = reloading(pb::ReloadSource::Disk, None);
    request.reload.as_mut().unwrap().source = 9;
    let status = refusal(request);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for part in [
        "reload.source is 9",
        "RELOAD_SOURCE_HOST_POOL (1)",
        "unset (0)",
    ] {
        assert!(status.message().contains(part), "{}", status.message());
    }
}

#[test]
fn a_declared_reload_is_echoed_as_sent_and_silence_as_nothing() {
    let broker = broker();
    let declared = ask(
        reloading(pb::ReloadSource::PageCache, Some(40_000_000_000)),
        &broker,
        Via::Hold,
        None,
        String::new(),
        None,
    )
    .unwrap();
    assert_eq!(
        declared.reload,
        crate::lease::ReloadCost {
            source: crate::lease::ReloadSource::PageCache,
            measured: Some(40_000_000_000),
        }
    );
    assert_eq!(
        super::lease::reload_to_pb(declared.reload),
        Some(pb::ReloadCost {
            source: pb::ReloadSource::PageCache as i32,
            bytes_per_second: Some(40_000_000_000),
        })
    );
    let silent = pb::LeaseRequest {
        reload: Some(pb::ReloadCost::default()),
        ..reloading(pb::ReloadSource::Unspecified, None)
    };
    let silent = ask(silent, &broker, Via::Hold, None, String::new(), None).unwrap();
    assert_eq!(silent.reload, crate::lease::ReloadCost::default());
    assert_eq!(super::lease::reload_to_pb(silent.reload), None);
}
