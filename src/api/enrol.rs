//! `POST /api/enrol`: a machine enrols with an auth key and gets its own node key.
//!
//! No API key: the auth key is the credential. The machine id and node key are made here,
//! before proposing; the state machine decides whether the key may enrol.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
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
    let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
    fields.finish()?;
    check_hostname(&hostname)?;
    if node_public_key.len() != 64 || !node_public_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_field("node_public_key", "must be 64 hexadecimal characters (a 32-byte public key)"));
    }
    let node_public_key = node_public_key.to_ascii_lowercase();
    let presented = parse_credential(CredentialKind::AuthKey, &auth_key).ok_or(OpError::InvalidAuthKey)?;
    let auth_key_id = format!("{AUTH_KEY_ID_PREFIX}{}", presented.id);
    if crate::faults::stale_read_enrol() {
        // The forbidden pattern, on purpose: decide from this node's local state, then write.
        node.local_auth_key(&auth_key_id).map_or(Ok(()), |key| key.check_uses_left())?;
    }

    let (outcome, node_key) = write_with_fresh_ids(&node, request_id, Actor::Anonymous, || {
        let machine_id = format!("{MACHINE_ID_PREFIX}{}", random_base62(ID_LEN));
        let node_key = new_credential(CredentialKind::NodeKey, random_base62(ID_LEN));
        let op = Op::Enrol {
            auth_key_id: auth_key_id.clone(),
            auth_key_hash: presented.hash,
            hostname: hostname.clone(),
            node_public_key: node_public_key.clone(),
            machine_id,
            node_key: NewCredential { id: node_key.id.clone(), hash: node_key.hash },
        };
        (op, node_key)
    })
    .await?;
    match outcome? {
        OpOk::Enrolled(e) => Ok(Json(json!({
            "machine_id": e.machine_id,
            "node_key": node_key.text,
            "org_id": e.org_id,
            "tags": e.tags,
            "ephemeral": e.ephemeral,
        }))),
        other => Err(ApiError::internal(format!("enrol answered {other:?}"))),
    }
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
