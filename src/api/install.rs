//! The installer every node serves: `GET /install.sh`, and the node's own executable as
//! `GET /download/ztna-linux-x86_64` with its SHA-256 beside it.
//!
//! The script downloads from the node that served it and points the agent at every node of the
//! cluster, by the URLs in the configuration (`public_url`, else the API address) — never by
//! anything in the request: no header reaches the script, and every value put into it was
//! validated when the configuration was read and is single-quoted here. With an HTTPS API the
//! script carries the cluster CA and trusts nothing else.
//!
//! The binary is read once and handed out as shared bytes: a download costs no copy of it.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::node::Node;

const SCRIPT: &str = include_str!("install.sh");

/// A download must average this many bytes a second once it has run [`DOWNLOAD_GRACE`], and end
/// within [`DOWNLOAD_DEADLINE`]: a slow reader cannot hold a connection (and the node's data)
/// for hours, a byte at a time.
pub(crate) const DOWNLOAD_MIN_RATE: u64 = 64 * 1024;
pub(crate) const DOWNLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
pub(crate) const DOWNLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// The binary to hand out, and its SHA-256, made once per process: the running executable
/// without its debug sections (which are most of a release build's size, RocksDB's C++ debug
/// info above all), or the executable as it is where `strip` is unavailable.
fn distributable(work_dir: &Path) -> Result<&'static (Bytes, String), ApiError> {
    static DIST: OnceLock<Result<(Bytes, String), String>> = OnceLock::new();
    let made = DIST.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this node's executable: {e}"))?;
        let stripped = work_dir.join("ztna-linux-x86_64");
        let bytes = match Command::new("strip").arg("--strip-debug").arg("-o").arg(&stripped).arg(&exe).status() {
            Ok(status) if status.success() => std::fs::read(&stripped),
            _ => {
                tracing::warn!("`strip` is unavailable: serving the executable with its debug info");
                std::fs::read(&exe)
            }
        }
        .map_err(|e| format!("cannot read the executable to serve: {e}"))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        Ok((Bytes::from(bytes), digest))
    });
    made.as_ref().map_err(ApiError::internal)
}

async fn load(node: &Node) -> Result<&'static (Bytes, String), ApiError> {
    let work_dir = node.config().data_dir.clone();
    tokio::task::spawn_blocking(move || distributable(&work_dir)).await.map_err(ApiError::internal)?
}

/// `value` as one single-quoted shell word.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// The installer for machines of this cluster, from the configuration only.
pub fn render(node: &Node) -> Result<String, ApiError> {
    let config = node.config();
    let source = config.public_url(config.id);
    let mut cluster: Vec<String> =
        node.cluster_info().members.iter().map(|m| config.member_url(m.id, &m.api_addr)).collect();
    if cluster.is_empty() {
        cluster.push(source.clone());
    }
    // Membership addresses come from add-node (checked there); refuse anything that would not
    // be a plain URL rather than put it in a script.
    for url in std::iter::once(&source).chain(&cluster) {
        crate::config::check_public_url(url).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    let (ca_pem, ca_sha256) = match api_ca(node)? {
        Some(pem) => {
            let digest = hex::encode(Sha256::digest(pem.as_bytes()));
            (pem, digest)
        }
        None => (String::new(), String::new()),
    };
    Ok(SCRIPT
        .replace("@SOURCE@", &shell_quote(&source))
        .replace("@CLUSTER@", &shell_quote(&cluster.join(",")))
        .replace("@CA_PEM@", &shell_quote(&ca_pem))
        .replace("@CA_SHA256@", &shell_quote(&ca_sha256)))
}

/// The CA that signed this node's API certificate (PEM, checked to hold nothing else), when
/// the API speaks HTTPS.
fn api_ca(node: &Node) -> Result<Option<String>, ApiError> {
    let Some(path) = node.config().api_ca_cert() else { return Ok(None) };
    let pem = std::fs::read_to_string(&path)
        .map_err(|e| ApiError::internal(format!("cannot read the cluster CA {}: {e}", path.display())))?;
    let pem = pem.trim().to_string();
    if !pem.starts_with("-----BEGIN CERTIFICATE-----")
        || !pem.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=- \n".contains(&b))
    {
        return Err(ApiError::internal(format!("{} is not a PEM certificate", path.display())));
    }
    Ok(Some(pem))
}

/// `GET /ca.crt`: the cluster CA a machine must trust to reach this node over HTTPS (public,
/// like the certificate itself). The console puts it in its install command, so a machine
/// pins it rather than being told to skip verification.
#[utoipa::path(
    get,
    path = "/ca.crt", operation_id = "cluster_ca",
    tag = "installation",
    responses(
        (status = 200, description = "The cluster CA certificate (PEM)", body = String, content_type = "application/x-pem-file"),
        super::openapi::Errors,
    ),
)]
pub async fn ca(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    match api_ca(&node)? {
        Some(pem) => Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], format!("{pem}\n")).into_response()),
        None => Err(ApiError::not_found("this node's API speaks plain HTTP: it has no CA to trust")),
    }
}

/// `GET /install.sh`: the installer for machines of this cluster.
#[utoipa::path(
    get,
    path = "/install.sh", operation_id = "install_script",
    tag = "installation",
    responses(
        (status = 200, description = "A POSIX shell script: `curl -fsSL …/install.sh | ZTNA_AUTH_KEY=… sh`", body = String, content_type = "text/x-shellscript; charset=utf-8"),
        super::openapi::Errors,
    ),
)]
pub async fn script(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = render(&node)?;
    Ok(([(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")], text).into_response())
}

/// `GET /download/ztna-linux-x86_64`: the `ztna` binary the installer fetches.
#[utoipa::path(
    get,
    path = "/download/ztna-linux-x86_64", operation_id = "download_binary",
    tag = "installation",
    responses(
        (status = 200, description = "The binary", body = Vec<u8>, content_type = "application/octet-stream"),
        super::openapi::Errors,
    ),
)]
pub async fn binary(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let (bytes, _) = load(&node).await?;
    // Slices of the shared bytes, one at a time: a download holds a reference and at most one
    // chunk in the connection's buffer, never a copy of the binary. A client that stops reading
    // is dropped by the listener's idle timeout, one that reads a trickle by the minimum rate.
    const CHUNK: usize = 64 * 1024;
    let bytes = bytes.clone();
    let chunks = (0..bytes.len())
        .step_by(CHUNK)
        .map(move |at| Ok::<_, std::convert::Infallible>(bytes.slice(at..(at + CHUNK).min(bytes.len()))));
    let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
    let body = crate::listener::min_rate(body, DOWNLOAD_MIN_RATE, DOWNLOAD_GRACE, DOWNLOAD_DEADLINE);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// `GET /download/ztna-linux-x86_64.sha256`: its SHA-256, as `sha256sum` prints it.
#[utoipa::path(
    get,
    path = "/download/ztna-linux-x86_64.sha256", operation_id = "download_checksum",
    tag = "installation",
    responses(
        (status = 200, description = "`<hex>  ztna-linux-x86_64`", body = String, content_type = "text/plain"),
        super::openapi::Errors,
    ),
)]
pub async fn checksum(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let (_, digest) = load(&node).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], format!("{digest}  ztna-linux-x86_64\n")).into_response())
}
