//! Certificates for TLS tests, made fresh per test with rcgen: a CA, a server certificate
//! for `localhost` and 127.0.0.1, and client certificates by name; plus bearer tokens and
//! the channels that present them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA and the files of its certificates, in a directory of the test's.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// One certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA whose files go under `dir`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("create the PKI directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Arbiter test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        Pki {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn issue(
        &self,
        file: &str,
        names: Vec<String>,
        common: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Pair {
        let mut params = CertificateParams::new(names).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, common);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("a signed certificate");
        let pair = Pair {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write a certificate");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write a key");
        pair
    }

    /// The server's certificate: `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pair {
        self.issue(
            "server",
            vec!["localhost".into(), "127.0.0.1".into()],
            "arbiter-supervisor",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name` (its DNS name, as the server reads it).
    pub fn client(&self, name: &str) -> Pair {
        self.issue(
            &format!("client-{name}"),
            vec![name.to_string()],
            name,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A client certificate from a CA the server does not know.
    pub fn stranger(&self, name: &str) -> Pair {
        Pki::new(&self.dir.join("stranger")).client(name)
    }

    /// The `[server.tls]` section for a server with `server` and this CA for clients.
    pub fn server_config(&self, server: &Pair) -> String {
        format!(
            "\n[server.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            server.cert.display().to_string(),
            server.key.display().to_string(),
            self.ca().display().to_string()
        )
    }

    /// A TLS channel to `https://localhost:port`, with `client`'s certificate if given.
    pub async fn channel(&self, port: u16, client: Option<&Pair>) -> Result<Channel, String> {
        let ca = std::fs::read(self.ca()).map_err(|e| e.to_string())?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(client) = client {
            let cert = std::fs::read(&client.cert).map_err(|e| e.to_string())?;
            let key = std::fs::read(&client.key).map_err(|e| e.to_string())?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(format!("https://localhost:{port}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
    }
}

/// Writes a tokens file (mode 0600) holding each `(name, token)`'s hash.
pub fn tokens_file(path: &Path, tokens: &[(&str, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    let text: String = tokens
        .iter()
        .map(|(name, token)| format!("{name} {}\n", arbiter::auth::tokens::hash(token)))
        .collect();
    std::fs::write(path, text).expect("write the tokens file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the tokens file");
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Bearer {
        Bearer(format!("Bearer {token}").parse().expect("a token is ASCII"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
