//! The JSON shapes of records in answers, as types: each serializes the answer and describes it
//! in the OpenAPI document, so the document says exactly what is sent. Times are RFC 3339.
//!
//! Views only reshape records; they must not decide anything (a key's state is the record's own
//! `state` at the time the answer was read).

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::sm::model::{
    ApiKeyRecord, ApiKeyScope, AuthKeyRecord, DeregisterReason, Enrolment, KeyState, Machine, MachineState, Millis,
    Org, AUTH_KEY_ID_PREFIX,
};

/// A time as RFC 3339 (UTC).
pub fn rfc3339(ms: Millis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn opt_time(ms: Option<Millis>) -> Option<String> {
    ms.map(rfc3339)
}

/// An auth key, never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthKeyView {
    /// `ak_` and the id inside the key (`tskey-auth-<id>-…`).
    pub key_id: String,
    pub org_id: String,
    /// The start of the key, to recognise it by: `tskey-auth-abc12…`.
    pub prefix: String,
    pub reusable: bool,
    pub ephemeral: bool,
    /// Machines it has enrolled (re-keys of the same machine spend none).
    pub uses: u64,
    /// A reusable key's limit; `null` for none (and for one-shot keys, which enrol once).
    pub max_uses: Option<u32>,
    pub tags: Vec<String>,
    pub description: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    /// Its state when the answer was read.
    pub state: KeyState,
    /// Machines it enrols are active at once (`false`: they wait for an admin's approval).
    pub preauthorized: bool,
}

pub fn auth_key(record: &AuthKeyRecord, now: Millis) -> AuthKeyView {
    AuthKeyView {
        key_id: record.key_id.clone(),
        org_id: record.org_id.clone(),
        prefix: record.display_prefix(),
        reusable: record.reusable,
        ephemeral: record.ephemeral,
        uses: record.uses,
        max_uses: record.max_uses,
        tags: record.tags.clone(),
        description: record.description.clone(),
        created_at: rfc3339(record.created_at),
        expires_at: rfc3339(record.expires_at),
        last_used_at: opt_time(record.last_used_at),
        revoked_at: opt_time(record.revoked_at),
        state: record.state(now),
        preauthorized: record.preauthorized,
    }
}

/// Whether an enrolment row records a new machine or a re-key of one.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrolmentKind {
    Enrolment,
    Rekey,
}

/// One enrolment by an auth key.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolmentView {
    pub machine_id: String,
    pub node_key_fingerprint: String,
    #[schema(format = DateTime)]
    pub at: String,
    /// The Raft log index of the entry that enrolled it.
    pub log_index: u64,
    pub kind: EnrolmentKind,
    #[schema(format = DateTime)]
    pub deregistered_at: Option<String>,
    pub deregistered_reason: Option<DeregisterReason>,
    /// The node that checked the machine's proof of possession (recorded from rules 4).
    pub checked_by: Option<u64>,
}

pub fn enrolment(e: &Enrolment) -> EnrolmentView {
    EnrolmentView {
        machine_id: e.machine_id.clone(),
        node_key_fingerprint: e.node_key_fingerprint.clone(),
        at: rfc3339(e.at),
        log_index: e.log_index,
        kind: if e.rekey { EnrolmentKind::Rekey } else { EnrolmentKind::Enrolment },
        deregistered_at: opt_time(e.deregistered.map(|d| d.at)),
        deregistered_reason: e.deregistered.map(|d| d.reason),
        checked_by: e.checked_by,
    }
}

/// An org.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    pub org_id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

pub fn org(o: &Org) -> OrgView {
    OrgView { org_id: o.org_id.clone(), name: o.name.clone(), created_at: rfc3339(o.created_at) }
}

/// Whose an API key is: the operator's (orgs, cluster) or an org's.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyScopeView {
    Operator,
    Org,
}

/// An API key, never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub api_key_id: String,
    pub scope: ApiKeyScopeView,
    /// The org of an org key; `null` for the operator key.
    pub org_id: Option<String>,
    pub description: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    /// What it may do; `null`: everything its scope allows.
    pub scopes: Option<Vec<String>>,
    /// The tags it may put on keys and machines; `null`: any.
    pub tags: Option<Vec<String>>,
}

pub fn api_key(k: &ApiKeyRecord) -> ApiKeyView {
    let (scope, org_id) = match &k.scope {
        ApiKeyScope::Operator => (ApiKeyScopeView::Operator, None),
        ApiKeyScope::Org(org) => (ApiKeyScopeView::Org, Some(org.clone())),
    };
    ApiKeyView {
        api_key_id: k.api_key_id.clone(),
        scope,
        org_id,
        description: k.description.clone(),
        created_at: rfc3339(k.created_at),
        revoked_at: opt_time(k.revoked_at),
        expires_at: opt_time(k.expires_at),
        last_used_at: opt_time(k.last_used_at),
        scopes: k.grants.permissions.as_ref().map(|ps| ps.iter().map(|p| p.name().to_string()).collect()),
        tags: k.grants.tags.clone(),
    }
}

/// A machine's state as the API shows it (a revoked node key shows over the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineStateView {
    Active,
    Pending,
    Quarantined,
    NodeKeyRevoked,
}

impl From<MachineState> for MachineStateView {
    fn from(state: MachineState) -> Self {
        match state {
            MachineState::Active => MachineStateView::Active,
            MachineState::Pending => MachineStateView::Pending,
            MachineState::Quarantined => MachineStateView::Quarantined,
        }
    }
}

/// An enrolled machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct MachineView {
    pub machine_id: String,
    pub org_id: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub state: MachineStateView,
    #[schema(format = DateTime)]
    pub last_seen: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub auth_key_id: String,
    pub auth_key_prefix: String,
    pub node_public_key: String,
    pub node_key_fingerprint: String,
    /// Tags its auth key granted.
    pub granted_tags: Vec<String>,
    pub approved_by: Option<String>,
    #[schema(format = DateTime)]
    pub approved_at: Option<String>,
}

pub fn machine(m: &Machine) -> MachineView {
    let key = m.auth_key_id.strip_prefix(AUTH_KEY_ID_PREFIX).unwrap_or(&m.auth_key_id);
    let state = if m.node_key_revoked { MachineStateView::NodeKeyRevoked } else { m.state.into() };
    MachineView {
        machine_id: m.machine_id.clone(),
        org_id: m.org_id.clone(),
        hostname: m.hostname.clone(),
        tags: m.tags.clone(),
        ephemeral: m.ephemeral,
        state,
        last_seen: opt_time(m.last_seen),
        created_at: rfc3339(m.created_at),
        auth_key_id: m.auth_key_id.clone(),
        auth_key_prefix: format!("tskey-auth-{}…", &key[..key.len().min(5)]),
        node_public_key: m.node_public_key.clone(),
        node_key_fingerprint: crate::secret::fingerprint(&m.node_public_key),
        granted_tags: m.granted_tags.clone(),
        approved_by: m.approved_by.clone(),
        approved_at: opt_time(m.approved_at),
    }
}

/// An answer that is one of several shapes (an action-style endpoint's, by its action): an
/// untagged enum whose schema is `anyOf` its shapes.
macro_rules! answers {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($body:ty),)+ }) => {
        $(#[$meta])*
        #[derive(Debug, serde::Serialize)]
        #[serde(untagged)]
        // Built once per answer and serialized at once: boxing would buy nothing.
        #[allow(clippy::large_enum_variant)]
        $vis enum $name {
            $($variant($body),)+
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let mut any = utoipa::openapi::schema::AnyOf::new();
                $(any.items.push(utoipa::openapi::Ref::from_schema_name(<$body as utoipa::ToSchema>::name()).into());)+
                utoipa::openapi::schema::Schema::AnyOf(any).into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn schemas(
                schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
            ) {
                $(
                    let name = <$body as utoipa::ToSchema>::name().into_owned();
                    schemas.push((name, <$body as utoipa::PartialSchema>::schema()));
                    <$body as utoipa::ToSchema>::schemas(schemas);
                )+
            }
        }
    };
}
pub(crate) use answers;
