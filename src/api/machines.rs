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
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::{
    actions, parse_or_empty, request_id_or_new, Empty, MachineId, NodePublicKey, OrgId, RequestId, RequestOnly, Tags,
};
use super::views::{answers, MachineStateView, MachineView};
use super::{api_key_actor, body, views};
use crate::node::Node;
use crate::secret::{parse_credential, CredentialKind};
use crate::sm::model::*;
use crate::sm::query::{Answer, Query};

actions! {
    /// The body of `POST /api/machine-admin`, by its `action`.
    pub enum MachineAdminRequest {
        "list_machines" => List(ListMachines),
        "quarantine" => Quarantine(OnMachine),
        "unquarantine" => Unquarantine(OnMachine),
        "delete" => Delete(OnMachine),
        "set_tags" => SetTags(SetMachineTags),
        "revoke_node_key" => RevokeNodeKey(OnMachine),
        "approve" => Approve(OnMachine),
        "reject" => Reject(OnMachine),
        "allow_reenrol" => AllowReenrol(AllowReenrol),
    }
}

answers! {
    /// What `POST /api/machine-admin` answers, by its `action`.
    pub enum MachineAdminAnswer {
        List(MachineList),
        Machine(MachineView),
        Deleted(MachineDeleted),
        Reenrol(ReenrolAllowed),
    }
}

/// `list_machines`: the org's machines, optionally in one state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMachines {
    pub org_id: OrgId,
    pub state: Option<MachineStateView>,
}

/// An action on one machine (`quarantine`, `unquarantine`, `delete`, `revoke_node_key`,
/// `approve`, `reject`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnMachine {
    pub org_id: OrgId,
    pub machine_id: MachineId,
    pub request_id: Option<RequestId>,
}

/// `set_tags`: replaces a machine's tags.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMachineTags {
    pub org_id: OrgId,
    pub machine_id: MachineId,
    /// The machine's tags from now on; left out: none.
    pub tags: Option<Tags>,
    pub request_id: Option<RequestId>,
}

/// `allow_reenrol`: lets a deleted (or rejected) machine's public key enrol again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowReenrol {
    pub org_id: OrgId,
    pub node_public_key: NodePublicKey,
    pub request_id: Option<RequestId>,
}

/// The org's machines.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineList {
    pub machines: Vec<MachineView>,
}

/// A machine deleted (or rejected, or logged out).
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineDeleted {
    pub machine_id: String,
    /// Always true.
    pub deleted: bool,
}

/// A public key allowed to enrol again.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReenrolAllowed {
    pub node_public_key: String,
    /// Always true.
    pub allowed: bool,
}

/// Tags from a request, each once.
fn unique(tags: Option<Tags>) -> Vec<String> {
    let mut tags = tags.map(|t| t.0).unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    tags
}

/// Answers a machine command's outcome.
fn machine_answer(node: &Node, outcome: Outcome) -> Result<MachineAdminAnswer, ApiError> {
    match outcome? {
        OpOk::Machine(machine) => Ok(MachineAdminAnswer::Machine(views::machine(&machine))),
        OpOk::MachineRemoved { machine_id } => {
            Ok(MachineAdminAnswer::Deleted(MachineDeleted { machine_id, deleted: true }))
        }
        other => Err(ApiError::internal(format!("machine command on node {} answered {other:?}", node.id()))),
    }
}

/// `POST /api/machine-admin`: list an org's machines and act on them (an org's API key).
#[utoipa::path(
    post,
    path = "/api/machine-admin", operation_id = "machine_admin",
    tag = "machines",
    request_body = MachineAdminRequest,
    responses(
        (status = 200, description = "By action: the machines, the machine after the action, the machine deleted (delete, reject), or the key allowed to enrol again", body = MachineAdminAnswer),
        super::openapi::Errors,
    ),
    security(("api_key" = [])),
)]
pub async fn admin(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<MachineAdminAnswer>, ApiError> {
    let actor = api_key_actor(&headers)?;
    let request = MachineAdminRequest::parse(&body(raw)?)?;
    let needs_rules = match &request {
        MachineAdminRequest::AllowReenrol(_) => Some("allow_reenrol"),
        MachineAdminRequest::Approve(_) => Some("approve"),
        MachineAdminRequest::Reject(_) => Some("reject"),
        _ => None,
    };
    if let Some(action) = needs_rules.filter(|_| node.rules() < 3) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "upgrade_in_progress",
            format!("{action} needs every node on a build that knows it (the cluster has not adopted its rules yet)"),
        ));
    }
    let (target, action) = match request {
        MachineAdminRequest::List(r) => {
            return match node.read(&actor, &Query::ListMachines { org_id: r.org_id.into_inner() }).await?? {
                Answer::Machines(machines) => {
                    let machines =
                        machines.iter().map(views::machine).filter(|m| r.state.is_none_or(|s| m.state == s)).collect();
                    Ok(Json(MachineAdminAnswer::List(MachineList { machines })))
                }
                other => Err(ApiError::internal(format!("list_machines answered {other:?}"))),
            };
        }
        MachineAdminRequest::AllowReenrol(r) => {
            let node_public_key = r.node_public_key.into_inner().to_ascii_lowercase();
            let op = Op::AllowReenrol { org_id: r.org_id.into_inner(), node_public_key: node_public_key.clone() };
            node.write(Command { request_id: request_id_or_new(r.request_id), actor, op }).await??;
            return Ok(Json(MachineAdminAnswer::Reenrol(ReenrolAllowed { node_public_key, allowed: true })));
        }
        MachineAdminRequest::SetTags(r) => {
            let target = OnMachine { org_id: r.org_id, machine_id: r.machine_id, request_id: r.request_id };
            (target, MachineAction::SetTags(unique(r.tags)))
        }
        MachineAdminRequest::Quarantine(r) => (r, MachineAction::Quarantine),
        MachineAdminRequest::Unquarantine(r) => (r, MachineAction::Unquarantine),
        MachineAdminRequest::Delete(r) => (r, MachineAction::Delete),
        MachineAdminRequest::RevokeNodeKey(r) => (r, MachineAction::RevokeNodeKey),
        MachineAdminRequest::Approve(r) => (r, MachineAction::Approve),
        MachineAdminRequest::Reject(r) => (r, MachineAction::Reject),
    };
    let op =
        Op::MachineAdmin { org_id: target.org_id.into_inner(), machine_id: target.machine_id.into_inner(), action };
    let command = Command { request_id: request_id_or_new(target.request_id), actor, op };
    Ok(Json(machine_answer(&node, node.write(command).await?)?))
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

/// `POST /api/machine/heartbeat`: the machine's state and tags; 401 once deleted or revoked.
#[utoipa::path(
    post,
    path = "/api/machine/heartbeat", operation_id = "machine_heartbeat",
    tag = "machine",
    request_body(content = Option<Empty>, description = "Nothing: empty, or `{}`."),
    responses((status = 200, description = "The machine as the leader has it", body = MachineView), super::openapi::Errors),
    security(("node_key" = [])),
)]
pub async fn heartbeat(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<MachineView>, ApiError> {
    let actor = node_key_actor(&headers)?;
    let Empty {} = parse_or_empty(&body(raw)?)?;
    match node.read(&actor, &Query::MachineStatus).await?? {
        Answer::Machine(machine) => Ok(Json(views::machine(&machine))),
        other => Err(ApiError::internal(format!("heartbeat answered {other:?}"))),
    }
}

/// The body of `POST /api/machine/set-tags`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOwnTags {
    /// The machine's tags from now on (within what its auth key granted); left out: none.
    pub tags: Option<Tags>,
    pub request_id: Option<RequestId>,
}

/// `POST /api/machine/set-tags` `{"tags": […]}`: the machine replaces its own tags.
#[utoipa::path(
    post,
    path = "/api/machine/set-tags", operation_id = "machine_set_tags",
    tag = "machine",
    request_body(content = Option<SetOwnTags>, description = "May be empty: no tags."),
    responses((status = 200, description = "The machine with its new tags", body = MachineView), super::openapi::Errors),
    security(("node_key" = [])),
)]
pub async fn set_tags(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<MachineAdminAnswer>, ApiError> {
    let actor = node_key_actor(&headers)?;
    let request: SetOwnTags = parse_or_empty(&body(raw)?)?;
    let op = Op::MachineSelf { action: SelfAction::SetTags(unique(request.tags)) };
    let command = Command { request_id: request_id_or_new(request.request_id), actor, op };
    Ok(Json(machine_answer(&node, node.write(command).await?)?))
}

/// `POST /api/machine/logout`: the machine deletes itself.
#[utoipa::path(
    post,
    path = "/api/machine/logout", operation_id = "machine_logout",
    tag = "machine",
    request_body(content = Option<RequestOnly>, description = "May be empty."),
    responses((status = 200, description = "The machine is deleted", body = MachineDeleted), super::openapi::Errors),
    security(("node_key" = [])),
)]
pub async fn logout(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<MachineAdminAnswer>, ApiError> {
    let actor = node_key_actor(&headers)?;
    let request: RequestOnly = parse_or_empty(&body(raw)?)?;
    let command = Command {
        request_id: request_id_or_new(request.request_id),
        actor,
        op: Op::MachineSelf { action: SelfAction::Logout },
    };
    Ok(Json(machine_answer(&node, node.write(command).await?)?))
}
