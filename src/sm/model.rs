//! The records the key store keeps and the commands that change them.
//!
//! These types are what Raft replicates (inside [`crate::raft_types::Request`]) and what the
//! state machine stores, so they change only together with [`crate::codec::FORMAT_VERSION`].
//! Ids and secrets inside a command were made by the node that received the request, before it
//! was proposed; the state machine never makes one.

use serde::{Deserialize, Serialize};

use crate::secret::{PresentedCredential, SecretHash};

/// Milliseconds since the Unix epoch, as stamped by the leader.
pub type Millis = u64;

/// Shortest auth-key lifetime a user may ask for: 5 minutes.
pub const MIN_EXPIRY_SECS: u64 = 300;
/// Longest auth-key lifetime: 30 days.
pub const MAX_EXPIRY_SECS: u64 = 30 * 24 * 3600;
/// Lifetime when none is given: 1 hour.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Most tags on one key.
pub const MAX_TAGS: usize = 64;
/// Longest tag name after `tag:`.
pub const MAX_TAG_NAME: usize = 63;

/// An organisation: the unit of tenancy. Every API key but the operator's belongs to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    pub org_id: String,
    pub name: String,
    pub created_at: Millis,
}

/// What an API key may administer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyScope {
    /// The operator key: creates orgs and their API keys, nothing else.
    Operator,
    /// An org's admin key: manages that org's auth keys, and only that org's.
    Org(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// `api_<id>`.
    pub api_key_id: String,
    pub scope: ApiKeyScope,
    pub description: String,
    pub secret_hash: SecretHash,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    /// After this (cluster time) the key is refused like a revoked one.
    pub expires_at: Option<Millis>,
    /// The last write this key made (reads do not count).
    pub last_used_at: Option<Millis>,
    /// What an org key may do; the operator key is not limited by grants.
    pub grants: Grants,
}

/// [`ApiKeyRecord`] as builds before key lifetimes and grants stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeyRecordV1 {
    api_key_id: String,
    scope: ApiKeyScope,
    description: String,
    secret_hash: SecretHash,
    created_at: Millis,
    revoked_at: Option<Millis>,
}

impl From<ApiKeyRecordV1> for ApiKeyRecord {
    fn from(old: ApiKeyRecordV1) -> Self {
        ApiKeyRecord {
            api_key_id: old.api_key_id,
            scope: old.scope,
            description: old.description,
            secret_hash: old.secret_hash,
            created_at: old.created_at,
            revoked_at: old.revoked_at,
            expires_at: None,
            last_used_at: None,
            grants: Grants::all(),
        }
    }
}

/// What an org API key may do, like an OAuth client's scopes: which actions
/// ([`Permission`]s; `None`: all), and which tags it may put on the auth keys it creates
/// (`None`: any tag of the org; otherwise every key it creates must carry tags, all from these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub permissions: Option<Vec<Permission>>,
    pub tags: Option<Vec<String>>,
}

impl Grants {
    pub fn all() -> Self {
        Grants { permissions: None, tags: None }
    }

    /// Whether these grants allow `needed` (a write permission includes its read).
    pub fn allows(&self, needed: Permission) -> bool {
        self.permissions.as_ref().is_none_or(|granted| granted.iter().any(|p| p.includes(needed)))
    }
}

/// One thing an org API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// Create and revoke auth keys (and read them).
    AuthKeys,
    /// List and read auth keys.
    AuthKeysRead,
    /// Act on machines: quarantine, delete, tags, approval (and read them).
    Machines,
    /// List machines.
    MachinesRead,
}

impl Permission {
    pub const ALL: [Permission; 4] =
        [Permission::AuthKeys, Permission::AuthKeysRead, Permission::Machines, Permission::MachinesRead];

    /// The name used by the API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Permission::AuthKeys => "auth_keys",
            Permission::AuthKeysRead => "auth_keys:read",
            Permission::Machines => "machines",
            Permission::MachinesRead => "machines:read",
        }
    }

    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    fn includes(self, needed: Permission) -> bool {
        self == needed
            || matches!(
                (self, needed),
                (Permission::AuthKeys, Permission::AuthKeysRead) | (Permission::Machines, Permission::MachinesRead)
            )
    }
}

/// Per-org limits the operator sets (`set_org_limits`); replicated, so every node enforces the
/// same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgLimits {
    /// Auth keys the org may create per day of cluster time (UTC days).
    pub auth_keys_per_day: u64,
    /// Machines the org may have enrolled at once.
    pub machines: u64,
}

impl Default for OrgLimits {
    fn default() -> Self {
        OrgLimits { auth_keys_per_day: DEFAULT_AUTH_KEYS_PER_DAY, machines: DEFAULT_MACHINES }
    }
}

/// Default [`OrgLimits::auth_keys_per_day`].
pub const DEFAULT_AUTH_KEYS_PER_DAY: u64 = 100_000;
/// Default [`OrgLimits::machines`].
pub const DEFAULT_MACHINES: u64 = 100_000;

/// An org's limits and what it used of them today.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgQuota {
    /// `None`: the defaults.
    pub limits: Option<OrgLimits>,
    /// The UTC day (days since the epoch, cluster time) `keys_created` counts.
    pub day: u64,
    pub keys_created: u64,
}

/// An auth key. The secret itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKeyRecord {
    /// `ak_<id>`, where `<id>` is the public part of `tskey-auth-<id>-<secret>`.
    pub key_id: String,
    pub org_id: String,
    pub secret_hash: SecretHash,
    pub reusable: bool,
    pub ephemeral: bool,
    pub max_uses: Option<u32>,
    pub uses: u64,
    pub tags: Vec<String>,
    pub description: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub last_used_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    /// Creation order; listings page by it.
    pub seq: u64,
    /// Machines it enrols are active at once (`true`, the default) or wait for an admin's
    /// approval (`pending`).
    pub preauthorized: bool,
}

/// [`AuthKeyRecord`] as builds before device approval stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthKeyRecordV1 {
    key_id: String,
    org_id: String,
    secret_hash: SecretHash,
    reusable: bool,
    ephemeral: bool,
    max_uses: Option<u32>,
    uses: u64,
    tags: Vec<String>,
    description: String,
    created_at: Millis,
    expires_at: Millis,
    last_used_at: Option<Millis>,
    revoked_at: Option<Millis>,
    seq: u64,
}

impl From<AuthKeyRecordV1> for AuthKeyRecord {
    fn from(o: AuthKeyRecordV1) -> Self {
        AuthKeyRecord {
            key_id: o.key_id,
            org_id: o.org_id,
            secret_hash: o.secret_hash,
            reusable: o.reusable,
            ephemeral: o.ephemeral,
            max_uses: o.max_uses,
            uses: o.uses,
            tags: o.tags,
            description: o.description,
            created_at: o.created_at,
            expires_at: o.expires_at,
            last_used_at: o.last_used_at,
            revoked_at: o.revoked_at,
            seq: o.seq,
            preauthorized: true,
        }
    }
}

/// The lifecycle state of an auth key at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Valid,
    /// A one-shot key that has enrolled its machine.
    Used,
    /// A reusable key that reached `max_uses`.
    Exhausted,
    Expired,
    Revoked,
}

impl AuthKeyRecord {
    /// The public id inside the secret (`ak_abc…` → `abc…`).
    pub fn public_id(&self) -> &str {
        self.key_id.strip_prefix(AUTH_KEY_ID_PREFIX).unwrap_or(&self.key_id)
    }

    /// What the guide's listing shows: `tskey-auth-abc12…`.
    pub fn display_prefix(&self) -> String {
        let id = self.public_id();
        format!("tskey-auth-{}…", &id[..id.len().min(5)])
    }

    /// `Ok` while the key has a use left: a one-shot key is used once, a `max_uses` key at its
    /// limit is exhausted.
    pub fn check_uses_left(&self) -> Result<(), OpError> {
        if !self.reusable && self.uses >= 1 {
            return Err(OpError::KeyUsed);
        }
        if self.max_uses.is_some_and(|max| self.uses >= u64::from(max)) {
            return Err(OpError::KeyExhausted);
        }
        Ok(())
    }

    /// The state at `now`. A revocation wins over everything; a spent key stays `used` or
    /// `exhausted` after it expires, since that says more.
    pub fn state(&self, now: Millis) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if !self.reusable && self.uses >= 1 {
            KeyState::Used
        } else if self.max_uses.is_some_and(|max| self.uses >= u64::from(max)) {
            KeyState::Exhausted
        } else if now >= self.expires_at {
            KeyState::Expired
        } else {
            KeyState::Valid
        }
    }
}

pub const AUTH_KEY_ID_PREFIX: &str = "ak_";
pub const API_KEY_ID_PREFIX: &str = "api_";
pub const MACHINE_ID_PREFIX: &str = "m_";
pub const ORG_ID_PREFIX: &str = "org_";

/// One use of an auth key, kept as the key's enrolment history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub machine_id: String,
    pub node_key_fingerprint: String,
    pub at: Millis,
    /// The Raft log index of the entry that committed this enrolment.
    pub log_index: u64,
    /// When and why the machine was removed, if it was.
    pub deregistered: Option<Deregistration>,
    /// This row records a re-key (the same machine enrolling again with a new node key), not
    /// a new machine: it spent no use.
    pub rekey: bool,
    /// The node that checked its proof of possession (rules 4, `EnrolChecked`).
    pub checked_by: Option<u64>,
}

/// [`Enrolment`] as builds before proofs were attributed stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct EnrolmentV2 {
    machine_id: String,
    node_key_fingerprint: String,
    at: Millis,
    log_index: u64,
    deregistered: Option<Deregistration>,
    rekey: bool,
}

impl From<EnrolmentV2> for Enrolment {
    fn from(o: EnrolmentV2) -> Self {
        Enrolment {
            machine_id: o.machine_id,
            node_key_fingerprint: o.node_key_fingerprint,
            at: o.at,
            log_index: o.log_index,
            deregistered: o.deregistered,
            rekey: o.rekey,
            checked_by: None,
        }
    }
}

/// [`Enrolment`] as builds before re-keys were recorded stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct EnrolmentV1 {
    machine_id: String,
    node_key_fingerprint: String,
    at: Millis,
    log_index: u64,
    deregistered: Option<Deregistration>,
}

impl From<EnrolmentV1> for Enrolment {
    fn from(o: EnrolmentV1) -> Self {
        Enrolment {
            machine_id: o.machine_id,
            node_key_fingerprint: o.node_key_fingerprint,
            at: o.at,
            log_index: o.log_index,
            deregistered: o.deregistered,
            rekey: false,
            checked_by: None,
        }
    }
}

/// Why a machine left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeregisterReason {
    /// An ephemeral machine sent no heartbeat for the inactivity timeout.
    Inactive,
    /// An admin deleted it.
    Deleted,
    /// The machine logged itself out.
    LoggedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deregistration {
    pub at: Millis,
    pub reason: DeregisterReason,
}

/// Whether an enrolled machine may take part in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Active,
    /// Kept, with its record, but cut off until unquarantined.
    Quarantined,
    /// Enrolled with a key that is not pre-authorized: waits for an admin's approval, with no
    /// tags' rights meanwhile.
    Pending,
}

/// An enrolled machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub machine_id: String,
    pub org_id: String,
    pub hostname: String,
    /// 64 lowercase hex digits.
    pub node_public_key: String,
    /// The public id and hash of the machine's current `nodekey-<id>-<secret>`.
    pub node_key_id: String,
    pub node_key_hash: SecretHash,
    pub auth_key_id: String,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub created_at: Millis,
    pub state: MachineState,
    /// Set by revoke-node-key: the node key is refused until the machine enrols again.
    pub node_key_revoked: bool,
    /// Last heartbeat as last persisted by the leader (coarse; the leader also holds a finer
    /// value in memory).
    pub last_seen: Option<Millis>,
    /// The enrolment history row of this machine: (auth key id, seq).
    pub enrolment_seq: u64,
    /// The tags its auth key granted (or an admin set): it may only narrow its tags within these.
    pub granted_tags: Vec<String>,
    /// When the proof of possession that enrolled or last re-keyed it was issued: a re-key must
    /// prove later (a delayed copy of an older attempt rotates nothing).
    pub proved_at: Option<Millis>,
    /// Who approved it and when (device approval), if it needed approval.
    pub approved_by: Option<String>,
    pub approved_at: Option<Millis>,
}

/// [`Machine`] as builds before grants, proofs and approval stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct MachineV1 {
    machine_id: String,
    org_id: String,
    hostname: String,
    node_public_key: String,
    node_key_id: String,
    node_key_hash: SecretHash,
    auth_key_id: String,
    tags: Vec<String>,
    ephemeral: bool,
    created_at: Millis,
    state: MachineState,
    node_key_revoked: bool,
    last_seen: Option<Millis>,
    enrolment_seq: u64,
}

impl From<MachineV1> for Machine {
    fn from(o: MachineV1) -> Self {
        Machine {
            granted_tags: o.tags.clone(),
            machine_id: o.machine_id,
            org_id: o.org_id,
            hostname: o.hostname,
            node_public_key: o.node_public_key,
            node_key_id: o.node_key_id,
            node_key_hash: o.node_key_hash,
            auth_key_id: o.auth_key_id,
            tags: o.tags,
            ephemeral: o.ephemeral,
            created_at: o.created_at,
            state: o.state,
            node_key_revoked: o.node_key_revoked,
            last_seen: o.last_seen,
            enrolment_seq: o.enrolment_seq,
            proved_at: None,
            approved_by: None,
            approved_at: None,
        }
    }
}

/// What an admin decided about a machine, remembered against its public key so that it sticks
/// through log-out and re-enrolment (`sm::machines`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Deleted by an admin: it may not enrol again until an admin allows it.
    pub deleted: Option<Actioned>,
    /// Quarantined: it enrols again quarantined.
    pub quarantined: bool,
    /// Its node key was revoked: it may not enrol again with the auth key that enrolled it.
    pub node_key_revoked_for: Option<String>,
}

/// Who did something, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actioned {
    pub by: String,
    pub at: Millis,
}

/// What an admin can do to a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineAction {
    Quarantine,
    Unquarantine,
    Delete,
    SetTags(Vec<String>),
    RevokeNodeKey,
    // New variants go at the end.
    /// Device approval: a pending machine becomes active.
    Approve,
    /// Device approval refused: the machine is deleted, and stays out like a deleted one.
    Reject,
}

/// What a machine can do to itself with its node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfAction {
    SetTags(Vec<String>),
    Logout,
}

/// A validated request for a new auth key. Only [`AuthKeySpec::new`] makes one, so a spec that
/// reaches the state machine already obeys every rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKeySpec {
    reusable: bool,
    ephemeral: bool,
    expires_in_secs: u64,
    tags: Vec<String>,
    description: String,
    max_uses: Option<u32>,
}

/// Why a key spec was refused; the message names the field and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn spec_error(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError { field, message: message.into() }
}

impl AuthKeySpec {
    /// Validates a key request. `min_expiry_secs` is [`MIN_EXPIRY_SECS`] except under the
    /// test-only setting that lets fault tests watch keys expire.
    pub fn new(
        reusable: bool,
        ephemeral: bool,
        expires_in_secs: u64,
        tags: Vec<String>,
        description: String,
        max_uses: Option<u64>,
        min_expiry_secs: u64,
    ) -> Result<Self, SpecError> {
        if !(min_expiry_secs..=MAX_EXPIRY_SECS).contains(&expires_in_secs) {
            return Err(spec_error(
                "expires_in",
                format!("must be a number of seconds from {min_expiry_secs} (5 minutes) to {MAX_EXPIRY_SECS} (30 days), got {expires_in_secs}"),
            ));
        }
        validate_tags(&tags)?;
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(spec_error("description", format!("must be at most {MAX_DESCRIPTION_CHARS} characters")));
        }
        if description.chars().any(char::is_control) {
            return Err(spec_error("description", "must not contain control characters"));
        }
        let max_uses = match max_uses {
            None => None,
            Some(_) if !reusable => {
                return Err(spec_error(
                    "max_uses",
                    "is allowed only with \"reusable\": true (a one-shot key is used once)",
                ))
            }
            Some(n) if n == 0 || n > u64::from(u32::MAX) => {
                return Err(spec_error("max_uses", format!("must be a positive integer up to {}", u32::MAX)))
            }
            Some(n) => Some(n as u32),
        };
        Ok(AuthKeySpec { reusable, ephemeral, expires_in_secs, tags: dedup(tags), description, max_uses })
    }

    pub fn reusable(&self) -> bool {
        self.reusable
    }
    pub fn ephemeral(&self) -> bool {
        self.ephemeral
    }
    pub fn expires_in_secs(&self) -> u64 {
        self.expires_in_secs
    }
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn max_uses(&self) -> Option<u32> {
        self.max_uses
    }
}

fn dedup(tags: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

/// Checks tags: each `tag:` plus a lowercase name of letters, digits and `-`.
pub fn validate_tags(tags: &[String]) -> Result<(), SpecError> {
    if tags.len() > MAX_TAGS {
        return Err(spec_error("tags", format!("at most {MAX_TAGS} tags")));
    }
    for tag in tags {
        let ok = tag.strip_prefix("tag:").is_some_and(|name| {
            !name.is_empty()
                && name.len() <= MAX_TAG_NAME
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !ok {
            let shown: String = tag.chars().take(MAX_TAG_NAME + 8).collect();
            return Err(spec_error(
                "tags",
                format!("{shown:?} is not a tag: each tag is \"tag:\" followed by 1 to {MAX_TAG_NAME} lowercase letters, digits or '-', e.g. \"tag:laptop\""),
            ));
        }
    }
    Ok(())
}

/// Who sent a command, as presented; the state machine decides whether that is enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// No API key: enrolment, where the auth key is the credential, and cluster initialisation.
    Anonymous,
    /// An API key's id (`api_…`) and the hash of the text presented.
    ApiKey { api_key_id: String, secret_hash: SecretHash },
    /// A machine's node key: its public id and the hash of the text presented.
    NodeKey { node_key_id: String, secret_hash: SecretHash },
}

impl Actor {
    pub fn api_key(presented: PresentedCredential) -> Self {
        Actor::ApiKey { api_key_id: format!("{API_KEY_ID_PREFIX}{}", presented.id), secret_hash: presented.hash }
    }
}

/// A new credential's id and hash, made before proposing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCredential {
    pub id: String,
    pub hash: SecretHash,
}

/// How a revocation names its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySelector {
    /// `ak_…`.
    KeyId(String),
    /// The full `tskey-auth-…` text, checked against the stored hash.
    FullKey(PresentedCredential),
    /// A prefix of the public id (what follows `tskey-auth-`); must match exactly one key.
    IdPrefix(String),
}

/// A change to the key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates the first org, its admin API key and the operator key. Applies once per cluster.
    InitCluster {
        org_id: String,
        org_name: String,
        operator_key: NewCredential,
        admin_key: NewCredential,
    },
    CreateOrg {
        org_id: String,
        name: String,
    },
    CreateApiKey {
        org_id: String,
        key: NewCredential,
        description: String,
    },
    RevokeApiKey {
        api_key_id: String,
    },
    CreateAuthKey {
        org_id: String,
        key: NewCredential,
        spec: AuthKeySpec,
    },
    RevokeAuthKey {
        org_id: String,
        selector: KeySelector,
    },
    /// An admin acts on one of the org's machines.
    MachineAdmin {
        org_id: String,
        machine_id: String,
        action: MachineAction,
    },
    /// A machine acts on itself (actor: its node key).
    MachineSelf {
        action: SelfAction,
    },
    /// Written by builds before `SweepInactive`: ephemeral machines the leader saw no
    /// heartbeat from for the timeout, applied in whatever term it commits. Kept so that old
    /// logs replay as they did; never proposed any more.
    DeregisterInactive {
        machine_ids: Vec<String>,
    },
    /// Proposed by the leader about once a minute: last heartbeat times (wall-clock ms).
    RecordLastSeen {
        seen: Vec<(String, Millis)>,
    },
    Enrol {
        /// The presented auth key: its id (`ak_…`) and hash.
        auth_key_id: String,
        auth_key_hash: SecretHash,
        hostname: String,
        node_public_key: String,
        /// Made before proposing; used only if this enrolment creates a machine.
        machine_id: String,
        /// The machine's new node key (made before proposing), also on a repeated enrolment.
        node_key: NewCredential,
    },
    /// `add-node` (operator): reserves a node id that was never used.
    AdmitNode {
        node_id: u64,
    },
    /// Proposed by a member itself: the incarnation (identity) of its data directory.
    RegisterNode {
        node_id: u64,
        incarnation: String,
    },
    /// `remove-node` (operator): the id is retired and never used again.
    RetireNode {
        node_id: u64,
    },
    // New variants go at the end: older entries keep decoding (bincode numbers variants).
    /// Proposed by the leader of `term`: ephemeral machines it saw no heartbeat from for the
    /// timeout. Applied only from an entry of that same term (see `sm::KeyStore::apply_entry`).
    SweepInactive {
        term: u64,
        machine_ids: Vec<String>,
    },
    /// Proposed by the leader: apply later entries by rules `version` (see `sm::Meta::rules`).
    AdoptRules {
        version: u32,
    },
    /// `create_api_key` with a lifetime and grants (operator).
    CreateApiKeyWith {
        org_id: String,
        key: NewCredential,
        description: String,
        /// Seconds from creation; `None`: no expiry.
        expires_in_secs: Option<u64>,
        grants: Grants,
    },
    /// The operator key is replaced by `key`; every earlier operator key is revoked.
    RotateOperatorKey {
        key: NewCredential,
    },
    /// The operator sets an org's limits (`None`: back to the defaults).
    SetOrgLimits {
        org_id: String,
        limits: Option<OrgLimits>,
    },
    /// An enrolment with a proof of possession, checked by the node that received it
    /// (`proof`), made at `proved_at` by the machine's clock.
    EnrolProven {
        auth_key_id: String,
        auth_key_hash: SecretHash,
        hostname: String,
        node_public_key: String,
        machine_id: String,
        node_key: NewCredential,
        proved_at: Millis,
    },
    /// `create_auth_key` with device approval (`preauthorized: false`: machines wait for an
    /// admin).
    CreateAuthKeyWith {
        org_id: String,
        key: NewCredential,
        spec: AuthKeySpec,
        preauthorized: bool,
    },
    /// An admin lets a deleted (or rejected) machine's public key enrol again.
    AllowReenrol {
        org_id: String,
        node_public_key: String,
    },
    /// Rules 4's sweep, proposed by the leader of `term`: ephemeral machines it saw no heartbeat
    /// from for the timeout, each with what it judged. Applied only from an entry of that same
    /// term, and only to a machine that has not changed since (see [`SweptMachine`]).
    SweepSilent {
        term: u64,
        machines: Vec<SweptMachine>,
    },
    /// Rules 4's enrolment: `EnrolProven`, and the node that checked the proof (it made this
    /// command; a member forwarding it must be that node, see `network::server`). The node is
    /// recorded in the key's history.
    EnrolChecked {
        auth_key_id: String,
        auth_key_hash: SecretHash,
        hostname: String,
        node_public_key: String,
        machine_id: String,
        node_key: NewCredential,
        proved_at: Millis,
        checked_by: u64,
    },
}

/// One machine as a sweep judged it silent: its node key then and its persisted last-seen time
/// then. A re-key (a new node key: it enrolled again, which is a sign of life) or a later
/// last-seen time means it was alive after all, and the sweep leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweptMachine {
    pub machine_id: String,
    pub node_key_id: String,
    pub last_seen: Option<Millis>,
}

/// A command as proposed: the op, who asked, and a request id that makes retries apply once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub request_id: String,
    pub actor: Actor,
    pub op: Op,
}

/// What an enrolment answers (the node key's secret is added by the node that made it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub machine_id: String,
    pub org_id: String,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub auth_key_id: String,
    /// True when this answer repeats an earlier enrolment of the same node public key.
    pub repeated: bool,
}

/// What every enrolment op carries: one value makes whichever of [`Op::Enrol`],
/// [`Op::EnrolProven`] and [`Op::EnrolChecked`] the rules call for.
#[derive(Debug, Clone)]
pub struct NewEnrolment {
    pub auth_key_id: String,
    pub auth_key_hash: SecretHash,
    pub hostname: String,
    pub node_public_key: String,
    pub machine_id: String,
    pub node_key: NewCredential,
}

impl NewEnrolment {
    /// `Enrol` without a proof; `EnrolProven` with the proof's time; `EnrolChecked` with it and
    /// the node that checked the proof.
    pub fn into_op(self, proved_at: Option<Millis>, checked_by: Option<u64>) -> Op {
        let NewEnrolment { auth_key_id, auth_key_hash, hostname, node_public_key, machine_id, node_key } = self;
        match (proved_at, checked_by) {
            (Some(proved_at), Some(checked_by)) => Op::EnrolChecked {
                auth_key_id,
                auth_key_hash,
                hostname,
                node_public_key,
                machine_id,
                node_key,
                proved_at,
                checked_by,
            },
            (Some(proved_at), None) => Op::EnrolProven {
                auth_key_id,
                auth_key_hash,
                hostname,
                node_public_key,
                machine_id,
                node_key,
                proved_at,
            },
            (None, _) => Op::Enrol { auth_key_id, auth_key_hash, hostname, node_public_key, machine_id, node_key },
        }
    }
}

/// A successful command's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOk {
    Initialized {
        org: Org,
        operator_key_id: String,
        admin_key_id: String,
    },
    Org(Org),
    ApiKey(ApiKeyRecord),
    AuthKey(AuthKeyRecord),
    Enrolled(Enrolled),
    Machine(Machine),
    /// A machine that is gone (deleted or logged out).
    MachineRemoved {
        machine_id: String,
    },
    /// A system op's count of machines changed.
    Count(usize),
    Node(super::nodes::NodeRecord),
    // New variants go at the end (outcomes are remembered in the state).
    OrgLimits {
        org_id: String,
        limits: OrgLimits,
    },
    /// A proven enrolment's answer: the machine and the state it is in (`pending` when it
    /// waits for approval).
    EnrolledAs {
        enrolled: Enrolled,
        state: MachineState,
    },
}

/// A command's refusal. Each maps to one HTTP status and error code in `api::error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("missing, unknown or revoked API key")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("unknown or malformed auth key")]
    InvalidAuthKey,
    #[error("this one-shot auth key has already enrolled a machine")]
    KeyUsed,
    #[error("this auth key has reached its max_uses")]
    KeyExhausted,
    #[error("this auth key has been revoked")]
    KeyRevoked,
    #[error("this auth key has expired")]
    KeyExpired,
    #[error("unknown node key: the machine was deleted or never enrolled")]
    UnknownNodeKey,
    #[error("this machine's node key was revoked; enrol again with an auth key")]
    NodeKeyRevoked,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("the cluster is already initialised")]
    AlreadyInitialized,
    #[error("request_id {0:?} was already used by a different request; use a new request_id")]
    RequestIdReused(String),
    /// A read of this node's stored state failed; never a replicated outcome (an entry whose
    /// apply saw a storage fault is refused as a whole).
    #[error("this node cannot read its stored state: {0}")]
    Storage(String),
    /// A generated id collided with an existing one; the proposing node retries with a new id.
    #[error("generated id collided with an existing one")]
    IdCollision,
    #[error("node id {0} was used before (node ids are never reused): start the node with a new id")]
    NodeIdUsed(u64),
    #[error("node id {0} was removed from the cluster and cannot come back: start a node with a new id")]
    NodeRemoved(u64),
    // New variants go at the end (outcomes are remembered in the state).
    /// An org's limit (`set_org_limits`) is reached.
    #[error("{0}")]
    QuotaExceeded(String),
    /// An API key's grants do not allow this.
    #[error("{0}")]
    ScopeDenied(String),
    #[error("{0}")]
    TagNotGranted(String),
    #[error("an admin deleted this machine; it may enrol again only once an admin allows it (ztna machine-admin --action allow-reenrol)")]
    MachineDeleted,
    #[error("{0}")]
    ProofInvalid(String),
    #[error("this proof of possession was used already: prove again with a new request_id")]
    ProofReplayed,
    #[error("this machine is pending an admin's approval")]
    PendingApproval,
    #[error("{0}")]
    MachineQuarantined(String),
    #[error("this request was applied before an upgrade and its answer was not kept in a form this build reads; read the state to see its effect")]
    AnswerForgotten,
    /// A machine, or an auth key's machines, re-keyed too often (rules 4); the seconds until
    /// it may again.
    #[error("{0}")]
    TooManyRekeys(String, u64),
}

/// The outcome of one command.
pub type Outcome = Result<OpOk, OpError>;
