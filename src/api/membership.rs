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
use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::Fields;
use super::{api_key_actor, body};
use crate::membership::{Change, MembershipError};
use crate::node::Node;

pub(crate) const ACTIONS: &str = "add_node, remove_node";

pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = Fields::parse(&body(raw)?)?;
    let action = fields.str("action")?;
    let actor = api_key_actor(&headers)?;
    let node_id = fields.opt_u64("node_id")?.ok_or_else(|| ApiError::bad_field("node_id", "is required (a number)"))?;
    if node_id == 0 {
        return Err(ApiError::bad_field("node_id", "must be a positive number"));
    }
    let change = match action.as_str() {
        "add_node" => {
            let raft_addr = address(&mut fields, "raft_addr")?;
            let api_addr = address(&mut fields, "api_addr")?;
            Change::Add { node_id, raft_addr, api_addr }
        }
        "remove_node" => Change::Remove { node_id },
        other => return Err(ApiError::bad_field("action", format!("unknown action {other:?}; use one of {ACTIONS}"))),
    };
    fields.finish()?;
    // Only for the answer's wording: the change itself is decided on the leader.
    let already_removed = matches!(change, Change::Remove { node_id } if node.node_record(node_id).is_some_and(|r| r.removed_at.is_some()));
    let members = node.change_membership(&actor, &change).await.map_err(error)?;
    Ok(Json(json!({ "members": members, "already_removed": already_removed })))
}

/// A `host:port` address.
fn address(fields: &mut Fields, name: &'static str) -> Result<String, ApiError> {
    let addr = fields.str(name)?;
    // It goes into the membership (the log) and into the installer's URLs: a plain host:port.
    let valid = addr.len() <= 255
        && addr.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        let shown: String = addr.chars().take(64).collect();
        return Err(ApiError::bad_field(
            name,
            format!("must be host:port (letters, digits, '.', '-', IPv6 in []), got {shown:?}"),
        ));
    }
    Ok(addr)
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
