//! `POST /api/enrol`: a machine enrols with an auth key and gets its own node key; and
//! `GET /api/enrol/key`, this node's enrolment key, which the proof of possession is made with.
//!
//! No API key: the auth key is the credential, and the proof shows the caller holds the private
//! key of `node_public_key` (see `proof`); it is checked here, before anything is proposed. The
//! machine id and node key are made here, before proposing; the state machine decides whether
//! the key may enrol.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::{Hostname, NodePublicKey, RequestId};
use super::views::MachineStateView;
use super::{body, new_request_id, write_with_fresh_ids};
use crate::node::Node;
use crate::secret::{new_credential, parse_credential, random_base62, CredentialKind, ID_LEN};
use crate::sm::model::*;

/// The body of `POST /api/enrol`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The auth key, `tskey-auth-…`.
    pub auth_key: String,
    pub hostname: Hostname,
    pub node_public_key: NodePublicKey,
    /// Required with the proof: it is part of what is signed.
    pub request_id: Option<RequestId>,
    /// The proof of possession of `node_public_key`'s private key (see the README).
    pub proof: Option<String>,
    /// When the proof was made, milliseconds since the Unix epoch.
    pub proof_issued_at: Option<u64>,
    /// The enrolment key of the node the proof is for (`GET /api/enrol/key`).
    pub server_key: Option<String>,
}

/// What `POST /api/enrol` answers: the machine's node key, this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enrolled {
    pub machine_id: String,
    /// The machine's own credential, `nodekey-…`: it authenticates the machine's calls.
    pub node_key: String,
    pub org_id: String,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    /// `pending` when its key was not pre-authorized: an admin approves it.
    pub state: MachineStateView,
}

/// `POST /api/enrol`: a machine enrols with an auth key (no API key: the auth key is the
/// credential, and the proof shows the caller holds `node_public_key`'s private key).
#[utoipa::path(
    post,
    path = "/api/enrol", operation_id = "enrol",
    tag = "machine",
    request_body = EnrolRequest,
    responses((status = 200, description = "Enrolled (or enrolled before: the same machine)", body = Enrolled), super::openapi::Errors),
)]
pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Enrolled>, ApiError> {
    let request: EnrolRequest = super::fields::parse(&body(raw)?)?;
    // The auth key is the credential: a held address enrols only with a key this node knows
    // (see `throttle`), and a key refused too often has its refusals answered 429.
    let throttle = node.throttle();
    let address = connect.map(|c| throttle.client_address(c.0 .0.ip(), &headers));
    if let Some(wait) = address.and_then(|a| throttle.address_over(a)) {
        if !node.auth_key_known_here(&request.auth_key) {
            crate::metrics::global().throttled();
            return Err(ApiError::too_many_failures(wait, "this address"));
        }
    }
    let credential = parse_credential(CredentialKind::AuthKey, &request.auth_key)
        .map(|c| format!("{}{}", CredentialKind::AuthKey.prefix(), c.id));
    match enrol(&node, request).await {
        // Failures of the auth key itself count against its id; a proof made for another node,
        // a stale or replayed proof, or a machine's decisions say nothing about the key, and
        // are never turned into 429 (the agent must see `wrong_server_key` to prove again).
        Err(e) if KEY_FAILURES.contains(&e.code) => match credential.and_then(|id| throttle.credential_failed(id)) {
            Some(wait) => {
                crate::metrics::global().throttled();
                Err(ApiError::too_many_failures(wait, "this credential"))
            }
            None => Err(e),
        },
        other => other,
    }
}

/// The enrolment refusals that are the auth key's own (a wrong secret, a spent, revoked or
/// expired key): the throttle counts them per key id.
const KEY_FAILURES: &[&str] = &["invalid_auth_key", "key_used", "key_exhausted", "key_revoked", "key_expired"];

async fn enrol(node: &Arc<Node>, request: EnrolRequest) -> Result<Json<Enrolled>, ApiError> {
    let EnrolRequest { auth_key, hostname, node_public_key, request_id, proof, proof_issued_at, server_key } = request;
    let (hostname, issued_at) = (hostname.into_inner(), proof_issued_at);
    let client_request_id = request_id.map(RequestId::into_inner);
    let request_id = client_request_id.clone().unwrap_or_else(new_request_id);
    let node_public_key = node_public_key.into_inner().to_ascii_lowercase();
    if node.rules() >= 3 && !ztna_proof::is_canonical_encoding(&node_public_key) {
        // One machine, one spelling: X25519 aliases would dodge the decisions kept per key.
        return Err(ApiError::bad_field("node_public_key", "must be a canonical X25519 public key (below 2^255 - 19)"));
    }
    let presented = parse_credential(CredentialKind::AuthKey, &auth_key).ok_or(OpError::InvalidAuthKey)?;
    let auth_key_id = format!("{AUTH_KEY_ID_PREFIX}{}", presented.id);
    // Proof of possession (rules 3: once every node runs a build that knows `EnrolProven` and
    // the cluster adopted them; until then enrolment is as before).
    let proved_at = if node.rules() >= 3 {
        let (Some(proof), Some(issued_at), Some(server_key), Some(request_id)) =
            (&proof, issued_at, &server_key, &client_request_id)
        else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "proof_required",
                "enrolment needs a proof of possession of node_public_key's private key: request_id, server_key \
                 (GET /api/enrol/key), proof_issued_at and proof (see the README); `ztna up` makes it",
            ));
        };
        let statement = crate::proof::Statement {
            server_key,
            node_public_key: &node_public_key,
            auth_key_id: &auth_key_id,
            hostname: &hostname,
            request_id,
            issued_at,
        };
        node.enrol_key().verify(&statement, proof).map_err(|e| {
            // Made for another node's key (a load balancer sent the key request and this one
            // to different nodes): the client fetches this node's key and proves again.
            let code = if e == crate::proof::ProofError::OtherNode { "wrong_server_key" } else { "proof_invalid" };
            ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
        })?;
        // A proof is good for one use: a copy of it (captured, or sent twice) is refused here,
        // whatever became of the first. Only proofs for a key this node knows are remembered
        // (anyone can make proofs for made-up keys, which the state machine refuses anyway).
        if node.auth_key_known_here(&auth_key) && !node.proof_first_use(proof) {
            return Err(OpError::ProofReplayed.into());
        }
        // Freshness is judged by cluster time only, on the leader (before proposing) and by the
        // state machine (by the entry's time): this node's own clock, however wrong, refuses
        // no valid proof.
        Some(issued_at)
    } else {
        None
    };
    if crate::faults::stale_read_enrol() {
        // The forbidden pattern, on purpose: decide from this node's local state, then write.
        node.local_auth_key(&auth_key_id).map_or(Ok(()), |key| key.check_uses_left())?;
    }

    // From rules 4 the command names this node as the one that checked the proof: a member
    // forwarding it to the leader must be that node.
    let checked = node.rules() >= 4;
    let (outcome, node_key) = write_with_fresh_ids(node, request_id, Actor::Anonymous, || {
        let machine_id = format!("{MACHINE_ID_PREFIX}{}", random_base62(ID_LEN));
        let node_key = new_credential(CredentialKind::NodeKey, random_base62(ID_LEN));
        let new_key = NewCredential { id: node_key.id.clone(), hash: node_key.hash };
        let enrolment = NewEnrolment {
            auth_key_id: auth_key_id.clone(),
            auth_key_hash: presented.hash,
            hostname: hostname.clone(),
            node_public_key: node_public_key.clone(),
            machine_id,
            node_key: new_key,
        };
        let op = enrolment.into_op(proved_at, checked.then(|| node.id()));
        (op, node_key)
    })
    .await?;
    // The legacy op answers no state: its machines are active.
    let (e, state) = match outcome? {
        OpOk::Enrolled(e) => (e, MachineStateView::Active),
        OpOk::EnrolledAs { enrolled, state } => (enrolled, state.into()),
        other => return Err(ApiError::internal(format!("enrol answered {other:?}"))),
    };
    Ok(Json(Enrolled {
        machine_id: e.machine_id,
        node_key: node_key.text,
        org_id: e.org_id,
        tags: e.tags,
        ephemeral: e.ephemeral,
        state,
    }))
}

/// This node's enrolment key.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolKey {
    pub node_id: crate::raft_types::NodeId,
    /// The X25519 public key proofs are made for, hex.
    pub server_key: String,
    /// How old a proof may be, seconds.
    pub max_age_s: u64,
}

/// `GET /api/enrol/key`: this node's public enrolment key.
#[utoipa::path(
    get,
    path = "/api/enrol/key", operation_id = "enrol_key",
    tag = "machine",
    responses((status = 200, description = "This node's enrolment key", body = EnrolKey), super::openapi::Errors),
)]
pub async fn key(State(node): State<Arc<Node>>) -> Json<EnrolKey> {
    Json(EnrolKey {
        node_id: node.id(),
        server_key: node.enrol_key().public_hex().to_string(),
        max_age_s: crate::proof::MAX_AGE_MS / 1000,
    })
}
