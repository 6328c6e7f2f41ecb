//! TLS: mutual TLS between nodes, HTTPS for the API, clients that trust the cluster's CA, and
//! `ztna cluster certs`.
//!
//! With a `[tls]` table in the cluster file, a node's internal listener accepts only clients
//! presenting a certificate signed by the cluster CA (a node without one cannot join, vote,
//! append or forward), every node-to-node call presents the node's own certificate, and the API
//! is served over HTTPS with the same certificate. Everything uses rustls with the `ring`
//! provider. Without `[tls]`, both listeners are plain HTTP, for loopback development, and the
//! node says so when it starts.
//!
//! This module must not decide anything about keys or Raft; it only makes TLS configurations
//! and certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS settings refused: {0}")]
    Config(String),
    #[error("cannot make certificates: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Where a node's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A node's TLS configurations, made once at start.
#[derive(Clone)]
pub struct NodeTls {
    /// The internal listener: client certificates signed by the CA are required.
    pub internal: Arc<ServerConfig>,
    /// The API listener: server authentication only.
    pub api: Arc<ServerConfig>,
    /// Node-to-node calls: trusts the CA, presents this node's certificate.
    pub peer: ClientConfig,
}

/// Makes `ring` the process's default crypto provider, once. reqwest is built with rustls and
/// needs one for every client, even a plain-HTTP one.
pub fn ensure_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |message: String| TlsError::Read { path: path.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Read { path: path.display().to_string(), message: e.to_string() })
}

/// The CA certificates in `path` as a root store.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::Read { path: path.display().to_string(), message: e.to_string() })?;
    }
    Ok(roots)
}

impl NodeTls {
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let roots = Arc::new(roots(&paths.ca_cert)?);
        let certs = certificates(&paths.cert)?;
        let key = private_key(&paths.key)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(config_error)?;
        let internal = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(config_error)?;
        let api = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(config_error)?;
        let peer = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(config_error)?;
        Ok(NodeTls { internal: Arc::new(internal), api: Arc::new(api), peer })
    }
}

/// A client configuration trusting only the CA in `ca_cert` (the CLI and the agent).
pub fn client_trusting(ca_cert: &Path) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots(ca_cert)?)
        .with_no_client_auth())
}

/// A TCP listener whose connections are TLS-handshaken before axum sees them. Handshakes run
/// concurrently (one slow client does not hold up the others) and are bounded in time; a
/// refused one (no or a foreign certificate on the internal listener) is logged.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (done, ready) = tokio::sync::mpsc::channel(64);
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (tls, done) = (tls.clone(), done.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "TLS handshake refused: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// `ztna cluster certs`: a CA and one certificate per node (valid for both server and client
/// authentication), for a test or small deployment. Each node's certificate names `localhost`,
/// `127.0.0.1`, `::1`, `node<i>` and the host given for it.
pub fn make_certs(out: &Path, nodes: u64, hosts: &[String], days: u32) -> Result<Vec<PathBuf>, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let write = |path: PathBuf, text: String, secret: bool| -> Result<PathBuf, TlsError> {
        let result =
            if secret { crate::private_file::write(&path, text.as_bytes()) } else { std::fs::write(&path, text) };
        result.map_err(|source| TlsError::Write { path: path.display().to_string(), source })?;
        Ok(path)
    };
    std::fs::create_dir_all(out).map_err(|source| TlsError::Write { path: out.display().to_string(), source })?;
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));

    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca.distinguished_name.push(DnType::CommonName, "ztna cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = until;
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;
    let mut written = vec![
        write(out.join("ca.crt"), ca_cert.pem(), false)?,
        write(out.join("ca.key"), ca_key.serialize_pem(), true)?,
    ];
    for id in 1..=nodes {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into(), format!("node{id}")];
        if let Some(host) = hosts.get((id - 1) as usize) {
            names.push(host.clone());
        }
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::new(names).map_err(generate)?;
        params.distinguished_name.push(DnType::CommonName, format!("ztna node {id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = until;
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(generate)?;
        written.push(write(out.join(format!("node{id}.crt")), cert.pem(), false)?);
        written.push(write(out.join(format!("node{id}.key")), key.serialize_pem(), true)?);
    }
    Ok(written)
}
