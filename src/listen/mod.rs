//! The listeners every Arbiter server shares.
//!
//! A server listens on a Unix socket (created with a mode and optionally a group, so only
//! the right users may ask for GPU memory) and optionally on TCP. Both carry gRPC reflection
//! (v1 and v1alpha, since grpcurl releases differ) and grpc.health.v1. Connections on the
//! Unix socket go through [`authority`], so that stock gRPC clients, which send the socket
//! path as `:authority`, are served rather than reset by h2.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::StreamExt as _;

pub mod authority;
pub mod tls;

/// How the Unix socket is created.
#[derive(Clone, Debug)]
pub struct UnixSocket {
    pub path: PathBuf,
    /// Permission bits of the socket file (0660: owner and group may connect).
    pub mode: u32,
    /// The group that owns the socket, so its members may connect; None keeps ours.
    pub group: Option<String>,
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another server is already answering on {0}: stop it, or pass a different socket path")]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket: it was left alone; remove it or pass a different socket path"
    )]
    NotASocket(PathBuf),
    #[error(
        "cannot create the socket directory {path}: {source} (create it, or pass a socket path in a writable directory)"
    )]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind the Unix socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set mode {mode:o} on {path}: {source}")]
    Mode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("unknown group `{0}`: create it (groupadd) or name an existing group")]
    UnknownGroup(String),
    #[error("cannot give {path} to group `{group}`: {source}")]
    Chown {
        path: PathBuf,
        group: String,
        source: nix::Error,
    },
    #[error("cannot listen on TCP {address}: {source}")]
    Tcp {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error(
        "TCP {0} needs TLS (a server certificate and key; docs/security.md says how to make them), or --insecure-tcp to serve plaintext on purpose"
    )]
    NeedsTls(String),
    #[error("TLS and --insecure-tcp are both set: choose one")]
    TlsAndInsecure,
}

impl UnixSocket {
    /// Binds the socket. A stale socket file left by a crash is removed; a live one (some
    /// server answers on it) is an error rather than something to steal.
    pub fn bind(&self) -> Result<UnixListener, ListenError> {
        let path = &self.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ListenError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|source| ListenError::Bind {
            path: path.clone(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode)).map_err(
            |source| ListenError::Mode {
                path: path.clone(),
                mode: self.mode,
                source,
            },
        )?;
        if let Some(group) = &self.group {
            let gid = nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(|| ListenError::UnknownGroup(group.clone()))?
                .gid;
            nix::unistd::chown(path.as_path(), None, Some(gid)).map_err(|source| {
                ListenError::Chown {
                    path: path.clone(),
                    group: group.clone(),
                    source,
                }
            })?;
        }
        Ok(listener)
    }
}

fn remove_stale(path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds a TCP listener for `address` (`127.0.0.1:50051`; port 0 picks a free one).
pub async fn bind_tcp(address: &str) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ListenError::Tcp {
            address: address.to_string(),
            source,
        })
}

/// Completes on SIGTERM or SIGINT: the shutdown signal every Arbiter server serves until.
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers; stop this process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Serves `router` on the Unix listener and, when given, the TCP one, until `stop` fires
/// (then both stop accepting and drain). Every Arbiter server runs its listeners this way.
/// Unix connections are wrapped in [`authority::AuthorityFix`]; TCP clients send
/// `host:port`, which h2 accepts, so their bytes go through untouched.
pub async fn serve(
    router: Router,
    unix: UnixListener,
    tcp: Option<Tcp>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let unix_server = router.clone().serve_with_incoming_shutdown(
        tokio_stream::wrappers::UnixListenerStream::new(unix)
            .map(|accepted| accepted.map(authority::AuthorityFix::new)),
        stop.clone().cancelled_owned(),
    );
    let tcp_server = async {
        match tcp {
            Some(Tcp::Plain(tcp)) => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(tcp),
                        stop.clone().cancelled_owned(),
                    )
                    .await
            }
            Some(Tcp::Tls(tcp, config)) => {
                router
                    .serve_with_incoming_shutdown(
                        tls::incoming(tcp, config, stop.clone()),
                        stop.clone().cancelled_owned(),
                    )
                    .await
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(unix_server, tcp_server).map(|_| ())
}

/// A router whose every call passes the auth layer first: the only kind an Arbiter
/// server serves, so no listener can be opened without identities.
pub type Router = tonic::transport::server::Router<
    tower::layer::util::Stack<crate::auth::AuthLayer, tower::layer::util::Identity>,
>;

/// A TCP listener: TLS, or plaintext where the operator asked for it.
pub enum Tcp {
    Plain(tokio::net::TcpListener),
    Tls(
        tokio::net::TcpListener,
        std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    ),
}

/// Binds the TCP listener as the operator asked: TLS with `tls`, plaintext only with
/// `insecure` (and never both, never neither), logging which, loudly for plaintext.
pub async fn bind_tcp_as(
    address: &str,
    tls: Option<&tls::TlsFiles>,
    insecure: bool,
) -> Result<Tcp, ListenError> {
    let config = match (tls, insecure) {
        (Some(files), false) => Some(tls::server_config(files).map_err(ListenError::Tls)?),
        (None, true) => None,
        (Some(_), true) => return Err(ListenError::TlsAndInsecure),
        (None, false) => return Err(ListenError::NeedsTls(address.to_string())),
    };
    let listener = bind_tcp(address).await?;
    let shown = listener
        .local_addr()
        .map_or_else(|_| address.to_string(), |a| a.to_string());
    Ok(match config {
        Some(config) => {
            tracing::info!(address = %shown, "listening on TCP with TLS");
            Tcp::Tls(listener, config)
        }
        None => {
            tracing::warn!(
                address = %shown,
                "listening on TCP in PLAINTEXT (--insecure-tcp): every caller there without a token acts as `insecure-tcp`, and traffic can be read on the way; use TLS for anything but a trusted loopback"
            );
            Tcp::Plain(listener)
        }
    })
}

/// The health service's name, which every Arbiter server serves.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Reflection services, v1 and v1alpha, that describe Arbiter's protos and health's but
/// list only `services` (and health, and reflection itself): every proto is registered, so
/// any message type resolves, yet a caller who lists services sees only those this process
/// answers (the supervisor does not serve `arbiter.tts.v1.Tts`, so it does not list it).
pub fn reflection(
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let configure = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH_SERVICE);
        services
            .iter()
            .fold(builder, |builder, name| builder.with_service_name(*name))
    };
    // Building from our own embedded descriptors cannot fail unless the build is broken.
    let v1 = configure()
        .build_v1()
        .expect("embedded descriptor sets are valid");
    let v1alpha = configure()
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");
    (v1, v1alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(path: &Path) -> UnixSocket {
        UnixSocket {
            path: path.to_path_buf(),
            mode: 0o660,
            group: None,
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = socket(&path).bind().unwrap();
        assert!(matches!(socket(&path).bind(), Err(ListenError::InUse(_))));
        drop(live);
        let rebound = socket(&path).bind().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(rebound);

        let precious = dir.path().join("precious");
        std::fs::write(&precious, "data").unwrap();
        assert!(matches!(
            socket(&precious).bind(),
            Err(ListenError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "data");
    }
}
