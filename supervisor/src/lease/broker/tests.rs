//! The broker's routing: holders hear about their own requests, and requests end with
//! their holders.

use super::*;
use crate::lease::{Form, Priority, Quota};

const GIB: u64 = 1 << 30;

fn broker(capacity: u64) -> Arc<Broker> {
    test_broker(capacity, 0)
}

fn ask(bytes: u64, form: Form, peer: Option<Peer>, max_wait: Option<Duration>) -> Ask {
    Ask {
        holder: "t".into(),
        gpu: GpuChoice::Any,
        bytes,
        priority: Priority::Normal,
        preemptible: false,
        reload: Default::default(),
        max_wait,
        form,
        peer,
        owner: String::new(),
        quota: None,
    }
}

#[tokio::test]
async fn dropping_a_holding_frees_its_lease_and_wakes_the_next() {
    let broker = broker(10 * GIB);
    let mut first = broker.hold(ask(8 * GIB, Form::Stream, None, None)).unwrap();
    assert!(matches!(first.notes.recv().await, Some(Note::Granted(_))));
    let mut second = broker.hold(ask(8 * GIB, Form::Stream, None, None)).unwrap();
    assert!(matches!(
        second.notes.recv().await,
        Some(Note::Queued { position: 1, .. })
    ));
    drop(first);
    assert!(matches!(second.notes.recv().await, Some(Note::Granted(_))));
    assert_eq!(broker.leases(None).len(), 1);
}

#[tokio::test]
async fn a_unary_wait_ends_with_deadline_exceeded() {
    let broker = broker(10 * GIB);
    let _held = broker.hold(ask(8 * GIB, Form::Stream, None, None)).unwrap();
    let ticker = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                broker.tick();
            }
        })
    };
    let unary = Form::Unary {
        ttl: Duration::from_secs(30),
    };
    let result = broker
        .acquire(ask(4 * GIB, unary, None, Some(Duration::from_millis(50))))
        .await;
    ticker.abort();
    assert!(
        matches!(result, Err(LeaseError::DeadlineExceeded { .. })),
        "{result:?}"
    );
    assert!(
        broker.status().1.is_empty(),
        "the waiter must leave the queue"
    );
}

#[tokio::test]
async fn a_unary_lease_outlives_its_caller_until_its_ttl() {
    // grpcurl takes a lease and exits: the lease is bound to its TTL, not to the process.
    let broker = broker(10 * GIB);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let peer = Peer {
        pid: child.id(),
        uid: 0,
    };
    child.wait().unwrap();
    let unary = Form::Unary {
        ttl: Duration::from_millis(200),
    };
    broker
        .acquire(ask(4 * GIB, unary, Some(peer), None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.tick();
    assert_eq!(
        broker.leases(None).len(),
        1,
        "the lease must survive its caller"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.tick();
    assert!(broker.leases(None).is_empty(), "the TTL must end it");
}

#[tokio::test]
async fn another_identitys_lease_cannot_be_changed_but_an_operator_may() {
    let broker = broker(10 * GIB);
    let unary = Form::Unary {
        ttl: Duration::from_secs(300),
    };
    let actor = |owner: &str, operator| Actor {
        owner: owner.into(),
        operator,
    };
    let take = |owner: &str| Ask {
        owner: owner.into(),
        ..ask(GIB, unary, None, None)
    };
    let lease = broker.acquire(take("uid:4242")).await.unwrap();
    let stranger = actor("uid:4343", false);
    assert!(matches!(
        broker.release(&lease.id, &stranger),
        Err(LeaseError::NotOwner(_))
    ));
    assert!(matches!(
        broker.keep_alive(&lease.id, &stranger),
        Err(LeaseError::NotOwner(_))
    ));
    assert!(matches!(
        broker.shrink(&lease.id, 1, &stranger),
        Err(LeaseError::NotOwner(_))
    ));
    assert_eq!(
        broker.release(&lease.id, &actor("uid:4242", false)),
        Ok(GIB)
    );
    let other = broker.acquire(take("token:ci")).await.unwrap();
    assert_eq!(broker.release(&other.id, &actor("uid:0", true)), Ok(GIB));
}

#[tokio::test]
async fn quotas_bound_each_owners_leases_bytes_and_waits() {
    let broker = broker(10 * GIB);
    let quota = Quota {
        leases: 2,
        bytes: Some(3 * GIB),
        waiting: 1,
    };
    let take = |owner: &str, bytes| Ask {
        owner: owner.into(),
        quota: Some(quota),
        ..ask(bytes, Form::Stream, None, None)
    };
    let _a = broker.hold(take("token:a", GIB)).unwrap();
    let refused = broker.hold(take("token:a", 3 * GIB)).err();
    assert!(
        matches!(refused, Some(LeaseError::OverQuota { key: "bytes", .. })),
        "{refused:?}"
    );
    let _b = broker.hold(take("token:a", GIB)).unwrap();
    let refused = broker.hold(take("token:a", GIB)).err();
    assert!(
        matches!(refused, Some(LeaseError::OverQuota { key: "leases", .. })),
        "{refused:?}"
    );
    // Another owner has its own counts: it fills the card, then waits once.
    let _c = broker.hold(take("token:c", GIB)).unwrap();
    let _d = broker.hold(take("token:d", 3 * GIB)).unwrap();
    let _e = broker.hold(take("token:e", 3 * GIB)).unwrap();
    let _wait = broker.hold(take("token:c", 2 * GIB)).unwrap();
    let refused = broker.hold(take("token:c", GIB)).err();
    assert!(
        matches!(refused, Some(LeaseError::OverQuota { key: "waiting", .. })),
        "{refused:?}"
    );
    // Requests without a quota (the supervisor's own, for jobs) are not counted.
    let _job = broker.hold(ask(GIB, Form::Stream, None, None)).unwrap();
}
