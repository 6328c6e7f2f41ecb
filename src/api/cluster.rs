//! `GET /api/cluster`, `GET /api/cluster/nodes`, `GET /healthz` and `GET /readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::node::{ClusterInfo, Node};

/// This node's view of the cluster: its role, term, log and applied index, leader and members.
#[utoipa::path(
    get,
    path = "/api/cluster", operation_id = "cluster_info",
    tag = "cluster",
    responses((status = 200, description = "This node's view of the cluster", body = ClusterInfo)),
)]
pub async fn info(State(node): State<Arc<Node>>) -> Json<ClusterInfo> {
    Json(node.cluster_info())
}

/// Every member's own view of the cluster, unreachable members included (the console's page).
#[utoipa::path(
    get,
    path = "/api/cluster/nodes", operation_id = "cluster_nodes",
    tag = "cluster",
    responses((status = 200, description = "Every member as it answered, or why it did not", body = crate::cluster_view::ClusterView)),
)]
pub async fn nodes(State(node): State<Arc<Node>>) -> Json<crate::cluster_view::ClusterView> {
    Json(node.cluster_view().await)
}

/// `{"status": "ok"}`: the process is up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// "ok".
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "cluster", responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_string() })
}

/// `{"status": "ready", "leader": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// "ready".
    pub status: String,
    /// The leader this node knows.
    pub leader: Option<u64>,
}

/// The node can serve: a member whose Raft runs, that knows a leader, with room on its disk
/// and not far behind. Otherwise 503 with the reason's code (`disk_full`, `raft_stopped`,
/// `not_a_member`, `no_leader`, `catching_up`), so a load balancer stops sending it traffic.
#[utoipa::path(
    get,
    path = "/readyz", operation_id = "readyz",
    tag = "cluster",
    responses(
        (status = 200, description = "The node can serve", body = Ready),
        (status = 503, description = "It cannot: `disk_full`, `raft_stopped`, `not_a_member`, `no_leader` or `catching_up`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn readyz(State(node): State<Arc<Node>>) -> Result<Json<Ready>, ApiError> {
    match node.readiness() {
        Ok(leader) => Ok(Json(Ready { status: "ready".to_string(), leader })),
        Err((code, why)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, why)),
    }
}
