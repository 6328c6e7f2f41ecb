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
use super::fields::{request_id, Fields};
use super::{api_key_actor, body, new_request_id, views, write_with_fresh_ids};
use crate::node::Node;
use crate::secret::{new_credential, random_base62, CredentialKind, Secret, ID_LEN};
use crate::sm::model::*;
use crate::sm::query::{Answer, Query};

pub(crate) const ACTIONS: &str = "create_org, list_orgs, create_api_key, revoke_api_key, list_api_keys";
const MAX_NAME: usize = 128;

fn new_api_key() -> (Secret, NewCredential) {
    let secret = new_credential(CredentialKind::ApiKey, random_base62(ID_LEN));
    let record = NewCredential { id: format!("{API_KEY_ID_PREFIX}{}", secret.id), hash: secret.hash };
    (secret, record)
}

fn new_org_id() -> String {
    format!("{ORG_ID_PREFIX}{}", random_base62(8))
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
            let description = fields.opt_str("description")?.unwrap_or_default();
            let request_id = request_id(&mut fields)?.unwrap_or_else(new_request_id);
            fields.finish()?;
            if description.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(ApiError::bad_field(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
                ));
            }
            let (outcome, secret) = write_with_fresh_ids(&node, request_id, actor, || {
                let (secret, key) = new_api_key();
                (Op::CreateApiKey { org_id: org_id.clone(), key, description: description.clone() }, secret)
            })
            .await?;
            match outcome? {
                OpOk::ApiKey(record) => {
                    let mut view = views::api_key(&record);
                    view["key"] = Value::String(secret.text);
                    Ok(Json(view))
                }
                other => Err(ApiError::internal(format!("create_api_key answered {other:?}"))),
            }
        }
        "revoke_api_key" => {
            let api_key_id = fields.str("api_key_id")?;
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

/// `POST /api/cluster/init` `{"org_name": …}`: the first org, its admin API key and the operator
/// key. Like `consul acl bootstrap`, it works once per cluster; every later call answers 409.
pub async fn init(State(node): State<Arc<Node>>, raw: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
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
