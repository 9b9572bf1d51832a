//! Living under a lease, against the real supervisor binary on a simulated GPU: the service
//! holds its lease, reports NOT_SERVING when the supervisor dies, and takes the lease again
//! when a new supervisor starts.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as spb;
use support::{Killed, eventually, supervisor};
use tonic_health::pb::health_client::HealthClient;

async fn tts_lease(socket: &Path) -> Option<spb::Lease> {
    let channel = connect(&Address::unix(socket)).await.ok()?;
    let leases = spb::supervisor_client::SupervisorClient::new(channel)
        .list_leases(spb::ListLeasesRequest::default())
        .await
        .ok()?
        .into_inner()
        .leases;
    leases
        .into_iter()
        .find(|l| l.holder.starts_with("arbiter-tts"))
}

async fn tts_health(socket: &Path) -> Option<i32> {
    let channel = connect(&Address::unix(socket)).await.ok()?;
    let reply = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "arbiter.tts.v1.Tts".into(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status)
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_held_lost_with_the_supervisor_and_taken_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let supervisor_socket = dir.path().join("supervisor.sock");
    let tts_socket = dir.path().join("tts.sock");
    let mut first = supervisor(dir.path(), "");
    let _tts = Killed(
        Command::new(env!("CARGO_BIN_EXE_arbiter-tts"))
            .arg("serve")
            .arg("--socket")
            .arg(&tts_socket)
            .arg("--supervisor")
            .arg(&supervisor_socket)
            .args(["--lease-bytes", "2GiB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("arbiter-tts starts"),
    );

    let lease = eventually("the service's lease", || tts_lease(&supervisor_socket)).await;
    assert_eq!(lease.bytes, 2 << 30);
    assert_eq!(
        lease.form,
        spb::LeaseForm::Stream as i32,
        "bound to the service's stream"
    );
    eventually("SERVING", || async {
        (tts_health(&tts_socket).await == Some(SERVING)).then_some(())
    })
    .await;

    // The supervisor dies: the service keeps answering but says NOT_SERVING.
    let _ = first.0.kill();
    let _ = first.0.wait();
    eventually("NOT_SERVING", || async {
        (tts_health(&tts_socket).await == Some(NOT_SERVING)).then_some(())
    })
    .await;

    // A new supervisor on the same socket: the lease is taken again, health recovers.
    let _second = supervisor(dir.path(), "");
    let again = eventually("the lease again", || tts_lease(&supervisor_socket)).await;
    assert_eq!(again.bytes, 2 << 30);
    assert_ne!(again.lease_id, lease.lease_id);
    eventually("SERVING again", || async {
        (tts_health(&tts_socket).await == Some(SERVING)).then_some(())
    })
    .await;
}
