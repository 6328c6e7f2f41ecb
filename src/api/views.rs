//! JSON shapes of records, with times as RFC 3339.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::sm::model::{
    ApiKeyRecord, ApiKeyScope, AuthKeyRecord, Enrolment, Machine, MachineState, Millis, Org, AUTH_KEY_ID_PREFIX,
};

pub fn rfc3339(ms: Millis) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

fn opt_time(ms: Option<Millis>) -> Value {
    ms.map_or(Value::Null, rfc3339)
}

pub fn auth_key(record: &AuthKeyRecord, now: Millis) -> Value {
    json!({
        "key_id": record.key_id,
        "org_id": record.org_id,
        "prefix": record.display_prefix(),
        "reusable": record.reusable,
        "ephemeral": record.ephemeral,
        "uses": record.uses,
        "max_uses": record.max_uses,
        "tags": record.tags,
        "description": record.description,
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
        "last_used_at": opt_time(record.last_used_at),
        "revoked_at": opt_time(record.revoked_at),
        "state": record.state(now),
        "preauthorized": record.preauthorized,
    })
}

pub fn enrolment(e: &Enrolment) -> Value {
    json!({
        "machine_id": e.machine_id,
        "node_key_fingerprint": e.node_key_fingerprint,
        "at": rfc3339(e.at),
        "log_index": e.log_index,
        "kind": if e.rekey { "rekey" } else { "enrolment" },
        "deregistered_at": opt_time(e.deregistered.map(|d| d.at)),
        "deregistered_reason": e.deregistered.map(|d| d.reason),
    })
}

pub fn org(o: &Org) -> Value {
    json!({ "org_id": o.org_id, "name": o.name, "created_at": rfc3339(o.created_at) })
}

pub fn api_key(k: &ApiKeyRecord) -> Value {
    let (scope, org_id) = match &k.scope {
        ApiKeyScope::Operator => ("operator", None),
        ApiKeyScope::Org(org) => ("org", Some(org.clone())),
    };
    json!({
        "api_key_id": k.api_key_id,
        "scope": scope,
        "org_id": org_id,
        "description": k.description,
        "created_at": rfc3339(k.created_at),
        "revoked_at": opt_time(k.revoked_at),
        "expires_at": opt_time(k.expires_at),
        "last_used_at": opt_time(k.last_used_at),
        "scopes": k.grants.permissions.as_ref().map(|ps| ps.iter().map(|p| p.name()).collect::<Vec<_>>()),
        "tags": k.grants.tags,
    })
}

pub fn machine(m: &Machine) -> Value {
    let key = m.auth_key_id.strip_prefix(AUTH_KEY_ID_PREFIX).unwrap_or(&m.auth_key_id);
    let state = match (m.node_key_revoked, m.state) {
        (true, _) => "node_key_revoked",
        (false, MachineState::Active) => "active",
        (false, MachineState::Quarantined) => "quarantined",
        (false, MachineState::Pending) => "pending",
    };
    json!({
        "machine_id": m.machine_id,
        "org_id": m.org_id,
        "hostname": m.hostname,
        "tags": m.tags,
        "ephemeral": m.ephemeral,
        "state": state,
        "last_seen": opt_time(m.last_seen),
        "created_at": rfc3339(m.created_at),
        "auth_key_id": m.auth_key_id,
        "auth_key_prefix": format!("tskey-auth-{}…", &key[..key.len().min(5)]),
        "node_public_key": m.node_public_key,
        "node_key_fingerprint": crate::secret::fingerprint(&m.node_public_key),
        "granted_tags": m.granted_tags,
        "approved_by": m.approved_by,
        "approved_at": opt_time(m.approved_at),
    })
}
