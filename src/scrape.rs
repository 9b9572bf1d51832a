//! The HTTP endpoint Prometheus scrapes (`GET /metrics`), shared by every Arbiter server
//! that exposes metrics.
//!
//! It follows the rules of the other listeners: it binds only the address the operator
//! names, and it refuses an address other hosts can reach unless the operator says so
//! (`allow_remote`), since metrics name holders, pids and leases. Everything about the
//! listener (binding, the address rule, the HTTP serving) lives in this one module, so that
//! TLS or tokens can later be added here for every server at once.
//!
//! What is served is up to the caller: a function that renders the exposition text, run on
//! a blocking thread at each scrape (a render may take locks and read files).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The one path served.
pub const PATH: &str = "/metrics";

/// The content type of what `prometheus-client` writes: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send a request's headers before its connection is
/// closed, so an idle or stuck connection does not stay open for ever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Renders the exposition text at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Where the endpoint listens, as the operator configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Serve on an address other hosts can reach (not loopback).
    pub allow_remote: bool,
}

/// Why the metrics endpoint could not be set up. `setting` names the option the operator
/// sets to allow a remote address (`metrics.allow_remote`, `--metrics-allow-remote`).
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error(
        "the metrics endpoint {address} is not a loopback address, and metrics name holders, pids and leases: listen on 127.0.0.1 or [::1], or set {setting} to serve them to other hosts"
    )]
    Remote {
        address: SocketAddr,
        setting: &'static str,
    },
    #[error(
        "cannot listen for metrics on {address}: {source} (another process may hold the port: pick another one, or port 0 for any free one)"
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl Endpoint {
    /// Checks the address rule without binding (for `check-config` and config validation).
    pub fn check(&self, setting: &'static str) -> Result<(), ScrapeError> {
        if self.address.ip().is_loopback() || self.allow_remote {
            Ok(())
        } else {
            Err(ScrapeError::Remote {
                address: self.address,
                setting,
            })
        }
    }

    /// Binds the address (after the address rule), warning when it is reachable from other
    /// hosts because the operator allowed it.
    pub async fn bind(&self, setting: &'static str) -> Result<Listener, ScrapeError> {
        self.check(setting)?;
        if !self.address.ip().is_loopback() {
            tracing::warn!(address = %self.address, "serving metrics to other hosts ({setting}): anyone who can reach this address reads the holders, pids and leases, without authentication");
        }
        let tcp = TcpListener::bind(self.address)
            .await
            .map_err(|source| ScrapeError::Bind {
                address: self.address,
                source,
            })?;
        Ok(Listener { tcp, readers: None })
    }
}

/// Who may scrape, where the operator says: bearer tokens (`Authorization: Bearer`, as
/// Prometheus sends with `authorization: credentials_file`) from the server's tokens file,
/// whose identities one of `allowed` names. Without readers, anyone who can reach the
/// address may scrape (loopback, unless `allow_remote`).
#[derive(Clone, Debug)]
pub struct Readers {
    pub tokens: crate::auth::Tokens,
    pub allowed: Vec<crate::auth::Pattern>,
}

impl Readers {
    /// Whether a request with this `Authorization` header may scrape.
    fn admit(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return false;
        };
        self.tokens.name_of(token).is_some_and(|name| {
            crate::auth::pattern::any_matches(
                &self.allowed,
                &crate::auth::Identity::Token(name.to_string()),
            )
        })
    }
}

/// A bound metrics endpoint, not yet serving.
pub struct Listener {
    tcp: TcpListener,
    readers: Option<Arc<Readers>>,
}

impl Listener {
    /// Serves only the scrapes `readers` admit (401 for the others).
    pub fn with_readers(mut self, readers: Readers) -> Listener {
        self.readers = Some(Arc::new(readers));
        self
    }

    /// The address bound (the port chosen, for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves `GET /metrics` with what `render` returns until `stop` fires; every other
    /// path is 404, another method on the path 405. Open connections end with `stop`:
    /// a scrape cut off is simply retried by Prometheus.
    pub async fn serve(self, render: Render, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "cannot accept a metrics connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let render = Arc::clone(&render);
            let readers = self.readers.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    answer(request, Arc::clone(&render), readers.clone())
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    result = connection => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "metrics connection ended");
                        }
                    }
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    render: Render,
    readers: Option<Arc<Readers>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let response = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::from(text));
        *response.status_mut() = status;
        response
    };
    if let Some(readers) = readers {
        let authorization = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !readers.admit(authorization) {
            let mut refused = response(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <token>` with a token the operator lists in [metrics] readers\n".into(),
            );
            refused.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return Ok(refused);
        }
    }
    if request.uri().path() != PATH {
        return Ok(response(
            StatusCode::NOT_FOUND,
            format!("not found: metrics are at {PATH}\n"),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut refused = response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} answers GET\n"),
        );
        refused.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Ok(refused);
    }
    let text = match tokio::task::spawn_blocking(move || render()).await {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "rendering the metrics failed");
            return Ok(response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed; see the server's log\n".into(),
            ));
        }
    };
    let mut ok = response(StatusCode::OK, text);
    ok.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
            .await
            .expect("the endpoint answers within 10s")
            .unwrap();
        reply
    }

    #[tokio::test]
    async fn serves_the_render_at_metrics_and_404_elsewhere() {
        let endpoint = Endpoint {
            address: "127.0.0.1:0".parse().unwrap(),
            allow_remote: false,
        };
        let listener = endpoint.bind("metrics.allow_remote").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let render: Render = Arc::new(|| "# EOF\n".to_string());
        let server = tokio::spawn(listener.serve(render, stop.clone()));
        let reply = get(
            address,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("application/openmetrics-text"), "{reply}");
        assert!(reply.ends_with("# EOF\n"), "{reply}");
        let reply = get(
            address,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
        let reply = get(
            address,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the endpoint stops within 10s")
            .unwrap();
    }

    #[tokio::test]
    async fn a_remote_address_needs_allow_remote_and_a_taken_port_is_named() {
        let remote = Endpoint {
            address: "0.0.0.0:0".parse().unwrap(),
            allow_remote: false,
        };
        let error = remote
            .check("metrics.allow_remote")
            .unwrap_err()
            .to_string();
        assert!(error.contains("metrics.allow_remote"), "{error}");
        assert!(error.contains("127.0.0.1"), "{error}");
        Endpoint {
            allow_remote: true,
            ..remote
        }
        .check("metrics.allow_remote")
        .unwrap();

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint {
            address: taken.local_addr().unwrap(),
            allow_remote: false,
        };
        let error = endpoint
            .bind("metrics.allow_remote")
            .await
            .err()
            .expect("a taken port is refused")
            .to_string();
        assert!(error.contains("cannot listen for metrics"), "{error}");
        assert!(error.contains(&endpoint.address.to_string()), "{error}");
    }
}
