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
//! This file is the dispatcher: the store, the entry loop, the request memory's part in it, and
//! which area's rules each op goes to. The rules themselves live by area: `access` (who may do
//! what), `keys` (auth keys and enrolment), `machines`, `orgs` (orgs and API keys), `nodes`
//! (the node-id registry), `requests` (the memory of request ids), `query` (reads).
//!
//! Every op is first *admitted* ([`KeyStore::admit`]: the refusals it would get, deciding
//! nothing and writing nothing), then applied; the leader runs the same admission before Raft,
//! so a command the state machine would refuse costs no log entry.
//!
//! This module must not know about RocksDB, HTTP or openraft.

mod access;
pub mod backing;
pub mod keys;
mod machines;
pub mod model;
pub mod nodes;
mod orgs;
pub mod query;
mod requests;
pub mod rows;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use keys::stale_proof_error;
use keys::EnrolRequest;
use model::*;
use requests::{command_digest, is_retried_create, request_scope};
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
pub const RULES: u32 = 4;

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
    /// 4: sweeps skip machines that changed since they were judged (`SweepSilent`); an untagged
    /// key or machine is outside every tag scope, revocation and `allow_reenrol` obey tags;
    /// re-keys rate-limited and their history bounded per machine; an org's decisions bounded
    /// by its machine limit; an API key's `last_used_at` stamped only by a write that succeeded.
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
    /// Decisions per org (derived), bounded by its machine limit (rules 4).
    pub(crate) decisions_per_org: BTreeMap<String, u64>,
    /// In-memory records changed since the last [`KeyStore::take_writes`].
    pub(crate) dirty: BTreeSet<Row>,
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
        system_ops_are_anonymous(self.meta.rules, cmd)?;
        if self.meta.rules < 4 {
            self.api_key_used(now, &cmd.actor);
        }
        // Every op is made idempotent by remembering its request id (per caller) with a digest
        // of the command: a copy of the same command answers as the first did. An enrolment
        // retried by its client under the same request id differs only in the ids the receiving
        // node made for it; it is applied, and the enrolment rules recognise the machine. A
        // create retried by its client differs the same way; it answers the first record.
        let digest = command_digest(cmd);
        if let Some(seen) = self.remembered(cmd) {
            return if seen.digest == digest || is_retried_create(cmd, &seen) {
                seen.outcome.clone()
            } else if matches!(cmd.op, Op::Enrol { .. }) {
                self.apply_op(at, now, &cmd.actor, &cmd.op)
            } else if matches!(cmd.op, Op::EnrolProven { .. } | Op::EnrolChecked { .. }) {
                // The proof binds the request id: the same id again is the same proof again.
                Err(OpError::ProofReplayed)
            } else {
                Err(OpError::RequestIdReused(cmd.request_id.clone()))
            };
        }
        let outcome = self.apply_op(at, now, &cmd.actor, &cmd.op);
        if self.meta.rules >= 4 && outcome.is_ok() {
            self.api_key_used(now, &cmd.actor);
        }
        // A collision is retried by the proposer with a fresh id under the same request id. A
        // refused credential is not remembered: it would let anyone occupy a caller's ids.
        let unauthenticated =
            matches!(outcome, Err(OpError::Unauthorized | OpError::UnknownNodeKey | OpError::InvalidAuthKey))
                || (outcome == Err(OpError::NodeKeyRevoked) && matches!(cmd.actor, Actor::NodeKey { .. }));
        if outcome != Err(OpError::IdCollision) && !unauthenticated {
            let row = rows::request_row(request_scope(cmd), &cmd.request_id);
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

    /// The refusal `cmd` would get if applied at `now`, deciding nothing and writing nothing,
    /// in the order [`KeyStore::apply_entry`] decides: its credential; then, for a request id
    /// the caller used before, what the request memory answers (a copy of the same command goes
    /// on, to be answered from memory; another command under that id is refused); else what it
    /// may do (scopes, grants, tags, org), what it names (a key, a machine, an org), and for an
    /// enrolment the key's state (spent, revoked, expired), its proof's age, the machine's
    /// decisions and its re-keys. The leader refuses with this before Raft; every op's rules
    /// run the same functions first when applied, so the two cannot differ.
    pub fn admit(&self, cmd: &Command, now: Millis) -> Result<(), OpError> {
        self.authenticates(cmd)?;
        if self.meta.rules < 2 {
            return Ok(());
        }
        system_ops_are_anonymous(self.meta.rules, cmd)?;
        // A memory past its time is one apply may forget first (it forgets a bounded number
        // per entry): not refused for it here.
        let fresh = |seen: &RememberedRequest| now.saturating_sub(seen.at) < REQUEST_MEMORY_MS;
        if let Some(seen) = self.remembered(cmd).filter(fresh) {
            return if seen.digest == command_digest(cmd) || is_retried_create(cmd, &seen) {
                Ok(())
            } else if matches!(cmd.op, Op::Enrol { .. }) {
                self.admit_op(cmd, now)
            } else if matches!(cmd.op, Op::EnrolProven { .. } | Op::EnrolChecked { .. }) {
                Err(OpError::ProofReplayed)
            } else {
                Err(OpError::RequestIdReused(cmd.request_id.clone()))
            };
        }
        self.admit_op(cmd, now)
    }

    /// [`KeyStore::admit`]'s decision of the op itself.
    fn admit_op(&self, cmd: &Command, now: Millis) -> Result<(), OpError> {
        let actor = &cmd.actor;
        match &cmd.op {
            Op::RetireNode { .. } if *actor == Actor::Anonymous && self.meta.rules >= 4 => Ok(()),
            Op::CreateOrg { .. } | Op::RotateOperatorKey { .. } | Op::AdmitNode { .. } | Op::RetireNode { .. } => {
                self.admit_operator_op(actor, None)
            }
            Op::CreateApiKey { org_id, .. } | Op::CreateApiKeyWith { org_id, .. } | Op::SetOrgLimits { org_id, .. } => {
                self.admit_operator_op(actor, Some(org_id))
            }
            Op::RevokeApiKey { api_key_id } => self.admit_revoke_api_key(actor, api_key_id),
            Op::CreateAuthKey { org_id, spec, .. } => self.admit_create_key(now, actor, org_id, spec, true),
            Op::CreateAuthKeyWith { org_id, spec, .. } => self.admit_create_key(now, actor, org_id, spec, true),
            Op::RevokeAuthKey { org_id, selector } => self.admit_revoke_key(actor, org_id, selector).map(|_| ()),
            Op::MachineAdmin { org_id, machine_id, action } => {
                self.admit_machine_admin(actor, org_id, machine_id, action)
            }
            Op::MachineSelf { action } => self.admit_machine_self(actor, action),
            Op::AllowReenrol { org_id, node_public_key } => self.admit_allow_reenrol(actor, org_id, node_public_key),
            Op::EnrolProven { proved_at, .. } | Op::EnrolChecked { proved_at, .. }
                if now.abs_diff(*proved_at) > crate::proof::MAX_AGE_MS =>
            {
                Err(stale_proof_error(now.abs_diff(*proved_at)))
            }
            Op::Enrol { .. } if self.meta.rules >= 3 => Err(legacy_enrol_refused()),
            Op::EnrolProven { .. } | Op::EnrolChecked { .. } | Op::Enrol { .. } => match enrol_request(&cmd.op) {
                Some(req) => self.decide_enrol(now, &req).map(|_| ()),
                None => Ok(()),
            },
            // The cluster's own ops: the leader proposes them and nobody else may (see
            // `network::server`); they refuse nothing a pre-check could know.
            Op::InitCluster { .. }
            | Op::DeregisterInactive { .. }
            | Op::RecordLastSeen { .. }
            | Op::RegisterNode { .. }
            | Op::SweepInactive { .. }
            | Op::AdoptRules { .. }
            | Op::SweepSilent { .. } => Ok(()),
        }
    }

    fn apply_op(&mut self, at: EntryStamp, now: Millis, actor: &Actor, op: &Op) -> Outcome {
        match op {
            Op::InitCluster { org_id, org_name, operator_key, admin_key } => {
                self.init_cluster(now, org_id, org_name, operator_key, admin_key)
            }
            Op::CreateOrg { org_id, name } => {
                self.admit_operator_op(actor, None)?;
                self.create_org(now, org_id, name)
            }
            Op::CreateApiKey { org_id, key, description } => {
                self.admit_operator_op(actor, Some(org_id))?;
                let record = self.new_api_key(now, ApiKeyScope::Org(org_id.clone()), key, description)?;
                Ok(OpOk::ApiKey(record))
            }
            Op::CreateApiKeyWith { org_id, key, description, expires_in_secs, grants } => {
                self.admit_operator_op(actor, Some(org_id))?;
                self.create_org_api_key(now, org_id, key, description, *expires_in_secs, grants)
            }
            Op::RevokeApiKey { api_key_id } => {
                self.admit_revoke_api_key(actor, api_key_id)?;
                self.revoke_api_key(now, api_key_id)
            }
            Op::RotateOperatorKey { key } => {
                self.admit_operator_op(actor, None)?;
                self.rotate_operator_key(now, key)
            }
            Op::SetOrgLimits { org_id, limits } => {
                self.admit_operator_op(actor, Some(org_id))?;
                self.set_org_limits(org_id, *limits)
            }
            Op::CreateAuthKey { org_id, key, spec } => {
                let quota = self.meta.rules >= 2;
                self.admit_create_key(now, actor, org_id, spec, quota)?;
                self.create_auth_key(now, org_id, key, spec, true, quota)
            }
            Op::CreateAuthKeyWith { org_id, key, spec, preauthorized } => {
                self.admit_create_key(now, actor, org_id, spec, true)?;
                self.create_auth_key(now, org_id, key, spec, *preauthorized, true)
            }
            Op::RevokeAuthKey { org_id, selector } => {
                let record = self.admit_revoke_key(actor, org_id, selector)?;
                self.revoke_key(now, record)
            }
            Op::MachineAdmin { org_id, machine_id, action } => {
                self.machine_admin(now, actor, org_id, machine_id, action)
            }
            Op::MachineSelf { action } => self.machine_self(now, actor, action),
            Op::AllowReenrol { org_id, node_public_key } => {
                self.admit_allow_reenrol(actor, org_id, node_public_key)?;
                self.allow_reenrol(org_id, node_public_key)
            }
            Op::DeregisterInactive { machine_ids } => self.deregister_inactive(now, machine_ids),
            // A sweep takes effect only in the term that observed the silence: re-proposed or
            // committed under another leader's term, it changes nothing.
            Op::SweepInactive { term, .. } if *term != at.term => Ok(OpOk::Count(0)),
            Op::SweepInactive { machine_ids, .. } => self.deregister_inactive(now, machine_ids),
            Op::SweepSilent { term, .. } if *term != at.term => Ok(OpOk::Count(0)),
            Op::SweepSilent { machines, .. } => self.deregister_silent(now, machines),
            Op::RecordLastSeen { seen } => self.record_last_seen(seen),
            Op::AdoptRules { version } => {
                // Proposed by the leader once every member runs a build that knows `version`.
                if *version > self.meta.rules && *version <= RULES {
                    self.meta.rules = *version;
                    self.dirty.insert(Row::Meta);
                }
                Ok(OpOk::Count(self.meta.rules as usize))
            }
            Op::AdmitNode { node_id } => self.admit_node(now, actor, *node_id),
            Op::RegisterNode { node_id, incarnation } => self.register_node(now, *node_id, incarnation),
            Op::RetireNode { node_id } => self.retire_node(now, actor, *node_id),
            Op::EnrolProven { proved_at, .. } | Op::EnrolChecked { proved_at, .. } => {
                if now.abs_diff(*proved_at) > crate::proof::MAX_AGE_MS {
                    return Err(stale_proof_error(now.abs_diff(*proved_at)));
                }
                let Some(enrol) = enrol_request(op) else { return Err(OpError::InvalidAuthKey) };
                match self.enrol(at.index, now, enrol)? {
                    OpOk::Enrolled(enrolled) => {
                        let state = self.machines.get(&enrolled.machine_id).map_or(MachineState::Active, |m| m.state);
                        Ok(OpOk::EnrolledAs { enrolled, state })
                    }
                    other => Ok(other),
                }
            }
            Op::Enrol { .. } => {
                if self.meta.rules >= 3 {
                    return Err(legacy_enrol_refused());
                }
                let Some(enrol) = enrol_request(op) else { return Err(OpError::InvalidAuthKey) };
                self.enrol(at.index, now, enrol)
            }
        }
    }
}

/// Whether `op` is the cluster's own (proposed by its leader, never by a client): a sweep,
/// last-seen times, rules adoption, a node's registration, the initialisation.
pub fn is_system_op(op: &Op) -> bool {
    matches!(
        op,
        Op::InitCluster { .. }
            | Op::DeregisterInactive { .. }
            | Op::SweepInactive { .. }
            | Op::SweepSilent { .. }
            | Op::RecordLastSeen { .. }
            | Op::AdoptRules { .. }
            | Op::RegisterNode { .. }
    )
}

/// From rules 4 the cluster's own ops carry no credential: one that names a client's (an API
/// key's or a node key's, whose hashes every member holds) is refused, so no member forwards
/// one in a client's name.
fn system_ops_are_anonymous(rules: u32, cmd: &Command) -> Result<(), OpError> {
    if rules >= 4 && is_system_op(&cmd.op) && cmd.actor != Actor::Anonymous {
        return Err(OpError::Forbidden("the cluster's own ops carry no client's credential".into()));
    }
    Ok(())
}

/// An enrolment op as the rules read it.
fn enrol_request(op: &Op) -> Option<EnrolRequest<'_>> {
    match op {
        Op::Enrol { auth_key_id, auth_key_hash, hostname, node_public_key, machine_id, node_key } => {
            let proved_at = None;
            Some(EnrolRequest {
                auth_key_id,
                auth_key_hash,
                hostname,
                node_public_key,
                machine_id,
                node_key,
                proved_at,
                checked_by: None,
            })
        }
        Op::EnrolProven { auth_key_id, auth_key_hash, hostname, node_public_key, machine_id, node_key, proved_at } => {
            let proved_at = Some(*proved_at);
            Some(EnrolRequest {
                auth_key_id,
                auth_key_hash,
                hostname,
                node_public_key,
                machine_id,
                node_key,
                proved_at,
                checked_by: None,
            })
        }
        Op::EnrolChecked {
            auth_key_id,
            auth_key_hash,
            hostname,
            node_public_key,
            machine_id,
            node_key,
            proved_at,
            checked_by,
        } => Some(EnrolRequest {
            auth_key_id,
            auth_key_hash,
            hostname,
            node_public_key,
            machine_id,
            node_key,
            proved_at: Some(*proved_at),
            checked_by: Some(*checked_by),
        }),
        _ => None,
    }
}

/// Rules 3: the public key is not a credential; every enrolment proves.
fn legacy_enrol_refused() -> OpError {
    OpError::ProofInvalid("enrolment needs a proof of possession of node_public_key's private key".into())
}

/// The key of a decision about the machine with `node_public_key` in `org_id`.
pub(crate) fn decision_key(org_id: &str, node_public_key: &str) -> String {
    format!("{org_id}\u{0}{node_public_key}")
}
