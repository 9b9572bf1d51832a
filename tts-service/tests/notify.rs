//! `arbiter-tts serve` as systemd runs it (`Type=notify`, `WatchdogSec`): started with
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` through the thin `arbiter-tts`, which execs
//! `arbiter-tts-server`. The process the test started (the same pid, as `NotifyAccess=main`
//! needs) then maps libtorch, says READY=1 once it answers, pings WATCHDOG=1 from its
//! heartbeat while it serves, and says STOPPING=1 after SIGTERM before it exits. eSpeak NG
//! voice only: no GPU, no supervisor. Waits are bounded; no timing is asserted.

use std::time::Duration;

use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::notify::NotifySocket;
use arbiter_test_kit::processes::Process;
use arbiter_test_kit::tts::{self, SERVING};

/// Generous bounds on a loaded 2-core machine (the server maps libtorch on start).
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn serve_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let nowhere = dir.path().join("no-supervisor.sock");
    let mut notify = NotifySocket::bind();
    let mut command = tts::serve_command(
        &socket,
        &["--supervisor", nowhere.to_str().expect("a UTF-8 path")],
    );
    for (key, value) in notify.env(Duration::from_secs(1)) {
        command.env(key, value);
    }
    command.env_remove("WATCHDOG_PID");
    let mut service = Process::spawn(command, dir.path().join("tts.log"));

    notify
        .wait_for("READY=1", 1, LIMIT, "READY once listening")
        .await;
    // READY means it answers.
    let (mut client, health) = tts::answering(&socket).await;
    assert_eq!(health, SERVING);
    let voices = client
        .list_voices(pb::ListVoicesRequest {})
        .await
        .expect("ListVoices after READY")
        .into_inner();
    assert!(!voices.voices.is_empty(), "the eSpeak NG voices are listed");

    // exec kept the pid: the process the test started is the server now.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", service.pid()))
        .expect("the service's memory map");
    assert!(
        maps.contains("libtorch"),
        "pid {} should be arbiter-tts-server (libtorch mapped) after the exec",
        service.pid()
    );

    notify
        .wait_for("WATCHDOG=1", 2, LIMIT, "watchdog pings while serving")
        .await;
    service.terminate();
    let status = service.wait(LIMIT).await;
    assert!(status.success(), "arbiter-tts exited with {status}");
    notify
        .wait_for("STOPPING=1", 1, LIMIT, "STOPPING after SIGTERM")
        .await;
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.lines());
    assert!(
        notify.position("READY=1") < notify.position("STOPPING=1"),
        "READY must come before STOPPING: {:?}",
        notify.lines()
    );
}
