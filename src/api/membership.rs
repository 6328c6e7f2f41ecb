//! `POST /api/cluster/membership` (operator key): add or remove a node, one change at a time.
//!
//! `{"action": "add_node", "node_id": 4, "raft_addr": "…", "api_addr": "…"}` answers once the
//! node has caught up and votes; `{"action": "remove_node", "node_id": 2}` once it is out of the
//! configuration and its id is retired. Both answer the members afterwards.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::{actions, HostPort};
use super::{api_key_actor, body};
use crate::membership::{Change, MembershipError};
use crate::node::{MemberInfo, Node};

actions! {
    /// The body of `POST /api/cluster/membership` (operator key), by its `action`.
    pub enum MembershipRequest {
        "add_node" => Add(AddNode),
        "remove_node" => Remove(RemoveNode),
    }
}

/// `add_node`: a new node joins as a learner, catches up, then votes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    /// A node id never used in this cluster.
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    pub node_id: u64,
    /// Its Raft (internal) address.
    pub raft_addr: HostPort,
    /// Its public API address.
    pub api_addr: HostPort,
}

/// `remove_node`: the node leaves the configuration; its id is retired.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveNode {
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    pub node_id: u64,
}

/// The members after the change.
#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipAnswer {
    pub members: Vec<MemberInfo>,
    /// The node was removed before (the request changed nothing).
    pub already_removed: bool,
}

/// `POST /api/cluster/membership`: add or remove a node, one change at a time (operator key).
#[utoipa::path(
    post,
    path = "/api/cluster/membership", operation_id = "cluster_membership",
    tag = "cluster",
    request_body = MembershipRequest,
    responses((status = 200, description = "The change is made: the members now", body = MembershipAnswer), super::openapi::Errors),
    security(("operator_key" = [])),
)]
pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let actor = api_key_actor(&headers)?;
    let request = MembershipRequest::parse(&body(raw)?)?;
    let change = match request {
        MembershipRequest::Add(r) => {
            Change::Add { node_id: r.node_id, raft_addr: r.raft_addr.into_inner(), api_addr: r.api_addr.into_inner() }
        }
        MembershipRequest::Remove(r) => Change::Remove { node_id: r.node_id },
    };
    let (Change::Add { node_id, .. } | Change::Remove { node_id }) = &change;
    if *node_id == 0 || *node_id > i64::MAX as u64 {
        return Err(ApiError::bad_field("node_id", format!("must be from 1 to {}", i64::MAX)));
    }
    // Only for the answer's wording: the change itself is decided on the leader.
    let already_removed = matches!(change, Change::Remove { node_id } if node.node_record(node_id).is_some_and(|r| r.removed_at.is_some()));
    let members = node.change_membership(&actor, &change).await.map_err(error)?;
    Ok(Json(MembershipAnswer { members, already_removed }))
}

fn error(e: MembershipError) -> ApiError {
    let message = e.to_string();
    match e {
        MembershipError::Refused(op) => op.into(),
        MembershipError::InProgress(_) => ApiError::new(StatusCode::CONFLICT, "membership_change_in_progress", message),
        MembershipError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "membership_conflict", message),
        MembershipError::NotMember(_) => ApiError::new(StatusCode::NOT_FOUND, "not_a_member", message),
        MembershipError::CatchUpTimeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "catch_up_timeout", message),
        MembershipError::Unavailable(_) | MembershipError::NotLeader(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
}
