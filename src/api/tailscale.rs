//! A Tailscale-compatible auth-keys API beside the seed's own, so that tools written for
//! Tailscale's API (its Terraform provider's `tailscale_tailnet_key`, its Go client, scripts)
//! work against any node unchanged:
//!
//! - `GET /api/v2/tailnet/{tailnet}/keys`: the org's valid keys, `{"keys": [Key…]}`;
//! - `POST /api/v2/tailnet/{tailnet}/keys`: `{"capabilities": {"devices": {"create":
//!   {"reusable", "ephemeral", "preauthorized", "tags"}}}, "expirySeconds", "description"}` →
//!   a `Key` with `key`, the secret, this once;
//! - `GET /api/v2/tailnet/{tailnet}/keys/{keyId}`: a `Key`, `invalid` once it can enrol no more;
//! - `DELETE /api/v2/tailnet/{tailnet}/keys/{keyId}`: revokes it.
//!
//! `{tailnet}` is `-` (the API key's own org) or that org's id; the API key is sent as a bearer
//! token or, as Tailscale's clients also do, as the user name of HTTP basic authentication.
//! `keyId` is the id inside the key (`tskey-auth-<keyId>-…`, our `ak_<keyId>`). Where the two
//! models differ the mapping is stated in the README; where Tailscale has something this
//! store lacks (OAuth clients, API access tokens, expiries beyond 30 days), the request is
//! refused with a 400 naming the field rather than half-done.
//!
//! This module translates shapes only: every decision is the key store's, through the same
//! commands and queries as `keys.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::{check_id, Fields};
use super::keys::{create_auth_key, revoke_auth_key};
use super::{api_key_actor, body, new_request_id, views};
use crate::node::Node;
use crate::secret::{parse_credential, CredentialKind};
use crate::sm::model::*;
use crate::sm::query::{Answer, KeyFilter, Query, MAX_PAGE};

/// An error in Tailscale's shape, `{"message": "…"}`, with our `code` (and `field`) beside it.
pub struct TsError(ApiError);

impl From<ApiError> for TsError {
    fn from(e: ApiError) -> Self {
        TsError(e)
    }
}

impl From<OpError> for TsError {
    fn from(e: OpError) -> Self {
        TsError(e.into())
    }
}

impl From<crate::node::Unavailable> for TsError {
    fn from(e: crate::node::Unavailable) -> Self {
        TsError(e.into())
    }
}

impl IntoResponse for TsError {
    fn into_response(self) -> Response {
        let TsError(e) = self;
        // Tailscale's clients read `message` at the top level; ours is the same object.
        let body = e.details();
        e.respond(body)
    }
}

/// The caller's API key: `Authorization: Bearer <key>`, or basic authentication with the key as
/// the user name and an empty password (`curl -u "$KEY:"`, Tailscale's Go client).
fn caller(headers: &HeaderMap) -> Result<Actor, ApiError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(str::trim);
    let Some(encoded) = basic else { return api_key_actor(headers) };
    let refused = || ApiError::unauthorized("basic authentication must carry the API key as the user name");
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| refused())?;
    let text = String::from_utf8(decoded).map_err(|_| refused())?;
    let key = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    let presented = parse_credential(CredentialKind::ApiKey, key).ok_or(OpError::Unauthorized)?;
    Ok(Actor::api_key(presented))
}

/// The org `{tailnet}` names for this caller: `-` is the API key's own org; its org id is too.
async fn org_of(node: &Node, actor: &Actor, tailnet: &str) -> Result<String, ApiError> {
    let record = match node.read(actor, &Query::WhoAmI).await?? {
        Answer::ApiKey(record) => record,
        other => return Err(ApiError::internal(format!("whoami answered {other:?}"))),
    };
    match record.scope {
        ApiKeyScope::Operator => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the operator key belongs to no tailnet: use an org API key (tskey-api-…)",
        )),
        ApiKeyScope::Org(org) if tailnet == "-" || tailnet == org => Ok(org),
        ApiKeyScope::Org(_) => Err(ApiError::not_found(format!(
            "tailnet {tailnet:?} not found: use \"-\" (the API key's own org) or that org's id"
        ))),
    }
}

/// Our key id for Tailscale's `keyId` (`abc…`, or `ak_abc…` as our own API names it); one that
/// cannot be a key's id is a key not found, as Tailscale answers.
fn key_id(key_id: &str) -> Result<String, ApiError> {
    let id = if key_id.starts_with(AUTH_KEY_ID_PREFIX) {
        key_id.to_string()
    } else {
        format!("{AUTH_KEY_ID_PREFIX}{key_id}")
    };
    check_id("keyId", AUTH_KEY_ID_PREFIX, &id)
        .map_err(|_| ApiError::not_found(format!("no auth key {key_id:?} in this tailnet")))?;
    Ok(id)
}

/// A key in Tailscale's shape, with our `uses` and `maxUses` beside it.
fn key_view(record: &AuthKeyRecord, as_of: Millis) -> Value {
    let mut view = json!({
        "id": record.public_id(),
        "keyType": "auth",
        "description": record.description,
        "created": views::rfc3339(record.created_at),
        "expires": views::rfc3339(record.expires_at),
        "invalid": record.state(as_of) != KeyState::Valid,
        "capabilities": { "devices": { "create": {
            "reusable": record.reusable,
            "ephemeral": record.ephemeral,
            "preauthorized": record.preauthorized,
            "tags": record.tags,
        }}},
        "uses": record.uses,
        "maxUses": record.max_uses,
    });
    if let Some(revoked) = record.revoked_at {
        view["revoked"] = views::rfc3339(revoked);
    }
    view
}

/// `GET /api/v2/tailnet/{tailnet}/keys`: every key of the org that can still enrol.
pub async fn list(
    State(node): State<Arc<Node>>,
    Path(tailnet): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, TsError> {
    let actor = caller(&headers)?;
    let org_id = org_of(&node, &actor, &tailnet).await?;
    let filter = KeyFilter { state: Some(KeyState::Valid), ..KeyFilter::default() };
    let (mut keys, mut after_seq) = (Vec::new(), None);
    loop {
        let query =
            Query::ListAuthKeysWhere { org_id: org_id.clone(), limit: MAX_PAGE, after_seq, filter: filter.clone() };
        match node.read(&actor, &query).await?? {
            Answer::AuthKeys { keys: page, next_after_seq, as_of } => {
                keys.extend(page.iter().map(|k| key_view(k, as_of)));
                match next_after_seq {
                    Some(seq) => after_seq = Some(seq),
                    None => return Ok(Json(json!({ "keys": keys }))),
                }
            }
            other => return Err(ApiError::internal(format!("list_auth_keys answered {other:?}")).into()),
        }
    }
}

/// `POST /api/v2/tailnet/{tailnet}/keys`: a new auth key; its secret is in this answer only.
pub async fn create(
    State(node): State<Arc<Node>>,
    Path(tailnet): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, TsError> {
    let actor = caller(&headers)?;
    let raw = body(raw)?;
    let mut fields = Fields::parse(if raw.is_empty() { b"{}" } else { &raw })?;
    if let Some(kind) = fields.opt_str("keyType")? {
        if kind != "auth" {
            return Err(ApiError::bad_field(
                "keyType",
                format!("{kind:?} is not made here: this API makes auth keys (\"auth\") only; API keys are made with /api/org-admin"),
            )
            .into());
        }
    }
    let description = fields.opt_str("description")?.unwrap_or_default();
    let expiry = fields.opt_u64("expirySeconds")?;
    let mut capabilities = fields
        .object("capabilities")?
        .ok_or_else(|| ApiError::bad_field("capabilities", "is required: {\"devices\": {\"create\": {…}}}"))?;
    let mut devices = capabilities
        .object("devices")?
        .ok_or_else(|| ApiError::bad_field("capabilities.devices", "is required: {\"create\": {…}}"))?;
    let (reusable, ephemeral, preauthorized, tags) = match devices.object("create")? {
        None => (false, false, true, Vec::new()),
        Some(mut create) => {
            let reusable = create.bool_or("reusable", false)?;
            let ephemeral = create.bool_or("ephemeral", false)?;
            // Left out: pre-approved, as this store's keys are by default (Tailscale approves
            // devices unless the tailnet turned device approval on). `false`: machines wait.
            let preauthorized = create.bool_or("preauthorized", true)?;
            let tags = create.string_list("tags")?;
            create.finish()?;
            (reusable, ephemeral, preauthorized, tags)
        }
    };
    devices.finish()?;
    capabilities.finish()?;
    fields.finish()?;
    let org_id = org_of(&node, &actor, &tailnet).await?;
    // Tailscale's 0 or nothing is its default; here the default is the seed's hour.
    let expires_in = expiry.filter(|s| *s != 0).unwrap_or(DEFAULT_EXPIRY_SECS);
    let min_expiry = node.config().settings().test_only_min_expiry_secs;
    let spec = AuthKeySpec::new(reusable, ephemeral, expires_in, tags, description, None, min_expiry).map_err(|e| {
        let field = match e.field {
            "expires_in" => "expirySeconds",
            "tags" => "capabilities.devices.create.tags",
            other => other,
        };
        ApiError::bad_field(field, e.message)
    })?;
    let (record, secret) = create_auth_key(&node, actor, org_id, spec, preauthorized, new_request_id()).await?;
    let mut view = key_view(&record, record.created_at);
    view["key"] = Value::String(secret.text);
    Ok(Json(view))
}

/// `GET /api/v2/tailnet/{tailnet}/keys/{keyId}`.
pub async fn get(
    State(node): State<Arc<Node>>,
    Path((tailnet, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, TsError> {
    let actor = caller(&headers)?;
    let key_id = key_id(&key)?;
    let org_id = org_of(&node, &actor, &tailnet).await?;
    match node.read(&actor, &Query::GetAuthKey { org_id, key_id }).await?? {
        Answer::AuthKey { record, as_of, .. } => Ok(Json(key_view(&record, as_of))),
        other => Err(ApiError::internal(format!("get_auth_key answered {other:?}")).into()),
    }
}

/// `DELETE /api/v2/tailnet/{tailnet}/keys/{keyId}`: revokes the key (machines it enrolled stay).
pub async fn delete(
    State(node): State<Arc<Node>>,
    Path((tailnet, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, TsError> {
    let actor = caller(&headers)?;
    let key_id = key_id(&key)?;
    let org_id = org_of(&node, &actor, &tailnet).await?;
    revoke_auth_key(&node, actor, org_id, KeySelector::KeyId(key_id), new_request_id()).await?;
    Ok(StatusCode::OK)
}
