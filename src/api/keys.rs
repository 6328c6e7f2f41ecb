//! `POST /api/key-management`: create, list, get and revoke an org's auth keys. Creating and
//! revoking are shared with the Tailscale-compatible API (`tailscale`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::{actions, request_id_or_new, AuthKeyId, Description, OrgId, RequestId, Tag, Tags};
use super::views::{answers, AuthKeyView, EnrolmentView};
use super::{api_key_actor, body, views, write_create};
use crate::node::Node;
use crate::secret::{new_credential, parse_credential, random_base62, CredentialKind, Secret, ID_LEN};
use crate::sm::model::*;
use crate::sm::query::{Answer, KeyFilter, Query, DEFAULT_PAGE, MAX_HISTORY_PAGE, MAX_PAGE};

actions! {
    /// The body of `POST /api/key-management`, by its `action`.
    pub enum KeyManagementRequest {
        "create_auth_key" => Create(CreateAuthKey),
        "list_auth_keys" => List(ListAuthKeys),
        "get_auth_key" => Get(GetAuthKey),
        "revoke_auth_key" => Revoke(RevokeAuthKey),
    }
}

answers! {
    /// What `POST /api/key-management` answers, by its `action`.
    pub enum KeyManagementAnswer {
        Created(AuthKeyCreated),
        List(AuthKeyList),
        Detail(AuthKeyDetail),
        Revoked(AuthKeyView),
    }
}

/// `create_auth_key`: a new auth key; the answer carries its secret, this once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAuthKey {
    pub org_id: OrgId,
    /// Enrols any number of machines (up to `max_uses`); otherwise one. Default false.
    pub reusable: Option<bool>,
    /// Machines it enrols are removed after they go quiet. Default false.
    pub ephemeral: Option<bool>,
    /// Seconds until it expires: 5 minutes to 30 days. Default 3600.
    #[schema(minimum = 300, maximum = 2592000)]
    pub expires_in: Option<u64>,
    /// Tags the machines it enrols get.
    pub tags: Option<Tags>,
    pub description: Option<Description>,
    /// A reusable key's limit of machines (only with `reusable`).
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub max_uses: Option<u64>,
    /// Machines it enrols are active at once; `false`: they wait for an admin. Default true.
    pub preauthorized: Option<bool>,
    pub request_id: Option<RequestId>,
}

/// `list_auth_keys`: a page of the org's keys, oldest first, optionally filtered.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAuthKeys {
    pub org_id: OrgId,
    /// Keys per page, 1 to 1000. Default 100.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    #[schema(pattern = "^[0-9]{1,20}$")]
    pub cursor: Option<String>,
    /// Only keys in this state now.
    pub state: Option<KeyState>,
    /// Only reusable or only one-shot keys.
    #[serde(rename = "type")]
    pub key_type: Option<KeyType>,
    pub ephemeral: Option<bool>,
    /// Only keys carrying this tag.
    pub tag: Option<Tag>,
    /// Only keys whose description, id or tags contain this text (case-insensitive).
    #[schema(max_length = 256)]
    pub search: Option<String>,
}

/// A key's type, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
pub enum KeyType {
    #[serde(rename = "reusable")]
    Reusable,
    #[serde(rename = "one-shot")]
    OneShot,
}

/// `get_auth_key`: one key and a page of the machines it enrolled (oldest first).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetAuthKey {
    pub org_id: OrgId,
    pub key_id: AuthKeyId,
    /// Enrolments in the answer, 0 to 1000. Default 100.
    #[schema(minimum = 0, maximum = 1000)]
    pub enrolments_limit: Option<u64>,
    /// `next_enrolments_cursor` of the previous answer.
    #[schema(pattern = "^[0-9]{1,20}$")]
    pub enrolments_cursor: Option<String>,
}

/// `revoke_auth_key`: no machine enrols with it again (machines it enrolled stay). Give exactly
/// one of `key_id` or `key`. Revoking twice answers the same record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeAuthKey {
    pub org_id: OrgId,
    pub key_id: Option<AuthKeyId>,
    /// The full key, or a unique prefix of its id (`tskey-auth-abc12`).
    #[schema(max_length = 200)]
    pub key: Option<String>,
    pub request_id: Option<RequestId>,
}

/// A key just created, with its secret: shown this once, stored only as a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthKeyCreated {
    #[serde(flatten)]
    pub record: AuthKeyView,
    /// The secret, `tskey-auth-…`.
    pub key: String,
}

/// A page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthKeyList {
    pub keys: Vec<AuthKeyView>,
    /// Give it as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// A key and a page of its enrolments.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthKeyDetail {
    #[serde(flatten)]
    pub record: AuthKeyView,
    pub enrolments: Vec<EnrolmentView>,
    /// Give it as `enrolments_cursor` for the next page of enrolments; `null` on the last.
    pub next_enrolments_cursor: Option<String>,
}

/// `POST /api/key-management`: create, list, get or revoke an org's auth keys.
#[utoipa::path(
    post,
    path = "/api/key-management", operation_id = "key_management",
    tag = "auth keys",
    request_body = KeyManagementRequest,
    responses(
        (status = 200, description = "By action: the created key with its secret, a page of keys, a key with its enrolments, or the revoked key", body = KeyManagementAnswer,
            links(
                ("GetAuthKey" = (operation_id = "key_management", request_body = json!({"action": "get_auth_key", "org_id": "$response.body#/org_id", "key_id": "$response.body#/key_id"}))),
                ("RevokeAuthKey" = (operation_id = "key_management", request_body = json!({"action": "revoke_auth_key", "org_id": "$response.body#/org_id", "key_id": "$response.body#/key_id"}))),
            )),
        super::openapi::Errors,
    ),
    security(("api_key" = [])),
)]
pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<KeyManagementAnswer>, ApiError> {
    let actor = api_key_actor(&headers)?;
    let request = KeyManagementRequest::parse(&body(raw)?)?;
    Ok(Json(match request {
        KeyManagementRequest::Create(r) => KeyManagementAnswer::Created(create(&node, actor, r).await?),
        KeyManagementRequest::List(r) => KeyManagementAnswer::List(list(&node, actor, r).await?),
        KeyManagementRequest::Get(r) => KeyManagementAnswer::Detail(get(&node, actor, r).await?),
        KeyManagementRequest::Revoke(r) => KeyManagementAnswer::Revoked(revoke(&node, actor, r).await?),
    }))
}

async fn create(node: &Node, actor: Actor, r: CreateAuthKey) -> Result<AuthKeyCreated, ApiError> {
    let min_expiry = node.config().settings().test_only_min_expiry_secs;
    let spec = AuthKeySpec::new(
        r.reusable.unwrap_or(false),
        r.ephemeral.unwrap_or(false),
        r.expires_in.unwrap_or(DEFAULT_EXPIRY_SECS),
        r.tags.map(|t| t.0).unwrap_or_default(),
        r.description.map(Description::into_inner).unwrap_or_default(),
        r.max_uses,
        min_expiry,
    )?;
    // Device approval: machines enrolled with a key that is not pre-authorized wait for an admin.
    let preauthorized = r.preauthorized.unwrap_or(true);
    let request_id = request_id_or_new(r.request_id);
    let (record, secret) = create_auth_key(node, actor, r.org_id.into_inner(), spec, preauthorized, request_id).await?;
    // Its state at the entry's cluster time, when it was created; the secret is shown this once.
    Ok(AuthKeyCreated { record: views::auth_key(&record, record.created_at), key: secret.text })
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

async fn list(node: &Node, actor: Actor, r: ListAuthKeys) -> Result<AuthKeyList, ApiError> {
    let limit = r.limit.unwrap_or(DEFAULT_PAGE as u64);
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(ApiError::bad_field("limit", format!("must be from 1 to {MAX_PAGE}, got {limit}")));
    }
    let after_seq = match r.cursor {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::bad_field("cursor", "must be a next_cursor value from an earlier list_auth_keys answer")
        })?),
    };
    let search = r.search.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
    if search.as_ref().is_some_and(|s| s.chars().count() > MAX_SEARCH) {
        return Err(ApiError::bad_field("search", format!("must be at most {MAX_SEARCH} characters")));
    }
    let filter = KeyFilter {
        state: r.state,
        reusable: r.key_type.map(|t| t == KeyType::Reusable),
        ephemeral: r.ephemeral,
        tag: r.tag.map(Tag::into_inner),
        search,
    };
    let (org_id, limit) = (r.org_id.into_inner(), limit as usize);
    let query = if filter == KeyFilter::default() {
        Query::ListAuthKeys { org_id, limit, after_seq }
    } else {
        Query::ListAuthKeysWhere { org_id, limit, after_seq, filter }
    };
    match node.read(&actor, &query).await?? {
        Answer::AuthKeys { keys, next_after_seq, as_of } => Ok(AuthKeyList {
            keys: keys.iter().map(|k| views::auth_key(k, as_of)).collect(),
            next_cursor: next_after_seq.map(|s| s.to_string()),
        }),
        other => Err(ApiError::internal(format!("list_auth_keys answered {other:?}"))),
    }
}

/// Longest search text.
const MAX_SEARCH: usize = 256;

async fn get(node: &Node, actor: Actor, r: GetAuthKey) -> Result<AuthKeyDetail, ApiError> {
    let limit = r.enrolments_limit.unwrap_or(DEFAULT_PAGE as u64);
    if limit > MAX_HISTORY_PAGE as u64 {
        return Err(ApiError::bad_field(
            "enrolments_limit",
            format!("must be from 0 to {MAX_HISTORY_PAGE}, got {limit}"),
        ));
    }
    let after_seq = match r.enrolments_cursor {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::bad_field(
                "enrolments_cursor",
                "must be a next_enrolments_cursor value from an earlier get_auth_key answer",
            )
        })?),
    };
    let (org_id, key_id) = (r.org_id.into_inner(), r.key_id.into_inner());
    let query = Query::GetAuthKeyPage { org_id, key_id, limit: limit as usize, after_seq };
    match node.read(&actor, &query).await?? {
        Answer::AuthKeyPage { record, enrolments, next_after_seq, as_of } => Ok(AuthKeyDetail {
            record: views::auth_key(&record, as_of),
            enrolments: enrolments.iter().map(views::enrolment).collect(),
            next_enrolments_cursor: next_after_seq.map(|s| s.to_string()),
        }),
        other => Err(ApiError::internal(format!("get_auth_key answered {other:?}"))),
    }
}

async fn revoke(node: &Node, actor: Actor, r: RevokeAuthKey) -> Result<AuthKeyView, ApiError> {
    let selector = match (r.key_id, r.key) {
        (Some(id), None) => KeySelector::KeyId(id.into_inner()),
        (None, Some(key)) => selector_from_key(&key)?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of key_id (\"ak_…\") or key (the full key or a unique prefix of it)",
            ))
        }
    };
    let request_id = request_id_or_new(r.request_id);
    let record = revoke_auth_key(node, actor, r.org_id.into_inner(), selector, request_id).await?;
    // Revoked, whatever the time: its state as of the revocation.
    Ok(views::auth_key(&record, record.revoked_at.unwrap_or(record.created_at)))
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
