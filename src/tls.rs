//! TLS: mutual TLS between nodes, HTTPS for the API, clients that trust the cluster's CA, and
//! `ztna cluster certs`.
//!
//! Every cluster file has a `[tls]` table (a node without one refuses to start unless the
//! operator wrote the loudly named opt-out). The internal listener accepts only clients
//! presenting a certificate signed by the cluster CA, and every node-to-node call presents the
//! node's own certificate, which names its node id (`node-<id>.ztna-peer.invalid`): the
//! receiving side checks that name against the id the caller claims and against the current
//! membership (see `network::server`), so a removed node's certificate opens nothing and one
//! node cannot speak for another. The API has its own certificate (`api_cert`, `api_key`):
//! with it the API is HTTPS, without it plain HTTP (for a loopback cluster). Everything uses
//! rustls with the `ring` provider.
//!
//! This module must not decide anything about keys or Raft; it only makes TLS configurations
//! and certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

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
    /// The node's peer certificate and key (the internal listener, and its calls to peers).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The API's certificate and key, if the API is HTTPS.
    pub api: Option<(PathBuf, PathBuf)>,
}

/// A node's TLS configurations, made once at start.
#[derive(Clone)]
pub struct NodeTls {
    /// The internal listener: client certificates signed by the CA are required.
    pub internal: Arc<ServerConfig>,
    /// The API listener (server authentication only), when the API has a certificate.
    pub api: Option<Arc<ServerConfig>>,
    /// Node-to-node calls: trusts the CA, presents this node's certificate.
    pub peer: ClientConfig,
}

/// The name a node's peer certificate carries for node `id`.
pub fn peer_name(id: u64) -> String {
    format!("node-{id}.ztna-peer.invalid")
}

/// The node id `cert` (already verified against the cluster CA) names, if it names exactly one.
pub fn named_node(cert: &CertificateDer<'_>) -> Option<u64> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = parsed
        .valid_dns_names()
        .filter_map(|name| name.strip_prefix("node-")?.strip_suffix(".ztna-peer.invalid")?.parse::<u64>().ok());
    let id = ids.next()?;
    (ids.next().is_none() && names_node(cert, id)).then_some(id)
}

/// Whether `cert` (already verified against the cluster CA) names node `id`.
pub fn names_node(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = rustls::pki_types::ServerName::try_from(peer_name(id)) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
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
    /// Loads a node's certificates; `id` is the node they must name.
    pub fn load(paths: &TlsPaths, id: u64) -> Result<Self, TlsError> {
        let roots = Arc::new(roots(&paths.ca_cert)?);
        let certs = certificates(&paths.cert)?;
        let key = private_key(&paths.key)?;
        if !names_node(&certs[0], id) {
            return Err(TlsError::Config(format!(
                "{} does not name node {id} ({}): make the node certificates again with `ztna cluster certs`",
                paths.cert.display(),
                peer_name(id)
            )));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(config_error)?;
        let internal = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(format!("{} and {}: {e}", paths.cert.display(), paths.key.display())))?;
        let api = match &paths.api {
            Some((api_cert, api_key)) => {
                let config = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(config_error)?
                    .with_no_client_auth()
                    .with_single_cert(certificates(api_cert)?, private_key(api_key)?)
                    .map_err(|e| TlsError::Config(format!("{} and {}: {e}", api_cert.display(), api_key.display())))?;
                Some(Arc::new(config))
            }
            None => None,
        };
        let peer = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("{} and {}: {e}", paths.cert.display(), paths.key.display())))?;
        Ok(NodeTls { internal: Arc::new(internal), api, peer })
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

/// `ztna cluster certs`: a CA (kept: an existing `ca.crt`/`ca.key` in `out` signs the new
/// certificates, so a node added later joins the same CA), and for each node id up to `nodes`
/// that has none yet a peer certificate (server and client authentication; it names the node's
/// identity `node-<id>.ztna-peer.invalid` and its hosts) and a separate API certificate (server
/// authentication; its hosts). The hosts are `localhost`, `127.0.0.1`, `::1`, `node<i>` and the
/// host given for it. Keys are written with mode 0600, never over an existing file.
pub fn make_certs(out: &Path, nodes: u64, hosts: &[String], days: u32) -> Result<Vec<PathBuf>, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let write = |path: PathBuf, text: String, secret: bool| -> Result<PathBuf, TlsError> {
        let result = if secret {
            crate::private_file::create_new(&path, text.as_bytes())
        } else {
            crate::private_file::create_new_readable(&path, text.as_bytes())
        };
        result.map_err(|source| TlsError::Write { path: path.display().to_string(), source })?;
        Ok(path)
    };
    std::fs::create_dir_all(out).map_err(|source| TlsError::Write { path: out.display().to_string(), source })?;
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| TlsError::Read { path: path.display().to_string(), message: e.to_string() })
    };

    let mut written = Vec::new();
    let (ca_crt, ca_key_path) = (out.join("ca.crt"), out.join("ca.key"));
    // The CA's subject and key identify it to the certificates it signs: an existing CA is
    // rebuilt from its key (same subject, same key identifier) to sign more.
    let reuse = ca_crt.exists() && ca_key_path.exists();
    let ca_key = if reuse {
        KeyPair::from_pem(&read(&ca_key_path)?).map_err(generate)?
    } else {
        KeyPair::generate().map_err(generate)?
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca.distinguished_name.push(DnType::CommonName, "ztna cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = until;
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;
    if !reuse {
        written.push(write(ca_crt.clone(), ca_cert.pem(), false)?);
        written.push(write(ca_key_path.clone(), ca_key.serialize_pem(), true)?);
    }
    let leaf = |names: Vec<String>, common: String, client: bool| -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::new(names).map_err(generate)?;
        params.distinguished_name.push(DnType::CommonName, common);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if client {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        params.not_before = now - time::Duration::hours(1);
        params.not_after = until;
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(generate)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    for id in 1..=nodes {
        let mut hosts_of = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into(), format!("node{id}")];
        if let Some(host) = hosts.get((id - 1) as usize) {
            hosts_of.push(host.clone());
        }
        if !out.join(format!("node{id}.crt")).exists() {
            let mut names = hosts_of.clone();
            names.push(peer_name(id));
            let (cert, key) = leaf(names, format!("ztna node {id}"), true)?;
            written.push(write(out.join(format!("node{id}.crt")), cert, false)?);
            written.push(write(out.join(format!("node{id}.key")), key, true)?);
        }
        if !out.join(format!("api{id}.crt")).exists() {
            let (cert, key) = leaf(hosts_of, format!("ztna node {id} API"), false)?;
            written.push(write(out.join(format!("api{id}.crt")), cert, false)?);
            written.push(write(out.join(format!("api{id}.key")), key, true)?);
        }
    }
    Ok(written)
}
