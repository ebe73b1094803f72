//! DICOM over TLS with rustls: the BCP 195 profile (PS3.15 B.12, "BCP 195 RFC 8996, 9325 TLS
//! Secure Transport Connection Profile"), certificates and keys from PEM files, the server's
//! acceptor (optionally requiring client certificates signed by a CA: mutual TLS) and the
//! client's connector, and the subject of a peer's certificate for the logs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Transport;

/// TLS 1.3 and 1.2 only: PS3.15 B.12 requires 1.2 and allows 1.3 (preferred when offered,
/// which rustls does); RFC 8996 forbids 1.0 and 1.1. rustls has nothing older anyway, but the
/// list is spelled out so that a future default cannot widen it.
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The *ring* provider restricted to BCP 195's cipher suites (RFC 9325 §4.2): for TLS 1.2 the
/// four ECDHE suites with AES-GCM, RFC 9325's recommended ones (rustls has no DHE or
/// non-AEAD suites; its ChaCha20-Poly1305 suites for 1.2 are not among the four); for TLS 1.3
/// the AES-GCM suites. AES-128 first, as RFC 9325 lists them: the server picks in this order
/// (`ignore_client_order`), and AES-128-GCM costs about a quarter less CPU per byte than
/// AES-256-GCM. Key exchange keeps ring's groups (X25519, P-256, P-384), each of at least the
/// 256 bits B.12 asks of ECDHE.
pub fn bcp195_provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..ring::default_provider()
    })
}

/// Which configured file a problem is about (the Python layer names its variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    Ca,
}

impl TlsFile {
    pub fn name(self) -> &'static str {
        match self {
            TlsFile::Cert => "cert",
            TlsFile::Key => "key",
            TlsFile::Ca => "ca",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub file: TlsFile,
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.name(), self.message)
    }
}

fn problem(file: TlsFile, message: impl Into<String>) -> TlsFileError {
    TlsFileError { file, message: message.into() }
}

/// The server's PEM files: its certificate chain (leaf first), its private key, and the CA
/// certificates client certificates must chain to (None: no client certificate asked for).
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Every certificate of a PEM file, at least one.
fn certificates(path: &Path, file: TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| problem(file, format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(problem(file, "no CERTIFICATE section in the PEM file"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            problem(TlsFile::Key, "no private key (PKCS#8, PKCS#1 or SEC1 PEM section) in the file")
        }
        other => problem(TlsFile::Key, format!("cannot read the PEM private key: {other}")),
    })
}

fn roots(path: &Path, file: TlsFile) -> Result<Arc<RootCertStore>, TlsFileError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, file)? {
        store.add(cert).map_err(|e| problem(file, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The server side: BCP 195 versions and suites, our certificate and key (checked to match),
/// and with a CA, client certificates required and verified against it.
pub fn server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = bcp195_provider();
    let certs = certificates(&files.cert, TlsFile::Cert)?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| problem(TlsFile::Cert, e.to_string()))?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca, TlsFile::Ca)?, provider)
                .build()
                .map_err(|e| problem(TlsFile::Ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        let message = match e {
            rustls::Error::InconsistentKeys(_) => "does not match the certificate's public key".to_string(),
            other => format!("unusable with the certificate: {other}"),
        };
        problem(TlsFile::Key, message)
    })?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The client side (the load generator, later forwarding): servers verified against the CA
/// file; with `identity` (certificate chain, key) a client certificate for mutual TLS.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsFileError> {
    let builder = ClientConfig::builder_with_provider(bcp195_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| problem(TlsFile::Ca, e.to_string()))?
        .with_root_certificates(roots(ca, TlsFile::Ca)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert, TlsFile::Cert)?, private_key(key)?)
            .map_err(|e| problem(TlsFile::Key, format!("unusable with the certificate: {e}")))?,
    };
    Ok(Arc::new(config))
}

/// The server's side of the handshake.
pub async fn accept(acceptor: &TlsAcceptor, tcp: TcpStream) -> io::Result<Transport> {
    let tls = acceptor.accept(Transport::tls_socket(tcp)).await?;
    Ok(Transport::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
}

/// The client's side of the handshake; `host` is checked against the server's certificate
/// (a DNS name or an IP address).
pub async fn connect(connector: &TlsConnector, host: &str, tcp: TcpStream) -> io::Result<Transport> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS server name {host:?}: {e}")))?;
    let tls = connector.connect(name, Transport::tls_socket(tcp)).await?;
    Ok(Transport::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
}

/// A certificate's subject, e.g. `C=DE, O=Hospital, CN=modality-1`. webpki verifies
/// certificates without exposing their names, so x509-parser reads it.
pub fn subject(certificate: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(certificate.as_ref()) {
        Ok((_, parsed)) => parsed.subject().to_string(),
        Err(_) => "(unparsable certificate)".into(),
    }
}

/// Certificates for tests: a CA, a server certificate for 127.0.0.1 and a client certificate
/// signed by it, and a client certificate from another CA, as PEM files in a temp directory.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::path::PathBuf;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    pub struct Pki {
        _dir: tempfile::TempDir,
        pub ca: PathBuf,
        pub server: (PathBuf, PathBuf),
        pub client: (PathBuf, PathBuf),
        pub stranger: (PathBuf, PathBuf),
    }

    fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (params, key, pem)
    }

    fn leaf(dir: &std::path::Path, name: &str, sans: &[&str], issuer: &Issuer<'_, KeyPair>) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::OrganizationName, "oxidip tests");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key, ca_pem) = ca("oxidip test CA");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca_pem).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server = leaf(dir.path(), "server", &["127.0.0.1", "localhost"], &issuer);
        let client = leaf(dir.path(), "client", &[], &issuer);
        let (other_params, other_key, _) = ca("another CA");
        let stranger = leaf(dir.path(), "stranger", &[], &Issuer::new(other_params, other_key));
        Pki { _dir: dir, ca: ca_path, server, client, stranger }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls12_and_tls13_with_aead_ecdhe_suites() {
        let provider = bcp195_provider();
        let names: Vec<String> = provider.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(names.len(), 6, "{names:?}");
        for name in &names {
            assert!(name.contains("GCM"), "{name} is not AES-GCM");
            assert!(name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"), "{name}");
        }
        let versions: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(versions, [rustls::ProtocolVersion::TLSv1_3, rustls::ProtocolVersion::TLSv1_2]);
    }

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = ServerFiles { cert: dir.path().join("missing.pem"), key: empty.clone(), ca: None };
        assert_eq!(server_config(&files).unwrap_err().file, TlsFile::Cert);
        let files = ServerFiles { cert: empty.clone(), key: empty, ca: None };
        let error = server_config(&files).unwrap_err();
        assert_eq!(error.file, TlsFile::Cert);
        assert!(error.message.contains("no CERTIFICATE"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_the_certificate_s_is_refused() {
        let pki = test_pki::generate();
        let files = ServerFiles { cert: pki.server.0.clone(), key: pki.client.1.clone(), ca: None };
        let error = server_config(&files).unwrap_err();
        assert_eq!(error.file, TlsFile::Key);
        assert!(error.message.contains("does not match"), "{error}");
        let files = ServerFiles { cert: pki.server.0.clone(), key: pki.server.1.clone(), ca: Some(pki.server.1) };
        assert_eq!(server_config(&files).unwrap_err().file, TlsFile::Ca);
    }

    #[test]
    fn subject_of_a_certificate() {
        let pki = test_pki::generate();
        let cert = CertificateDer::from_pem_file(&pki.client.0).unwrap();
        assert_eq!(subject(&cert), "CN=client, O=oxidip tests");
    }
}
