//! Living under a lease, against the real supervisor binary on a simulated GPU: the service
//! holds its lease, reports NOT_SERVING when the supervisor dies, and takes the lease again
//! when a new supervisor starts.

use arbiter::pb::supervisor::v1 as spb;
use arbiter_test_kit::leases::{Client, leases};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tts::{self, NOT_SERVING, SERVING, SOON};
use arbiter_test_kit::waiting::eventually;

async fn tts_lease(client: &Client) -> Option<spb::Lease> {
    leases(client)
        .await
        .into_iter()
        .find(|l| l.holder.starts_with("arbiter-tts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_held_lost_with_the_supervisor_and_taken_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let tts_socket = dir.path().join("tts.sock");
    let mut supervisor = Supervisor::builder().gpus("10GiB").start().await;
    let supervisor_socket = supervisor.socket().to_str().expect("a UTF-8 temp path");
    let _tts = tts::serve(
        &tts_socket,
        &["--supervisor", supervisor_socket, "--lease-bytes", "2GiB"],
    );

    let client = supervisor.unix_client().await;
    let lease = eventually(SOON, "the service's lease", || tts_lease(&client)).await;
    assert_eq!(lease.bytes, 2 << 30);
    assert_eq!(
        lease.form,
        spb::LeaseForm::Stream as i32,
        "bound to the service's stream"
    );
    eventually(SOON, "SERVING", || async {
        (tts::health(&tts_socket).await == Some(SERVING)).then_some(())
    })
    .await;

    // The supervisor dies: the service keeps answering but says NOT_SERVING.
    supervisor.kill();
    eventually(SOON, "NOT_SERVING", || async {
        (tts::health(&tts_socket).await == Some(NOT_SERVING)).then_some(())
    })
    .await;

    // A new supervisor on the same socket: the lease is taken again, health recovers.
    supervisor.restart().await;
    let client = supervisor.unix_client().await;
    let again = eventually(SOON, "the lease again", || tts_lease(&client)).await;
    assert_eq!(again.bytes, 2 << 30);
    assert_ne!(again.lease_id, lease.lease_id);
    eventually(SOON, "SERVING again", || async {
        (tts::health(&tts_socket).await == Some(SERVING)).then_some(())
    })
    .await;
}
