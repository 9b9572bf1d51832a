//! The real `arbiter-supervisor` binary as a process and a command: a clean stop on SIGTERM,
//! the socket (its mode, a stale one left by SIGKILL, a live one another supervisor holds),
//! refusing to start without GPUs, `check-config`, and the operator's commands (`status`,
//! `leases`, `events --record`, `plot`).
//!
//! Each test starts its own supervisor from `arbiter_test_kit::supervisor` (or runs the
//! binary through its `command()`), on a multi-threaded runtime (that module says why).
//! Waits are bounded by generous timeouts; nothing asserts how fast something happened.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use arbiter_test_kit::GIB;
use arbiter_test_kit::leases::{ask, lease_held_by, next_update};
use arbiter_test_kit::processes::{Sleeper, run_to_end, wait_for_exit};
use arbiter_test_kit::supervisor::{Supervisor, command, record_usage};
use arbiter_test_kit::waiting::{SOON, eventually, within};
use pb::lease_update::Update;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_revokes_streams_exits_cleanly_and_a_new_supervisor_takes_the_socket() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("arbiter.sock");
    let mut old = Supervisor::builder().socket(&socket).start().await;
    let mut client = old.unix_client().await;
    let mut stream = client
        .hold(ask("survivor", "0", 4 * GIB))
        .await
        .expect("Hold")
        .into_inner();
    match next_update(&mut stream).await {
        Ok(Some(Update::Granted(_))) => {}
        other => panic!("expected a grant, got {other:?}"),
    }

    // Read the stream while the supervisor shuts down, so the connection keeps moving.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(update)) => seen.push(Ok(update.update)),
                Ok(None) => return seen,
                Err(status) => {
                    seen.push(Err(status));
                    return seen;
                }
            }
        }
    });
    let exit = old.terminate().await;
    assert!(
        exit.success(),
        "SIGTERM is a clean stop: {exit}; log:\n{}",
        old.log()
    );
    let seen = within(SOON, "for the stream to end", reader)
        .await
        .expect("the stream reader");
    let told = seen.iter().any(|item| match item {
        Ok(Some(Update::Revoked(revoked))) => !revoked.reason.is_empty(),
        Err(status) => status.code() == Code::Unavailable,
        _ => false,
    });
    assert!(
        told,
        "the holder hears of the shutdown (Revoked or UNAVAILABLE): {seen:?}"
    );
    assert!(!socket.exists(), "the socket is removed on a clean stop");
    drop(client);

    let new = Supervisor::builder().socket(&socket).start().await;
    let lease = new
        .unix_client()
        .await
        .acquire(ask("after restart", "0", 4 * GIB))
        .await
        .expect("Acquire on the new supervisor")
        .into_inner();
    assert_eq!(lease.bytes, 4 * GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_left_by_sigkill_does_not_stop_the_next_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("arbiter.sock");
    let mut old = Supervisor::builder().socket(&socket).start().await;
    old.kill();
    let meta = std::fs::symlink_metadata(&socket).expect("SIGKILL leaves the socket file");
    assert!(meta.file_type().is_socket());

    let new = Supervisor::builder().socket(&socket).start().await;
    let lease = new
        .unix_client()
        .await
        .acquire(ask("after crash", "", GIB))
        .await
        .expect("Acquire on the new supervisor")
        .into_inner();
    assert_eq!(lease.bytes, GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_a_live_socket_refuses_to_start() {
    let first = Supervisor::builder().without_tcp().start().await;
    let mut command = command();
    command
        .arg("--config")
        .arg(first.config_path())
        .arg("--socket")
        .arg(first.socket())
        .arg("--simulated-gpus")
        .arg("1GiB")
        .arg("--simulated-dir")
        .arg(first.dir().join("second-simulated"));
    let output = run_to_end(command, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("already answering"), "stderr:\n{stderr}");
    // The first one is untouched.
    let reply = first
        .unix_client()
        .await
        .ping(pb::PingRequest {})
        .await
        .expect("the first supervisor still answers");
    assert!(!reply.into_inner().version.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gpus_or_simulation_the_supervisor_fails_fast_and_says_how_to_simulate() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let socket = dir.path().join("arbiter.sock");
    let mut command = command();
    command
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .arg("--simulated-dir")
        .arg(dir.path().join("simulated"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    let mut child = command.spawn().expect("spawn arbiter-supervisor");
    let exit = wait_for_exit(&mut child, Duration::from_secs(15));
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let Some(exit) = exit else {
        let _ = child.kill();
        let _ = child.wait();
        if stderr.contains("listening") {
            eprintln!("skipped: NVML found real GPUs on this machine, so the supervisor serves");
            return;
        }
        panic!("the supervisor neither served nor exited; stderr:\n{stderr}");
    };
    if exit.success() || stderr.contains("listening") {
        eprintln!("skipped: NVML is present on this machine; stderr:\n{stderr}");
        return;
    }
    assert!(stderr.contains("--simulated-gpus"), "stderr:\n{stderr}");
    assert!(stderr.contains("NVML"), "stderr:\n{stderr}");
    assert!(!socket.exists(), "nothing was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_effective_settings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();

    let check = |config: &std::path::Path, args: &[&str], env: &[(&str, &str)]| {
        let mut command = command();
        command.arg("check-config").arg("--config").arg(config);
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        run_to_end(command, Duration::from_secs(20))
    };

    let output = check(&empty, &["--simulated-gpus", "80GiB,24GiB"], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: toml::Table = toml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check-config prints TOML ({e}):\n{stdout}"));
    assert_eq!(
        printed["gpu"]["simulated"],
        toml::Value::Array(vec!["80GiB".into(), "24GiB".into()]),
        "{stdout}"
    );
    // And where things go, as comments: the workers' directory and kernel cache among them.
    assert!(
        stdout.contains("workers' working directory:") && stdout.contains("/worker\n"),
        "{stdout}"
    );
    assert!(stdout.contains("workers' CUDA kernel cache:"), "{stdout}");
    // Whatever the layout, the array reads `simulated = ["80GiB", "24GiB"]`.
    let squeezed: String = stdout.split_whitespace().collect();
    assert!(
        squeezed.contains(r#"simulated=["80GiB","24GiB""#),
        "{stdout}"
    );
    // What it prints is itself a valid config that means the same.
    let printed_path = dir.path().join("printed.toml");
    std::fs::write(&printed_path, &stdout).unwrap();
    let again = check(&printed_path, &[], &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gpu]\nreserv = \"1GiB\"\n").unwrap();
    let output = check(&bad, &[], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an unknown key is refused");
    assert!(stderr.contains("reserv"), "the key is named: {stderr}");

    let output = check(&empty, &[], &[("ARBITER_RESERVE", "2GiB")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#"reserve = "2GiB""#), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_created_with_mode_0660() {
    let supervisor = Supervisor::builder().without_tcp().start().await;
    let meta = std::fs::symlink_metadata(supervisor.socket()).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "mode {:o}",
        meta.permissions().mode()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_and_leases_commands_show_what_is_lent() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let _holder = supervisor.spawn_hold("cli-holder", &["--bytes", "3GiB", "--gpu", "0"]);
    let lease = lease_held_by(&client, "cli-holder").await;

    let output = run_to_end(
        supervisor.client_command(&["leases"]),
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&lease.lease_id), "{stdout}");
    assert!(stdout.contains("cli-holder"), "{stdout}");
    assert!(stdout.contains("3GiB"), "{stdout}");

    let output = run_to_end(
        supervisor.client_command(&["status"]),
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("simulated GPUs"), "{stdout}");
    assert!(stdout.contains("Simulated GPU (10GiB)"), "{stdout}");
    assert!(stdout.contains("cli-holder"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_record_writes_the_samples_that_plot_draws() {
    let supervisor = Supervisor::builder().sample_interval("100ms").start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("samples.csv");
    let mut recorder = supervisor
        .client_command(&["events", "--record", csv.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the recorder");
    let mut foreign = Sleeper::spawn();
    let pid = foreign.pid();
    record_usage(supervisor.simulated_dir(), 0, pid, 3 * GIB);
    let present = format!("pid {pid} (no lease),{}", 3 * GIB);
    let read = || std::fs::read_to_string(&csv).unwrap_or_default();
    eventually(SOON, "the foreign process in the recording", || {
        let found = read().contains(&present);
        async move { found.then_some(()) }
    })
    .await;
    foreign.kill();
    let gone = format!("pid {pid} (no lease),0");
    eventually(SOON, "its memory back to 0 in the recording", || {
        let found = read().contains(&gone);
        async move { found.then_some(()) }
    })
    .await;
    let _ = recorder.kill();
    let _ = recorder.wait();

    let svg = dir.path().join("vram.svg");
    let output = run_to_end(
        {
            let mut plot = command();
            plot.arg("plot")
                .arg("--samples")
                .arg(&csv)
                .arg("--out")
                .arg(&svg);
            plot
        },
        Duration::from_secs(20),
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        read().lines().take(8).collect::<Vec<_>>().join("\n")
    );
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawing.contains(&format!("pid {pid} (no lease)")),
        "the legend names it"
    );
}
