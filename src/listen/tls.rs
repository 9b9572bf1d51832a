//! TLS on the TCP listener (rustls): the server's certificate, and optionally a client CA
//! whose certificates name their callers (mTLS).
//!
//! Handshakes run in their own tasks, bounded by [`HANDSHAKE_TIMEOUT`], so a client that
//! connects and says nothing holds up no one else's connection. A client CA makes client
//! certificates checkable, not mandatory: a caller without one may still authenticate with
//! a bearer token, and one with neither is refused by the auth layer, per call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files a TLS listener is made of, all PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA that signs client certificates; None: callers authenticate by token only.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up; names the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what}: it must be PEM (-----BEGIN {label}-----)")]
    Empty {
        what: &'static str,
        path: PathBuf,
        label: &'static str,
    },
    #[error("the TLS configuration is unusable: {0}")]
    Config(String),
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<pki_types::CertificateDer<'static>>, TlsError> {
    use pki_types::pem::PemObject;
    let certs = pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The rustls server configuration for `files`, speaking HTTP/2 only (gRPC).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use pki_types::pem::PemObject;
    // ring, as tonic's `tls-ring` uses (aws-lc would need a C toolchain's cmake); rustls
    // deprecates it only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("the server certificate", &files.cert)?;
    let key = pki_types::PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
        what: "the server's private key",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("the client CA", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands on those that complete a TLS handshake, until `stop`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: say so and keep accepting.
                    tracing::warn!(%error, "cannot accept a TCP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
