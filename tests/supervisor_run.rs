//! `arbiter-supervisor run -- CMD` on the real supervisor: a real `sh` child run under a
//! streaming lease, with the lease in its environment, its simulated GPU use charged to the
//! lease (it is a descendant of the holder's pid), its exit status passed through, signals
//! forwarded, and its lease released and seen free after it exits; stopped for overuse
//! (`--on-overuse kill`), on a reclaim (`--on-reclaim kill`) and when the supervisor stops;
//! never started when the lease is refused.
//!
//! Each test starts its own supervisor (GPU 0: 10GiB, GPU 1: 4GiB, no reserve, sampled every
//! 100ms) on a multi-threaded runtime (`arbiter_test_kit::supervisor` says why). The child
//! scripts talk to the test through files in the supervisor's directory, and loop a bounded
//! number of times, so nothing outlives a failed test. Waits are bounded; nothing asserts
//! how fast anything happened.

use std::path::PathBuf;
use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use arbiter_test_kit::GIB;
use arbiter_test_kit::events::Feed;
use arbiter_test_kit::leases::{ask, gpu_status, hold_stream, lease_held_by, leases, next_update};
use arbiter_test_kit::processes::{Process, alive, gone};
use arbiter_test_kit::supervisor::{Supervisor, command};
use arbiter_test_kit::waiting::{SOON, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pb::event::Kind;
use pb::lease_update::Update;

/// How long a `run` may take to end once its child should have.
const EXIT: Duration = Duration::from_secs(30);

/// Waits up to 60 s (600 rounds of 0.1 s) for the file `$1`, for a child script.
const WAIT_FOR: &str =
    "wait_for() { i=0; while [ ! -e \"$1\" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; }";

/// Writes `$2` bytes as the child's own simulated use on GPU `$1`, as a worker would.
const USE: &str =
    "use_gpu() { echo \"$2\" > \"$SIM/$1/$$.tmp\" && mv \"$SIM/$1/$$.tmp\" \"$SIM/$1/$$\"; }";

/// Starts `run <flags> -- sh -c <script>` against `supervisor`, with `$DIR` (a directory
/// for the script's files) and `$SIM` (the simulated process table) in its environment.
fn spawn_run(supervisor: &Supervisor, name: &str, flags: &[&str], script: &str) -> Process {
    let script = format!("{WAIT_FOR}\n{USE}\n{script}");
    let mut run = supervisor.run_command(flags, &["sh", "-c", &script]);
    run.env("DIR", files(supervisor))
        .env("SIM", supervisor.simulated_dir());
    std::fs::create_dir_all(supervisor.simulated_dir().join("0")).expect("the simulated GPU 0");
    std::fs::create_dir_all(files(supervisor)).expect("the scripts' directory");
    Process::spawn(run, supervisor.dir().join(format!("{name}.log")))
}

fn files(supervisor: &Supervisor) -> PathBuf {
    supervisor.dir().join("files")
}

/// Waits for the script to write `file` in `$DIR`, and returns what it wrote.
async fn written(supervisor: &Supervisor, file: &str) -> String {
    let path = files(supervisor).join(file);
    eventually(SOON, &format!("the child to write {file}"), || {
        let text = std::fs::read_to_string(&path).ok();
        async move { text.filter(|t| t.ends_with('\n')) }
    })
    .await
    .trim()
    .to_string()
}

fn touch(supervisor: &Supervisor, file: &str) {
    std::fs::write(files(supervisor).join(file), "").expect("write a file for the child");
}

/// The pid the child wrote to `file`.
async fn child_pid(supervisor: &Supervisor, file: &str) -> u32 {
    written(supervisor, file)
        .await
        .parse()
        .expect("the child's pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_under_its_lease_and_its_release_is_verified() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    let mut run = spawn_run(
        &supervisor,
        "server",
        &["--bytes", "2GiB", "--gpu", "0", "--holder", "server"],
        "echo \"$CUDA_VISIBLE_DEVICES $ARBITER_LEASE_ID $ARBITER_LEASE_BYTES $ARBITER_SUPERVISOR_SOCKET\" > \"$DIR/env\"
         use_gpu 0 536870912
         echo $$ > \"$DIR/pid\"
         wait_for \"$DIR/go\"",
    );

    let lease = lease_held_by(&client, "server").await;
    assert_eq!(
        lease.pid,
        Some(run.pid()),
        "held with the run process's pid"
    );
    assert!(lease.measured, "{lease:?}");
    let env = written(&supervisor, "env").await;
    let socket = supervisor.socket().display().to_string();
    assert_eq!(
        env,
        format!("{} {} {} {socket}", lease.gpu_uuid, lease.lease_id, 2 * GIB)
    );
    // The child's use counts against the lease: it descends from the holder's pid.
    let child = child_pid(&supervisor, "pid").await;
    eventually(SOON, "the child's use charged to the lease", || {
        let client = client.clone();
        let id = lease.lease_id.clone();
        async move {
            let gpu = gpu_status(&client, 0).await;
            let charged = gpu
                .processes
                .iter()
                .any(|p| p.pid == child && p.lease_id == id && p.used_bytes == GIB / 2);
            let listed = leases(&client).await;
            let used = listed
                .iter()
                .any(|l| l.lease_id == id && l.used_bytes == Some(GIB / 2));
            (charged && used && gpu.unleased_bytes == 0).then_some(())
        }
    })
    .await;

    touch(&supervisor, "go");
    let status = run.wait(EXIT).await;
    assert_eq!(status.code(), Some(0), "{}", run.output());
    assert!(leases(&client).await.is_empty());
    let released = feed
        .wait_for("the lease released", |k| match k {
            Kind::Released(r) if r.lease_id == lease.lease_id => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(released.reason, "released", "{released:?}");
    assert_eq!(released.returning_bytes, 2 * GIB, "{released:?}");
    feed.wait_for("its memory seen free", |k| match k {
        Kind::Returned(r) if r.lease_id == lease.lease_id => Some(()),
        _ => None,
    })
    .await;
    let output = run.output();
    assert!(output.contains("saw its memory free"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_exit_status_is_passed_through() {
    let supervisor = Supervisor::start().await;
    for (script, code) in [
        ("exit 0", 0),
        ("exit 3", 3),
        // Killed by a signal: 128 + 9, as shells say.
        ("kill -KILL $$", 137),
    ] {
        let mut run = spawn_run(&supervisor, "exit", &["--bytes", "1GiB"], script);
        let status = run.wait(EXIT).await;
        assert_eq!(status.code(), Some(code), "{script}: {}", run.output());
    }
    let client = supervisor.unix_client().await;
    assert!(leases(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_to_run_reaches_the_command_and_run_exits_after_it() {
    let supervisor = Supervisor::start().await;
    let mut run = spawn_run(
        &supervisor,
        "trapper",
        &["--bytes", "1GiB"],
        "trap 'echo got-term > \"$DIR/trapped\"; exit 7' TERM
         echo $$ > \"$DIR/pid\"
         i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
    );
    let child = child_pid(&supervisor, "pid").await;
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGTERM).expect("SIGTERM to run");
    let status = run.wait(EXIT).await;
    assert_eq!(
        status.code(),
        Some(7),
        "the trap's exit code: {}",
        run.output()
    );
    assert_eq!(written(&supervisor, "trapped").await, "got-term");
    assert!(!alive(child));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_leases_what_the_gpu_has_available() {
    let supervisor = Supervisor::start().await;
    let mut run = spawn_run(
        &supervisor,
        "auto",
        &["--auto", "--gpu", "1"],
        "echo \"$ARBITER_LEASE_BYTES\" > \"$DIR/bytes\"",
    );
    assert_eq!(run.wait(EXIT).await.code(), Some(0), "{}", run.output());
    assert_eq!(
        written(&supervisor, "bytes").await,
        (4 * GIB).to_string(),
        "the whole 4GiB card"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overuse_with_on_overuse_kill_stops_the_command() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    let mut run = spawn_run(
        &supervisor,
        "greedy",
        &[
            "--bytes",
            "1GiB",
            "--gpu",
            "0",
            "--holder",
            "greedy",
            "--on-overuse",
            "kill",
        ],
        "echo $$ > \"$DIR/pid\"
         use_gpu 0 3221225472
         i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
    );
    let lease = lease_held_by(&client, "greedy").await;
    let child = child_pid(&supervisor, "pid").await;
    let status = run.wait(EXIT).await;
    let output = run.output();
    assert_eq!(status.code(), Some(123), "{output}");
    assert!(
        output.contains("used 3GiB") && output.contains("--on-overuse kill"),
        "{output}"
    );
    gone(child, "the overusing child").await;
    let overuse = feed
        .wait_for("the Overuse event", |k| match k {
            Kind::Overuse(o) if o.lease_id == lease.lease_id => Some(o.clone()),
            _ => None,
        })
        .await;
    assert_eq!(overuse.used_bytes, 3 * GIB, "{overuse:?}");
    feed.wait_for("the lease released", |k| match k {
        Kind::Released(r) if r.lease_id == lease.lease_id => Some(()),
        _ => None,
    })
    .await;
    assert!(leases(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lease_never_starts_the_command() {
    let supervisor = Supervisor::start().await;
    let mut run = spawn_run(
        &supervisor,
        "huge",
        &["--bytes", "20GiB"],
        "echo started > \"$DIR/started\"",
    );
    let status = run.wait(EXIT).await;
    let output = run.output();
    assert_eq!(status.code(), Some(125), "{output}");
    assert!(output.contains("refused the lease"), "{output}");
    assert!(!files(&supervisor).join("started").exists(), "{output}");

    // Refused before the supervisor is asked: a command that is not there (127) and a
    // supervisor reached over TCP, which cannot see the command's processes.
    let mut missing = Process::spawn(
        supervisor.run_command(&["--bytes", "1GiB"], &["arbiter-no-such-command"]),
        supervisor.dir().join("missing.log"),
    );
    assert_eq!(
        missing.wait(EXIT).await.code(),
        Some(127),
        "{}",
        missing.output()
    );
    assert!(
        missing.output().contains("not found"),
        "{}",
        missing.output()
    );
    let mut tcp = command();
    tcp.args(["run", "--bytes", "1GiB", "--address"])
        .arg(supervisor.tcp_address())
        .arg("--config")
        .arg(supervisor.config_path())
        .args(["--", "true"]);
    let mut tcp = Process::spawn(tcp, supervisor.dir().join("tcp.log"));
    assert_eq!(tcp.wait(EXIT).await.code(), Some(125), "{}", tcp.output());
    assert!(tcp.output().contains("Unix socket"), "{}", tcp.output());
    let client = supervisor.unix_client().await;
    assert!(leases(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_with_on_reclaim_kill_stops_the_command_and_frees_its_lease() {
    let supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let mut run = spawn_run(
        &supervisor,
        "batch",
        &[
            "--bytes",
            "8GiB",
            "--gpu",
            "0",
            "--holder",
            "batch",
            "--priority",
            "batch",
            "--preemptible",
            "--on-reclaim",
            "kill",
        ],
        "echo $$ > \"$DIR/pid\"
         i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
    );
    lease_held_by(&client, "batch").await;
    let child = child_pid(&supervisor, "pid").await;
    let mut critical = ask("critical", "0", 5 * GIB);
    critical.priority = pb::Priority::Critical as i32;
    let mut stream = hold_stream(&client, critical).await;
    assert!(matches!(
        next_update(&mut stream).await,
        Ok(Some(Update::Queued(_)))
    ));
    let status = run.wait(EXIT).await;
    assert_eq!(status.code(), Some(122), "{}", run.output());
    gone(child, "the preempted child").await;
    assert!(
        matches!(next_update(&mut stream).await, Ok(Some(Update::Granted(l))) if l.bytes == 5 * GIB)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_that_stops_revokes_the_lease_and_the_command_is_stopped() {
    let mut supervisor = Supervisor::start().await;
    let client = supervisor.unix_client().await;
    let mut run = spawn_run(
        &supervisor,
        "revoked",
        &["--bytes", "1GiB", "--holder", "revoked"],
        "echo $$ > \"$DIR/pid\"
         i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
    );
    lease_held_by(&client, "revoked").await;
    let child = child_pid(&supervisor, "pid").await;
    drop(client);
    supervisor.terminate().await;
    let status = run.wait(EXIT).await;
    let output = run.output();
    assert_eq!(status.code(), Some(124), "{output}");
    assert!(
        output.contains("revoked") || output.contains("lost the lease"),
        "{output}"
    );
    gone(child, "the child of a revoked lease").await;
}
