//! Enrolled machines: `POST /api/machine-admin` (an org's API key) and the machine's own calls,
//! `POST /api/machine/{heartbeat,set-tags,logout}` with `Authorization: Bearer <node key>`.
//!
//! A heartbeat is a linearizable read of the machine's record on the leader, which also records
//! the machine as alive there (see `liveness`); it is not a Raft write.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::{check_id, request_id, Fields};
use super::{api_key_actor, body, new_request_id, views};
use crate::node::Node;
use crate::secret::{parse_credential, CredentialKind};
use crate::sm::model::*;
use crate::sm::query::{Answer, Query};

pub(crate) const ACTIONS: &str =
    "list_machines, quarantine, unquarantine, delete, set_tags, revoke_node_key, approve, reject, allow_reenrol";

/// The machine states `list_machines` filters on.
const STATES: &str = "active, pending, quarantined, node_key_revoked";

/// Tags from a request, checked like an auth key's.
fn tags(fields: &mut Fields) -> Result<Vec<String>, ApiError> {
    let mut tags = fields.string_list("tags")?;
    validate_tags(&tags)?;
    let mut seen = std::collections::BTreeSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    Ok(tags)
}

/// Answers a machine command's outcome as JSON.
fn machine_answer(node: &Node, outcome: Outcome) -> Result<Json<Value>, ApiError> {
    match outcome? {
        OpOk::Machine(machine) => Ok(Json(views::machine(&machine))),
        OpOk::MachineRemoved { machine_id } => Ok(Json(json!({ "machine_id": machine_id, "deleted": true }))),
        other => Err(ApiError::internal(format!("machine command on node {} answered {other:?}", node.id()))),
    }
}

pub async fn admin(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = Fields::parse(&body(raw)?)?;
    let action = fields.str("action")?;
    let org_id = fields.str("org_id")?;
    super::fields::check_org_id("org_id", &org_id)?;
    let actor = api_key_actor(&headers)?;
    if action == "list_machines" {
        let state = fields.opt_str("state")?;
        fields.finish()?;
        if let Some(state) = &state {
            if !STATES.split(", ").any(|s| s == state) {
                return Err(ApiError::bad_field("state", format!("unknown state {state:?}; must be one of {STATES}")));
            }
        }
        return match node.read(&actor, &Query::ListMachines { org_id }).await?? {
            Answer::Machines(machines) => {
                let listed: Vec<Value> = machines
                    .iter()
                    .map(views::machine)
                    .filter(|m| state.as_ref().is_none_or(|s| m["state"] == **s))
                    .collect();
                Ok(Json(json!({ "machines": listed })))
            }
            other => Err(ApiError::internal(format!("list_machines answered {other:?}"))),
        };
    }
    if matches!(action.as_str(), "allow_reenrol" | "approve" | "reject") && node.rules() < 3 {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "upgrade_in_progress",
            format!("{action} needs every node on a build that knows it (the cluster has not adopted its rules yet)"),
        ));
    }
    if action == "allow_reenrol" {
        // Lets a deleted (or rejected) machine's public key enrol again.
        let node_public_key = fields.str("node_public_key")?;
        let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
        fields.finish()?;
        if node_public_key.len() != 64 || !node_public_key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_field(
                "node_public_key",
                "must be 64 hexadecimal characters (a 32-byte public key)",
            ));
        }
        let op = Op::AllowReenrol { org_id, node_public_key: node_public_key.to_ascii_lowercase() };
        node.write(Command { request_id, actor, op }).await??;
        return Ok(Json(json!({ "node_public_key": node_public_key.to_ascii_lowercase(), "allowed": true })));
    }
    let machine_id = fields.str("machine_id")?;
    let action = match action.as_str() {
        "quarantine" => MachineAction::Quarantine,
        "unquarantine" => MachineAction::Unquarantine,
        "delete" => MachineAction::Delete,
        "revoke_node_key" => MachineAction::RevokeNodeKey,
        "set_tags" => MachineAction::SetTags(tags(&mut fields)?),
        "approve" => MachineAction::Approve,
        "reject" => MachineAction::Reject,
        other => {
            return Err(ApiError::bad_field("action", format!("unknown action {other:?}; must be one of {ACTIONS}")))
        }
    };
    let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
    fields.finish()?;
    check_id("machine_id", MACHINE_ID_PREFIX, &machine_id)?;
    let command = Command { request_id, actor, op: Op::MachineAdmin { org_id, machine_id, action } };
    machine_answer(&node, node.write(command).await?)
}

/// The node key from `Authorization: Bearer nodekey-…`.
fn node_key_actor(headers: &HeaderMap) -> Result<Actor, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("missing header Authorization: Bearer <node key>"))?;
    let presented = parse_credential(CredentialKind::NodeKey, token).ok_or(OpError::UnknownNodeKey)?;
    Ok(Actor::NodeKey { node_key_id: presented.id, secret_hash: presented.hash })
}

/// Fields of a body that may be empty.
fn optional_fields(raw: Result<Bytes, BytesRejection>) -> Result<Fields, ApiError> {
    let raw = body(raw)?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        Fields::parse(b"{}")
    } else {
        Fields::parse(&raw)
    }
}

/// `POST /api/machine/heartbeat`: the machine's state and tags; 401 once deleted or revoked.
pub async fn heartbeat(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    optional_fields(raw)?.finish()?;
    let actor = node_key_actor(&headers)?;
    match node.read(&actor, &Query::MachineStatus).await?? {
        Answer::Machine(machine) => Ok(Json(views::machine(&machine))),
        other => Err(ApiError::internal(format!("heartbeat answered {other:?}"))),
    }
}

/// `POST /api/machine/set-tags` `{"tags": […]}`: the machine replaces its own tags.
pub async fn set_tags(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = optional_fields(raw)?;
    let tags = tags(&mut fields)?;
    let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
    fields.finish()?;
    let actor = node_key_actor(&headers)?;
    let command = Command { request_id, actor, op: Op::MachineSelf { action: SelfAction::SetTags(tags) } };
    machine_answer(&node, node.write(command).await?)
}

/// `POST /api/machine/logout`: the machine deletes itself.
pub async fn logout(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = optional_fields(raw)?;
    let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
    fields.finish()?;
    let actor = node_key_actor(&headers)?;
    let command = Command { request_id, actor, op: Op::MachineSelf { action: SelfAction::Logout } };
    machine_answer(&node, node.write(command).await?)
}
