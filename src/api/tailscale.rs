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
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::{Description, Tags};
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
        self.0.tailscale_response()
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
    let id = format!("{AUTH_KEY_ID_PREFIX}{}", key_id.strip_prefix(AUTH_KEY_ID_PREFIX).unwrap_or(key_id));
    super::fields::check_prefixed(AUTH_KEY_ID_PREFIX, crate::secret::ID_LEN, &id)
        .map_err(|_| ApiError::not_found(format!("no auth key {:?} in this tailnet", super::fields::short(key_id))))?;
    Ok(id)
}

/// A key in Tailscale's shape, with our `uses` and `maxUses` beside it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TsKey {
    /// The id inside the key: `tskey-auth-<id>-…`.
    pub id: String,
    /// The secret, in the answer to its creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Always "auth".
    pub key_type: String,
    pub description: String,
    #[schema(format = DateTime)]
    pub created: String,
    #[schema(format = DateTime)]
    pub expires: String,
    /// When it was revoked; absent if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub revoked: Option<String>,
    /// It can enrol no more (used, exhausted, expired or revoked).
    pub invalid: bool,
    pub capabilities: TsCapabilities,
    /// Machines it has enrolled (not in Tailscale's API).
    pub uses: u64,
    /// A reusable key's limit (not in Tailscale's API; this API makes none).
    pub max_uses: Option<u32>,
}

/// `capabilities` of a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TsCapabilities {
    pub devices: TsDevices,
}

/// `capabilities.devices` of a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TsDevices {
    pub create: TsDeviceCreate,
}

/// What machines a key enrols are.
#[derive(Debug, Serialize, ToSchema)]
pub struct TsDeviceCreate {
    pub reusable: bool,
    pub ephemeral: bool,
    pub preauthorized: bool,
    pub tags: Vec<String>,
}

fn key_view(record: &AuthKeyRecord, as_of: Millis) -> TsKey {
    TsKey {
        id: record.public_id().to_string(),
        key: None,
        key_type: "auth".to_string(),
        description: record.description.clone(),
        created: views::rfc3339(record.created_at),
        expires: views::rfc3339(record.expires_at),
        revoked: record.revoked_at.map(views::rfc3339),
        invalid: record.state(as_of) != KeyState::Valid,
        capabilities: TsCapabilities {
            devices: TsDevices {
                create: TsDeviceCreate {
                    reusable: record.reusable,
                    ephemeral: record.ephemeral,
                    preauthorized: record.preauthorized,
                    tags: record.tags.clone(),
                },
            },
        },
        uses: record.uses,
        max_uses: record.max_uses,
    }
}

/// `{"keys": [Key…]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TsKeyList {
    pub keys: Vec<TsKey>,
}

/// The body of `POST /api/v2/tailnet/{tailnet}/keys`, in Tailscale's shape.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TsCreateKey {
    /// Only "auth" is made here (API keys: `/api/org-admin`).
    #[schema(pattern = "^auth$")]
    pub key_type: Option<String>,
    pub description: Option<Description>,
    /// Seconds until it expires: 300 to 2592000 (30 days); 0 or left out: one hour.
    #[schema(maximum = 2592000)]
    pub expiry_seconds: Option<u64>,
    pub capabilities: TsCreateCapabilities,
}

/// `capabilities` of a new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TsCreateCapabilities {
    pub devices: TsCreateDevices,
}

/// `capabilities.devices` of a new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TsCreateDevices {
    /// Left out: a one-shot, non-ephemeral, pre-authorized key without tags.
    pub create: Option<TsCreateDevice>,
}

/// `capabilities.devices.create` of a new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TsCreateDevice {
    /// Default false.
    pub reusable: Option<bool>,
    /// Default false.
    pub ephemeral: Option<bool>,
    /// Default true (machines are approved at once); false: they wait for an admin.
    pub preauthorized: Option<bool>,
    pub tags: Option<Tags>,
}

/// An error in Tailscale's shape: `message` at the top level, with our `code` and `field`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TsErrorBody {
    pub message: String,
    pub code: String,
    /// The request field at fault, when one was.
    pub field: Option<String>,
}

/// `GET /api/v2/tailnet/{tailnet}/keys`: every key of the org that can still enrol.
#[utoipa::path(
    get,
    path = "/api/v2/tailnet/{tailnet}/keys",
    operation_id = "ts_list_keys",
    tag = "tailscale-compatible",
    params(("tailnet" = String, Path, description = "\"-\" (the API key's own org) or that org's id", example = "-")),
    responses((status = 200, description = "The org's keys that can still enrol", body = TsKeyList), super::openapi::TsErrors),
    security(("api_key" = []), ("api_key_basic" = [])),
)]
pub async fn list(
    State(node): State<Arc<Node>>,
    Path(tailnet): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TsKeyList>, TsError> {
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
                    None => return Ok(Json(TsKeyList { keys })),
                }
            }
            other => return Err(ApiError::internal(format!("list_auth_keys answered {other:?}")).into()),
        }
    }
}

/// `POST /api/v2/tailnet/{tailnet}/keys`: a new auth key; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v2/tailnet/{tailnet}/keys",
    operation_id = "ts_create_key",
    tag = "tailscale-compatible",
    params(("tailnet" = String, Path, description = "\"-\" (the API key's own org) or that org's id", example = "-")),
    request_body = TsCreateKey,
    responses(
        (status = 200, description = "The new key, with its secret in `key`, this once", body = TsKey,
            links(
                ("GetKey" = (operation_id = "ts_get_key", parameters(("tailnet" = "$request.path.tailnet"), ("keyId" = "$response.body#/id")))),
                ("DeleteKey" = (operation_id = "ts_delete_key", parameters(("tailnet" = "$request.path.tailnet"), ("keyId" = "$response.body#/id")))),
            )),
        super::openapi::TsErrors,
    ),
    security(("api_key" = []), ("api_key_basic" = [])),
)]
pub async fn create(
    State(node): State<Arc<Node>>,
    Path(tailnet): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<TsKey>, TsError> {
    let actor = caller(&headers)?;
    let request: TsCreateKey = super::fields::parse_or_empty(&body(raw)?)?;
    if let Some(kind) = request.key_type.filter(|k| k != "auth") {
        return Err(ApiError::bad_field(
            "keyType",
            format!("{:?} is not made here: this API makes auth keys (\"auth\") only; API keys are made with /api/org-admin", super::fields::short(&kind)),
        )
        .into());
    }
    let create = request.capabilities.devices.create;
    let option = |f: fn(&TsCreateDevice) -> Option<bool>, default| create.as_ref().and_then(f).unwrap_or(default);
    let (reusable, ephemeral) = (option(|c| c.reusable, false), option(|c| c.ephemeral, false));
    // Left out: pre-approved, as this store's keys are by default (Tailscale approves devices
    // unless the tailnet turned device approval on). `false`: machines wait.
    let preauthorized = option(|c| c.preauthorized, true);
    let tags = create.and_then(|c| c.tags).map(|t| t.0).unwrap_or_default();
    let description = request.description.map(Description::into_inner).unwrap_or_default();
    let org_id = org_of(&node, &actor, &tailnet).await?;
    // Tailscale's 0 or nothing is its default; here the default is the seed's hour.
    let expires_in = request.expiry_seconds.filter(|s| *s != 0).unwrap_or(DEFAULT_EXPIRY_SECS);
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
    view.key = Some(secret.text);
    Ok(Json(view))
}

/// `GET /api/v2/tailnet/{tailnet}/keys/{keyId}`.
#[utoipa::path(
    get,
    path = "/api/v2/tailnet/{tailnet}/keys/{keyId}",
    operation_id = "ts_get_key",
    tag = "tailscale-compatible",
    params(
        ("tailnet" = String, Path, description = "\"-\" (the API key's own org) or that org's id", example = "-"),
        ("keyId" = String, Path, description = "The id inside the key (`tskey-auth-<keyId>-…`)"),
    ),
    responses((status = 200, description = "The key", body = TsKey), super::openapi::TsErrors),
    security(("api_key" = []), ("api_key_basic" = [])),
)]
pub async fn get(
    State(node): State<Arc<Node>>,
    Path((tailnet, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<TsKey>, TsError> {
    let actor = caller(&headers)?;
    let key_id = key_id(&key)?;
    let org_id = org_of(&node, &actor, &tailnet).await?;
    // The key alone: its history is never read for this view.
    match node.read(&actor, &Query::GetAuthKeyPage { org_id, key_id, limit: 0, after_seq: None }).await?? {
        Answer::AuthKeyPage { record, as_of, .. } => Ok(Json(key_view(&record, as_of))),
        other => Err(ApiError::internal(format!("get_auth_key answered {other:?}")).into()),
    }
}

/// `DELETE /api/v2/tailnet/{tailnet}/keys/{keyId}`: revokes the key (machines it enrolled stay).
#[utoipa::path(
    delete,
    path = "/api/v2/tailnet/{tailnet}/keys/{keyId}",
    operation_id = "ts_delete_key",
    tag = "tailscale-compatible",
    params(
        ("tailnet" = String, Path, description = "\"-\" (the API key's own org) or that org's id", example = "-"),
        ("keyId" = String, Path, description = "The id inside the key (`tskey-auth-<keyId>-…`)"),
    ),
    responses((status = 200, description = "Revoked (revoking twice is the same)"), super::openapi::TsErrors),
    security(("api_key" = []), ("api_key_basic" = [])),
)]
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
