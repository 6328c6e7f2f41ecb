//! `POST /api/org-admin` (operator key): orgs and their API keys; and `POST /api/cluster/init`,
//! which creates the first org, its admin API key and the operator key, once per cluster.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::{check_id, check_org_id, request_id, Fields};
use super::{api_key_actor, body, new_request_id, views, write_create, write_with_fresh_ids};
use crate::node::Node;
use crate::secret::{new_credential, random_base62, CredentialKind, Secret, ID_LEN};
use crate::sm::model::*;
use crate::sm::query::{Answer, Query};

pub(crate) const ACTIONS: &str =
    "create_org, list_orgs, create_api_key, revoke_api_key, list_api_keys, rotate_operator_key, set_org_limits";
/// Longest API key lifetime: ten years.
const MAX_API_KEY_SECS: u64 = 10 * 365 * 86_400;
const MAX_NAME: usize = 128;

fn new_api_key() -> (Secret, NewCredential) {
    let secret = new_credential(CredentialKind::ApiKey, random_base62(ID_LEN));
    let record = NewCredential { id: format!("{API_KEY_ID_PREFIX}{}", secret.id), hash: secret.hash };
    (secret, record)
}

fn new_org_id() -> String {
    format!("{ORG_ID_PREFIX}{}", random_base62(8))
}

/// An API key's grants from the request's `scopes` and `tags` (absent: everything).
fn grants(scopes: Option<Vec<String>>, tags: Option<Vec<String>>) -> Result<Grants, ApiError> {
    let permissions = match scopes {
        None => None,
        Some(names) => {
            let mut permissions = Vec::new();
            for name in &names {
                let permission = Permission::parse(name).ok_or_else(|| {
                    let allowed: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
                    ApiError::bad_field("scopes", format!("{name:?} is not a scope; use {}", allowed.join(", ")))
                })?;
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
        validate_tags(tags)?;
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
fn check_bootstrap_token(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
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

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_field(field, format!("must be 1 to {MAX_NAME} printable characters")));
    }
    Ok(())
}

pub async fn handle(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut fields = Fields::parse(&body(raw)?)?;
    let action = fields.str("action")?;
    let actor = api_key_actor(&headers)?;
    match action.as_str() {
        "create_org" => {
            let name = fields.str("name")?;
            let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
            fields.finish()?;
            check_name("name", &name)?;
            let (outcome, ()) = write_with_fresh_ids(&node, request_id, actor, || {
                (Op::CreateOrg { org_id: new_org_id(), name: name.clone() }, ())
            })
            .await?;
            match outcome? {
                OpOk::Org(org) => Ok(Json(views::org(&org))),
                other => Err(ApiError::internal(format!("create_org answered {other:?}"))),
            }
        }
        "create_api_key" => {
            let org_id = fields.str("org_id")?;
            check_org_id("org_id", &org_id)?;
            let description = fields.opt_str("description")?.unwrap_or_default();
            let expires_in = fields.opt_u64("expires_in")?;
            let scopes = fields.opt_string_list("scopes")?;
            let tags = fields.opt_string_list("tags")?;
            let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
            fields.finish()?;
            if description.chars().count() > MAX_DESCRIPTION_CHARS || description.chars().any(char::is_control) {
                return Err(ApiError::bad_field(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION_CHARS} printable characters"),
                ));
            }
            if let Some(secs) = expires_in {
                if !(60..=MAX_API_KEY_SECS).contains(&secs) {
                    return Err(ApiError::bad_field(
                        "expires_in",
                        format!("must be a number of seconds from 60 to {MAX_API_KEY_SECS} (10 years), got {secs}"),
                    ));
                }
            }
            let grants = grants(scopes, tags)?;
            let plain = expires_in.is_none() && grants == Grants::all();
            if !plain && node.rules() < 2 {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "upgrade_in_progress",
                    "expires_in, scopes and tags need every node on this build (the cluster has not adopted its rules yet)",
                ));
            }
            let (outcome, secret) = write_create(&node, request_id, actor, || {
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
                OpOk::ApiKey(record) => {
                    let mut view = views::api_key(&record);
                    view["key"] = Value::String(secret.text);
                    Ok(Json(view))
                }
                other => Err(ApiError::internal(format!("create_api_key answered {other:?}"))),
            }
        }
        "rotate_operator_key" => {
            let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
            fields.finish()?;
            needs_rules(&node)?;
            let (outcome, secret) = write_with_fresh_ids(&node, request_id, actor, || {
                let (secret, key) = new_api_key();
                (Op::RotateOperatorKey { key }, secret)
            })
            .await?;
            match outcome? {
                OpOk::ApiKey(record) => {
                    let mut view = views::api_key(&record);
                    view["key"] = Value::String(secret.text);
                    Ok(Json(view))
                }
                other => Err(ApiError::internal(format!("rotate_operator_key answered {other:?}"))),
            }
        }
        "set_org_limits" => {
            let org_id = fields.str("org_id")?;
            check_org_id("org_id", &org_id)?;
            let keys_per_day = fields.opt_u64("auth_keys_per_day")?;
            let machines = fields.opt_u64("machines")?;
            let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
            fields.finish()?;
            needs_rules(&node)?;
            let limits = match (keys_per_day, machines) {
                (None, None) => None,
                (keys, machines) => {
                    let defaults = OrgLimits::default();
                    Some(OrgLimits {
                        auth_keys_per_day: keys.unwrap_or(defaults.auth_keys_per_day),
                        machines: machines.unwrap_or(defaults.machines),
                    })
                }
            };
            let command = Command { request_id, actor, op: Op::SetOrgLimits { org_id, limits } };
            match node.write(command).await?? {
                OpOk::OrgLimits { org_id, limits } => Ok(Json(json!({
                    "org_id": org_id,
                    "auth_keys_per_day": limits.auth_keys_per_day,
                    "machines": limits.machines,
                }))),
                other => Err(ApiError::internal(format!("set_org_limits answered {other:?}"))),
            }
        }
        "revoke_api_key" => {
            let api_key_id = fields.str("api_key_id")?;
            check_id("api_key_id", API_KEY_ID_PREFIX, &api_key_id)?;
            let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
            fields.finish()?;
            let command = Command { request_id, actor, op: Op::RevokeApiKey { api_key_id } };
            match node.write(command).await?? {
                OpOk::ApiKey(record) => Ok(Json(views::api_key(&record))),
                other => Err(ApiError::internal(format!("revoke_api_key answered {other:?}"))),
            }
        }
        "list_api_keys" => {
            let org_id = fields.opt_str("org_id")?;
            if let Some(org_id) = &org_id {
                check_org_id("org_id", org_id)?;
            }
            fields.finish()?;
            match node.read(&actor, &Query::ListApiKeys { org_id }).await?? {
                Answer::ApiKeys(keys) => {
                    Ok(Json(json!({ "api_keys": keys.iter().map(views::api_key).collect::<Vec<_>>() })))
                }
                other => Err(ApiError::internal(format!("list_api_keys answered {other:?}"))),
            }
        }
        "list_orgs" => {
            fields.finish()?;
            match node.read(&actor, &Query::ListOrgs).await?? {
                Answer::Orgs(orgs) => Ok(Json(json!({ "orgs": orgs.iter().map(views::org).collect::<Vec<_>>() }))),
                other => Err(ApiError::internal(format!("list_orgs answered {other:?}"))),
            }
        }
        other => Err(ApiError::bad_field("action", format!("unknown action {other:?}; must be one of {ACTIONS}"))),
    }
}

/// `POST /api/cluster/init` `{"org_name": …}` with `Authorization: Bearer <bootstrap token>`:
/// the first org, its admin API key and the operator key. Like `consul acl bootstrap` with an
/// `initial_management` token, it needs a token the operator made (its SHA-256 in the node's
/// configuration) and works once per cluster; every later call answers 409. Without the right
/// token: 401, and nothing is proposed. The token is a bearer header, which a browser cannot
/// send to another origin without the node's consent, so a web page cannot initialise a
/// cluster it can reach (DNS rebinding).
pub async fn init(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    check_bootstrap_token(&node, &headers)?;
    let raw = body(raw)?;
    let mut fields = if raw.is_empty() { Fields::parse(b"{}")? } else { Fields::parse(&raw)? };
    let org_name = fields.opt_str("org_name")?.unwrap_or_else(|| "default".to_string());
    fields.finish()?;
    check_name("org_name", &org_name)?;
    let (outcome, (operator, admin)) = write_with_fresh_ids(&node, new_request_id(), Actor::Anonymous, || {
        let (operator, operator_key) = new_api_key();
        let (admin, admin_key) = new_api_key();
        let op = Op::InitCluster { org_id: new_org_id(), org_name: org_name.clone(), operator_key, admin_key };
        (op, (operator, admin))
    })
    .await?;
    match outcome? {
        OpOk::Initialized { org, operator_key_id, admin_key_id } => Ok(Json(json!({
            "org": views::org(&org),
            "org_id": org.org_id,
            "api_key": admin.text,
            "api_key_id": admin_key_id,
            "operator_key": operator.text,
            "operator_key_id": operator_key_id,
        }))),
        other => Err(ApiError::internal(format!("init answered {other:?}"))),
    }
}

/// `GET /api/whoami` with `Authorization: Bearer <API key>`: the key's own record (scope, org,
/// scopes, tags, expiry), never its secret. The console signs in with it.
pub async fn whoami(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let actor = api_key_actor(&headers)?;
    match node.read(&actor, &Query::WhoAmI).await?? {
        Answer::ApiKey(record) => Ok(Json(views::api_key(&record))),
        other => Err(ApiError::internal(format!("whoami answered {other:?}"))),
    }
}
