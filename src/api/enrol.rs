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
use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::{request_id, Fields};
use super::{body, new_request_id, write_with_fresh_ids};
use crate::node::Node;
use crate::secret::{new_credential, parse_credential, random_base62, CredentialKind, ID_LEN};
use crate::sm::model::*;

pub async fn handle(
    State(node): State<Arc<Node>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = Fields::parse(&body(raw)?)?;
    let auth_key = fields.str("auth_key")?;
    let hostname = fields.str("hostname")?;
    let node_public_key = fields.str("node_public_key")?;
    let client_request_id = request_id(&mut fields)?;
    let proof = fields.opt_str("proof")?;
    let issued_at = fields.opt_u64("proof_issued_at")?;
    let server_key = fields.opt_str("server_key")?;
    fields.finish()?;
    let request_id = client_request_id.clone().unwrap_or_else(new_request_id);
    check_hostname(&hostname)?;
    if node_public_key.len() != 64 || !node_public_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_field("node_public_key", "must be 64 hexadecimal characters (a 32-byte public key)"));
    }
    let node_public_key = node_public_key.to_ascii_lowercase();
    if node.rules() >= 3 && !ztna_proof::is_canonical_public_key(&node_public_key) {
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
        // By the cluster's clock as this node sees it (the median with its peers), not its own
        // wall clock alone; the state machine checks again by the time stamped on the entry.
        let skew = node.clock().estimate().abs_diff(issued_at);
        if skew > crate::proof::MAX_AGE_MS {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "proof_invalid",
                format!(
                    "proof_issued_at is {} s from this node's clock (at most {} s): check the machine's clock",
                    skew / 1000,
                    crate::proof::MAX_AGE_MS / 1000
                ),
            ));
        }
        Some(issued_at)
    } else {
        None
    };
    if crate::faults::stale_read_enrol() {
        // The forbidden pattern, on purpose: decide from this node's local state, then write.
        node.local_auth_key(&auth_key_id).map_or(Ok(()), |key| key.check_uses_left())?;
    }

    let (outcome, node_key) = write_with_fresh_ids(&node, request_id, Actor::Anonymous, || {
        let machine_id = format!("{MACHINE_ID_PREFIX}{}", random_base62(ID_LEN));
        let node_key = new_credential(CredentialKind::NodeKey, random_base62(ID_LEN));
        let new_key = NewCredential { id: node_key.id.clone(), hash: node_key.hash };
        let op = match proved_at {
            Some(proved_at) => Op::EnrolProven {
                auth_key_id: auth_key_id.clone(),
                auth_key_hash: presented.hash,
                hostname: hostname.clone(),
                node_public_key: node_public_key.clone(),
                machine_id,
                node_key: new_key,
                proved_at,
            },
            None => Op::Enrol {
                auth_key_id: auth_key_id.clone(),
                auth_key_hash: presented.hash,
                hostname: hostname.clone(),
                node_public_key: node_public_key.clone(),
                machine_id,
                node_key: new_key,
            },
        };
        (op, node_key)
    })
    .await?;
    // The legacy op answers no state: its machines are active.
    let (e, state) = match outcome? {
        OpOk::Enrolled(e) => (e, json!("active")),
        OpOk::EnrolledAs { enrolled, state } => (enrolled, json!(state)),
        other => return Err(ApiError::internal(format!("enrol answered {other:?}"))),
    };
    Ok(Json(json!({
        "machine_id": e.machine_id,
        "node_key": node_key.text,
        "org_id": e.org_id,
        "tags": e.tags,
        "ephemeral": e.ephemeral,
        "state": state,
    })))
}

/// `GET /api/enrol/key`: this node's public enrolment key.
pub async fn key(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({
        "node_id": node.id(),
        "server_key": node.enrol_key().public_hex(),
        "max_age_s": crate::proof::MAX_AGE_MS / 1000,
    }))
}

fn check_hostname(hostname: &str) -> Result<(), ApiError> {
    let ok = (1..=253).contains(&hostname.len())
        && hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_field("hostname", "must be 1 to 253 characters of letters, digits, '-', '_' or '.'"))
    }
}
