//! `POST /api/org-admin` (operator key): orgs and their API keys; and `POST /api/cluster/init`,
//! which creates the first org, its admin API key and the operator key, once per cluster.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::{
    actions, parse_or_empty, request_id_or_new, ApiKeyId, Description, Empty, Name, OrgId, RequestId, RequestOnly, Tags,
};
use super::views::{answers, ApiKeyView, OrgView};
use super::{api_key_actor, body, views, write_create, write_with_fresh_ids};
use crate::node::Node;
use crate::secret::{new_credential, random_base62, CredentialKind, Secret, ID_LEN};
use crate::sm::model::*;
use crate::sm::query::{Answer, Query};

/// Longest API key lifetime: ten years.
const MAX_API_KEY_SECS: u64 = 10 * 365 * 86_400;

actions! {
    /// The body of `POST /api/org-admin` (operator key), by its `action`.
    pub enum OrgAdminRequest {
        "create_org" => CreateOrg(CreateOrg),
        "list_orgs" => ListOrgs(Empty),
        "create_api_key" => CreateApiKey(CreateApiKey),
        "revoke_api_key" => RevokeApiKey(RevokeApiKey),
        "list_api_keys" => ListApiKeys(ListApiKeys),
        "rotate_operator_key" => RotateOperatorKey(RequestOnly),
        "set_org_limits" => SetOrgLimits(SetOrgLimits),
    }
}

answers! {
    /// What `POST /api/org-admin` answers, by its `action`.
    pub enum OrgAdminAnswer {
        Org(OrgView),
        Orgs(OrgList),
        ApiKeyCreated(ApiKeyCreated),
        ApiKey(ApiKeyView),
        ApiKeys(ApiKeyList),
        Limits(OrgLimitsView),
    }
}

/// `create_org`: a new org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: Name,
    pub request_id: Option<RequestId>,
}

/// `create_api_key`: a new API key of an org; the answer carries its secret, this once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub org_id: OrgId,
    pub description: Option<Description>,
    /// Seconds until it expires, 60 to ten years; none: it does not expire.
    #[schema(minimum = 60, maximum = 315360000)]
    pub expires_in: Option<u64>,
    /// What it may do; left out: everything.
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<Scope>>,
    /// The only tags it may put on keys and machines; left out: any.
    #[schema(min_items = 1)]
    pub tags: Option<Tags>,
    pub request_id: Option<RequestId>,
}

/// A scope of an org API key.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
pub enum Scope {
    #[serde(rename = "auth_keys")]
    AuthKeys,
    #[serde(rename = "auth_keys:read")]
    AuthKeysRead,
    #[serde(rename = "machines")]
    Machines,
    #[serde(rename = "machines:read")]
    MachinesRead,
}

impl From<Scope> for Permission {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::AuthKeys => Permission::AuthKeys,
            Scope::AuthKeysRead => Permission::AuthKeysRead,
            Scope::Machines => Permission::Machines,
            Scope::MachinesRead => Permission::MachinesRead,
        }
    }
}

/// `revoke_api_key`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeApiKey {
    pub api_key_id: ApiKeyId,
    pub request_id: Option<RequestId>,
}

/// `list_api_keys`: every API key, or one org's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListApiKeys {
    pub org_id: Option<OrgId>,
}

/// `set_org_limits`: an org's limits; both left out restores the defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOrgLimits {
    pub org_id: OrgId,
    /// Auth keys the org may create per day (UTC) of cluster time.
    #[schema(maximum = 9223372036854775807_i64)]
    pub auth_keys_per_day: Option<u64>,
    /// Machines the org may have enrolled at once.
    #[schema(maximum = 9223372036854775807_i64)]
    pub machines: Option<u64>,
    pub request_id: Option<RequestId>,
}

/// Every org.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgList {
    pub orgs: Vec<OrgView>,
}

/// API keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

/// An API key just made, with its secret: shown this once, stored only as a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub record: ApiKeyView,
    /// The secret, `tskey-api-…`.
    pub key: String,
}

/// An org's limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgLimitsView {
    pub org_id: String,
    pub auth_keys_per_day: u64,
    pub machines: u64,
}

fn new_api_key() -> (Secret, NewCredential) {
    let secret = new_credential(CredentialKind::ApiKey, random_base62(ID_LEN));
    let record = NewCredential { id: format!("{API_KEY_ID_PREFIX}{}", secret.id), hash: secret.hash };
    (secret, record)
}

fn new_org_id() -> String {
    format!("{ORG_ID_PREFIX}{}", random_base62(8))
}

/// An API key's grants from the request's `scopes` and `tags` (absent: everything).
fn grants(scopes: Option<Vec<Scope>>, tags: Option<Vec<String>>) -> Result<Grants, ApiError> {
    let permissions = match scopes {
        None => None,
        Some(scopes) => {
            let mut permissions = Vec::new();
            for scope in scopes {
                let permission = Permission::from(scope);
                if !permissions.contains(&permission) {
                    permissions.push(permission);
                }
            }
            if permissions.is_empty() {
                return Err(ApiError::bad_field("scopes", "give at least one scope, or leave it out for all"));
            }
            Some(permissions)
        }
    };
    if let Some(tags) = &tags {
        if tags.is_empty() {
            return Err(ApiError::bad_field("tags", "give at least one tag, or leave it out for any tag"));
        }
    }
    Ok(Grants { permissions, tags })
}

/// Refuses an action whose op older builds cannot read, until the cluster adopted this build's
/// rules (every node upgraded).
fn needs_rules(node: &Node) -> Result<(), ApiError> {
    if node.rules() >= 2 {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "upgrade_in_progress",
            "this action needs every node on this build (the cluster has not adopted its rules yet)",
        ))
    }
}

/// The bootstrap token in `Authorization: Bearer …`, against the configured SHA-256.
pub(crate) fn check_bootstrap_token(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = node.config().settings().bootstrap_token_sha256.as_deref() else {
        return Err(ApiError::unauthorized(
            "this node has no bootstrap token configured (bootstrap_token_sha256, or ztna server \
             --bootstrap-token-sha256): make one with `ztna cluster bootstrap-token`",
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .and_then(|token| crate::secret::parse_credential(CredentialKind::BootstrapToken, token))
        .ok_or_else(|| {
            ApiError::unauthorized("missing or malformed bootstrap token: Authorization: Bearer ztna-bootstrap-…")
        })?;
    let mut expected_hash = [0u8; 32];
    hex::decode_to_slice(expected, &mut expected_hash)
        .map_err(|_| ApiError::internal("bootstrap_token_sha256 is not hex"))?;
    if crate::secret::hashes_equal(&presented.hash, &expected_hash) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("wrong bootstrap token"))
    }
}

/// `POST /api/org-admin`: orgs, their API keys and limits, and the operator key (operator key).
#[utoipa::path(
    post,
    path = "/api/org-admin", operation_id = "org_admin",
    tag = "orgs",
    request_body = OrgAdminRequest,
    responses(
        (status = 200, description = "By action: the org, the orgs, the API key made (with its secret), the API key revoked or rotated (rotate_operator_key: with its secret), the API keys, or the org's limits", body = OrgAdminAnswer),
        super::openapi::Errors,
    ),
    security(("operator_key" = [])),
)]
pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<OrgAdminAnswer>, ApiError> {
    let actor = api_key_actor(&headers)?;
    let request = OrgAdminRequest::parse(&body(raw)?)?;
    Ok(Json(match request {
        OrgAdminRequest::CreateOrg(r) => {
            let name = r.name.into_inner();
            let (outcome, ()) = write_with_fresh_ids(&node, request_id_or_new(r.request_id), actor, || {
                (Op::CreateOrg { org_id: new_org_id(), name: name.clone() }, ())
            })
            .await?;
            match outcome? {
                OpOk::Org(org) => OrgAdminAnswer::Org(views::org(&org)),
                other => return Err(ApiError::internal(format!("create_org answered {other:?}"))),
            }
        }
        OrgAdminRequest::CreateApiKey(r) => OrgAdminAnswer::ApiKeyCreated(create_api_key(&node, actor, r).await?),
        OrgAdminRequest::RotateOperatorKey(r) => {
            needs_rules(&node)?;
            let (outcome, secret) = write_with_fresh_ids(&node, request_id_or_new(r.request_id), actor, || {
                let (secret, key) = new_api_key();
                (Op::RotateOperatorKey { key }, secret)
            })
            .await?;
            match outcome? {
                OpOk::ApiKey(record) => {
                    OrgAdminAnswer::ApiKeyCreated(ApiKeyCreated { record: views::api_key(&record), key: secret.text })
                }
                other => return Err(ApiError::internal(format!("rotate_operator_key answered {other:?}"))),
            }
        }
        OrgAdminRequest::SetOrgLimits(r) => {
            needs_rules(&node)?;
            for (field, value) in [("auth_keys_per_day", r.auth_keys_per_day), ("machines", r.machines)] {
                if value.is_some_and(|v| v > i64::MAX as u64) {
                    return Err(ApiError::bad_field(field, format!("must be at most {}", i64::MAX)));
                }
            }
            let limits = match (r.auth_keys_per_day, r.machines) {
                (None, None) => None,
                (keys, machines) => {
                    let defaults = OrgLimits::default();
                    Some(OrgLimits {
                        auth_keys_per_day: keys.unwrap_or(defaults.auth_keys_per_day),
                        machines: machines.unwrap_or(defaults.machines),
                    })
                }
            };
            let op = Op::SetOrgLimits { org_id: r.org_id.into_inner(), limits };
            let command = Command { request_id: request_id_or_new(r.request_id), actor, op };
            match node.write(command).await?? {
                OpOk::OrgLimits { org_id, limits } => OrgAdminAnswer::Limits(OrgLimitsView {
                    org_id,
                    auth_keys_per_day: limits.auth_keys_per_day,
                    machines: limits.machines,
                }),
                other => return Err(ApiError::internal(format!("set_org_limits answered {other:?}"))),
            }
        }
        OrgAdminRequest::RevokeApiKey(r) => {
            let op = Op::RevokeApiKey { api_key_id: r.api_key_id.into_inner() };
            let command = Command { request_id: request_id_or_new(r.request_id), actor, op };
            match node.write(command).await?? {
                OpOk::ApiKey(record) => OrgAdminAnswer::ApiKey(views::api_key(&record)),
                other => return Err(ApiError::internal(format!("revoke_api_key answered {other:?}"))),
            }
        }
        OrgAdminRequest::ListApiKeys(r) => {
            match node.read(&actor, &Query::ListApiKeys { org_id: r.org_id.map(OrgId::into_inner) }).await?? {
                Answer::ApiKeys(keys) => {
                    OrgAdminAnswer::ApiKeys(ApiKeyList { api_keys: keys.iter().map(views::api_key).collect() })
                }
                other => return Err(ApiError::internal(format!("list_api_keys answered {other:?}"))),
            }
        }
        OrgAdminRequest::ListOrgs(Empty {}) => match node.read(&actor, &Query::ListOrgs).await?? {
            Answer::Orgs(orgs) => OrgAdminAnswer::Orgs(OrgList { orgs: orgs.iter().map(views::org).collect() }),
            other => return Err(ApiError::internal(format!("list_orgs answered {other:?}"))),
        },
    }))
}

async fn create_api_key(node: &Node, actor: Actor, r: CreateApiKey) -> Result<ApiKeyCreated, ApiError> {
    let org_id = r.org_id.into_inner();
    let description = r.description.map(Description::into_inner).unwrap_or_default();
    let expires_in = r.expires_in;
    if let Some(secs) = expires_in {
        if !(60..=MAX_API_KEY_SECS).contains(&secs) {
            return Err(ApiError::bad_field(
                "expires_in",
                format!("must be a number of seconds from 60 to {MAX_API_KEY_SECS} (10 years), got {secs}"),
            ));
        }
    }
    let grants = grants(r.scopes, r.tags.map(|t| t.0))?;
    let plain = expires_in.is_none() && grants == Grants::all();
    if !plain && node.rules() < 2 {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "upgrade_in_progress",
            "expires_in, scopes and tags need every node on this build (the cluster has not adopted its rules yet)",
        ));
    }
    let (outcome, secret) = write_create(node, request_id_or_new(r.request_id), actor, || {
        let (secret, key) = new_api_key();
        let op = if plain && node.rules() < 2 {
            Op::CreateApiKey { org_id: org_id.clone(), key, description: description.clone() }
        } else {
            Op::CreateApiKeyWith {
                org_id: org_id.clone(),
                key,
                description: description.clone(),
                expires_in_secs: expires_in,
                grants: grants.clone(),
            }
        };
        (op, secret)
    })
    .await?;
    match outcome? {
        OpOk::ApiKey(record) if record.api_key_id != format!("{API_KEY_ID_PREFIX}{}", secret.id) => {
            Err(ApiError::already_created(&format!("API key {}", record.api_key_id), &record.api_key_id))
        }
        OpOk::ApiKey(record) => Ok(ApiKeyCreated { record: views::api_key(&record), key: secret.text }),
        other => Err(ApiError::internal(format!("create_api_key answered {other:?}"))),
    }
}

/// `POST /api/cluster/init` `{"org_name": …}` with `Authorization: Bearer <bootstrap token>`:
/// the first org, its admin API key and the operator key. Like `consul acl bootstrap` with an
/// `initial_management` token, it needs a token the operator made (its SHA-256 in the node's
/// configuration) and works once per cluster; every later call answers 409. Without the right
/// token: 401, and nothing is proposed. The token is a bearer header, which a browser cannot
/// send to another origin without the node's consent, so a web page cannot initialise a
/// cluster it can reach (DNS rebinding).
#[utoipa::path(
    post,
    path = "/api/cluster/init", operation_id = "cluster_init",
    tag = "cluster",
    request_body(content = Option<InitRequest>, description = "May be empty: the org is then named \"default\"."),
    responses(
        (status = 200, description = "The first org, its admin API key and the operator key, with their secrets, this once", body = InitAnswer),
        super::openapi::Errors,
    ),
    security(("bootstrap_token" = [])),
)]
pub async fn init(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<InitAnswer>, ApiError> {
    check_bootstrap_token(&node, &headers)?;
    let request: InitRequest = parse_or_empty(&body(raw)?)?;
    let org_name = request.org_name.map_or_else(|| "default".to_string(), Name::into_inner);
    let request_id = request_id_or_new(request.request_id);
    // Held like a create's secret: an init answered 503 that committed gives its keys to the
    // retry under the same request id at the same node.
    let (outcome, (operator, admin)) = write_create(&node, request_id, Actor::Anonymous, || {
        let (operator, operator_key) = new_api_key();
        let (admin, admin_key) = new_api_key();
        let op = Op::InitCluster { org_id: new_org_id(), org_name: org_name.clone(), operator_key, admin_key };
        (op, (operator, admin))
    })
    .await?;
    let made_here = |id: &str| id == format!("{API_KEY_ID_PREFIX}{}", operator.id);
    match outcome {
        // The same request id, applied already with keys this node did not make (another node
        // made them, or this one forgot them in a restart).
        Err(OpError::RequestIdReused(_)) => Err(init_keys_elsewhere()),
        Ok(OpOk::Initialized { operator_key_id, .. }) if !made_here(&operator_key_id) => Err(init_keys_elsewhere()),
        Err(e) => Err(e.into()),
        Ok(OpOk::Initialized { org, operator_key_id, admin_key_id }) => Ok(Json(InitAnswer {
            org_id: org.org_id.clone(),
            org: views::org(&org),
            api_key: admin.text,
            api_key_id: admin_key_id,
            operator_key: operator.text,
            operator_key_id,
        })),
        other => Err(ApiError::internal(format!("init answered {other:?}"))),
    }
}

/// 409 for an init retried where its keys are not held.
fn init_keys_elsewhere() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "already_initialized",
        "this request_id initialised the cluster already, and its keys were made by another node (or by this \
         one before it restarted): retry at the node that first answered 503, which holds them for 15 minutes. \
         If no node holds them, the cluster holds nothing but that first org yet: stop every node, empty their \
         data directories and initialise it again",
    )
}

/// The body of `POST /api/cluster/init`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// The first org's name; default "default".
    pub org_name: Option<Name>,
    /// Makes a retry after a lost answer (503, timeout) safe: at the same node it answers the
    /// keys the first try made.
    pub request_id: Option<RequestId>,
}

/// The answer of `POST /api/cluster/init`: the secrets are in it only.
#[derive(Debug, Serialize, ToSchema)]
pub struct InitAnswer {
    pub org: OrgView,
    pub org_id: String,
    /// The org's admin API key, `tskey-api-…`.
    pub api_key: String,
    pub api_key_id: String,
    /// The operator key, `tskey-api-…`: orgs, membership, backups.
    pub operator_key: String,
    pub operator_key_id: String,
}

/// `GET /api/whoami` with `Authorization: Bearer <API key>`: the key's own record (scope, org,
/// scopes, tags, expiry), never its secret. The console signs in with it.
#[utoipa::path(
    get,
    path = "/api/whoami", operation_id = "whoami",
    tag = "orgs",
    responses((status = 200, description = "The API key's own record", body = ApiKeyView), super::openapi::Errors),
    security(("api_key" = []), ("operator_key" = [])),
)]
pub async fn whoami(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Json<ApiKeyView>, ApiError> {
    let actor = api_key_actor(&headers)?;
    match node.read(&actor, &Query::WhoAmI).await?? {
        Answer::ApiKey(record) => Ok(Json(views::api_key(&record))),
        other => Err(ApiError::internal(format!("whoami answered {other:?}"))),
    }
}
