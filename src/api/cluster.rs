//! `GET /api/cluster`, `GET /api/cluster/nodes`, `GET /api/cluster/hash`, `GET /healthz` and
//! `GET /readyz`.
//!
//! The cluster's internals (members' addresses, terms, log indexes) are shown to the holder of
//! an API key (any: an org's or the operator's), or of the bootstrap token before the cluster
//! is initialised, checked against this node's own state (a node without a leader still
//! answers); `/healthz` and `/readyz` are the unauthenticated health view.

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
    responses((status = 200, description = "This node's view of the cluster", body = ClusterInfo), super::openapi::Errors),
    security(("api_key" = []), ("operator_key" = [])),
)]
pub async fn info(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<ClusterInfo>, ApiError> {
    may_see_internals(&node, &headers)?;
    Ok(Json(node.cluster_info()))
}

/// An API key this node knows as valid, or the bootstrap token (see the module header).
fn may_see_internals(node: &Node, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    match super::throttle::presented(headers) {
        Some((_, crate::secret::CredentialKind::BootstrapToken, _)) => super::org::check_bootstrap_token(node, headers),
        Some((_, kind @ crate::secret::CredentialKind::ApiKey, text)) if node.credential_valid_here(kind, &text) => Ok(()),
        Some(_) => Err(crate::sm::model::OpError::Unauthorized.into()),
        None => Err(ApiError::unauthorized(
            "the cluster's internals need an API key: Authorization: Bearer <API key> (GET /readyz and /healthz need none)",
        )),
    }
}

/// Every member's own view of the cluster, unreachable members included (the console's page).
#[utoipa::path(
    get,
    path = "/api/cluster/nodes", operation_id = "cluster_nodes",
    tag = "cluster",
    responses((status = 200, description = "Every member as it answered, or why it did not", body = crate::cluster_view::ClusterView), super::openapi::Errors),
    security(("api_key" = []), ("operator_key" = [])),
)]
pub async fn nodes(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<crate::cluster_view::ClusterView>, ApiError> {
    may_see_internals(&node, &headers)?;
    Ok(Json(node.cluster_view().await))
}

/// This node's replicated state, summed up: replicas that applied the same log hold the same
/// rows, so two nodes that answer the same `applied_index` must answer the same `hash`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateHash {
    pub node_id: u64,
    /// The log index the state is as of.
    pub applied_index: Option<u64>,
    pub rows: u64,
    /// SHA-256 over every row (length-prefixed keys and values, in key order), hex.
    pub hash: String,
}

/// This node's own state, hashed (as etcd's `endpoint hashkv`): for comparing replicas. The
/// operator key is checked through the leader; the hash is of this node's state, not forwarded.
#[utoipa::path(
    get,
    path = "/api/cluster/hash", operation_id = "cluster_hash",
    tag = "cluster",
    responses((status = 200, description = "This node's applied index and the hash of its state", body = StateHash), super::openapi::Errors),
    security(("operator_key" = [])),
)]
pub async fn hash(State(node): State<Arc<Node>>, headers: axum::http::HeaderMap) -> Result<Json<StateHash>, ApiError> {
    let actor = super::api_key_actor(&headers)?;
    match node.read(&actor, &crate::sm::query::Query::WhoAmI).await?? {
        crate::sm::query::Answer::ApiKey(record) if record.scope == crate::sm::model::ApiKeyScope::Operator => {}
        _ => return Err(crate::sm::model::OpError::Forbidden("this needs the operator key".into()).into()),
    }
    let (applied_index, rows, hash) = node.state_hash().await.map_err(ApiError::internal)?;
    Ok(Json(StateHash { node_id: node.id(), applied_index, rows, hash }))
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
