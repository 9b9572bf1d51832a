//! Whole-system tests of the accounting: no byte is promised twice. The real supervisor on
//! a simulated GPU, with holder processes writing their own use into the simulated process
//! table the way a worker does; bounded waits, no timing asserted beyond lower bounds the
//! test itself imposes.

use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use arbiter_test_kit::events::Feed;
use arbiter_test_kit::leases::{
    ask, duration, gpu_status, hold_stream, lease_held_by, lease_used, leases, next_update, status,
    stays_quiet,
};
use arbiter_test_kit::supervisor::{Supervisor, record_usage};
use arbiter_test_kit::waiting::{SOON, eventually, within};
use arbiter_test_kit::{GIB, assert_refused};
use pb::event::Kind;
use pb::lease_update::Update;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_above_a_lease_is_not_granted_to_anyone_else() {
    // The first case: a 10 GiB stream lease whose process uses 30 GiB of 80 GiB.
    let supervisor = Supervisor::builder().gpus("80GiB").start().await;
    let client = supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    let greedy = supervisor.spawn_hold("greedy", &["--bytes", "10GiB"]);
    lease_held_by(&client, "greedy").await;
    record_usage(supervisor.simulated_dir(), 0, greedy.pid(), 30 * GIB);

    let gpu = eventually(SOON, "the excess charged", || {
        let client = client.clone();
        async move { Some(gpu_status(&client, 0).await).filter(|g| g.excess_bytes == 20 * GIB) }
    })
    .await;
    assert_eq!(gpu.available_bytes, 50 * GIB, "{gpu:?}");
    let lease = lease_held_by(&client, "greedy").await;
    assert!(lease.measured);
    assert_eq!(lease.excess_bytes, Some(20 * GIB));
    let overuse = feed
        .wait_for("an Overuse event", |k| match k {
            Kind::Overuse(o) if o.holder == "greedy" => Some(o.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (overuse.used_bytes, overuse.action.as_str()),
        (30 * GIB, "log")
    );

    // 30 + 65 > 80: the second caller waits instead of being granted.
    let mut second = hold_stream(&client, ask("second", "0", 65 * GIB)).await;
    assert!(matches!(
        next_update(&mut second).await,
        Ok(Some(Update::Queued(_)))
    ));
    stays_quiet(&mut second, Duration::from_millis(500)).await;
    // Its use drops to the lease: granted.
    record_usage(supervisor.simulated_dir(), 0, greedy.pid(), 10 * GIB);
    assert!(
        matches!(next_update(&mut second).await, Ok(Some(Update::Granted(l))) if l.bytes == 65 * GIB)
    );
    feed.wait_for("the wait ended with a grant", |k| match k {
        Kind::WaitEnded(w) if w.holder == "second" && w.reason == "granted" => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrink_answer_is_granted_only_once_the_memory_is_free() {
    // The second case: a preemptible holder answers a critical request with Shrink
    // but goes on using its memory for a while.
    let supervisor = Supervisor::builder().gpus("80GiB").start().await;
    let client = supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    let holder = supervisor.spawn_hold(
        "lipsync",
        &["--bytes", "10GiB", "--preemptible", "--priority", "batch"],
    );
    lease_held_by(&client, "lipsync").await;
    record_usage(supervisor.simulated_dir(), 0, holder.pid(), 10 * GIB);
    eventually(SOON, "its use read", || {
        let client = client.clone();
        async move { lease_used(&client, "lipsync").await }
    })
    .await;

    let mut critical = ask("critical", "0", 75 * GIB);
    critical.priority = pb::Priority::Critical as i32;
    let mut stream = hold_stream(&client, critical).await;
    assert!(matches!(
        next_update(&mut stream).await,
        Ok(Some(Update::Queued(_)))
    ));
    let shrunk = feed
        .wait_for("the holder's Shrink", |k| match k {
            Kind::Released(r) if r.holder == "lipsync" && r.reason == "shrunk" => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(shrunk.returning_bytes, shrunk.bytes, "{shrunk:?}");
    // Still in use: a second of readings later, the critical request still waits, and
    // status says why.
    stays_quiet(&mut stream, Duration::from_secs(1)).await;
    let gpu = gpu_status(&client, 0).await;
    assert_eq!(gpu.returning_bytes, shrunk.bytes, "{gpu:?}");
    let returns = status(&client).await.returns;
    assert!(
        returns
            .iter()
            .any(|r| r.holder == "lipsync" && r.reason == "shrunk"),
        "{returns:?}"
    );

    // The memory is moved off: granted at the reading that shows it.
    let held = leases(&client)
        .await
        .into_iter()
        .find(|l| l.holder == "lipsync")
        .expect("the shrunk lease")
        .bytes;
    record_usage(supervisor.simulated_dir(), 0, holder.pid(), held);
    assert!(
        matches!(next_update(&mut stream).await, Ok(Some(Update::Granted(l))) if l.bytes == 75 * GIB)
    );
    let returned = feed
        .wait_for("the Returned event", |k| match k {
            Kind::Returned(r) if r.holder == "lipsync" => Some(r.clone()),
            _ => None,
        })
        .await;
    let took = returned.took.expect("took");
    assert!(
        took.seconds >= 1,
        "the give-back took at least the second it was held: {took:?}"
    );
    let waited = feed
        .wait_for("the critical wait's end", |k| match k {
            Kind::WaitEnded(w) if w.holder == "critical" => Some(w.clone()),
            _ => None,
        })
        .await;
    assert_eq!(waited.reason, "granted");
    assert!(waited.waited.expect("waited").seconds >= 1);
    // In the feed: the shrink, then the return, then the grant.
    let order: Vec<&str> = feed
        .kinds()
        .iter()
        .filter_map(|k| match k {
            Kind::Released(r) if r.holder == "lipsync" => Some("shrunk"),
            Kind::Returned(r) if r.holder == "lipsync" => Some("returned"),
            Kind::Granted(l) if l.holder == "critical" => Some("granted"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["shrunk", "returned", "granted"]);
    feed.balances(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_sums_to_status_after_a_random_run() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    let me = std::process::id();
    let dir = supervisor.simulated_dir().to_path_buf();
    // A small seeded generator: the run is random but repeatable.
    let mut seed: u64 = 0x005e_eda1_1ce5;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut held: Vec<String> = Vec::new();
    for _ in 0..60 {
        match next(4) {
            0 | 1 => {
                let mut request = ask("random", &next(2).to_string(), (1 + next(6)) * GIB / 2);
                request.max_wait = Some(duration(Duration::from_millis(300)));
                request.ttl = Some(duration(Duration::from_secs(60)));
                if let Ok(lease) = client.clone().acquire(request).await {
                    held.push(lease.into_inner().lease_id);
                }
            }
            2 if !held.is_empty() => {
                let id = held.remove(next(held.len() as u64) as usize);
                let _ = client
                    .clone()
                    .release(pb::ReleaseRequest { lease_id: id })
                    .await;
            }
            2 => {}
            _ => {
                if !held.is_empty() {
                    let id = held[next(held.len() as u64) as usize].clone();
                    if let Some(lease) =
                        leases(&client).await.into_iter().find(|l| l.lease_id == id)
                        && lease.bytes > 1
                    {
                        let bytes = lease.bytes / 2;
                        let _ = client
                            .clone()
                            .shrink(pb::ShrinkRequest {
                                lease_id: id,
                                bytes,
                            })
                            .await;
                    }
                }
                // This process's own use on the card moves too.
                let gpu = next(2) as u32;
                record_usage(&dir, gpu, me, next(4) * GIB / 2);
            }
        }
    }
    // A give-back still in use, so returning bytes are in flight when the sums are taken.
    record_usage(&dir, 0, me, 0);
    let mut request = ask("still-in-use", "0", GIB);
    request.ttl = Some(duration(Duration::from_secs(60)));
    let mut lease = None;
    for _ in 0..20 {
        let mut r = request.clone();
        r.max_wait = Some(duration(Duration::from_secs(2)));
        if let Ok(granted) = client.clone().acquire(r).await {
            lease = Some(granted.into_inner());
            break;
        }
        if let Some(id) = held.pop() {
            let _ = client
                .clone()
                .release(pb::ReleaseRequest { lease_id: id })
                .await;
        }
    }
    let lease = lease.expect("a 1 GiB lease on GPU 0 once others are released");
    let holds: u64 = leases(&client)
        .await
        .iter()
        .filter(|l| l.gpu_index == 0 && l.pid == Some(me))
        .map(|l| l.bytes)
        .sum();
    record_usage(&dir, 0, me, holds);
    eventually(SOON, "its use read", || {
        let client = client.clone();
        let id = lease.lease_id.clone();
        async move {
            leases(&client)
                .await
                .into_iter()
                .find(|l| l.lease_id == id)
                .and_then(|l| l.used_bytes)
                .filter(|&u| u == holds)
        }
    })
    .await;
    client
        .clone()
        .release(pb::ReleaseRequest {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("Release");
    let balanced = feed.balances(&client).await;
    assert!(
        balanced.gpus[0].returning_bytes >= GIB,
        "{:?}",
        balanced.gpus[0]
    );

    // Everything stops: every return is seen, and the feed still balances.
    for gpu in 0..2 {
        record_usage(&dir, gpu, me, 0);
    }
    let end = eventually(SOON, "every return seen", || {
        let client = client.clone();
        async move { Some(status(&client).await).filter(|s| s.returns.is_empty()) }
    })
    .await;
    assert!(end.gpus.iter().all(|g| g.returning_bytes == 0));
    feed.balances(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_leases_are_counted_by_bytes_and_can_be_limited_by_size() {
    let supervisor = Supervisor::builder()
        .config("[lease]\nrequire_visible_above = \"2GiB\"\n")
        .start()
        .await;
    let tcp = supervisor.tcp_client().await;
    let unix = supervisor.unix_client().await;
    assert_refused(
        tcp.clone().acquire(ask("remote", "0", 3 * GIB)).await,
        Code::FailedPrecondition,
        &["2GiB", "Unix socket"],
    );
    let remote = tcp
        .clone()
        .acquire(ask("remote", "0", GIB))
        .await
        .expect("a small TCP lease")
        .into_inner();
    assert!(!remote.measured);
    let local = unix
        .clone()
        .acquire(ask("local", "0", 3 * GIB))
        .await
        .expect("a Unix lease of any size")
        .into_inner();
    assert!(local.measured);
    assert_eq!(gpu_status(&unix, 0).await.unmeasured_bytes, GIB);
    let output = supervisor
        .client_command(&["status"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("counted by bytes alone"), "{text}");
    assert!(
        text.contains("counted by bytes: process not visible"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overusing_holder_is_revoked_where_configured_and_its_memory_stays_out() {
    let supervisor = Supervisor::builder()
        .gpus("10GiB")
        .config("[overuse]\nnormal = \"revoke\"\n")
        .start()
        .await;
    let client = supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    let mut greedy = supervisor.spawn_hold("greedy", &["--bytes", "2GiB"]);
    lease_held_by(&client, "greedy").await;
    record_usage(supervisor.simulated_dir(), 0, greedy.pid(), 5 * GIB);
    let revoked = feed
        .wait_for("the revocation", |k| match k {
            Kind::Revoked(r) if r.holder == "greedy" => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(revoked.returning_bytes, 2 * GIB);
    assert!(revoked.reason.contains("revoke"), "{revoked:?}");
    within(SOON, "the holder to hear of it", async {
        while !greedy.output().contains("revoked") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The process lives on with its 5 GiB: none of it is grantable.
    let gpu = gpu_status(&client, 0).await;
    assert!(gpu.available_bytes <= 5 * GIB, "{gpu:?}");
    greedy.kill();
    eventually(SOON, "the dead holder's memory back", || {
        let client = client.clone();
        async move { Some(gpu_status(&client, 0).await).filter(|g| g.available_bytes == 10 * GIB) }
    })
    .await;
    feed.balances(&client).await;
}
