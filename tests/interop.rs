//! Stock gRPC clients, with their default settings, over the supervisor's Unix socket:
//! grpcurl and Python's grpcio. Both send the socket path as HTTP/2's `:authority`
//! (grpcio %-encoded), which h2 alone would refuse with a stream reset; the listener
//! rewrites it (`arbiter::listen::authority`), and says so once per connection at debug
//! level.
//!
//! The clients come from scripts/setup.sh's venv (`arbiter_test_kit::tools`); the Python
//! stubs are generated from proto/ with grpcio-tools into the test's own directory. Each
//! test starts its own supervisor, on a multi-threaded runtime (the kit's `supervisor`
//! module says why).

use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use arbiter_test_kit::GIB;
use arbiter_test_kit::binaries::workspace_root;
use arbiter_test_kit::leases::leases;
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tools::{grpcurl_ok, python};
use arbiter_test_kit::waiting::{SOON, eventually, within};
use serde_json::Value;

/// What the listener logs for a rewritten connection.
const REWROTE: &str = "rewrote the client's :authority";

/// A supervisor whose log shows the listener's debug lines.
async fn supervisor() -> Supervisor {
    Supervisor::builder()
        .env(
            "RUST_LOG",
            "info,arbiter_supervisor=debug,arbiter::listen=debug",
        )
        .start()
        .await
}

fn rewrites(supervisor: &Supervisor) -> usize {
    supervisor
        .log()
        .lines()
        .filter(|l| l.contains(REWROTE))
        .count()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("no JSON ({e}):\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_calls_over_the_socket_without_an_authority_option() {
    let supervisor = supervisor().await;
    // The kit's own (tonic) clients send a valid authority: nothing to rewrite.
    let ping = supervisor
        .unix_client()
        .await
        .ping(pb::PingRequest {})
        .await;
    assert!(ping.is_ok(), "{ping:?}");
    assert_eq!(rewrites(&supervisor), 0, "{}", supervisor.log());

    let socket = supervisor.socket().to_str().expect("a UTF-8 socket path");
    let services = grpcurl_ok(&["-plaintext", "-unix", socket, "list"]).await;
    let services: Vec<&str> = services.lines().map(str::trim).collect();
    assert!(
        services.contains(&"arbiter.supervisor.v1.Supervisor"),
        "{services:?}"
    );
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");

    let status = json(
        &grpcurl_ok(&[
            "-plaintext",
            "-unix",
            socket,
            "arbiter.supervisor.v1.Supervisor/GetStatus",
        ])
        .await,
    );
    assert_eq!(status["simulated"], true, "{status}");
    assert_eq!(status["gpus"].as_array().map(Vec::len), Some(2), "{status}");

    // One line per grpcurl connection (reflection takes one, the call another), naming
    // the path grpcurl sent.
    let log = supervisor.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(REWROTE)).collect();
    assert!(!lines.is_empty(), "{log}");
    assert!(lines.iter().all(|l| l.contains(socket)), "{lines:?}");
}

/// A grpcio client with `grpc.insecure_channel("unix:" + path)` and nothing else set:
/// Ping, GetStatus, then a streaming Hold until it is granted, ListLeases while it is
/// held, and the lease gone once the stream is cancelled. Prints one JSON object.
const GRPCIO_CLIENT: &str = r#"
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import grpc
from arbiter.supervisor.v1 import supervisor_pb2 as pb, supervisor_pb2_grpc as rpc

channel = grpc.insecure_channel("unix:" + sys.argv[2])
stub = rpc.SupervisorStub(channel)
report = {"pid": os.getpid()}
report["version"] = stub.Ping(pb.PingRequest(), timeout=20).version
status = stub.GetStatus(pb.GetStatusRequest(), timeout=20)
report["simulated"] = status.simulated
report["gpus"] = len(status.gpus)
hold = stub.Hold(pb.LeaseRequest(holder="grpcio", bytes=1 << 30), timeout=30)
first = next(hold)
report["first_update"] = first.WhichOneof("update")
report["lease"] = {
    "id": first.granted.lease_id,
    "bytes": first.granted.bytes,
    "pid": first.granted.pid,
    "form": pb.LeaseForm.Name(first.granted.form),
}
listed = stub.ListLeases(pb.ListLeasesRequest(), timeout=20).leases
report["listed_while_held"] = [l.lease_id for l in listed]
hold.cancel()
deadline = time.monotonic() + 10
while stub.ListLeases(pb.ListLeasesRequest(), timeout=20).leases and time.monotonic() < deadline:
    time.sleep(0.05)
report["listed_after_cancel"] = [l.lease_id for l in stub.ListLeases(pb.ListLeasesRequest(), timeout=20).leases]
channel.close()
print(json.dumps(report))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_default_options_pings_reads_status_and_holds_a_lease() {
    let supervisor = supervisor().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).expect("create the stubs directory");
    let proto = workspace_root().join("proto");
    let generated = within(
        Duration::from_secs(60),
        "for grpc_tools.protoc",
        tokio::process::Command::new(python())
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto.display()))
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(proto.join("arbiter/supervisor/v1/supervisor.proto"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run grpc_tools.protoc");
    assert!(
        generated.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let script = dir.path().join("client.py");
    std::fs::write(&script, GRPCIO_CLIENT).expect("write the client script");

    let output = within(
        Duration::from_secs(90),
        "for the grpcio client",
        tokio::process::Command::new(python())
            .arg(&script)
            .arg(&stubs)
            .arg(supervisor.socket())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run the grpcio client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the grpcio client failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json(stdout.trim());

    let version = supervisor
        .unix_client()
        .await
        .ping(pb::PingRequest {})
        .await
        .expect("Ping")
        .into_inner()
        .version;
    assert_eq!(report["version"], version.as_str(), "{report}");
    assert_eq!(report["simulated"], true, "{report}");
    assert_eq!(report["gpus"], 2, "{report}");
    assert_eq!(report["first_update"], "granted", "{report}");
    let lease = &report["lease"];
    assert_eq!(lease["bytes"], GIB, "{report}");
    assert_eq!(lease["form"], "LEASE_FORM_STREAM", "{report}");
    // The supervisor read grpcio's pid from the socket, through the rewriting wrapper.
    assert_eq!(lease["pid"], report["pid"], "{report}");
    let id = lease["id"].as_str().expect("a lease id");
    assert!(id.starts_with("lease-"), "{report}");
    assert_eq!(
        report["listed_while_held"],
        serde_json::json!([id]),
        "{report}"
    );
    assert_eq!(
        report["listed_after_cancel"],
        serde_json::json!([]),
        "{report}"
    );

    let client = supervisor.unix_client().await;
    eventually(SOON, "the cancelled Hold's lease to be gone", || async {
        leases(&client).await.is_empty().then_some(())
    })
    .await;
    // One channel, one connection, many requests: one log line.
    assert_eq!(rewrites(&supervisor), 1, "{}", supervisor.log());
}
