//! `GET /api/cluster`, `GET /healthz` and `GET /readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::node::{ClusterInfo, Node};

/// This node's view of the cluster: its role, term, log and applied index, leader and members.
pub async fn info(State(node): State<Arc<Node>>) -> Json<ClusterInfo> {
    Json(node.cluster_info())
}

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The node is a cluster member that knows a leader.
pub async fn readyz(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    if node.is_ready() {
        Ok(Json(json!({ "status": "ready", "leader": node.cluster_info().leader })))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "this node knows no leader yet"))
    }
}
