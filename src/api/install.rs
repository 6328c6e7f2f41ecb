//! The installer every node serves: `GET /install.sh`, and the node's own executable as
//! `GET /download/ztna-linux-x86_64` with its SHA-256 beside it.
//!
//! The script downloads from the node that served it (the request's `Host`) and points the agent
//! at every node of the cluster.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::node::Node;

const SCRIPT: &str = include_str!("install.sh");

/// The binary to hand out, and its SHA-256, made once per process: the running executable
/// without its debug sections (which are most of a release build's size, RocksDB's C++ debug
/// info above all), or the executable as it is where `strip` is unavailable.
fn distributable(work_dir: &Path) -> Result<&'static (Vec<u8>, String), ApiError> {
    static DIST: OnceLock<Result<(Vec<u8>, String), String>> = OnceLock::new();
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
        Ok((bytes, digest))
    });
    made.as_ref().map_err(ApiError::internal)
}

async fn load(node: &Node) -> Result<&'static (Vec<u8>, String), ApiError> {
    let work_dir = node.config().data_dir.clone();
    tokio::task::spawn_blocking(move || distributable(&work_dir)).await.map_err(ApiError::internal)?
}

pub async fn script(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let me = node.config().me().api_addr.clone();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(&me);
    let cluster: Vec<String> = node.cluster_info().members.iter().map(|m| format!("http://{}", m.api_addr)).collect();
    let text = SCRIPT.replace("@SOURCE@", &format!("http://{host}")).replace("@CLUSTER@", &cluster.join(","));
    ([(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")], text).into_response()
}

pub async fn binary(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let (bytes, _) = load(&node).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], bytes.clone()).into_response())
}

pub async fn checksum(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let (_, digest) = load(&node).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], format!("{digest}  ztna-linux-x86_64\n")).into_response())
}
