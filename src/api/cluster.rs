//! `GET /api/cluster`, `GET /api/cluster/nodes`, `GET /healthz` and `GET /readyz`.

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

/// Every member's own view of the cluster, unreachable members included (the console's page).
pub async fn nodes(State(node): State<Arc<Node>>) -> Json<crate::cluster_view::ClusterView> {
    Json(node.cluster_view().await)
}

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The node can serve: a member whose Raft runs, that knows a leader, with room on its disk
/// and not far behind. Otherwise 503 with the reason's code (`disk_full`, `raft_stopped`,
/// `not_a_member`, `no_leader`, `catching_up`), so a load balancer stops sending it traffic.
pub async fn readyz(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    match node.readiness() {
        Ok(leader) => Ok(Json(json!({ "status": "ready", "leader": leader }))),
        Err((code, why)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, why)),
    }
}
