//! The key state machine: pure, deterministic rules for orgs, API keys, auth keys and enrolments.
//!
//! [`KeyStore::apply_entry`] takes a leader-stamped batch of commands and the log index that
//! committed it, and changes the in-memory state; every decision about a key (spent? limit
//! reached? revoked? expired?) is made here and nowhere else. It reads no clock, draws no random
//! number and does no I/O, so every replica that applies the same log reaches the same state.
//! Small tables live in memory; the large ones (auth keys, enrolments, remembered requests) are
//! read from the committed rows through [`backing::Rows`], which also collects the entry's
//! writes. The RocksDB adapter in `store::state_machine` persists them with the applied id.
//!
//! This module must not know about RocksDB, HTTP or openraft.

pub mod backing;
mod machines;
pub mod model;
pub mod nodes;
pub mod query;
pub mod rows;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::{hashes_equal, SecretHash};
use model::*;
pub use rows::Row;

/// How long the state machine remembers a request id's outcome, in leader time.
pub const REQUEST_MEMORY_MS: Millis = 15 * 60 * 1000;
/// Most remembered requests one entry forgets: an entry after a quiet period must not delete a
/// burst's worth of rows at once (on every node together). More than a full batch, so memory
/// never grows while requests keep coming.
pub const MAX_FORGET_PER_ENTRY: usize = 4096;
/// The request scope of commands the cluster makes itself (sweeps, registrations).
const SCOPE_CLUSTER: &str = "\u{1}cluster";

/// The rules this build applies (see [`Meta::rules`]).
pub const RULES: u32 = 3;

/// Counters and the logical clock, persisted as one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The largest time stamped on any applied entry; effective time never goes below it, so
    /// time never moves backwards across leader changes.
    pub clock: Millis,
    /// Next creation sequence number (auth keys and enrolments).
    pub next_seq: u64,
    pub initialized: bool,
    /// Which rules the entries are applied by. A rule change must not take effect on one
    /// replica before another, so it is switched by a log entry, never by a node's build:
    /// `InitCluster` of a new cluster starts at [`RULES`]; a cluster made by an older build
    /// stays at its rules until its leader proposes `AdoptRules` (once every member runs a
    /// build that knows them). 1: the rules before request ids were scoped to their caller.
    /// 3: enrolment proves possession of the machine's key (`EnrolProven`; the bare `Enrol` is
    /// refused), admin decisions stick, tags as granted, device approval.
    /// 2: request ids per caller, credentials checked before the request memory, enrolments
    /// remembered, bounded forgetting, re-enrolment only with an unexpired key.
    pub rules: u32,
}

impl Default for Meta {
    fn default() -> Self {
        Meta { clock: 0, next_seq: 0, initialized: false, rules: 1 }
    }
}

/// [`Meta`] as builds before rule versions wrote it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MetaV1 {
    clock: Millis,
    next_seq: u64,
    initialized: bool,
}

impl From<MetaV1> for Meta {
    fn from(old: MetaV1) -> Self {
        Meta { clock: old.clock, next_seq: old.next_seq, initialized: old.initialized, rules: 1 }
    }
}

/// Where an entry sits in the log and the cluster time its leader stamped on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStamp {
    pub index: u64,
    /// The term of the leader that proposed the entry (its log id's term).
    pub term: u64,
    pub time: Millis,
}

/// A remembered outcome of a request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedRequest {
    pub at: Millis,
    /// Digest of the command (actor and op), to tell a retry from a reused id.
    pub digest: [u8; 32],
    pub outcome: Outcome,
}

/// The replicated state: small tables in memory, large ones in rows (see [`rows`]). The
/// in-memory indexes are derived and rebuilt on open.
#[derive(Debug)]
pub struct KeyStore {
    pub(crate) meta: Meta,
    pub(crate) orgs: BTreeMap<String, Org>,
    pub(crate) api_keys: BTreeMap<String, ApiKeyRecord>,
    pub(crate) machines: BTreeMap<String, Machine>,
    /// Node ids ever admitted or registered, by [`nodes::node_key`].
    pub(crate) nodes: BTreeMap<String, nodes::NodeRecord>,
    /// Auth keys, the org index, enrolments and remembered requests, plus this entry's writes.
    pub(crate) rows: backing::Rows,
    /// Where the scan for expired requests starts: every expiry row before it is already gone.
    /// Not replicated and not part of the state; it only saves skipping deleted rows.
    pub(crate) expiry_seek: Vec<u8>,
    /// No remembered request is older than this (`None`: not known yet), so no scan is needed
    /// before it has been `REQUEST_MEMORY_MS` old. Like `expiry_seek`, only saves work.
    pub(crate) oldest_request_at: Option<Millis>,

    // Derived indexes.
    /// (auth key id, node public key) → machines by enrolment seq; the newest is the one a
    /// retried enrolment gets back. Every machine is indexed, so the index is the same whether
    /// built live or rebuilt on load.
    pub(crate) machine_by_key_and_node: BTreeMap<(String, String), BTreeMap<u64, String>>,
    /// Node key id → machine id: a heartbeat's node key finds its machine.
    pub(crate) machine_by_node_key: BTreeMap<String, String>,
    /// Each org's limits and today's use of them (rows; in memory like orgs).
    pub(crate) org_quotas: BTreeMap<String, OrgQuota>,
    /// Admin decisions about machines, by org and node public key ([`decision_key`]).
    pub(crate) decisions: BTreeMap<String, Decision>,
    /// Machines per org (derived), for the machine limit.
    pub(crate) machines_per_org: BTreeMap<String, u64>,
    /// In-memory records changed since the last [`KeyStore::take_writes`].
    dirty: BTreeSet<Row>,
}

impl KeyStore {
    /// The logical clock: the largest leader time applied so far.
    pub fn clock(&self) -> Millis {
        self.meta.clock
    }

    pub fn is_initialized(&self) -> bool {
        self.meta.initialized
    }

    /// The rules version the entries are applied by (see [`Meta::rules`]).
    pub fn rules(&self) -> u32 {
        self.meta.rules
    }

    /// Applies one log entry: a batch of commands stamped with the cluster time `at.time` by the
    /// leader of `at.term`. Every command is decided at `max(at.time, clock)`.
    pub fn apply_entry(&mut self, at: EntryStamp, commands: &[Command]) -> Vec<Outcome> {
        if at.time > self.meta.clock {
            self.meta.clock = at.time;
            self.dirty.insert(Row::Meta);
        }
        let now = self.meta.clock;
        self.forget_old_requests(now);
        commands.iter().map(|cmd| self.apply_command(at, now, cmd)).collect()
    }

    fn apply_command(&mut self, at: EntryStamp, now: Millis, cmd: &Command) -> Outcome {
        if self.meta.rules < 2 {
            return self.apply_command_v1(at, now, cmd);
        }
        // The caller first: a refused credential is answered as such, whatever request id it
        // names, so nobody can learn which ids another caller used.
        self.authenticates(cmd)?;
        if let Actor::ApiKey { api_key_id, .. } = &cmd.actor {
            if let Some(record) = self.api_keys.get_mut(api_key_id) {
                record.last_used_at = Some(now);
                self.dirty.insert(Row::ApiKey(api_key_id.clone()));
            }
        }
        // Every op is made idempotent by remembering its request id (per caller) with a digest
        // of the command: a copy of the same command answers as the first did. An enrolment
        // retried by its client under the same request id differs only in the ids the receiving
        // node made for it; it is applied, and the enrolment rules recognise the machine. A
        // create retried by its client differs the same way; it answers the first record.
        let digest = command_digest(cmd);
        let row = rows::request_row(request_scope(cmd), &cmd.request_id);
        // Remembered before the rules scoped ids to their caller: the same command still counts.
        let legacy = || {
            self.rows
                .get::<RememberedRequest>(&rows::legacy_request_row(&cmd.request_id))
                .filter(|seen| seen.digest == digest)
        };
        if let Some(seen) = self.rows.get::<RememberedRequest>(&row).or_else(legacy) {
            return if seen.digest == digest || is_retried_create(cmd, &seen) {
                seen.outcome.clone()
            } else if matches!(cmd.op, Op::Enrol { .. }) {
                self.apply_op(at, now, &cmd.actor, &cmd.op)
            } else if matches!(cmd.op, Op::EnrolProven { .. }) {
                // The proof binds the request id: the same id again is the same proof again.
                Err(OpError::ProofReplayed)
            } else {
                Err(OpError::RequestIdReused(cmd.request_id.clone()))
            };
        }
        let outcome = self.apply_op(at, now, &cmd.actor, &cmd.op);
        // A collision is retried by the proposer with a fresh id under the same request id. A
        // refused credential is not remembered: it would let anyone occupy a caller's ids.
        let unauthenticated =
            matches!(outcome, Err(OpError::Unauthorized | OpError::UnknownNodeKey | OpError::InvalidAuthKey))
                || (outcome == Err(OpError::NodeKeyRevoked) && matches!(cmd.actor, Actor::NodeKey { .. }));
        if outcome != Err(OpError::IdCollision) && !unauthenticated {
            self.remember(now, row, digest, outcome.clone());
        }
        outcome
    }

    /// Rules 1 (a cluster made by an older build, until it adopts rules 2): one request id space
    /// for everyone, every outcome but an enrolment's remembered.
    fn apply_command_v1(&mut self, at: EntryStamp, now: Millis, cmd: &Command) -> Outcome {
        if matches!(cmd.op, Op::Enrol { .. }) {
            return self.apply_op(at, now, &cmd.actor, &cmd.op);
        }
        let digest = command_digest(cmd);
        let row = rows::legacy_request_row(&cmd.request_id);
        if let Some(seen) = self.rows.get::<RememberedRequest>(&row) {
            return if seen.digest == digest {
                seen.outcome.clone()
            } else {
                Err(OpError::RequestIdReused(cmd.request_id.clone()))
            };
        }
        let outcome = self.apply_op(at, now, &cmd.actor, &cmd.op);
        if outcome != Err(OpError::IdCollision) {
            self.remember(now, row, digest, outcome.clone());
        }
        outcome
    }

    /// Whether `cmd`'s caller is who it says: a current API key, a current node key, or for an
    /// enrolment an existing auth key with that secret. Checked before proposing (a refused
    /// credential costs no log entry) and again when applying. What the caller may do is
    /// decided by the op itself.
    pub fn authenticates(&self, cmd: &Command) -> Result<(), OpError> {
        match (&cmd.actor, &cmd.op) {
            (Actor::ApiKey { .. }, _) => self.authenticate(&cmd.actor).map(|_| ()),
            (Actor::NodeKey { .. }, _) => self.authenticate_machine(&cmd.actor).map(|_| ()),
            (Actor::Anonymous, Op::Enrol { auth_key_id, auth_key_hash, .. })
            | (Actor::Anonymous, Op::EnrolProven { auth_key_id, auth_key_hash, .. }) => {
                let key = self.auth_key_record(auth_key_id).ok_or(OpError::InvalidAuthKey)?;
                if hashes_equal(&key.secret_hash, auth_key_hash) {
                    Ok(())
                } else {
                    Err(OpError::InvalidAuthKey)
                }
            }
            (Actor::Anonymous, _) => Ok(()),
        }
    }

    /// Remembers `outcome` under the request row `row` until [`REQUEST_MEMORY_MS`] has passed.
    fn remember(&mut self, now: Millis, row: Vec<u8>, digest: [u8; 32], outcome: Outcome) {
        self.rows.put(rows::request_expiry_row(now, &row), &());
        self.rows.put(row, &RememberedRequest { at: now, digest, outcome });
    }

    fn forget_old_requests(&mut self, now: Millis) {
        if self.oldest_request_at.is_some_and(|oldest| now.saturating_sub(oldest) < REQUEST_MEMORY_MS) {
            return;
        }
        let prefix = rows::request_expiry_prefix();
        let forget_at_most = if self.meta.rules >= 2 { MAX_FORGET_PER_ENTRY } else { usize::MAX };
        let mut expired = Vec::new();
        let mut oldest_kept = None;
        self.rows.scan(&self.expiry_seek, |key, _| {
            if !key.starts_with(&prefix) {
                return false;
            }
            match rows::parse_request_expiry(key) {
                // Bounded work per entry: the rest is forgotten by the next entries.
                Some((at, _)) if expired.len() >= forget_at_most => {
                    oldest_kept = Some(at);
                    false
                }
                Some((at, row)) if now.saturating_sub(at) >= REQUEST_MEMORY_MS => {
                    expired.push((key.to_vec(), row));
                    true
                }
                Some((at, _)) => {
                    oldest_kept = Some(at);
                    false
                }
                None => false,
            }
        });
        // With nothing left, the next request remembered is the oldest (its time is `now` or
        // later: the clock never goes back).
        self.oldest_request_at = Some(oldest_kept.unwrap_or(now));
        for (expiry, row) in expired {
            self.rows.delete(row);
            self.expiry_seek = expiry.clone();
            self.rows.delete(expiry);
        }
    }

    fn apply_op(&mut self, at: EntryStamp, now: Millis, actor: &Actor, op: &Op) -> Outcome {
        match op {
            Op::InitCluster { org_id, org_name, operator_key, admin_key } => {
                self.init_cluster(now, org_id, org_name, operator_key, admin_key)
            }
            Op::CreateOrg { org_id, name } => {
                self.authorize_operator(actor)?;
                if self.orgs.contains_key(org_id) {
                    return Err(OpError::IdCollision);
                }
                let org = Org { org_id: org_id.clone(), name: name.clone(), created_at: now };
                self.put_org(org.clone());
                Ok(OpOk::Org(org))
            }
            Op::CreateApiKey { org_id, key, description } => {
                self.authorize_operator(actor)?;
                if !self.orgs.contains_key(org_id) {
                    return Err(OpError::NotFound(format!("no org {org_id:?}")));
                }
                let record = self.new_api_key(now, ApiKeyScope::Org(org_id.clone()), key, description)?;
                Ok(OpOk::ApiKey(record))
            }
            Op::RevokeApiKey { api_key_id } => {
                self.authorize_operator(actor)?;
                let record = self
                    .api_keys
                    .get_mut(api_key_id)
                    .ok_or_else(|| OpError::NotFound(format!("no API key {api_key_id:?}")))?;
                if record.scope == ApiKeyScope::Operator {
                    return Err(OpError::Forbidden("the operator key cannot be revoked through the API".into()));
                }
                record.revoked_at.get_or_insert(now);
                let record = record.clone();
                self.dirty.insert(Row::ApiKey(api_key_id.clone()));
                Ok(OpOk::ApiKey(record))
            }
            Op::CreateAuthKey { org_id, key, spec } => {
                let grants = self.authorize_org_for(actor, org_id, Permission::AuthKeys)?.clone();
                check_tags_granted(&grants, spec.tags())?;
                if self.meta.rules >= 2 {
                    self.count_key_against_quota(now, org_id)?;
                }
                self.create_auth_key(now, org_id, key, spec)
            }
            Op::RevokeAuthKey { org_id, selector } => {
                self.authorize_org_for(actor, org_id, Permission::AuthKeys)?;
                let mut record = self.resolve_key(org_id, selector)?;
                record.revoked_at.get_or_insert(now);
                self.rows.put(rows::auth_key_row(&record.key_id), &record);
                Ok(OpOk::AuthKey(record))
            }
            Op::MachineAdmin { org_id, machine_id, action } => {
                self.machine_admin(now, actor, org_id, machine_id, action)
            }
            Op::MachineSelf { action } => self.machine_self(now, actor, action),
            Op::DeregisterInactive { machine_ids } => self.deregister_inactive(now, machine_ids),
            // A sweep takes effect only in the term that observed the silence: re-proposed or
            // committed under another leader's term, it changes nothing.
            Op::SweepInactive { term, .. } if *term != at.term => Ok(OpOk::Count(0)),
            Op::SweepInactive { machine_ids, .. } => self.deregister_inactive(now, machine_ids),
            Op::CreateApiKeyWith { org_id, key, description, expires_in_secs, grants } => {
                self.authorize_operator(actor)?;
                if !self.orgs.contains_key(org_id) {
                    return Err(OpError::NotFound(format!("no org {org_id:?}")));
                }
                let expires_at = expires_in_secs.map(|secs| now.saturating_add(secs.saturating_mul(1000)));
                let scope = ApiKeyScope::Org(org_id.clone());
                let mut record = self.new_api_key(now, scope, key, description)?;
                record.expires_at = expires_at;
                record.grants = grants.clone();
                self.api_keys.insert(record.api_key_id.clone(), record.clone());
                Ok(OpOk::ApiKey(record))
            }
            Op::RotateOperatorKey { key } => {
                self.authorize_operator(actor)?;
                if self.api_keys.contains_key(&key.id) {
                    return Err(OpError::IdCollision);
                }
                let old: Vec<String> = self
                    .api_keys
                    .values()
                    .filter(|k| k.scope == ApiKeyScope::Operator && k.revoked_at.is_none())
                    .map(|k| k.api_key_id.clone())
                    .collect();
                for id in old {
                    if let Some(record) = self.api_keys.get_mut(&id) {
                        record.revoked_at = Some(now);
                        self.dirty.insert(Row::ApiKey(id));
                    }
                }
                Ok(OpOk::ApiKey(self.new_api_key(now, ApiKeyScope::Operator, key, "operator")?))
            }
            Op::SetOrgLimits { org_id, limits } => {
                self.authorize_operator(actor)?;
                if !self.orgs.contains_key(org_id) {
                    return Err(OpError::NotFound(format!("no org {org_id:?}")));
                }
                self.org_quotas.entry(org_id.clone()).or_default().limits = *limits;
                self.dirty.insert(Row::OrgQuota(org_id.clone()));
                Ok(OpOk::OrgLimits { org_id: org_id.clone(), limits: limits.unwrap_or_default() })
            }
            Op::EnrolProven {
                auth_key_id,
                auth_key_hash,
                hostname,
                node_public_key,
                machine_id,
                node_key,
                proved_at,
            } => {
                if now.abs_diff(*proved_at) > crate::proof::MAX_AGE_MS {
                    return Err(OpError::ProofInvalid(format!(
                        "the proof was issued {} s from cluster time (at most {} s): check this machine's clock",
                        now.abs_diff(*proved_at) / 1000,
                        crate::proof::MAX_AGE_MS / 1000
                    )));
                }
                let enrol = EnrolRequest {
                    auth_key_id,
                    auth_key_hash,
                    hostname,
                    node_public_key,
                    machine_id,
                    node_key,
                    proved_at: Some(*proved_at),
                };
                match self.enrol(at.index, now, enrol)? {
                    OpOk::Enrolled(enrolled) => {
                        let state = self.machines.get(&enrolled.machine_id).map_or(MachineState::Active, |m| m.state);
                        Ok(OpOk::EnrolledAs { enrolled, state })
                    }
                    other => Ok(other),
                }
            }
            Op::CreateAuthKeyWith { org_id, key, spec, preauthorized } => {
                let grants = self.authorize_org_for(actor, org_id, Permission::AuthKeys)?.clone();
                check_tags_granted(&grants, spec.tags())?;
                self.count_key_against_quota(now, org_id)?;
                let created = self.create_auth_key(now, org_id, key, spec)?;
                match created {
                    OpOk::AuthKey(mut record) if !preauthorized => {
                        record.preauthorized = false;
                        self.rows.put(rows::auth_key_row(&record.key_id), &record);
                        Ok(OpOk::AuthKey(record))
                    }
                    other => Ok(other),
                }
            }
            Op::AllowReenrol { org_id, node_public_key } => {
                self.authorize_org_for(actor, org_id, Permission::Machines)?;
                let row = decision_key(org_id, node_public_key);
                let mut decision = self.decisions.get(&row).cloned().unwrap_or_default();
                decision.deleted = None;
                decision.node_key_revoked_for = None;
                self.put_decision(row, decision);
                Ok(OpOk::Count(0))
            }
            Op::AdoptRules { version } => {
                // Proposed by the leader once every member runs a build that knows `version`.
                if *version > self.meta.rules && *version <= RULES {
                    self.meta.rules = *version;
                    self.dirty.insert(Row::Meta);
                }
                Ok(OpOk::Count(self.meta.rules as usize))
            }
            Op::RecordLastSeen { seen } => self.record_last_seen(seen),
            Op::AdmitNode { node_id } => self.admit_node(now, actor, *node_id),
            Op::RegisterNode { node_id, incarnation } => self.register_node(now, *node_id, incarnation),
            Op::RetireNode { node_id } => self.retire_node(now, actor, *node_id),
            Op::Enrol { auth_key_id, auth_key_hash, hostname, node_public_key, machine_id, node_key } => {
                if self.meta.rules >= 3 {
                    // Rules 3: the public key is not a credential; every enrolment proves.
                    return Err(OpError::ProofInvalid(
                        "enrolment needs a proof of possession of node_public_key's private key".into(),
                    ));
                }
                let enrol = EnrolRequest {
                    auth_key_id,
                    auth_key_hash,
                    hostname,
                    node_public_key,
                    machine_id,
                    node_key,
                    proved_at: None,
                };
                self.enrol(at.index, now, enrol)
            }
        }
    }

    fn init_cluster(
        &mut self,
        now: Millis,
        org_id: &str,
        org_name: &str,
        operator_key: &NewCredential,
        admin_key: &NewCredential,
    ) -> Outcome {
        if self.meta.initialized {
            return Err(OpError::AlreadyInitialized);
        }
        let org = Org { org_id: org_id.to_string(), name: org_name.to_string(), created_at: now };
        self.put_org(org.clone());
        self.new_api_key(now, ApiKeyScope::Operator, operator_key, "operator")?;
        self.new_api_key(now, ApiKeyScope::Org(org_id.to_string()), admin_key, "admin")?;
        self.meta.initialized = true;
        // A new cluster starts on this build's rules (every replica applies this same entry).
        self.meta.rules = self.meta.rules.max(RULES);
        self.dirty.insert(Row::Meta);
        Ok(OpOk::Initialized { org, operator_key_id: operator_key.id.clone(), admin_key_id: admin_key.id.clone() })
    }

    fn put_org(&mut self, org: Org) {
        self.dirty.insert(Row::Org(org.org_id.clone()));
        self.orgs.insert(org.org_id.clone(), org);
    }

    fn new_api_key(
        &mut self,
        now: Millis,
        scope: ApiKeyScope,
        key: &NewCredential,
        description: &str,
    ) -> Result<ApiKeyRecord, OpError> {
        if self.api_keys.contains_key(&key.id) {
            return Err(OpError::IdCollision);
        }
        let record = ApiKeyRecord {
            api_key_id: key.id.clone(),
            scope,
            description: description.to_string(),
            secret_hash: key.hash,
            created_at: now,
            revoked_at: None,
            expires_at: None,
            last_used_at: None,
            grants: Grants::all(),
        };
        self.api_keys.insert(key.id.clone(), record.clone());
        self.dirty.insert(Row::ApiKey(key.id.clone()));
        Ok(record)
    }

    /// Checks an API key and returns its scope. Unknown, revoked and wrong secrets look alike.
    pub(crate) fn authenticate(&self, actor: &Actor) -> Result<&ApiKeyScope, OpError> {
        let Actor::ApiKey { api_key_id, secret_hash } = actor else {
            return Err(OpError::Unauthorized);
        };
        let record = self.api_keys.get(api_key_id).ok_or(OpError::Unauthorized)?;
        let expired = record.expires_at.is_some_and(|at| self.meta.clock >= at);
        if !hashes_equal(&record.secret_hash, secret_hash) || record.revoked_at.is_some() || expired {
            return Err(OpError::Unauthorized);
        }
        Ok(&record.scope)
    }

    /// Like [`KeyStore::authorize_org`], and the key's grants must allow `needed`; answers them.
    pub(crate) fn authorize_org_for(
        &self,
        actor: &Actor,
        org_id: &str,
        needed: Permission,
    ) -> Result<&Grants, OpError> {
        self.authorize_org(actor, org_id)?;
        let Actor::ApiKey { api_key_id, .. } = actor else { return Err(OpError::Unauthorized) };
        let record = self.api_keys.get(api_key_id).ok_or(OpError::Unauthorized)?;
        if !record.grants.allows(needed) {
            let granted: Vec<&str> = record.grants.permissions.iter().flatten().map(|p| p.name()).collect();
            return Err(OpError::ScopeDenied(format!(
                "this API key may not do this: it needs the scope {:?}, and has {}",
                needed.name(),
                if granted.is_empty() { "none".to_string() } else { granted.join(", ") }
            )));
        }
        Ok(&record.grants)
    }

    /// Counts one new auth key of `org_id` against its daily limit, or refuses it.
    fn count_key_against_quota(&mut self, now: Millis, org_id: &str) -> Result<(), OpError> {
        let day = now / 86_400_000;
        let quota = self.org_quotas.entry(org_id.to_string()).or_default();
        if quota.day != day {
            quota.day = day;
            quota.keys_created = 0;
        }
        let limit = quota.limits.unwrap_or_default().auth_keys_per_day;
        if quota.keys_created >= limit {
            return Err(OpError::QuotaExceeded(format!(
                "org {org_id} has created its limit of {limit} auth keys today (UTC); the operator can raise it with `ztna org-admin set-limits`"
            )));
        }
        quota.keys_created += 1;
        self.dirty.insert(Row::OrgQuota(org_id.to_string()));
        Ok(())
    }

    /// Refuses a new machine of `org_id` past its machine limit.
    fn check_machine_quota(&self, org_id: &str) -> Result<(), OpError> {
        let limit = self.org_quotas.get(org_id).and_then(|q| q.limits).unwrap_or_default().machines;
        if self.machines_per_org.get(org_id).copied().unwrap_or(0) >= limit {
            return Err(OpError::QuotaExceeded(format!(
                "org {org_id} has its limit of {limit} machines; delete some, or the operator can raise it with `ztna org-admin set-limits`"
            )));
        }
        Ok(())
    }

    pub(crate) fn authorize_operator(&self, actor: &Actor) -> Result<(), OpError> {
        match self.authenticate(actor)? {
            ApiKeyScope::Operator => Ok(()),
            ApiKeyScope::Org(_) => Err(OpError::Forbidden("this action needs the operator key".into())),
        }
    }

    pub(crate) fn authorize_org(&self, actor: &Actor, org_id: &str) -> Result<(), OpError> {
        match self.authenticate(actor)? {
            ApiKeyScope::Org(own) if own == org_id => Ok(()),
            ApiKeyScope::Org(_) => Err(OpError::Forbidden(format!("this API key does not belong to org {org_id:?}"))),
            ApiKeyScope::Operator => Err(OpError::Forbidden(
                "the operator key administers orgs and API keys; use an org's API key for its auth keys".into(),
            )),
        }
    }

    fn create_auth_key(&mut self, now: Millis, org_id: &str, key: &NewCredential, spec: &AuthKeySpec) -> Outcome {
        if self.rows.contains(&rows::auth_key_row(&key.id)) {
            return Err(OpError::IdCollision);
        }
        let seq = self.next_seq();
        let record = AuthKeyRecord {
            key_id: key.id.clone(),
            org_id: org_id.to_string(),
            secret_hash: key.hash,
            reusable: spec.reusable(),
            ephemeral: spec.ephemeral(),
            max_uses: spec.max_uses(),
            uses: 0,
            tags: spec.tags().to_vec(),
            description: spec.description().to_string(),
            created_at: now,
            expires_at: now.saturating_add(spec.expires_in_secs().saturating_mul(1000)),
            last_used_at: None,
            revoked_at: None,
            seq,
            preauthorized: true,
        };
        self.rows.put(rows::org_key_row(org_id, seq), &key.id);
        self.rows.put(rows::auth_key_row(&key.id), &record);
        Ok(OpOk::AuthKey(record))
    }

    fn next_seq(&mut self) -> u64 {
        self.meta.next_seq += 1;
        self.dirty.insert(Row::Meta);
        self.meta.next_seq
    }

    /// An auth key's record.
    pub(crate) fn auth_key_record(&self, key_id: &str) -> Option<AuthKeyRecord> {
        self.rows.get(&rows::auth_key_row(key_id))
    }

    /// Finds the one key of `org_id` a revocation names.
    fn resolve_key(&self, org_id: &str, selector: &KeySelector) -> Result<AuthKeyRecord, OpError> {
        let not_found = || OpError::NotFound("no such auth key in this org".into());
        let record = match selector {
            KeySelector::KeyId(id) => self.auth_key_record(id),
            KeySelector::FullKey(presented) => self
                .auth_key_record(&format!("{AUTH_KEY_ID_PREFIX}{}", presented.id))
                .filter(|record| hashes_equal(&record.secret_hash, &presented.hash)),
            KeySelector::IdPrefix(prefix) => {
                let start = rows::auth_key_id_prefix(&format!("{AUTH_KEY_ID_PREFIX}{prefix}"));
                let mut matches = Vec::new();
                self.rows.scan_prefix::<AuthKeyRecord>(&start, &start, |_, record| {
                    if record.org_id == org_id {
                        matches.push(record);
                    }
                    matches.len() < 2
                });
                if matches.len() > 1 {
                    return Err(OpError::Ambiguous(format!(
                        "prefix tskey-auth-{prefix} matches more than one key; give more characters or the key_id"
                    )));
                }
                matches.pop()
            }
        };
        record.filter(|record| record.org_id == org_id).ok_or_else(not_found)
    }

    fn enrol(&mut self, log_index: u64, now: Millis, req: EnrolRequest<'_>) -> Outcome {
        let mut key = self.auth_key_record(req.auth_key_id).ok_or(OpError::InvalidAuthKey)?;
        if !hashes_equal(&key.secret_hash, req.auth_key_hash) {
            return Err(OpError::InvalidAuthKey);
        }
        // The identical command applied again: a node gave up waiting on one leader and sent
        // it to the next, and both copies committed. Its machine id and node key were made for
        // that one request, so this is the same enrolment: same answer, whatever happened to
        // the key in between (a revoke must not turn an enrolment that happened into a refusal).
        if let Some(machine) = self.machines.get(req.machine_id).filter(|m| {
            m.auth_key_id == req.auth_key_id
                && m.node_public_key == req.node_public_key
                && m.node_key_id == req.node_key.id
        }) {
            return Ok(OpOk::Enrolled(enrolled_answer(machine, true)));
        }
        // A proven enrolment (rules 3) is held to the machine's remembered admin decisions,
        // device approval and a proof later than the one it last used.
        let proven = req.proved_at.is_some();

        if key.revoked_at.is_some() {
            return Err(OpError::KeyRevoked);
        }
        let decision_row = decision_key(&key.org_id, req.node_public_key);
        let decision = self.decisions.get(&decision_row).cloned().unwrap_or_default();
        if proven {
            if decision.deleted.is_some() {
                return Err(OpError::MachineDeleted);
            }
            if decision.node_key_revoked_for.as_deref() == Some(req.auth_key_id) {
                return Err(OpError::NodeKeyRevoked);
            }
        }
        let node = (req.auth_key_id.to_string(), req.node_public_key.to_string());
        let newest = self.machine_by_key_and_node.get(&node).and_then(|m| m.values().next_back()).cloned();
        // Re-enrolment is an enrolment: the key must still be in date (rules 2).
        if newest.is_some() && self.meta.rules >= 2 && now >= key.expires_at {
            return Err(OpError::KeyExpired);
        }
        if let Some(machine_id) = newest {
            if let Some(machine) = self.machines.get_mut(&machine_id).filter(|m| !m.node_key_revoked) {
                // The same machine asking again (its first answer was lost, or it re-keys): same
                // machine, a fresh node key that works, and no further use spent. A machine whose
                // node key was revoked does not get here.
                if let (Some(proved_at), Some(last)) = (req.proved_at, machine.proved_at) {
                    if proved_at <= last {
                        // A delayed copy of an older attempt: it rotates nothing.
                        return Err(OpError::ProofReplayed);
                    }
                }
                self.machine_by_node_key.remove(&machine.node_key_id);
                machine.node_key_id = req.node_key.id.clone();
                machine.node_key_hash = req.node_key.hash;
                if proven {
                    machine.proved_at = req.proved_at;
                }
                self.machine_by_node_key.insert(machine.node_key_id.clone(), machine_id.clone());
                let enrolled = enrolled_answer(machine, true);
                self.dirty.insert(Row::Machine(machine_id.clone()));
                if proven {
                    // The re-key is in the key's history like an enrolment (it spent no use).
                    let seq = self.next_seq();
                    let rekey = Enrolment {
                        machine_id,
                        node_key_fingerprint: crate::secret::fingerprint(req.node_public_key),
                        at: now,
                        log_index,
                        deregistered: None,
                        rekey: true,
                    };
                    self.rows.put(rows::enrolment_row(req.auth_key_id, seq), &rekey);
                }
                return Ok(OpOk::Enrolled(enrolled));
            }
        }
        if now >= key.expires_at {
            return Err(OpError::KeyExpired);
        }
        if !crate::faults::state_machine_skips_limit() {
            key.check_uses_left()?;
        }
        if self.machines.contains_key(req.machine_id) || self.machine_by_node_key.contains_key(&req.node_key.id) {
            return Err(OpError::IdCollision);
        }
        if self.meta.rules >= 2 {
            self.check_machine_quota(&key.org_id)?;
        }
        let (org_id, tags, ephemeral) = (key.org_id.clone(), key.tags.clone(), key.ephemeral);
        let (state, approved_by, approved_at) = if !proven {
            (MachineState::Active, None, None)
        } else if !key.preauthorized {
            (MachineState::Pending, None, None)
        } else {
            let state = if decision.quarantined { MachineState::Quarantined } else { MachineState::Active };
            (state, Some(format!("{} (pre-authorized)", key.key_id)), Some(now))
        };
        let state = if proven && decision.quarantined { MachineState::Quarantined } else { state };
        // A machine waiting for approval has no tags' rights: its grant waits in `granted_tags`.
        let granted = tags.clone();
        let tags = if state == MachineState::Pending { Vec::new() } else { tags };
        if decision.node_key_revoked_for.is_some() {
            // Enrolled again with another auth key: the operator gave it a fresh one.
            let mut cleared = decision.clone();
            cleared.node_key_revoked_for = None;
            self.put_decision(decision_row, cleared);
        }
        let seq = self.next_seq();
        let machine = Machine {
            machine_id: req.machine_id.to_string(),
            org_id,
            hostname: req.hostname.to_string(),
            node_public_key: req.node_public_key.to_string(),
            node_key_id: req.node_key.id.clone(),
            node_key_hash: req.node_key.hash,
            auth_key_id: req.auth_key_id.to_string(),
            granted_tags: granted,
            tags,
            ephemeral,
            created_at: now,
            state,
            node_key_revoked: false,
            last_seen: None,
            enrolment_seq: seq,
            proved_at: req.proved_at,
            approved_by,
            approved_at,
        };
        key.uses += 1;
        key.last_used_at = Some(now);
        let enrolment = Enrolment {
            machine_id: machine.machine_id.clone(),
            node_key_fingerprint: crate::secret::fingerprint(req.node_public_key),
            at: now,
            log_index,
            deregistered: None,
            rekey: false,
        };
        let answer = enrolled_answer(&machine, false);
        self.rows.put(rows::auth_key_row(req.auth_key_id), &key);
        self.rows.put(rows::enrolment_row(req.auth_key_id, seq), &enrolment);
        self.dirty.insert(Row::Machine(machine.machine_id.clone()));
        self.machine_by_key_and_node.entry(node).or_default().insert(seq, machine.machine_id.clone());
        self.machine_by_node_key.insert(machine.node_key_id.clone(), machine.machine_id.clone());
        *self.machines_per_org.entry(machine.org_id.clone()).or_default() += 1;
        self.machines.insert(machine.machine_id.clone(), machine);
        Ok(OpOk::Enrolled(answer))
    }

    /// Replaces the decision stored under `row` (an empty one is deleted).
    pub(crate) fn put_decision(&mut self, row: String, decision: Decision) {
        if decision == Decision::default() {
            self.decisions.remove(&row);
        } else {
            self.decisions.insert(row.clone(), decision);
        }
        self.dirty.insert(Row::Decision(row));
    }
}

/// The key of a decision about the machine with `node_public_key` in `org_id`.
pub(crate) fn decision_key(org_id: &str, node_public_key: &str) -> String {
    format!("{org_id}\u{0}{node_public_key}")
}

struct EnrolRequest<'a> {
    auth_key_id: &'a str,
    auth_key_hash: &'a SecretHash,
    hostname: &'a str,
    node_public_key: &'a str,
    machine_id: &'a str,
    node_key: &'a NewCredential,
    /// When its proof of possession was issued (`EnrolProven`); `None` for the legacy op.
    proved_at: Option<Millis>,
}

fn enrolled_answer(machine: &Machine, repeated: bool) -> Enrolled {
    Enrolled {
        machine_id: machine.machine_id.clone(),
        org_id: machine.org_id.clone(),
        tags: machine.tags.clone(),
        ephemeral: machine.ephemeral,
        auth_key_id: machine.auth_key_id.clone(),
        repeated,
    }
}

/// With tag-limited grants, every tag of a new key must be granted, and there must be some.
pub(crate) fn check_tags_granted(grants: &Grants, tags: &[String]) -> Result<(), OpError> {
    let Some(granted) = &grants.tags else { return Ok(()) };
    if tags.is_empty() {
        return Err(OpError::ScopeDenied(format!(
            "this API key may only create keys with tags from {}: give tags",
            granted.join(", ")
        )));
    }
    let missing: Vec<&str> = tags.iter().filter(|t| !granted.contains(t)).map(String::as_str).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OpError::ScopeDenied(format!(
            "this API key may not put {} on a key (it may use {})",
            missing.join(", "),
            granted.join(", ")
        )))
    }
}

/// Whose request ids a command's id belongs to: the caller it names (API key, node key, or for
/// an enrolment the auth key), or the cluster itself. Ids are remembered per scope, so no
/// caller can occupy or probe another's.
fn request_scope(cmd: &Command) -> &str {
    match (&cmd.actor, &cmd.op) {
        (Actor::ApiKey { api_key_id, .. }, _) => api_key_id,
        (Actor::NodeKey { node_key_id, .. }, _) => node_key_id,
        (Actor::Anonymous, Op::Enrol { auth_key_id, .. } | Op::EnrolProven { auth_key_id, .. }) => auth_key_id,
        (Actor::Anonymous, _) => SCOPE_CLUSTER,
    }
}

/// A digest of what a command asks for (everything but its request id).
fn command_digest(cmd: &Command) -> [u8; 32] {
    digest_of(&cmd.actor, &cmd.op)
}

fn digest_of(actor: &Actor, op: &Op) -> [u8; 32] {
    let mut hasher = Sha256::new();
    // Encoding an in-memory command cannot fail; an empty encoding would only weaken the
    // reused-id check, never apply a command twice.
    hasher.update(crate::codec::encode(&(actor, op)).unwrap_or_default());
    hasher.finalize().into()
}

/// Whether `cmd` is the create `seen` remembers, sent again by its client: the same command
/// but for the ids (and secret hash) the receiving node made for the new record. Checked by
/// putting the remembered record's ids into `cmd` and comparing digests, so every other field
/// must be equal. Nothing is written either way; the answer is the first record (without the
/// secret, which only the first answer carried).
fn is_retried_create(cmd: &Command, seen: &RememberedRequest) -> bool {
    let mut op = cmd.op.clone();
    match (&mut op, &seen.outcome) {
        (Op::CreateAuthKey { key, .. } | Op::CreateAuthKeyWith { key, .. }, Ok(OpOk::AuthKey(record))) => {
            *key = NewCredential { id: record.key_id.clone(), hash: record.secret_hash };
        }
        (Op::CreateApiKey { key, .. } | Op::CreateApiKeyWith { key, .. }, Ok(OpOk::ApiKey(record))) => {
            *key = NewCredential { id: record.api_key_id.clone(), hash: record.secret_hash };
        }
        (Op::CreateOrg { org_id, .. }, Ok(OpOk::Org(org))) => *org_id = org.org_id.clone(),
        _ => return false,
    }
    digest_of(&cmd.actor, &op) == seen.digest
}
