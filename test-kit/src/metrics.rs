//! Metrics as tests read them: plain HTTP/1.0 GETs (to a `/metrics` endpoint or to
//! Prometheus's API), samples read from the exposition text, and the metric names the
//! Grafana dashboard (`deploy/grafana/arbiter.json`) queries, so a test can check that every
//! one of them is exported.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::workspace_root;

/// How long one GET may take before it counts as no answer.
const GET_LIMIT: Duration = Duration::from_secs(10);

/// `GET path` on `address` (HTTP/1.0, so the answer is never chunked): the status code and
/// the body, or why there was none.
pub async fn get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_with(address, path, "").await
}

/// [`get`] with extra header lines (`"Authorization: Bearer x\r\n"`).
pub async fn get_with(
    address: SocketAddr,
    path: &str,
    headers: &str,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect to {address}: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n{headers}\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {address}: {e}"))?;
        let mut reply = Vec::new();
        stream
            .read_to_end(&mut reply)
            .await
            .map_err(|e| format!("read from {address}: {e}"))?;
        Ok::<_, String>(reply)
    };
    let reply = tokio::time::timeout(GET_LIMIT, exchange)
        .await
        .map_err(|_| format!("GET {path} on {address}: no answer within {GET_LIMIT:?}"))??;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} on {address}: not an HTTP answer: {reply}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path} on {address}: no status line: {head}"))?;
    Ok((status, body.to_string()))
}

/// The exposition text at `address`'s `/metrics`, or why there was none.
pub async fn scrape(address: SocketAddr) -> Result<String, String> {
    match get(address, "/metrics").await? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("/metrics answered {status}: {body}")),
    }
}

/// The value of the sample named exactly `series` (its name and labels as exposed, such
/// as `arbiter_gpu_granted_bytes{gpu="0"}`), if the text has one.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|value| value.split_whitespace().next()?.parse().ok())
}

/// Every sample name the text exposes: each family with the suffixes of its type
/// (`_total` for counters, `_bucket`, `_sum`, `_count` for histograms).
pub fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The shipped dashboard, parsed.
pub fn dashboard() -> serde_json::Value {
    let path = workspace_root().join("deploy/grafana/arbiter.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every PromQL expression of the dashboard's panels (their targets' `expr`).
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                for value in map.values() {
                    walk(value, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The `arbiter_` metric names a PromQL expression names.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while let Some(found) = expr[at..].find("arbiter_") {
        let start = at + found;
        let boundary = start == 0 || {
            let before = bytes[start - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b'"')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        at = end;
    }
    names
}

/// A query string's value, percent-encoded (for Prometheus's `?query=`).
pub fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_samples_and_queries_are_read_as_prometheus_would() {
        let text = "# TYPE arbiter_lease_wait_seconds histogram\n\
                    arbiter_lease_wait_seconds_count 3\n\
                    # TYPE arbiter_lease_grants counter\n\
                    arbiter_lease_grants_total{priority=\"normal\",form=\"stream\"} 2\n\
                    # TYPE arbiter_gpu_granted_bytes gauge\n\
                    arbiter_gpu_granted_bytes{gpu=\"0\"} 1024\n# EOF\n";
        let names = exported(text);
        assert!(names.contains("arbiter_lease_wait_seconds_bucket"));
        assert!(names.contains("arbiter_lease_grants_total"));
        assert!(names.contains("arbiter_gpu_granted_bytes"));
        assert_eq!(
            sample(text, r#"arbiter_gpu_granted_bytes{gpu="0"}"#),
            Some(1024.0)
        );
        assert_eq!(sample(text, "arbiter_lease_wait_seconds_count"), Some(3.0));
        assert_eq!(sample(text, "arbiter_lease_wait_seconds"), None);
        let expr = r#"histogram_quantile(0.9, sum by (le) (rate(arbiter_lease_wait_seconds_bucket[5m]))) / on() arbiter_gpu_budget_bytes{job="arbiter_x"}"#;
        assert_eq!(
            metric_names(expr).into_iter().collect::<Vec<_>>(),
            [
                "arbiter_gpu_budget_bytes",
                "arbiter_lease_wait_seconds_bucket"
            ]
        );
        assert_eq!(
            encode_query("a{b=\"c\"} [1m]"),
            "a%7Bb%3D%22c%22%7D%20%5B1m%5D"
        );
    }
}
