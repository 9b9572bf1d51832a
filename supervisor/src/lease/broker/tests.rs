//! The broker's routing: holders hear about their own requests, and requests end with
//! their holders.

use super::*;
use crate::lease::{Form, Priority};

const GIB: u64 = 1 << 30;

fn broker(capacity: u64) -> Arc<Broker> {
    Broker::new(
        vec![GpuIdentity {
            index: 0,
            uuid: "GPU-test".into(),
            name: "test".into(),
            capacity,
        }],
        0,
        Policy {
            aging: Duration::from_secs(30),
            reclaim_grace: Duration::from_secs(5),
            fresh_within: None,
            return_timeout: Duration::from_secs(10),
            tolerance: 0,
            overuse: [crate::lease::Action::Log; 4],
        },
        Limits {
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            max_wait: Duration::from_secs(3600),
            visible_above: None,
        },
        EventFeed::new(64),
    )
}

fn ask(bytes: u64, form: Form, peer: Option<Peer>, max_wait: Option<Duration>) -> Ask {
    Ask {
        holder: "t".into(),
        gpu: GpuChoice::Any,
        bytes,
        priority: Priority::Normal,
        preemptible: false,
        max_wait,
        form,
        peer,
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
async fn another_users_lease_cannot_be_released() {
    let broker = broker(10 * GIB);
    let unary = Form::Unary {
        ttl: Duration::from_secs(300),
    };
    let lease = broker
        .acquire(ask(
            GIB,
            unary,
            Some(Peer {
                pid: std::process::id(),
                uid: 4242,
            }),
            None,
        ))
        .await
        .unwrap();
    let stranger = Some(Peer { pid: 1, uid: 4343 });
    if broker.own_uid != 4343 {
        assert!(matches!(
            broker.release(&lease.id, stranger),
            Err(LeaseError::NotOwner(_))
        ));
    }
    assert_eq!(
        broker.release(&lease.id, Some(Peer { pid: 1, uid: 4242 })),
        Ok(GIB)
    );
}
