//! The supervisor's Prometheus endpoint on the real binary, scraped by a real Prometheus
//! server (Debian's `prometheus`, installed by scripts/setup.sh): the granted bytes it
//! stores are what `GetStatus` says; every metric the Grafana dashboard queries (outside
//! arbiter-tts's, checked by its own tests) is exported, and every query parses; unknown
//! paths are 404; a remote address without `allow_remote` and a taken port stop start-up
//! with an error that says what to change.
//!
//! Each test starts its own supervisor (`arbiter_test_kit::supervisor`); waits are bounded
//! and nothing asserts how fast something happened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arbiter_test_kit::GIB;
use arbiter_test_kit::leases::{ask, duration, gpu_status};
use arbiter_test_kit::metrics::{
    dashboard, dashboard_queries, encode_query, exported, get, metric_names, sample, scrape,
};
use arbiter_test_kit::processes::{Process, run_to_end};
use arbiter_test_kit::supervisor::{Supervisor, command, free_port, record_usage};
use arbiter_test_kit::waiting::{SOON, eventually};

/// Prometheus's start (its TSDB, its first scrapes) on a loaded 2-core machine.
const PROMETHEUS_LIMIT: Duration = Duration::from_secs(120);

/// Where Debian's package puts the server.
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn prometheus_binary() -> PathBuf {
    let path = PathBuf::from(PROMETHEUS);
    assert!(
        path.is_file(),
        "{PROMETHEUS} is missing: this test runs a real Prometheus server; run scripts/setup.sh (it installs Debian's `prometheus` package)"
    );
    path
}

/// A Prometheus server scraping `target` every second, its data in `dir`.
fn start_prometheus(dir: &Path, target: SocketAddr) -> (Process, SocketAddr) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: arbiter\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             \x20   static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(prometheus_binary());
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .current_dir(dir);
    (Process::spawn(command, dir.join("prometheus.log")), web)
}

/// Prometheus's answer to an instant query, as JSON.
async fn query(prometheus: SocketAddr, promql: &str) -> Result<serde_json::Value, String> {
    let path = format!("/api/v1/query?query={}", encode_query(promql));
    let (status, body) = get(prometheus, &path).await?;
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{status}: not JSON ({e}): {body}"))?;
    Ok(answer)
}

/// The value Prometheus holds for `metric{gpu="<gpu>"}`, once it holds one.
async fn stored(prometheus: SocketAddr, metric: &str, gpu: u32) -> Option<f64> {
    let answer = query(prometheus, &format!("{metric}{{gpu=\"{gpu}\"}}"))
        .await
        .ok()?;
    let result = answer["data"]["result"].as_array()?;
    let first = result.first()?;
    first["value"][1].as_str()?.parse().ok()
}

fn metrics_config(address: SocketAddr) -> String {
    format!("[metrics]\nlisten = \"{address}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stores_the_granted_bytes_that_status_reports() {
    let endpoint: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let supervisor = Supervisor::builder()
        .config(&metrics_config(endpoint))
        .start()
        .await;
    let mut client = supervisor.unix_client().await;
    let lease = client
        .acquire(arbiter::pb::supervisor::v1::LeaseRequest {
            ttl: Some(duration(Duration::from_secs(1800))),
            ..ask("metrics-test", "0", 3 * GIB)
        })
        .await
        .expect("Acquire")
        .into_inner();
    let granted = gpu_status(&client, lease.gpu_index).await.granted_bytes;
    assert_eq!(granted, 3 * GIB, "the lease is the GPU's only grant");

    // The endpoint itself says what status says.
    let text = scrape(endpoint).await.expect("GET /metrics");
    let series = format!("arbiter_gpu_granted_bytes{{gpu=\"{}\"}}", lease.gpu_index);
    assert_eq!(sample(&text, &series), Some(granted as f64), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"arbiter_lease_grants_total{priority="normal",form="unary"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get(endpoint, "/").await.expect("GET /").0,
        404,
        "only /metrics is served"
    );
    // This process holds the lease (over the Unix socket, so the supervisor sees its pid):
    // what the simulated card shows it using is charged to the lease, by holder.
    let pid = std::process::id();
    record_usage(supervisor.simulated_dir(), lease.gpu_index, pid, 2 * GIB);
    let process = format!(
        "arbiter_lease_process_bytes{{gpu=\"{}\",pid=\"{pid}\",holder=\"metrics-test\",lease=\"{}\"}}",
        lease.gpu_index, lease.lease_id
    );
    let used = eventually(SOON, "the lease's process in /metrics", || async {
        sample(&scrape(endpoint).await.ok()?, &process)
    })
    .await;
    assert_eq!(used, (2 * GIB) as f64);

    // A real Prometheus scrapes it and stores the same value.
    let dir = tempfile::tempdir().expect("a temp dir");
    let (prometheus, web) = start_prometheus(dir.path(), endpoint);
    let seen = eventually(
        PROMETHEUS_LIMIT,
        "Prometheus to store arbiter_gpu_granted_bytes from the supervisor",
        || stored(web, "arbiter_gpu_granted_bytes", lease.gpu_index),
    )
    .await;
    let now = gpu_status(&client, lease.gpu_index).await.granted_bytes;
    assert_eq!(seen, now as f64, "Prometheus stores what GetStatus reports");
    let budget = eventually(SOON, "Prometheus to store arbiter_gpu_budget_bytes", || {
        stored(web, "arbiter_gpu_budget_bytes", lease.gpu_index)
    })
    .await;
    assert_eq!(
        budget,
        gpu_status(&client, lease.gpu_index).await.budget_bytes as f64
    );

    // The dashboard asks only for what is exported, in queries Prometheus accepts.
    let board = dashboard();
    let queries = dashboard_queries(&board);
    assert!(!queries.is_empty(), "the dashboard has queries");
    let names = exported(&scrape(endpoint).await.expect("GET /metrics"));
    for expr in &queries {
        for name in metric_names(expr) {
            if name.starts_with("arbiter_tts_") {
                continue; // arbiter-tts's, checked by tts-service/tests/metrics.rs
            }
            assert!(
                names.contains(&name),
                "the dashboard queries {name}, which the supervisor does not export (query: {expr}); exported: {names:?}"
            );
        }
        // Grafana's interval variable, as Grafana would fill it in.
        let promql = expr.replace("$__rate_interval", "1m");
        let answer = query(web, &promql).await.expect("a query answer");
        assert_eq!(
            answer["status"], "success",
            "Prometheus refuses the dashboard's query {expr}: {answer}"
        );
    }
    drop(prometheus);
}

/// Runs the supervisor with `config` until it exits (it must not start) and returns stderr.
fn refused_start(config: &str) -> String {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("supervisor.toml");
    std::fs::write(&path, config).expect("write the config");
    let mut command = command();
    command
        .arg("--config")
        .arg(&path)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--simulated-gpus")
        .arg("1GiB")
        .arg("--simulated-dir")
        .arg(dir.path().join("simulated"))
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let output = run_to_end(command, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it must not start:\n{stderr}");
    assert!(
        !dir.path().join("s.sock").exists(),
        "a refused start leaves no socket"
    );
    stderr
}

#[test]
fn a_remote_address_needs_allow_remote() {
    let stderr = refused_start("[metrics]\nlisten = \"0.0.0.0:9464\"\n");
    assert!(stderr.contains("metrics.allow_remote"), "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
}

#[test]
fn a_taken_port_is_a_start_up_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("its address");
    let stderr = refused_start(&metrics_config(address));
    assert!(stderr.contains("cannot listen for metrics"), "{stderr}");
    assert!(stderr.contains(&address.to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_readers_only_their_tokens_may_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    arbiter_test_kit::tls::tokens_file(&tokens, &[("prom", "prom-secret"), ("ci", "ci-secret")]);
    let endpoint: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _supervisor = Supervisor::builder()
        .config(&format!(
            "[auth]\ntokens_file = {:?}\n[metrics]\nlisten = \"{endpoint}\"\nreaders = [\"token:prom\"]\n",
            tokens.display().to_string()
        ))
        .start()
        .await;
    let scrape =
        |headers: &'static str| arbiter_test_kit::metrics::get_with(endpoint, "/metrics", headers);
    let (code, body) = scrape("").await.unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("[metrics] readers"), "{body}");
    let (code, _) = scrape("Authorization: Bearer ci-secret\r\n").await.unwrap();
    assert_eq!(code, 401, "a token not among the readers");
    let (code, body) = scrape("Authorization: Bearer prom-secret\r\n")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("arbiter_gpu_budget_bytes"), "{body}");
}
