//! A caller's identity, as the listener it came through proves it.

use std::fmt;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};

use super::tokens::Tokens;

/// Who a caller is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A process on this host, as the kernel reports it for the Unix socket. `pid` is None
    /// for a caller in another pid namespace (the kernel says 0).
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<u32>,
    },
    /// A TLS client certificate signed by the server's client CA, by its name.
    Certificate(String),
    /// A bearer token found in the server's tokens file, by the name the file gives it.
    Token(String),
    /// Any caller without a token on a plaintext TCP listener, which exists only where the
    /// operator asked for it (`--insecure-tcp`): all such callers are this one identity.
    InsecureTcp,
}

impl Identity {
    /// The key that owns leases and jobs and that quotas count against: `uid:1000`,
    /// `cert:render-01`, `token:ci`, `insecure-tcp`. Processes of one uid own alike.
    pub fn key(&self) -> String {
        match self {
            Identity::Unix { uid, .. } => format!("uid:{uid}"),
            Identity::Certificate(name) => format!("cert:{name}"),
            Identity::Token(name) => format!("token:{name}"),
            Identity::InsecureTcp => "insecure-tcp".into(),
        }
    }

    /// The process the kernel named, for a Unix caller in our pid namespace.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Identity::Unix { pid, .. } => *pid,
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Why a caller has no identity; each says what the caller must send.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "this listener needs an identity: present a client certificate signed by the server's client CA, or send `authorization: Bearer <token>`"
    )]
    Missing,
    #[error(
        "the bearer token is not one of this server's tokens: ask its operator for a token, and send it as `authorization: Bearer <token>`"
    )]
    UnknownToken,
    #[error("the `authorization` header must read `Bearer <token>`")]
    MalformedToken,
    #[error(
        "the client certificate has no name (no DNS or URI subject alternative name, no common name): issue it with one"
    )]
    NamelessCertificate,
    #[error("the kernel gave no credentials for this Unix connection")]
    NoCredentials,
}

/// What the transport said about a connection, taken from a request's extensions.
#[derive(Clone, Debug)]
pub enum Transport {
    Unix(Option<tokio::net::unix::UCred>),
    /// TLS, with the DER of the client's certificate chain (leaf first) if it sent one.
    Tls(Vec<Vec<u8>>),
    PlainTcp,
    /// No connection information at all (an in-process channel): no identity can be had.
    Unknown,
}

impl Transport {
    /// Reads the connection info that tonic puts on every request.
    pub fn of(extensions: &tonic::codegen::http::Extensions) -> Transport {
        if let Some(info) = extensions.get::<UdsConnectInfo>() {
            return Transport::Unix(info.peer_cred);
        }
        if let Some(info) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            let chain = info
                .peer_certs()
                .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
                .unwrap_or_default();
            return Transport::Tls(chain);
        }
        if extensions.get::<TcpConnectInfo>().is_some() {
            return Transport::PlainTcp;
        }
        Transport::Unknown
    }
}

/// Resolves who is calling. Over the Unix socket the kernel's word is final (a token sent
/// there changes nothing); over TCP a valid bearer token names the caller, else its client
/// certificate does; plaintext TCP without a token is [`Identity::InsecureTcp`].
pub fn resolve(
    transport: &Transport,
    authorization: Option<&str>,
    tokens: &Tokens,
) -> Result<Identity, AuthError> {
    if let Transport::Unix(cred) = transport {
        let cred = cred.ok_or(AuthError::NoCredentials)?;
        return Ok(Identity::Unix {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred
                .pid()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p != 0),
        });
    }
    if let Some(header) = authorization {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MalformedToken)?;
        return tokens
            .name_of(token)
            .map(|name| Identity::Token(name.to_string()))
            .ok_or(AuthError::UnknownToken);
    }
    match transport {
        Transport::Tls(chain) => match chain.first() {
            Some(leaf) => certificate_name(leaf)
                .map(Identity::Certificate)
                .ok_or(AuthError::NamelessCertificate),
            None => Err(AuthError::Missing),
        },
        Transport::PlainTcp => Ok(Identity::InsecureTcp),
        Transport::Unix(_) | Transport::Unknown => Err(AuthError::Missing),
    }
}

/// A certificate's name: its first DNS or URI subject alternative name, else its subject's
/// common name. (rustls has already checked the chain against the client CA.)
pub fn certificate_name(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) if !n.is_empty() => {
                    return Some((*n).to_string());
                }
                _ => {}
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::parse(&format!("ci {}\n", super::super::tokens::hash("s3cret"))).unwrap()
    }

    #[test]
    fn tcp_callers_need_a_known_token_or_a_certificate() {
        let tokens = tokens();
        assert_eq!(
            resolve(&Transport::Tls(vec![]), None, &tokens),
            Err(AuthError::Missing)
        );
        assert_eq!(
            resolve(&Transport::Tls(vec![]), Some("Bearer s3cret"), &tokens),
            Ok(Identity::Token("ci".into()))
        );
        assert_eq!(
            resolve(&Transport::Tls(vec![]), Some("Bearer guess"), &tokens),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            resolve(&Transport::PlainTcp, Some("Basic abc"), &tokens),
            Err(AuthError::MalformedToken)
        );
        assert_eq!(
            resolve(&Transport::PlainTcp, None, &tokens),
            Ok(Identity::InsecureTcp)
        );
        assert_eq!(
            resolve(&Transport::Unknown, None, &tokens),
            Err(AuthError::Missing)
        );
        assert_eq!(
            resolve(&Transport::Unix(None), None, &tokens),
            Err(AuthError::NoCredentials)
        );
    }

    #[test]
    fn a_certificate_is_named_by_its_first_dns_name_else_its_common_name() {
        let with_san = rcgen::generate_simple_self_signed(vec!["render-01".to_string()])
            .expect("a certificate");
        assert_eq!(
            certificate_name(with_san.cert.der()).as_deref(),
            Some("render-01")
        );
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ops-alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_name(cert.der()).as_deref(), Some("ops-alice"));
        assert_eq!(certificate_name(b"not a certificate"), None);
    }
}
