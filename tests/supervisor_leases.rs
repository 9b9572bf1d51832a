//! Leases over gRPC on the real `arbiter-supervisor` binary: unary and streaming grants over
//! the Unix socket (with the caller's pid and uid) and TCP (without), the queue, `max_wait`,
//! holders that die or are asked to give memory back (the cheapest to bring back first),
//! foreign processes that shrink the budget, TTLs and KeepAlive, and refusals that name the
//! rule.
//!
//! Each test starts its own supervisor (GPU 0: 10GiB, GPU 1: 4GiB, no reserve, sampled every
//! 100ms unless the test says otherwise) from `arbiter_test_kit::supervisor`, on a
//! multi-threaded runtime (that module says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use arbiter_test_kit::leases::{
    ask, duration, gpu_status, lease_held_by, leases, next_update, status,
};
use arbiter_test_kit::processes::Sleeper;
use arbiter_test_kit::supervisor::{Supervisor, record_usage};
use arbiter_test_kit::waiting::{SOON, eventually, within};
use arbiter_test_kit::{GIB, assert_refused};
use pb::lease_update::Update;
use tonic::Code;

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grant_over_unix_socket_records_the_callers_pid_and_uid() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.unix_client().await;

    let lease = client
        .acquire(ask("unix-test", "", 2 * GIB))
        .await
        .expect("Acquire")
        .into_inner();
    assert!(lease.lease_id.starts_with("lease-"), "{lease:?}");
    assert_eq!(lease.holder, "unix-test");
    assert_eq!(lease.bytes, 2 * GIB);
    assert_eq!(lease.form, pb::LeaseForm::Unary as i32);
    assert_eq!(lease.pid, Some(std::process::id()), "the kernel's peer pid");
    assert_eq!(lease.uid, Some(uid()), "the kernel's peer uid");
    assert!(lease.granted_at.is_some());
    assert!(lease.expires_at.is_some(), "a unary lease has a TTL");
    // Any GPU was allowed: it goes where it fits most tightly, the 4GiB card.
    assert_eq!(lease.gpu_index, 1, "best fit");
    assert!(lease.gpu_uuid.starts_with("GPU-"), "{}", lease.gpu_uuid);

    let listed = leases(&client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].lease_id, lease.lease_id);
    assert_eq!(listed[0].pid, Some(std::process::id()));
    assert_eq!(gpu_status(&client, 1).await.granted_bytes, 2 * GIB);

    let reply = client
        .release(pb::ReleaseRequest {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("Release")
        .into_inner();
    assert_eq!(reply.bytes_returned, 2 * GIB);
    assert!(leases(&client).await.is_empty());
    assert_eq!(gpu_status(&client, 1).await.granted_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grant_over_tcp_has_no_peer_identity() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.tcp_client().await;

    let lease = client
        .acquire(ask("tcp-test", "0", 3 * GIB))
        .await
        .expect("Acquire over TCP")
        .into_inner();
    assert_eq!(lease.holder, "tcp-test");
    assert_eq!(lease.bytes, 3 * GIB);
    assert_eq!(lease.gpu_index, 0);
    assert_eq!(lease.pid, None, "TCP carries no peer pid");
    assert_eq!(lease.uid, None, "TCP carries no peer uid");

    let listed = leases(&client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].lease_id, lease.lease_id);
    assert_eq!(listed[0].pid, None);

    let reply = client
        .release(pb::ReleaseRequest {
            lease_id: lease.lease_id,
        })
        .await
        .expect("Release over TCP")
        .into_inner();
    assert_eq!(reply.bytes_returned, 3 * GIB);
    assert!(leases(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hold_queues_until_the_first_stream_closes() {
    let supervisor = Supervisor::start().await;
    let mut first_client = supervisor.unix_client().await;
    let mut second_client = supervisor.unix_client().await;
    let observer = supervisor.unix_client().await;

    let mut first = first_client
        .hold(ask("first", "0", 8 * GIB))
        .await
        .expect("Hold")
        .into_inner();
    let granted = match next_update(&mut first).await {
        Ok(Some(Update::Granted(lease))) => lease,
        other => panic!("the first Hold should be granted at once, got {other:?}"),
    };
    assert_eq!(granted.form, pb::LeaseForm::Stream as i32);
    assert_eq!(granted.expires_at, None, "a streaming lease has no TTL");
    assert_eq!(granted.pid, Some(std::process::id()));

    let mut second = second_client
        .hold(ask("second", "0", 8 * GIB))
        .await
        .expect("Hold")
        .into_inner();
    match next_update(&mut second).await {
        Ok(Some(Update::Queued(q))) => {
            assert_eq!(q.position, 1, "{q:?}");
            assert_eq!(q.queue_length, 1, "{q:?}");
        }
        other => panic!("the second Hold should be queued, got {other:?}"),
    }
    let queue = status(&observer).await.queue;
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0].holder, "second");
    assert_eq!(queue[0].position, 1);
    assert_eq!(queue[0].bytes, 8 * GIB);

    // Closing the first stream is the whole of giving the lease back.
    drop(first);
    let lease = match next_update(&mut second).await {
        Ok(Some(Update::Granted(lease))) => lease,
        other => panic!("the second Hold should be granted once the first closed, got {other:?}"),
    };
    assert_eq!(lease.holder, "second");
    assert_eq!(lease.gpu_index, 0);

    let listed = leases(&observer).await;
    assert_eq!(listed.len(), 1, "only the second lease is left: {listed:?}");
    assert_eq!(listed[0].lease_id, lease.lease_id);
    assert!(status(&observer).await.queue.is_empty());
    assert_eq!(gpu_status(&observer, 0).await.granted_bytes, 8 * GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_ends_a_wait_with_deadline_exceeded_and_leaves_no_waiter() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.unix_client().await;

    let full = client
        .acquire(ask("fills GPU 0", "0", 10 * GIB))
        .await
        .expect("Acquire all of GPU 0")
        .into_inner();

    let mut request = ask("too late", "0", GIB);
    request.max_wait = Some(duration(Duration::from_millis(300)));
    let result = within(SOON, "for Acquire with max_wait", client.acquire(request)).await;
    assert_refused(result, Code::DeadlineExceeded, &["waited"]);
    assert!(status(&client).await.queue.is_empty(), "the waiter is gone");

    // The same on a Hold stream: queued, then the stream ends with DEADLINE_EXCEEDED.
    let mut request = ask("too late stream", "0", GIB);
    request.max_wait = Some(duration(Duration::from_millis(300)));
    let mut stream = client.hold(request).await.expect("Hold").into_inner();
    match next_update(&mut stream).await {
        Ok(Some(Update::Queued(q))) => assert_eq!(q.position, 1),
        other => panic!("expected Queued, got {other:?}"),
    }
    assert_refused(
        next_update(&mut stream).await,
        Code::DeadlineExceeded,
        &["waited"],
    );
    assert!(status(&client).await.queue.is_empty(), "the waiter is gone");

    // The lease that filled the GPU was never disturbed.
    let listed = leases(&client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].lease_id, full.lease_id);
    assert_eq!(gpu_status(&client, 0).await.granted_bytes, 10 * GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_process_loses_its_lease() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let mut victim = supervisor.spawn_hold("victim", &["--bytes", "6GiB", "--gpu", "0"]);

    let lease = lease_held_by(&client, "victim").await;
    assert_eq!(lease.bytes, 6 * GIB);
    assert_eq!(lease.gpu_index, 0);
    assert_eq!(
        lease.pid,
        Some(victim.pid()),
        "the hold process is the holder"
    );
    assert_eq!(gpu_status(&client, 0).await.granted_bytes, 6 * GIB);

    let exit = victim.kill();
    assert!(!exit.success());
    eventually(SOON, "the dead holder's lease to be freed", || {
        let client = client.clone();
        async move { leases(&client).await.is_empty().then_some(()) }
    })
    .await;
    assert_eq!(gpu_status(&client, 0).await.granted_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preemptible_holder_shrinks_for_a_critical_request() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.unix_client().await;
    let mut batch = supervisor.spawn_hold(
        "batch-job",
        &[
            "--preemptible",
            "--priority",
            "batch",
            "--bytes",
            "8GiB",
            "--gpu",
            "0",
        ],
    );
    lease_held_by(&client, "batch-job").await;

    let mut request = ask("urgent", "0", 6 * GIB);
    request.priority = pb::Priority::Critical as i32;
    let lease = within(SOON, "for the critical Acquire", client.acquire(request))
        .await
        .expect("the critical Acquire is granted")
        .into_inner();
    assert_eq!(lease.bytes, 6 * GIB);
    assert_eq!(lease.gpu_index, 0);

    // 10GiB, no reserve: the batch holder gave back what the critical request lacked.
    let listed = leases(&client).await;
    let shrunk = listed
        .iter()
        .find(|l| l.holder == "batch-job")
        .unwrap_or_else(|| panic!("the batch holder keeps a smaller lease: {listed:?}"));
    assert!(
        shrunk.bytes > 0 && shrunk.bytes <= 4 * GIB,
        "the batch lease should be at most 4GiB now: {shrunk:?}"
    );
    assert!(shrunk.preemptible);
    assert_eq!(shrunk.priority, pb::Priority::Batch as i32);
    assert!(
        gpu_status(&client, 0).await.granted_bytes <= 10 * GIB,
        "never more granted than the GPU has"
    );
    assert!(
        batch.try_wait().is_none(),
        "the shrunk holder keeps running"
    );
    assert!(
        batch.output().contains("shrunk"),
        "the holder reports the shrink: {}",
        batch.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_asks_the_pooled_holder_before_the_one_that_reloads_from_disk() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.unix_client().await;
    let holder = |name: &str, reload: &[&'static str]| {
        let mut args = vec![
            "--preemptible",
            "--priority",
            "batch",
            "--bytes",
            "4GiB",
            "--gpu",
            "0",
        ];
        args.extend_from_slice(reload);
        supervisor.spawn_hold(name, &args)
    };
    let _pooled = holder(
        "pooled",
        &["--reload", "host-pool", "--reload-rate", "24GB"],
    );
    lease_held_by(&client, "pooled").await;
    // Granted later: by recency alone it would be asked first.
    let _disk = holder("from-disk", &["--reload", "disk"]);
    lease_held_by(&client, "from-disk").await;

    let listed = leases(&client).await;
    let reload_of = |name: &str| {
        listed
            .iter()
            .find(|l| l.holder == name)
            .and_then(|l| l.reload)
            .unwrap_or_else(|| panic!("{name}'s reload in ListLeases: {listed:?}"))
    };
    assert_eq!(
        reload_of("pooled"),
        pb::ReloadCost {
            source: pb::ReloadSource::HostPool as i32,
            bytes_per_second: Some(24_000_000_000),
        }
    );
    assert_eq!(reload_of("from-disk").source, pb::ReloadSource::Disk as i32);

    let mut request = ask("urgent", "0", 4 * GIB);
    request.priority = pb::Priority::Critical as i32;
    within(SOON, "for the critical Acquire", client.acquire(request))
        .await
        .expect("the critical Acquire is granted");
    // 10GiB, 8 held: the 2GiB lacking came from the pooled holder alone.
    let listed = leases(&client).await;
    let bytes_of = |name: &str| listed.iter().find(|l| l.holder == name).map(|l| l.bytes);
    assert_eq!(bytes_of("pooled"), Some(2 * GIB), "{listed:?}");
    assert_eq!(bytes_of("from-disk"), Some(4 * GIB), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_ignores_reclaim_is_revoked_after_the_grace() {
    let supervisor = Supervisor::builder()
        .config("[lease]\nreclaim_grace = \"1s\"\n")
        .start()
        .await;
    let mut client = supervisor.unix_client().await;
    let mut stubborn = supervisor.spawn_hold(
        "stubborn",
        &[
            "--preemptible",
            "--priority",
            "batch",
            "--ignore-reclaim",
            "--bytes",
            "8GiB",
            "--gpu",
            "0",
        ],
    );
    let held = lease_held_by(&client, "stubborn").await;

    let mut request = ask("urgent", "0", 6 * GIB);
    request.priority = pb::Priority::Critical as i32;
    let lease = within(SOON, "for the critical Acquire", client.acquire(request))
        .await
        .expect("the critical Acquire is granted once the holder is revoked")
        .into_inner();
    assert_eq!(lease.bytes, 6 * GIB);

    let listed = leases(&client).await;
    assert!(
        listed.iter().all(|l| l.lease_id != held.lease_id),
        "the stubborn lease was revoked: {listed:?}"
    );
    assert_eq!(gpu_status(&client, 0).await.granted_bytes, 6 * GIB);
    // The holder hears of it on its stream and gives up.
    let exit = stubborn.wait(SOON).await;
    assert!(!exit.success(), "a revoked hold exits with an error");
    assert!(
        stubborn.output().contains("revoked"),
        "the holder reports the revocation: {}",
        stubborn.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_process_shrinks_the_budget_until_it_exits() {
    let supervisor = Supervisor::builder().sample_interval("100ms").start().await;
    let mut client = supervisor.unix_client().await;
    let mut foreign = Sleeper::spawn();
    record_usage(supervisor.simulated_dir(), 0, foreign.pid(), 7 * GIB);

    let gpu = eventually(SOON, "a sample that sees the foreign process", || {
        let client = client.clone();
        async move {
            let gpu = gpu_status(&client, 0).await;
            (gpu.unleased_bytes == 7 * GIB).then_some(gpu)
        }
    })
    .await;
    assert_eq!(gpu.used_bytes, 7 * GIB);
    assert_eq!(gpu.budget_bytes, 3 * GIB);
    assert_eq!(gpu.available_bytes, 3 * GIB);
    let process = gpu
        .processes
        .iter()
        .find(|p| p.pid == foreign.pid())
        .unwrap_or_else(|| panic!("the foreign process is listed: {gpu:?}"));
    assert_eq!(process.used_bytes, 7 * GIB);
    assert!(process.lease_id.is_empty(), "it holds no lease");

    let request = || {
        let mut request = ask("after the foreigner", "0", 5 * GIB);
        request.max_wait = Some(duration(Duration::from_millis(500)));
        request
    };
    let result = within(SOON, "for the Acquire", client.acquire(request())).await;
    assert_refused(result, Code::DeadlineExceeded, &[]);

    foreign.kill();
    eventually(SOON, "the budget to come back", || {
        let client = client.clone();
        async move {
            let gpu = gpu_status(&client, 0).await;
            (gpu.unleased_bytes == 0 && gpu.budget_bytes == 10 * GIB).then_some(())
        }
    })
    .await;
    let lease = within(SOON, "for the Acquire", client.acquire(request()))
        .await
        .expect("the Acquire fits once the foreign process is gone")
        .into_inner();
    assert_eq!(lease.bytes, 5 * GIB);
    assert_eq!(lease.gpu_index, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_specific_message() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.unix_client().await;

    assert_refused(
        client.acquire(ask("", "", GIB)).await,
        Code::InvalidArgument,
        &["holder"],
    );
    assert_refused(
        client.acquire(ask("   ", "", GIB)).await,
        Code::InvalidArgument,
        &["holder"],
    );
    assert_refused(
        client.hold(ask("", "", GIB)).await,
        Code::InvalidArgument,
        &["holder"],
    );
    assert_refused(
        client.acquire(ask("zero", "", 0)).await,
        Code::InvalidArgument,
        &["bytes"],
    );
    assert_refused(
        client.acquire(ask("greedy", "", 11 * GIB)).await,
        Code::FailedPrecondition,
        &["10GiB", "11GiB"],
    );
    // Too big for the GPU named, though another GPU could hold it: the message says so.
    assert_refused(
        client.acquire(ask("greedy", "1", 5 * GIB)).await,
        Code::FailedPrecondition,
        &["4GiB", "larger GPU"],
    );
    assert_refused(
        client.acquire(ask("lost", "7", GIB)).await,
        Code::InvalidArgument,
        &["`7`", "GPU-"],
    );
    assert_refused(
        client.acquire(ask("lost", "GPU-nope", GIB)).await,
        Code::InvalidArgument,
        &["GPU-nope"],
    );
    assert_refused(
        client
            .list_leases(pb::ListLeasesRequest { gpu: "7".into() })
            .await,
        Code::InvalidArgument,
        &["`7`"],
    );

    let mut negative = ask("impatient", "", GIB);
    negative.max_wait = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    assert_refused(
        client.acquire(negative).await,
        Code::InvalidArgument,
        &["max_wait", "negative"],
    );
    // Durations that protobuf's rules forbid are refused, not normalized into something
    // the caller did not write.
    for (seconds, nanos) in [(5, -5), (1, 2_000_000_000)] {
        let mut malformed = ask("impatient", "", GIB);
        malformed.max_wait = Some(prost_types::Duration { seconds, nanos });
        assert_refused(
            client.acquire(malformed).await,
            Code::InvalidArgument,
            &["max_wait"],
        );
    }
    // A priority the enum does not name is refused on both forms, naming the values allowed.
    for value in [99, -1] {
        let mut unknown = ask("classless", "", GIB);
        unknown.priority = value;
        assert_refused(
            client.acquire(unknown.clone()).await,
            Code::InvalidArgument,
            &["priority", &value.to_string(), "PRIORITY_CRITICAL"],
        );
        assert_refused(
            client.hold(unknown).await,
            Code::InvalidArgument,
            &["priority"],
        );
    }
    // A reload rate of 0, or one sent in GB/s, is refused saying what to send.
    for rate in [0, 25] {
        let mut bad = ask("reloader", "", GIB);
        bad.reload = Some(pb::ReloadCost {
            source: pb::ReloadSource::HostPool as i32,
            bytes_per_second: Some(rate),
        });
        assert_refused(
            client.acquire(bad).await,
            Code::InvalidArgument,
            &["reload.bytes_per_second", "bytes per second"],
        );
    }
    // Echoed input is cut short: a megabyte where a GPU or a lease id belongs comes back as
    // a short prefix, so the reply fits every client's header limit and reads as the error.
    let huge = "g".repeat(1 << 20);
    for status in [
        assert_refused(
            client.acquire(ask("lost", &huge, GIB)).await,
            Code::InvalidArgument,
            &["unknown GPU", "bytes in all"],
        ),
        assert_refused(
            client
                .release(pb::ReleaseRequest {
                    lease_id: huge.clone(),
                })
                .await,
            Code::NotFound,
            &["no lease", "bytes in all"],
        ),
    ] {
        assert!(
            status.message().len() < 4096,
            "{} bytes",
            status.message().len()
        );
    }
    let mut ttl_on_stream = ask("streamer", "", GIB);
    ttl_on_stream.ttl = Some(duration(Duration::from_secs(30)));
    assert_refused(
        client.hold(ttl_on_stream).await,
        Code::InvalidArgument,
        &["ttl", "streaming"],
    );
    let mut short_ttl = ask("brief", "", GIB);
    short_ttl.ttl = Some(duration(Duration::from_millis(100)));
    assert_refused(
        client.acquire(short_ttl).await,
        Code::InvalidArgument,
        &["ttl"],
    );

    assert_refused(
        client
            .keep_alive(pb::KeepAliveRequest {
                lease_id: "lease-nope".into(),
            })
            .await,
        Code::NotFound,
        &["lease-nope"],
    );
    assert_refused(
        client
            .release(pb::ReleaseRequest {
                lease_id: "lease-nope".into(),
            })
            .await,
        Code::NotFound,
        &["lease-nope"],
    );
    assert_refused(
        client
            .shrink(pb::ShrinkRequest {
                lease_id: "lease-nope".into(),
                bytes: 1,
            })
            .await,
        Code::NotFound,
        &["lease-nope"],
    );

    // Bytes that are no LeaseRequest at all are the caller's mistake: INVALID_ARGUMENT,
    // naming the message expected (a length that runs past the end, a bad wire type).
    for garbage in [vec![0x0a, 0x10, b'x'], vec![0x0f; 12], vec![0xff; 11]] {
        let channel =
            arbiter::endpoint::connect(&arbiter::endpoint::Address::unix(supervisor.socket()))
                .await
                .expect("a channel to the socket");
        assert_refused(
            arbiter_test_kit::raw::unary(
                channel,
                "/arbiter.supervisor.v1.Supervisor/Acquire",
                garbage,
            )
            .await,
            Code::InvalidArgument,
            &["LeaseRequest"],
        );
    }

    // None of it left anything behind.
    assert!(leases(&client).await.is_empty());
    let status = status(&client).await;
    assert!(status.queue.is_empty(), "{:?}", status.queue);
    assert!(status.gpus.iter().all(|g| g.granted_bytes == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_lease_expires_without_keep_alive_and_keep_alive_extends_it() {
    let supervisor = Supervisor::start().await;
    let mut client = supervisor.unix_client().await;
    let mut events = client
        .watch_events(pb::WatchEventsRequest {
            include_samples: false,
        })
        .await
        .expect("WatchEvents")
        .into_inner();

    let mut request = ask("forgetful", "0", GIB);
    request.ttl = Some(duration(Duration::from_secs(1)));
    let forgotten = client.acquire(request).await.expect("Acquire").into_inner();

    let mut request = ask("diligent", "0", GIB);
    request.ttl = Some(duration(Duration::from_secs(2)));
    let kept = client.acquire(request).await.expect("Acquire").into_inner();

    // Renew the second lease well inside its TTL until the first has expired, then for a
    // whole TTL more.
    let mut last_expiry = kept.expires_at.expect("a unary lease expires");
    let renew = || {
        let mut client = client.clone();
        let id = kept.lease_id.clone();
        async move {
            client
                .keep_alive(pb::KeepAliveRequest { lease_id: id })
                .await
                .expect("KeepAlive of a live lease")
                .into_inner()
        }
    };
    within(SOON, "for the unrenewed lease to expire", async {
        loop {
            let renewed = renew().await;
            let expiry = renewed.expires_at.expect("a renewed lease expires");
            assert!(
                (expiry.seconds, expiry.nanos) >= (last_expiry.seconds, last_expiry.nanos),
                "KeepAlive moves the expiry forward"
            );
            last_expiry = expiry;
            let ids: Vec<String> = leases(&client)
                .await
                .into_iter()
                .map(|l| l.lease_id)
                .collect();
            assert!(ids.contains(&kept.lease_id), "the renewed lease lives");
            if !ids.contains(&forgotten.lease_id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        renew().await;
    }
    let listed = leases(&client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].lease_id, kept.lease_id, "renewed past its TTL");

    // The feed says why the first lease ended.
    within(SOON, "for the TTL release event", async {
        loop {
            let event = events
                .message()
                .await
                .expect("the event feed")
                .expect("the event feed stays open");
            if let Some(pb::event::Kind::Released(released)) = event.kind
                && released.lease_id == forgotten.lease_id
            {
                assert_eq!(released.reason, "ttl expired");
                return;
            }
        }
    })
    .await;

    // Left alone, the second lease expires too.
    eventually(SOON, "the second lease to expire", || {
        let client = client.clone();
        async move { leases(&client).await.is_empty().then_some(()) }
    })
    .await;
    assert_refused(
        client
            .keep_alive(pb::KeepAliveRequest {
                lease_id: kept.lease_id.clone(),
            })
            .await,
        Code::NotFound,
        &[],
    );
}
