//! `POST /api/cluster/backup` (operator key): a consistent backup of the whole state, streamed
//! from the leader. Another node checks the key through the leader and answers the operator
//! 307 to the leader's address (the CLI follows it with the same key); anyone else is refused
//! there as at the leader. The answer's headers carry the backup's log index, term, row count and the
//! SHA-256 of the body.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::api_key_actor;
use super::error::ApiError;
use crate::node::{BackupRefusal, Node};

pub const HEADER_INDEX: &str = "x-ztna-backup-index";
pub const HEADER_TERM: &str = "x-ztna-backup-term";
pub const HEADER_ROWS: &str = "x-ztna-backup-rows";
pub const HEADER_SHA256: &str = "x-ztna-backup-sha256";

/// `POST /api/cluster/backup` (operator key): the backup, streamed from the leader.
#[utoipa::path(
    post,
    path = "/api/cluster/backup", operation_id = "cluster_backup",
    tag = "cluster",
    responses(
        (status = 200, description = "The backup (`ztna cluster restore` reads it)", body = Vec<u8>, content_type = "application/octet-stream",
            headers(
                ("x-ztna-backup-index" = u64, description = "The log index it was taken at"),
                ("x-ztna-backup-term" = u64, description = "The term of that entry"),
                ("x-ztna-backup-rows" = u64, description = "Rows in it"),
                ("x-ztna-backup-sha256" = String, description = "SHA-256 of the body, hex"),
            )),
        (status = 307, description = "Not the leader, and the key is the operator's (checked through the leader): `Location` is the leader's backup URL (send the same key there)",
            headers(("location" = String, description = "The leader's backup URL"))),
        super::openapi::Errors,
    ),
    security(("operator_key" = [])),
)]
pub async fn handle(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let actor = api_key_actor(&headers)?;
    let (file, info) = match node.backup(&actor).await {
        Ok(taken) => taken,
        Err(BackupRefusal::Refused(e)) => return Err(e.into()),
        Err(BackupRefusal::NotLeader { api_addr, .. }) => {
            let location = format!("{}://{api_addr}/api/cluster/backup", node.config().scheme());
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            let value = HeaderValue::from_str(&location).map_err(ApiError::internal)?;
            response.headers_mut().insert(header::LOCATION, value);
            return Ok(response);
        }
        Err(BackupRefusal::Unavailable(e)) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e));
        }
        Err(BackupRefusal::Failed(e)) => return Err(ApiError::internal(e)),
    };
    let stream = futures::stream::unfold(Some(tokio::fs::File::from_std(file)), |file| async move {
        let mut file = file?;
        let mut chunk = vec![0u8; 256 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    // A backup of a large state takes a while; it must keep moving all the same.
    let body = crate::listener::min_rate(
        Body::from_stream(stream),
        super::install::DOWNLOAD_MIN_RATE,
        super::install::DOWNLOAD_GRACE,
        std::time::Duration::from_secs(3600),
    );
    let mut response = body.into_response();
    let set = |response: &mut Response, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    };
    set(&mut response, "content-type", "application/octet-stream".into());
    set(&mut response, "content-length", info.bytes.to_string());
    set(&mut response, HEADER_INDEX, info.index.to_string());
    set(&mut response, HEADER_TERM, info.term.to_string());
    set(&mut response, HEADER_ROWS, info.rows.to_string());
    set(&mut response, HEADER_SHA256, info.sha256.clone());
    Ok(response)
}
