//! Where the supervisor listens and how every other process reaches it.
//!
//! All Arbiter processes agree on one default Unix socket, so a tts-service or a video
//! worker started with no flags finds the supervisor. The socket (not TCP) is the default
//! because the kernel tells the supervisor who is on the other end (pid and uid), which is
//! how a lease is tied to a process that can die.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The supervisor's default socket: `$XDG_RUNTIME_DIR/arbiter/supervisor.sock` when that
/// variable is set (a user session), else `/run/arbiter/supervisor.sock` (a system service).
pub fn default_supervisor_socket() -> PathBuf {
    runtime_dir().join("supervisor.sock")
}

/// The tts service's default socket, beside the supervisor's: where `arbiter-tts serve`
/// listens and its clients (`say`, `lip-sync`) look without `--socket`.
pub fn default_tts_socket() -> PathBuf {
    runtime_dir().join("tts.sock")
}

/// `$XDG_RUNTIME_DIR/arbiter`, else `/run/arbiter`: where Arbiter's sockets live.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("arbiter"),
        _ => PathBuf::from("/run/arbiter"),
    }
}

/// An address a client can dial: a Unix socket path or a TCP `host:port` / `http://…` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// Reads `unix:/path`, `unix:///path`, a bare path (`/run/…`, `./x.sock`), `http://h:p`
    /// or `host:port`.
    pub fn parse(text: &str) -> Address {
        if let Some(path) = text.strip_prefix("unix://") {
            return Address::Unix(PathBuf::from(path));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            return Address::Unix(PathBuf::from(path));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Address::Tcp(text.to_string());
        }
        if text.starts_with('/') || text.starts_with('.') || text.ends_with(".sock") {
            return Address::Unix(PathBuf::from(text));
        }
        Address::Tcp(format!("http://{text}"))
    }

    pub fn unix(path: impl AsRef<Path>) -> Address {
        Address::Unix(path.as_ref().to_path_buf())
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(url) => f.write_str(url),
        }
    }
}

/// Opens a channel to an Arbiter server. Connection errors say which address was tried,
/// since "connection refused" alone does not tell an operator which socket is missing.
pub async fn connect(address: &Address) -> Result<Channel, ConnectError> {
    let endpoint = match address {
        // The authority is a placeholder: h2 rejects a socket path as `:authority`.
        Address::Unix(path) => Endpoint::from_shared(format!("unix://{}", path.display())),
        Address::Tcp(url) => Endpoint::from_shared(url.clone()),
    }
    .map_err(|source| ConnectError::BadAddress {
        address: address.to_string(),
        reason: source.to_string(),
    })?
    .connect_timeout(Duration::from_secs(5))
    .tcp_nodelay(true);
    let endpoint = match address {
        Address::Tcp(url) if url.starts_with("https://") => endpoint
            .tls_config(client_tls()?)
            .map_err(|source| ConnectError::Tls(error_chain(&source)))?,
        _ => endpoint,
    };
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            address: address.to_string(),
            reason: error_chain(&source),
        })
}

/// The CA that signed the server's certificate (PEM), for `https://` addresses.
pub const TLS_CA_ENV: &str = "ARBITER_TLS_CA";
/// This client's certificate and key (PEM), for a server that names callers by certificate.
pub const TLS_CERT_ENV: &str = "ARBITER_TLS_CERT";
pub const TLS_KEY_ENV: &str = "ARBITER_TLS_KEY";

/// TLS for an `https://` address, from the environment: the server's CA (required, since
/// Arbiter's servers carry certificates of the operator's own CA, not a public one) and
/// optionally a client certificate and key.
fn client_tls() -> Result<tonic::transport::ClientTlsConfig, ConnectError> {
    let read = |var: &'static str| -> Result<Option<Vec<u8>>, ConnectError> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(path) => std::fs::read(&path).map(Some).map_err(|e| {
                ConnectError::Tls(format!("${var} = {}: {e}", PathBuf::from(&path).display()))
            }),
        }
    };
    let ca = read(TLS_CA_ENV)?.ok_or_else(|| {
        ConnectError::Tls(format!(
            "an https:// address needs the server's CA certificate: set ${TLS_CA_ENV} to its PEM file"
        ))
    })?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    match (read(TLS_CERT_ENV)?, read(TLS_KEY_ENV)?) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(ConnectError::Tls(format!(
                "set both ${TLS_CERT_ENV} and ${TLS_KEY_ENV} (a client certificate and its key), or neither"
            )));
        }
    }
    Ok(tls)
}

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{address}` is not a usable address: {reason}")]
    BadAddress { address: String, reason: String },
    #[error(
        "cannot reach an Arbiter server at {address}: {reason} (is it running? pass its socket or address explicitly if it listens elsewhere)"
    )]
    Unreachable { address: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// The error and its causes, each said once: layers of the transport stack that already
/// print their cause's message would otherwise repeat it ("No such file or directory (os
/// error 2)" three times).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message may already include its cause's.
    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        // What tonic's connector gave for a missing socket: the io error three times over.
        let enoent = || "No such file or directory (os error 2)".to_string();
        let io = Layer(enoent(), None);
        let connector = Layer(enoent(), Some(Box::new(io)));
        let hyper = Layer(enoent(), Some(Box::new(connector)));
        let top = Layer("transport error".into(), Some(Box::new(hyper)));
        assert_eq!(
            error_chain(&top),
            "transport error: No such file or directory (os error 2)"
        );
        let plain = Layer(
            "connect".into(),
            Some(Box::new(Layer("refused".into(), None))),
        );
        assert_eq!(error_chain(&plain), "connect: refused");
    }

    #[test]
    fn reads_every_address_form() {
        assert_eq!(Address::parse("/run/a.sock"), Address::unix("/run/a.sock"));
        assert_eq!(
            Address::parse("unix:///run/a.sock"),
            Address::unix("/run/a.sock")
        );
        assert_eq!(Address::parse("unix:rel.sock"), Address::unix("rel.sock"));
        assert_eq!(
            Address::parse("127.0.0.1:50051"),
            Address::Tcp("http://127.0.0.1:50051".into())
        );
        assert_eq!(
            Address::parse("http://h:1"),
            Address::Tcp("http://h:1".into())
        );
    }
}
