//! Every caller has an identity, and acts only on what it owns: the real supervisor over
//! TLS with client certificates and bearer tokens, over plaintext TCP where the operator
//! asked for it, and over the Unix socket from a second uid; each quota hit.
//!
//! Certificates are made per test (`arbiter_test_kit::tls`). The second-uid test runs a
//! client as `nobody`, so it needs root (as CI has); without it, it fails and says so.
//! Each test starts its own supervisor, on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::jobs::{BASE_CONFIG, request};
use arbiter_test_kit::leases::ask;
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tls::{Bearer, Pair, Pki, tokens_file};
use arbiter_test_kit::waiting::within;
use arbiter_test_kit::{GIB, assert_refused, tools};
use pb::supervisor_client::SupervisorClient;
use tonic::Code;
use tonic::transport::Channel;
use vpb::video_client::VideoClient;

const CI_TOKEN: &str = "ci-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-fedcba9876543210";
const VIEWER_TOKEN: &str = "viewer-0000";

/// A supervisor serving TCP with TLS, its CA and two client certificates.
struct Secured {
    supervisor: Supervisor,
    pki: Pki,
    alice: Pair,
    bob: Pair,
    _dir: tempfile::TempDir,
}

async fn secured(extra_config: &str) -> Secured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pki = Pki::new(&dir.path().join("pki"));
    let server = pki.server();
    let (alice, bob) = (pki.client("alice"), pki.client("bob"));
    let tokens = dir.path().join("tokens");
    tokens_file(
        &tokens,
        &[
            ("ci", CI_TOKEN),
            ("admin", ADMIN_TOKEN),
            ("viewer", VIEWER_TOKEN),
        ],
    );
    let config = format!(
        "{BASE_CONFIG}[auth]\ntokens_file = {:?}\noperators = [\"token:admin\"]\nholders = [\"unix\", \"cert:alice\", \"cert:bob\", \"token:ci\"]\nsubmitters = [\"unix\", \"cert:alice\", \"cert:bob\"]\n{extra_config}{}",
        tokens.display().to_string(),
        pki.server_config(&server)
    );
    let supervisor = Supervisor::builder()
        .gpus("10GiB")
        .config(&config)
        .start()
        .await;
    Secured {
        supervisor,
        pki,
        alice,
        bob,
        _dir: dir,
    }
}

impl Secured {
    async fn channel(&self, who: Option<&Pair>) -> Channel {
        self.pki
            .channel(self.supervisor.port(), who)
            .await
            .expect("a TLS channel")
    }

    async fn client(&self, who: Option<&Pair>) -> SupervisorClient<Channel> {
        SupervisorClient::new(self.channel(who).await)
    }

    async fn token(
        &self,
        token: &str,
    ) -> SupervisorClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>> {
        SupervisorClient::with_interceptor(self.channel(None).await, Bearer::new(token))
    }
}

fn unary(holder: &str, bytes: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        ttl: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..ask(holder, "", bytes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_no_identity_changes_nothing_and_each_identity_acts_on_its_own_leases() {
    let s = secured("").await;

    // No certificate, no token: nothing but health and reflection.
    let mut anonymous = s.client(None).await;
    assert_refused(
        anonymous.acquire(unary("anon", GIB)).await,
        Code::Unauthenticated,
        &["client certificate", "Bearer"],
    );
    assert_refused(
        anonymous.get_status(pb::GetStatusRequest {}).await,
        Code::Unauthenticated,
        &["identity"],
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel(None).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no identity");
    assert_eq!(serving.into_inner().status, 1, "SERVING");
    // A certificate from a CA the server does not know gets no connection at all.
    let stranger = s.pki.stranger("mallory");
    let refused = match s.pki.channel(s.supervisor.port(), Some(&stranger)).await {
        Err(_) => true,
        Ok(channel) => SupervisorClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a certificate of an unknown CA is refused");
    // Plaintext to the TLS port gets nowhere either.
    let plain = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        s.supervisor.port()
    ))
    .unwrap()
    .connect_timeout(Duration::from_secs(5))
    .connect()
    .await;
    if let Ok(channel) = plain {
        assert!(
            within(
                Duration::from_secs(15),
                "a plaintext call to the TLS port",
                SupervisorClient::new(channel).get_status(pb::GetStatusRequest {})
            )
            .await
            .is_err()
        );
    }

    // Alice (a certificate) takes a lease; the supervisor knows her by name.
    let mut alice = s.client(Some(&s.alice)).await;
    let lease = alice
        .acquire(unary("alice's model", GIB))
        .await
        .expect("alice acquires")
        .into_inner();
    assert_eq!(lease.owner, "cert:alice");
    let status = alice
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.caller.as_str(), status.operator),
        ("cert:alice", false)
    );
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);

    // Bob (another certificate) may not touch it, nor see it.
    let mut bob = s.client(Some(&s.bob)).await;
    let id = lease.lease_id.clone();
    assert_refused(
        bob.keep_alive(pb::KeepAliveRequest {
            lease_id: id.clone(),
        })
        .await,
        Code::PermissionDenied,
        &["another identity"],
    );
    assert_refused(
        bob.shrink(pb::ShrinkRequest {
            lease_id: id.clone(),
            bytes: 1,
        })
        .await,
        Code::PermissionDenied,
        &["another identity"],
    );
    assert_refused(
        bob.release(pb::ReleaseRequest {
            lease_id: id.clone(),
        })
        .await,
        Code::PermissionDenied,
        &["another identity"],
    );
    let seen = bob
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(seen.is_empty(), "bob sees only his own leases: {seen:?}");
    assert_refused(
        bob.watch_events(pb::WatchEventsRequest::default()).await,
        Code::PermissionDenied,
        &["operator"],
    );

    // A token names its caller too; a wrong one is no one.
    let mut ci = s.token(CI_TOKEN).await;
    let ci_lease = ci.acquire(unary("ci", GIB)).await.unwrap().into_inner();
    assert_eq!(ci_lease.owner, "token:ci");
    assert_refused(
        s.token("not-a-token")
            .await
            .acquire(unary("guess", GIB))
            .await,
        Code::Unauthenticated,
        &["not one of this server's tokens"],
    );
    // An identity with no role gets nothing, and is told where roles are given.
    assert_refused(
        s.token(VIEWER_TOKEN)
            .await
            .get_status(pb::GetStatusRequest {})
            .await,
        Code::PermissionDenied,
        &["token:viewer", "[auth]"],
    );

    // The operator sees every lease, follows events, and may release anyone's.
    let mut admin = s.token(ADMIN_TOKEN).await;
    let all = admin
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(all.len(), 2, "{all:?}");
    admin
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("operators follow the event feed");
    let returned = admin
        .release(pb::ReleaseRequest { lease_id: id })
        .await
        .expect("an operator releases alice's lease")
        .into_inner();
    assert_eq!(returned.bytes_returned, GIB);
    // And alice's own release of ci's lease is refused as well.
    assert_refused(
        alice
            .release(pb::ReleaseRequest {
                lease_id: ci_lease.lease_id,
            })
            .await,
        Code::PermissionDenied,
        &["another identity"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_presents_a_client_certificate_or_a_token() {
    let s = secured("").await;
    let address = format!("localhost:{}", s.supervisor.port());
    let ca = s.pki.ca().display().to_string();
    let cert = s.alice.cert.display().to_string();
    let key = s.alice.key.display().to_string();
    let method = "arbiter.supervisor.v1.Supervisor/GetStatus";
    let status: serde_json::Value = serde_json::from_str(
        &tools::grpcurl_ok(&[
            "-cacert", &ca, "-cert", &cert, "-key", &key, &address, method,
        ])
        .await,
    )
    .expect("JSON");
    assert_eq!(status["caller"], "cert:alice", "{status}");
    let bearer = format!("authorization: Bearer {CI_TOKEN}");
    let status: serde_json::Value = serde_json::from_str(
        &tools::grpcurl_ok(&["-cacert", &ca, "-H", &bearer, &address, method]).await,
    )
    .expect("JSON");
    assert_eq!(status["caller"], "token:ci", "{status}");
    // Reflection needs no identity, so grpcurl can discover the API first.
    let services = tools::grpcurl_ok(&["-cacert", &ca, &address, "list"]).await;
    assert!(
        services.contains("arbiter.supervisor.v1.Supervisor"),
        "{services}"
    );
    let anonymous = tools::grpcurl_output(&["-cacert", &ca, &address, method]).await;
    assert!(!anonymous.status.success());
    let text = String::from_utf8_lossy(&anonymous.stderr);
    assert!(text.contains("Unauthenticated"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_seen_and_cancelled_only_by_its_submitter_or_an_operator() {
    let s = secured("").await;
    let mut alice = VideoClient::new(s.channel(Some(&s.alice)).await);
    let mut bob = VideoClient::new(s.channel(Some(&s.bob)).await);
    let job = alice
        .submit(request("", "alice's cat", 0))
        .await
        .expect("alice submits")
        .into_inner()
        .job_id;
    let by_id = || vpb::GetJobRequest {
        job_id: job.clone(),
    };
    assert_refused(
        bob.get(by_id()).await,
        Code::PermissionDenied,
        &["another identity"],
    );
    assert_refused(
        bob.cancel(by_id()).await,
        Code::PermissionDenied,
        &["another identity"],
    );
    assert_refused(
        bob.watch(by_id()).await,
        Code::PermissionDenied,
        &["another identity"],
    );
    let listed = bob
        .list(vpb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(listed.is_empty(), "bob lists only his own jobs: {listed:?}");
    alice.get(by_id()).await.expect("alice sees her job");
    // The CI token may hold leases but not submit jobs.
    let mut ci = VideoClient::with_interceptor(s.channel(None).await, Bearer::new(CI_TOKEN));
    assert_refused(
        ci.submit(request("", "a dog", 0)).await,
        Code::PermissionDenied,
        &["submitter"],
    );
    // The operator (here over the Unix socket, as root) sees it.
    let mut local = s.supervisor.video_client().await;
    let jobs = local
        .list(vpb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.iter().any(|j| j.job_id == job), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_tcp_needs_the_operators_word_and_is_one_identity_that_owns_nothing_else() {
    // Without --insecure-tcp or TLS, a TCP address is refused at start-up.
    let dir = tempfile::tempdir().unwrap();
    let mut refused = arbiter_test_kit::supervisor::command()
        .args([
            "--simulated-gpus",
            "4GiB",
            "--listen",
            "127.0.0.1:0",
            "--socket",
        ])
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the supervisor");
    let status = arbiter_test_kit::processes::wait_for_exit(&mut refused, Duration::from_secs(20))
        .expect("it exits at once");
    let output = refused.wait_with_output().expect("its output");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(
        text.contains("needs TLS") && text.contains("--insecure-tcp"),
        "{text}"
    );
    assert!(!dir.path().join("s.sock").exists(), "no socket left behind");

    // With it (the kit passes it), plaintext callers are `insecure-tcp`, and warned of.
    let supervisor = Supervisor::start().await;
    let mut tcp = supervisor.tcp_client().await;
    let status = tcp
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.caller, "insecure-tcp");
    assert!(
        status.warnings.iter().any(|w| w.contains("plaintext")),
        "{:?}",
        status.warnings
    );
    // A lease taken over the Unix socket cannot be released, renewed or shrunk from TCP.
    let mut local = supervisor.unix_client().await;
    let lease = local
        .acquire(unary("local", GIB))
        .await
        .unwrap()
        .into_inner();
    for result in [
        tcp.release(pb::ReleaseRequest {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .map(|_| ()),
        tcp.keep_alive(pb::KeepAliveRequest {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .map(|_| ()),
        tcp.shrink(pb::ShrinkRequest {
            lease_id: lease.lease_id.clone(),
            bytes: 1,
        })
        .await
        .map(|_| ()),
    ] {
        assert_refused(result, Code::PermissionDenied, &["another identity"]);
    }
    let seen = tcp
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(seen.is_empty(), "{seen:?}");
    // Nor can a job submitted over the socket be cancelled from TCP.
    let mut local_video = supervisor.video_client().await;
    let job = local_video
        .submit(request("", "a cat", 0))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut tcp_video = VideoClient::new(
        arbiter::endpoint::connect(&arbiter::endpoint::Address::parse(
            &supervisor.tcp_address(),
        ))
        .await
        .unwrap(),
    );
    assert_refused(
        tcp_video.cancel(vpb::GetJobRequest { job_id: job }).await,
        Code::PermissionDenied,
        &["another identity"],
    );
}

/// `arbiter-supervisor ARGS --address SOCKET` run as `nobody`, from a copy of the binary in
/// `dir` (which every user can reach, unlike a checkout under a private home). As root the
/// test switches user itself; otherwise through passwordless sudo, or it fails saying so.
fn as_nobody(dir: &Path, socket: &Path, args: &[&str]) -> std::process::Output {
    let binary = dir.join("arbiter-supervisor");
    if !binary.exists() {
        std::fs::copy(arbiter_test_kit::binaries::supervisor(), &binary)
            .expect("copy the supervisor binary");
    }
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut command = std::process::Command::new(&binary);
        command.uid(65534).gid(65534);
        command
    } else {
        let sudo = std::process::Command::new("sudo")
            .args(["-n", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            sudo,
            "this test runs a client as another user (nobody): run it as root or with passwordless sudo"
        );
        let mut command = std::process::Command::new("sudo");
        command.args(["-n", "-u", "nobody", "--"]).arg(&binary);
        command
    };
    command
        .args(args)
        .arg("--address")
        .arg(socket)
        .env_remove("ARBITER_SOCKET")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the client as nobody")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_uid_on_the_unix_socket_acts_only_on_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("supervisor.sock");
    let supervisor = Supervisor::builder()
        .socket(&socket)
        .config("[server]\nsocket_mode = \"0666\"\n")
        .start()
        .await;
    let mut local = supervisor.unix_client().await;
    let lease = local
        .acquire(unary("root's", GIB))
        .await
        .unwrap()
        .into_inner();

    let status = as_nobody(dir.path(), &socket, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("you are uid:65534"), "{text}");
    assert!(
        !text.contains(&lease.lease_id),
        "nobody does not see root's lease id:\n{text}"
    );

    let release = as_nobody(dir.path(), &socket, &["release", &lease.lease_id]);
    let text = String::from_utf8_lossy(&release.stderr);
    assert!(!release.status.success());
    assert!(
        text.contains("PermissionDenied") && text.contains("another identity"),
        "{text}"
    );
    let leases = local
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "root's lease is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_is_refused_with_resource_exhausted_naming_it() {
    let supervisor = Supervisor::builder()
        .gpus("4GiB")
        .config("[quota]\nleases = 2\nbytes = \"3GiB\"\n")
        .start()
        .await;
    let mut client = supervisor.unix_client().await;
    let exhausted = Code::ResourceExhausted;
    let a = client.acquire(unary("a", GIB)).await.unwrap().into_inner();
    let b = client
        .acquire(unary("b", 2 * GIB))
        .await
        .unwrap()
        .into_inner();
    assert_refused(
        client.acquire(unary("c", GIB / 2)).await,
        exhausted,
        &["[quota] leases", "2"],
    );
    client
        .release(pb::ReleaseRequest {
            lease_id: b.lease_id,
        })
        .await
        .unwrap();
    assert_refused(
        client.acquire(unary("d", 3 * GIB)).await,
        exhausted,
        &["[quota] bytes", "3GiB"],
    );
    let _ = a;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_and_queued_jobs_are_bounded_per_identity() {
    let supervisor = Supervisor::builder()
        .gpus("4GiB")
        .config(&format!(
            "{BASE_CONFIG}[quota]\nwaiting = 1\nqueued_jobs = 1\n"
        ))
        .start()
        .await;
    let mut client = supervisor.unix_client().await;
    let exhausted = Code::ResourceExhausted;
    // Fill the card, then wait once; the second wait is over the quota.
    let _fill = client.acquire(unary("fill", 4 * GIB)).await.unwrap();
    let _first_wait = client
        .hold(ask("waiter", "", GIB))
        .await
        .expect("the first wait is queued");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_refused(
        client.hold(ask("second waiter", "", GIB)).await,
        exhausted,
        &["[quota] waiting", "1"],
    );
    // One job queued or running at a time (the card is full, so the first one waits).
    let mut video = supervisor.video_client().await;
    video
        .submit(request("", "first", 0))
        .await
        .expect("the first job");
    assert_refused(
        video.submit(request("", "second", 0)).await,
        exhausted,
        &["[quota] queued_jobs", "1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_and_the_queue_are_bounded() {
    let supervisor = Supervisor::builder()
        .gpus("4GiB")
        .config("[quota]\nrate = 1\nburst = 3\n[lease]\nmax_waiting = 1\n")
        .start()
        .await;
    // Let the bucket refill after the kit's own start-up pings.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut client = supervisor.unix_client().await;
    let mut refusals = Vec::new();
    for _ in 0..20 {
        if let Err(status) = client.ping(pb::PingRequest {}).await {
            refusals.push(status);
        }
    }
    assert!(
        !refusals.is_empty(),
        "20 pings at once, at 1 a second, are not all served"
    );
    assert!(refusals.iter().all(|s| s.code() == Code::ResourceExhausted
        && s.message().contains("request rate")
        && s.message().contains("[quota] rate")));

    tokio::time::sleep(Duration::from_secs(4)).await;
    let _fill = client.acquire(unary("fill", 4 * GIB)).await.unwrap();
    let _wait = client.hold(ask("waiter", "", GIB)).await.expect("one wait");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_refused(
        client.hold(ask("another", "", GIB)).await,
        Code::ResourceExhausted,
        &["lease.max_waiting", "1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_token_command_names_its_caller_and_the_file_holds_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let made = arbiter_test_kit::supervisor::command()
        .args(["token", "render-01", "--file"])
        .arg(&tokens)
        .output()
        .expect("run `token`");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let file = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        file.starts_with("render-01 sha256:") && !file.contains(&token),
        "{file}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let bad = arbiter_test_kit::supervisor::command()
        .args(["token", "two words"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let pki = Pki::new(&dir.path().join("pki"));
    let server = pki.server();
    let supervisor = Supervisor::builder()
        .config(&format!(
            "[auth]\ntokens_file = {:?}\nholders = [\"token:render-01\"]\n{}",
            tokens.display().to_string(),
            pki.server_config(&server)
        ))
        .start()
        .await;
    let channel = pki.channel(supervisor.port(), None).await.unwrap();
    let mut client = SupervisorClient::with_interceptor(channel, Bearer::new(&token));
    let lease = client
        .acquire(unary("render", GIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.owner, "token:render-01");
}
