//! `POST /api/key-management`: create, list, get and revoke an org's auth keys. Creating and
//! revoking are shared with the Tailscale-compatible API (`tailscale`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::{check_id, check_org_id, request_id, Fields};
use super::{api_key_actor, body, new_request_id, views, write_create};
use crate::node::Node;
use crate::secret::{new_credential, parse_credential, random_base62, CredentialKind, Secret, ID_LEN};
use crate::sm::model::*;
use crate::sm::query::{Answer, KeyFilter, Query, DEFAULT_PAGE, MAX_PAGE};

pub(crate) const ACTIONS: &str = "create_auth_key, list_auth_keys, get_auth_key, revoke_auth_key";

pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = Fields::parse(&body(raw)?)?;
    let action = fields.str("action")?;
    let org_id = fields.str("org_id")?;
    check_org_id("org_id", &org_id)?;
    let actor = api_key_actor(&headers)?;
    match action.as_str() {
        "create_auth_key" => create(&node, actor, org_id, fields).await,
        "list_auth_keys" => list(&node, actor, org_id, fields).await,
        "get_auth_key" => get(&node, actor, org_id, fields).await,
        "revoke_auth_key" => revoke(&node, actor, org_id, fields).await,
        other => Err(ApiError::bad_field("action", format!("unknown action {other:?}; must be one of {ACTIONS}"))),
    }
}

async fn create(node: &Node, actor: Actor, org_id: String, mut fields: Fields) -> Result<Json<Value>, ApiError> {
    let reusable = fields.bool_or("reusable", false)?;
    let ephemeral = fields.bool_or("ephemeral", false)?;
    let expires_in = fields.opt_u64("expires_in")?.unwrap_or(DEFAULT_EXPIRY_SECS);
    let tags = fields.string_list("tags")?;
    let description = fields.opt_str("description")?.unwrap_or_default();
    let max_uses = fields.opt_u64("max_uses")?;
    // Device approval: machines enrolled with a key that is not pre-authorized wait for an admin.
    let preauthorized = fields.bool_or("preauthorized", true)?;
    let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
    fields.finish()?;
    let min_expiry = node.config().settings().test_only_min_expiry_secs;
    let spec = AuthKeySpec::new(reusable, ephemeral, expires_in, tags, description, max_uses, min_expiry)?;
    let (record, secret) = create_auth_key(node, actor, org_id, spec, preauthorized, request_id).await?;
    // Its state at the entry's cluster time, when it was created.
    let mut view = views::auth_key(&record, record.created_at);
    // The secret is shown this once; only its hash is stored.
    view["key"] = Value::String(secret.text);
    Ok(Json(view))
}

/// Creates an auth key of `org_id` (this API's and the Tailscale-compatible one's); the record
/// and its secret, which no later answer carries.
pub(crate) async fn create_auth_key(
    node: &Node,
    actor: Actor,
    org_id: String,
    spec: AuthKeySpec,
    preauthorized: bool,
    request_id: String,
) -> Result<(AuthKeyRecord, Secret), ApiError> {
    if !preauthorized && node.rules() < 3 {
        return Err(ApiError::bad_field(
            "preauthorized",
            "device approval needs every node on a build that knows it; until then only true is allowed",
        ));
    }
    let (outcome, secret) = write_create(node, request_id, actor, || {
        let secret = new_credential(CredentialKind::AuthKey, random_base62(ID_LEN));
        let key = NewCredential { id: format!("{AUTH_KEY_ID_PREFIX}{}", secret.id), hash: secret.hash };
        let op = if preauthorized {
            Op::CreateAuthKey { org_id: org_id.clone(), key, spec: spec.clone() }
        } else {
            Op::CreateAuthKeyWith { org_id: org_id.clone(), key, spec: spec.clone(), preauthorized }
        };
        (op, secret)
    })
    .await?;
    match outcome? {
        OpOk::AuthKey(record) if record.key_id != format!("{AUTH_KEY_ID_PREFIX}{}", secret.id) => {
            let what = format!("auth key {} ({})", record.key_id, record.display_prefix());
            Err(ApiError::already_created(&what, &record.key_id))
        }
        OpOk::AuthKey(record) => Ok((record, secret)),
        other => Err(ApiError::internal(format!("create_auth_key answered {other:?}"))),
    }
}

async fn list(node: &Node, actor: Actor, org_id: String, mut fields: Fields) -> Result<Json<Value>, ApiError> {
    let limit = fields.opt_u64("limit")?.unwrap_or(DEFAULT_PAGE as u64);
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(ApiError::bad_field("limit", format!("must be from 1 to {MAX_PAGE}, got {limit}")));
    }
    let after_seq = match fields.opt_str("cursor")? {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::bad_field("cursor", "must be a next_cursor value from an earlier list_auth_keys answer")
        })?),
    };
    let filter = key_filter(&mut fields)?;
    fields.finish()?;
    let limit = limit as usize;
    let query = if filter == KeyFilter::default() {
        Query::ListAuthKeys { org_id, limit, after_seq }
    } else {
        Query::ListAuthKeysWhere { org_id, limit, after_seq, filter }
    };
    match node.read(&actor, &query).await?? {
        Answer::AuthKeys { keys, next_after_seq, as_of } => {
            let keys: Vec<Value> = keys.iter().map(|k| views::auth_key(k, as_of)).collect();
            Ok(Json(json!({ "keys": keys, "next_cursor": next_after_seq.map(|s| s.to_string()) })))
        }
        other => Err(ApiError::internal(format!("list_auth_keys answered {other:?}"))),
    }
}

/// The states `list_auth_keys` filters on.
const KEY_STATES: &str = "valid, used, exhausted, expired, revoked";
/// The key types `list_auth_keys` filters on.
const KEY_TYPES: &str = "reusable, one-shot";
/// Longest search text.
const MAX_SEARCH: usize = 256;

/// `state`, `type`, `ephemeral`, `tag` and `search` of a `list_auth_keys` request.
fn key_filter(fields: &mut Fields) -> Result<KeyFilter, ApiError> {
    // A state is named as the key's views name it (its serde name).
    let state = match fields.opt_str("state")? {
        None => None,
        Some(name) => Some(serde_json::from_value::<KeyState>(Value::String(name.clone())).map_err(|_| {
            ApiError::bad_field("state", format!("unknown state {name:?}; must be one of {KEY_STATES}"))
        })?),
    };
    let reusable = match fields.opt_str("type")?.as_deref() {
        None => None,
        Some("reusable") => Some(true),
        Some("one-shot") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_field("type", format!("unknown key type {other:?}; must be one of {KEY_TYPES}")))
        }
    };
    let ephemeral = fields.opt_bool("ephemeral")?;
    let tag = fields.opt_str("tag")?;
    if let Some(tag) = &tag {
        validate_tags(std::slice::from_ref(tag)).map_err(|e| ApiError::bad_field("tag", e.message))?;
    }
    let search = fields.opt_str("search")?.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
    if search.as_ref().is_some_and(|s| s.chars().count() > MAX_SEARCH) {
        return Err(ApiError::bad_field("search", format!("must be at most {MAX_SEARCH} characters")));
    }
    Ok(KeyFilter { state, reusable, ephemeral, tag, search })
}

async fn get(node: &Node, actor: Actor, org_id: String, mut fields: Fields) -> Result<Json<Value>, ApiError> {
    let key_id = fields.str("key_id")?;
    fields.finish()?;
    check_id("key_id", AUTH_KEY_ID_PREFIX, &key_id)?;
    match node.read(&actor, &Query::GetAuthKey { org_id, key_id }).await?? {
        Answer::AuthKey { record, enrolments, as_of } => {
            let mut view = views::auth_key(&record, as_of);
            view["enrolments"] = enrolments.iter().map(views::enrolment).collect();
            Ok(Json(view))
        }
        other => Err(ApiError::internal(format!("get_auth_key answered {other:?}"))),
    }
}

async fn revoke(node: &Node, actor: Actor, org_id: String, mut fields: Fields) -> Result<Json<Value>, ApiError> {
    let key_id = fields.opt_str("key_id")?;
    let key = fields.opt_str("key")?;
    let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
    fields.finish()?;
    let selector = match (key_id, key) {
        (Some(id), None) => {
            check_id("key_id", AUTH_KEY_ID_PREFIX, &id)?;
            KeySelector::KeyId(id)
        }
        (None, Some(key)) => selector_from_key(&key)?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of key_id (\"ak_…\") or key (the full key or a unique prefix of it)",
            ))
        }
    };
    let record = revoke_auth_key(node, actor, org_id, selector, request_id).await?;
    // Revoked, whatever the time: its state as of the revocation.
    Ok(Json(views::auth_key(&record, record.revoked_at.unwrap_or(record.created_at))))
}

/// Revokes the key `selector` names; its record. Revoking twice answers the same record.
pub(crate) async fn revoke_auth_key(
    node: &Node,
    actor: Actor,
    org_id: String,
    selector: KeySelector,
    request_id: String,
) -> Result<AuthKeyRecord, ApiError> {
    let command = Command { request_id, actor, op: Op::RevokeAuthKey { org_id, selector } };
    match node.write(command).await?? {
        OpOk::AuthKey(record) => Ok(record),
        other => Err(ApiError::internal(format!("revoke_auth_key answered {other:?}"))),
    }
}

/// A full key, or a prefix of its public part: `tskey-auth-abc12`.
pub(crate) fn selector_from_key(key: &str) -> Result<KeySelector, ApiError> {
    if let Some(presented) = parse_credential(CredentialKind::AuthKey, key) {
        return Ok(KeySelector::FullKey(presented));
    }
    let prefix = key.strip_prefix("tskey-auth-").unwrap_or(key).trim_end_matches('…');
    let prefix = prefix.strip_suffix('-').unwrap_or(prefix);
    if prefix.len() < 3 || prefix.len() > ID_LEN || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_field(
            "key",
            format!("must be the full key or a prefix such as \"tskey-auth-abc12\" (3 to {ID_LEN} characters after \"tskey-auth-\"; the secret part after the id cannot be matched)"),
        ));
    }
    Ok(KeySelector::IdPrefix(prefix.to_string()))
}
