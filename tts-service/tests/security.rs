//! The real `arbiter-tts serve` over TLS: TCP callers prove who they are with a client
//! certificate or a bearer token, only the callers the operator lists (`--caller`) are
//! served, and plaintext TCP needs `--insecure-tcp`. Over the Unix socket callers are who
//! the kernel says, as before.

use arbiter::pb::tts::v1 as pb;
use arbiter::pb::tts::v1::tts_client::TtsClient;
use arbiter_test_kit::assert_refused;
use arbiter_test_kit::supervisor::free_port;
use arbiter_test_kit::tls::{Bearer, Pki, tokens_file};
use arbiter_test_kit::tts;
use arbiter_test_kit::waiting::{SOON, eventually};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_callers_need_a_certificate_or_a_token_and_a_place_on_the_list() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let pki = Pki::new(&dir.path().join("pki"));
    let server = pki.server();
    let (web, other) = (pki.client("web"), pki.client("other"));
    let tokens = dir.path().join("tokens");
    tokens_file(
        &tokens,
        &[("app", "app-token-1"), ("nobody", "nobody-token")],
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _tts = tts::serve(
        &socket,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            server.cert.to_str().unwrap(),
            "--tls-key",
            server.key.to_str().unwrap(),
            "--tls-client-ca",
            pki.ca().to_str().unwrap(),
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--caller",
            "unix",
            "--caller",
            "cert:web",
            "--caller",
            "token:app",
        ],
    );
    // The socket still serves its local callers.
    let (mut local, _) = tts::answering(&socket).await;
    local
        .list_voices(pb::ListVoicesRequest {})
        .await
        .expect("a Unix caller is served");

    let voices = || pb::ListVoicesRequest {};
    let channel = eventually(SOON, "arbiter-tts answers TLS", || async {
        pki.channel(port, Some(&web)).await.ok()
    })
    .await;
    TtsClient::new(channel)
        .list_voices(voices())
        .await
        .expect("cert:web is on the list");
    let mut anonymous = TtsClient::new(pki.channel(port, None).await.unwrap());
    assert_refused(
        anonymous.list_voices(voices()).await,
        Code::Unauthenticated,
        &["client certificate"],
    );
    assert_refused(
        TtsClient::new(pki.channel(port, Some(&other)).await.unwrap())
            .list_voices(voices())
            .await,
        Code::PermissionDenied,
        &["cert:other", "--caller"],
    );
    let mut app = TtsClient::with_interceptor(
        pki.channel(port, None).await.unwrap(),
        Bearer::new("app-token-1"),
    );
    app.list_voices(voices())
        .await
        .expect("token:app is on the list");
    let mut nobody = TtsClient::with_interceptor(
        pki.channel(port, None).await.unwrap(),
        Bearer::new("nobody-token"),
    );
    assert_refused(
        nobody.list_voices(voices()).await,
        Code::PermissionDenied,
        &["token:nobody"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_tcp_without_insecure_tcp_does_not_start() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let listen = format!("127.0.0.1:{}", free_port());
    let output = tts::serve_command(&socket, &["--listen", &listen])
        .output()
        .expect("run arbiter-tts serve");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("needs TLS") && text.contains("--insecure-tcp"),
        "{text}"
    );
    assert!(!socket.exists(), "no socket left behind");
}
