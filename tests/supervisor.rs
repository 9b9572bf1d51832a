//! Whole-system tests of `arbiter-supervisor`: the real binary on simulated GPUs, driven over
//! its Unix socket and TCP with the generated client, and through its own CLI.
//!
//! Each test starts its own supervisor (GPU 0: 10GiB, GPU 1: 4GiB, no reserve, sampled every
//! 100ms unless the test says otherwise). Waits are bounded by generous timeouts; nothing
//! asserts how fast something happened.
//!
//! The tests run on a multi-threaded runtime on purpose: a `Supervisor` is stopped in its
//! `Drop`, which blocks the test's thread, and its HTTP/2 graceful shutdown waits for each
//! client connection to answer a PING, so the test's connections must keep being served by
//! other threads meanwhile (on a current-thread runtime every stop would take the 3s grace).

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use pb::lease_update::Update;
use support::{
    GIB, Sleeper, Supervisor, ask, assert_refused, duration, eventually, gpu_status, lease_held_by,
    leases, next_update, record_usage, run_to_end, status, within,
};
use tonic::Code;

/// Long enough for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(10);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_revokes_streams_exits_cleanly_and_a_new_supervisor_takes_the_socket() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("arbiter.sock");
    let mut old = Supervisor::builder().socket(&socket).start().await;
    let mut client = old.unix_client().await;
    let mut stream = client
        .hold(ask("survivor", "0", 4 * GIB))
        .await
        .expect("Hold")
        .into_inner();
    match next_update(&mut stream).await {
        Ok(Some(Update::Granted(_))) => {}
        other => panic!("expected a grant, got {other:?}"),
    }

    // Read the stream while the supervisor shuts down, so the connection keeps moving.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(update)) => seen.push(Ok(update.update)),
                Ok(None) => return seen,
                Err(status) => {
                    seen.push(Err(status));
                    return seen;
                }
            }
        }
    });
    let exit = old.terminate().await;
    assert!(
        exit.success(),
        "SIGTERM is a clean stop: {exit}; log:\n{}",
        old.log()
    );
    let seen = within(SOON, "for the stream to end", reader)
        .await
        .expect("the stream reader");
    let told = seen.iter().any(|item| match item {
        Ok(Some(Update::Revoked(revoked))) => !revoked.reason.is_empty(),
        Err(status) => status.code() == Code::Unavailable,
        _ => false,
    });
    assert!(
        told,
        "the holder hears of the shutdown (Revoked or UNAVAILABLE): {seen:?}"
    );
    assert!(!socket.exists(), "the socket is removed on a clean stop");
    drop(client);

    let new = Supervisor::builder().socket(&socket).start().await;
    let lease = new
        .unix_client()
        .await
        .acquire(ask("after restart", "0", 4 * GIB))
        .await
        .expect("Acquire on the new supervisor")
        .into_inner();
    assert_eq!(lease.bytes, 4 * GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_left_by_sigkill_does_not_stop_the_next_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("arbiter.sock");
    let mut old = Supervisor::builder().socket(&socket).start().await;
    old.kill();
    let meta = std::fs::symlink_metadata(&socket).expect("SIGKILL leaves the socket file");
    assert!(meta.file_type().is_socket());

    let new = Supervisor::builder().socket(&socket).start().await;
    let lease = new
        .unix_client()
        .await
        .acquire(ask("after crash", "", GIB))
        .await
        .expect("Acquire on the new supervisor")
        .into_inner();
    assert_eq!(lease.bytes, GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_a_live_socket_refuses_to_start() {
    let first = Supervisor::builder().without_tcp().start().await;
    let mut command = support::command();
    command
        .arg("--config")
        .arg(first.config_path())
        .arg("--socket")
        .arg(first.socket())
        .arg("--simulated-gpus")
        .arg("1GiB")
        .arg("--simulated-dir")
        .arg(first.dir().join("second-simulated"));
    let output = run_to_end(command, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("already answering"), "stderr:\n{stderr}");
    // The first one is untouched.
    let reply = first
        .unix_client()
        .await
        .ping(pb::PingRequest {})
        .await
        .expect("the first supervisor still answers");
    assert!(!reply.into_inner().version.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gpus_or_simulation_the_supervisor_fails_fast_and_says_how_to_simulate() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let socket = dir.path().join("arbiter.sock");
    let mut command = support::command();
    command
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .arg("--simulated-dir")
        .arg(dir.path().join("simulated"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    let mut child = command.spawn().expect("spawn arbiter-supervisor");
    let exit = support::wait_for_exit(&mut child, Duration::from_secs(15));
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let Some(exit) = exit else {
        let _ = child.kill();
        let _ = child.wait();
        if stderr.contains("listening") {
            eprintln!("skipped: NVML found real GPUs on this machine, so the supervisor serves");
            return;
        }
        panic!("the supervisor neither served nor exited; stderr:\n{stderr}");
    };
    if exit.success() || stderr.contains("listening") {
        eprintln!("skipped: NVML is present on this machine; stderr:\n{stderr}");
        return;
    }
    assert!(stderr.contains("--simulated-gpus"), "stderr:\n{stderr}");
    assert!(stderr.contains("NVML"), "stderr:\n{stderr}");
    assert!(!socket.exists(), "nothing was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_effective_settings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();

    let check = |config: &std::path::Path, args: &[&str], env: &[(&str, &str)]| {
        let mut command = support::command();
        command.arg("check-config").arg("--config").arg(config);
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        run_to_end(command, Duration::from_secs(20))
    };

    let output = check(&empty, &["--simulated-gpus", "80GiB,24GiB"], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: toml::Table = toml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check-config prints TOML ({e}):\n{stdout}"));
    assert_eq!(
        printed["gpu"]["simulated"],
        toml::Value::Array(vec!["80GiB".into(), "24GiB".into()]),
        "{stdout}"
    );
    // And where things go, as comments: the workers' directory and kernel cache among them.
    assert!(
        stdout.contains("workers' working directory:") && stdout.contains("/worker\n"),
        "{stdout}"
    );
    assert!(stdout.contains("workers' CUDA kernel cache:"), "{stdout}");
    // Whatever the layout, the array reads `simulated = ["80GiB", "24GiB"]`.
    let squeezed: String = stdout.split_whitespace().collect();
    assert!(
        squeezed.contains(r#"simulated=["80GiB","24GiB""#),
        "{stdout}"
    );
    // What it prints is itself a valid config that means the same.
    let printed_path = dir.path().join("printed.toml");
    std::fs::write(&printed_path, &stdout).unwrap();
    let again = check(&printed_path, &[], &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gpu]\nreserv = \"1GiB\"\n").unwrap();
    let output = check(&bad, &[], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an unknown key is refused");
    assert!(stderr.contains("reserv"), "the key is named: {stderr}");

    let output = check(&empty, &[], &[("ARBITER_RESERVE", "2GiB")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#"reserve = "2GiB""#), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_created_with_mode_0660() {
    let supervisor = Supervisor::builder().without_tcp().start().await;
    let meta = std::fs::symlink_metadata(supervisor.socket()).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "mode {:o}",
        meta.permissions().mode()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_and_leases_commands_show_what_is_lent() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let _holder = supervisor.spawn_hold("cli-holder", &["--bytes", "3GiB", "--gpu", "0"]);
    let lease = lease_held_by(&client, "cli-holder").await;

    let output = run_to_end(
        supervisor.client_command(&["leases"]),
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&lease.lease_id), "{stdout}");
    assert!(stdout.contains("cli-holder"), "{stdout}");
    assert!(stdout.contains("3GiB"), "{stdout}");

    let output = run_to_end(
        supervisor.client_command(&["status"]),
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("simulated GPUs"), "{stdout}");
    assert!(stdout.contains("Simulated GPU (10GiB)"), "{stdout}");
    assert!(stdout.contains("cli-holder"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_record_writes_the_samples_that_plot_draws() {
    let supervisor = Supervisor::builder().sample_interval("100ms").start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("samples.csv");
    let mut recorder = supervisor
        .client_command(&["events", "--record", csv.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the recorder");
    let mut foreign = Sleeper::spawn();
    let pid = foreign.pid();
    record_usage(supervisor.simulated_dir(), 0, pid, 3 * GIB);
    let present = format!("pid {pid} (no lease),{}", 3 * GIB);
    let read = || std::fs::read_to_string(&csv).unwrap_or_default();
    eventually(SOON, "the foreign process in the recording", || {
        let found = read().contains(&present);
        async move { found.then_some(()) }
    })
    .await;
    foreign.kill();
    let gone = format!("pid {pid} (no lease),0");
    eventually(SOON, "its memory back to 0 in the recording", || {
        let found = read().contains(&gone);
        async move { found.then_some(()) }
    })
    .await;
    let _ = recorder.kill();
    let _ = recorder.wait();

    let svg = dir.path().join("vram.svg");
    let output = run_to_end(
        {
            let mut plot = support::command();
            plot.arg("plot")
                .arg("--samples")
                .arg(&csv)
                .arg("--out")
                .arg(&svg);
            plot
        },
        Duration::from_secs(20),
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        read().lines().take(8).collect::<Vec<_>>().join("\n")
    );
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawing.contains(&format!("pid {pid} (no lease)")),
        "the legend names it"
    );
}
