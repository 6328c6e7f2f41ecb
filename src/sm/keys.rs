//! The rules about auth keys and enrolment: creating keys (within grants and the org's daily
//! limit), revoking them, and enrolling machines — one-shot, `max_uses`, revocation, expiry,
//! device approval, admin decisions that stick, and re-enrolment of the same machine.
//!
//! Each op is decided first, without changing anything ([`KeyStore::decide_enrol`] and the
//! `admit_*` functions), then applied: the same decision refuses a command on the leader before
//! Raft (`KeyStore::admit`) and in the state machine when its entry is applied.
//!
//! A machine that enrols again (a re-key: the same machine, a new node key, no use spent) is
//! bounded from rules 4: at most [`REKEYS_PER_MACHINE`] per machine and [`REKEYS_PER_KEY`] per
//! auth key in any [`REKEY_WINDOW_MS`] of cluster time, and a machine's history keeps its last
//! [`REKEY_TAIL`] re-keys and a count of them all, so no holder of a machine's key, nor of a
//! spent key, can write without limit.
//!
//! Pure like the rest of `sm`.

use serde::{Deserialize, Serialize};

use super::access::check_tags_granted;
use super::model::*;
use super::{decision_key, rows, KeyStore, Row};
use crate::secret::{fingerprint, hashes_equal, SecretHash};

/// Re-keys allowed per machine, and per auth key, in a window of cluster time (rules 4).
pub const REKEY_WINDOW_MS: Millis = 10 * 60 * 1000;
pub const REKEYS_PER_MACHINE: u32 = 10;
pub const REKEYS_PER_KEY: u32 = 1000;
/// Re-keys of one machine kept in its auth key's history (rules 4); older ones are dropped and
/// only counted.
pub const REKEY_TAIL: usize = 16;

/// A machine's re-keys (rules 4): how many in all, in the current window, and the history rows
/// of the last [`REKEY_TAIL`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyLog {
    pub total: u64,
    pub window: RekeyWindow,
    pub seqs: Vec<u64>,
}

/// Re-keys counted in a window of [`REKEY_WINDOW_MS`] from `start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyWindow {
    pub start: Millis,
    pub count: u32,
}

impl RekeyWindow {
    /// The window as of `now`: a new one once the old has ended.
    fn at(&self, now: Millis) -> RekeyWindow {
        if now.saturating_sub(self.start) >= REKEY_WINDOW_MS {
            RekeyWindow { start: now, count: 0 }
        } else {
            self.clone()
        }
    }

    /// Refuses a re-key past `limit` in this window.
    fn allows(&self, now: Millis, limit: u32, what: &str) -> Result<(), OpError> {
        let window = self.at(now);
        if window.count < limit {
            return Ok(());
        }
        let wait_s = (window.start + REKEY_WINDOW_MS).saturating_sub(now).div_ceil(1000);
        let message =
            format!("{what} re-keyed {limit} times in {} minutes; try again in {wait_s} s", REKEY_WINDOW_MS / 60_000);
        Err(OpError::TooManyRekeys(message, wait_s))
    }
}

/// An org's new machines enrolled on one UTC day of cluster time (rules 4): at most its machine
/// limit a day, so a leaked reusable key (enrolling, logging out, enrolling again) cannot add
/// history rows without bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolDay {
    pub day: u64,
    pub count: u64,
}

/// An enrolment as the rules see it (from `Enrol`, `EnrolProven` or `EnrolChecked`).
pub(crate) struct EnrolRequest<'a> {
    pub auth_key_id: &'a str,
    pub auth_key_hash: &'a SecretHash,
    pub hostname: &'a str,
    pub node_public_key: &'a str,
    pub machine_id: &'a str,
    pub node_key: &'a NewCredential,
    /// When its proof of possession was issued (`EnrolProven`); `None` for the legacy op.
    pub proved_at: Option<Millis>,
    /// The node that checked the proof (`EnrolChecked`).
    pub checked_by: Option<u64>,
}

/// What an enrolment will do, decided before anything changes.
pub(crate) enum EnrolDecision {
    /// The identical command applied again: the same answer, nothing changes.
    Repeat(Enrolled),
    /// The same machine again: a new node key, no use spent.
    Rekey { machine_id: String },
    /// A new machine.
    New { state: MachineState, approved: bool, clear_node_key_revoked: bool },
}

impl KeyStore {
    /// An auth key's record.
    pub(crate) fn auth_key_record(&self, key_id: &str) -> Option<AuthKeyRecord> {
        self.rows.get(&rows::auth_key_row(key_id))
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.meta.next_seq += 1;
        self.dirty.insert(Row::Meta);
        self.meta.next_seq
    }

    /// Whether `actor` may create a key with `spec` in `org_id` now: its grants, and the org's
    /// daily limit (`quota`: the rules count it).
    pub(super) fn admit_create_key(
        &self,
        now: Millis,
        actor: &Actor,
        org_id: &str,
        spec: &AuthKeySpec,
        quota: bool,
    ) -> Result<(), OpError> {
        let grants = self.authorize_org_for(actor, org_id, Permission::AuthKeys)?;
        check_tags_granted(grants, spec.tags())?;
        if quota {
            self.key_quota_allows(now, org_id)?;
        }
        Ok(())
    }

    /// Creates an auth key (admitted by [`KeyStore::admit_create_key`]).
    pub(super) fn create_auth_key(
        &mut self,
        now: Millis,
        org_id: &str,
        key: &NewCredential,
        spec: &AuthKeySpec,
        preauthorized: bool,
        quota: bool,
    ) -> Outcome {
        if self.rows.contains(&rows::auth_key_row(&key.id)) {
            return Err(OpError::IdCollision);
        }
        if quota {
            self.count_key(now, org_id);
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
            preauthorized,
        };
        self.rows.put(rows::org_key_row(org_id, seq), &key.id);
        self.rows.put(rows::auth_key_row(&key.id), &record);
        Ok(OpOk::AuthKey(record))
    }

    /// Refuses a new auth key of `org_id` past its daily limit.
    fn key_quota_allows(&self, now: Millis, org_id: &str) -> Result<(), OpError> {
        let quota = self.org_quotas.get(org_id).cloned().unwrap_or_default();
        let created = if quota.day == now / 86_400_000 { quota.keys_created } else { 0 };
        let limit = quota.limits.unwrap_or_default().auth_keys_per_day;
        if created >= limit {
            return Err(OpError::QuotaExceeded(format!(
                "org {org_id} has created its limit of {limit} auth keys today (UTC); the operator can raise it with `ztna org-admin set-limits`"
            )));
        }
        Ok(())
    }

    /// Counts one new auth key of `org_id` against its daily limit.
    fn count_key(&mut self, now: Millis, org_id: &str) {
        let day = now / 86_400_000;
        let quota = self.org_quotas.entry(org_id.to_string()).or_default();
        if quota.day != day {
            quota.day = day;
            quota.keys_created = 0;
        }
        quota.keys_created += 1;
        self.dirty.insert(Row::OrgQuota(org_id.to_string()));
    }

    /// The key a revocation names, if `actor` may revoke it (and, from rules 4, its tags are
    /// within a tag-scoped key's scope).
    pub(super) fn admit_revoke_key(
        &self,
        actor: &Actor,
        org_id: &str,
        selector: &KeySelector,
    ) -> Result<AuthKeyRecord, OpError> {
        let grants = self.authorize_org_for(actor, org_id, Permission::AuthKeys)?;
        let record = self.resolve_key(org_id, selector)?;
        self.check_reaches(grants, &record.tags, &format!("auth key {}", record.key_id))?;
        Ok(record)
    }

    pub(super) fn revoke_key(&mut self, now: Millis, mut record: AuthKeyRecord) -> Outcome {
        record.revoked_at.get_or_insert(now);
        self.rows.put(rows::auth_key_row(&record.key_id), &record);
        Ok(OpOk::AuthKey(record))
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

    /// The machine `op` would re-key if it is an enrolment of a machine already enrolled with
    /// its key (the node uses it to count the re-key as a sign of life before proposing).
    pub fn machine_an_enrolment_rekeys(&self, op: &Op) -> Option<String> {
        let (auth_key_id, node_public_key) = match op {
            Op::Enrol { auth_key_id, node_public_key, .. }
            | Op::EnrolProven { auth_key_id, node_public_key, .. }
            | Op::EnrolChecked { auth_key_id, node_public_key, .. } => (auth_key_id, node_public_key),
            _ => return None,
        };
        let node = (auth_key_id.clone(), node_public_key.clone());
        self.machine_by_key_and_node.get(&node)?.values().next_back().cloned()
    }

    /// What enrolment `req` does at `now`, or why it is refused; changes nothing.
    pub(crate) fn decide_enrol(&self, now: Millis, req: &EnrolRequest<'_>) -> Result<EnrolDecision, OpError> {
        let key = self.auth_key_record(req.auth_key_id).ok_or(OpError::InvalidAuthKey)?;
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
            return Ok(EnrolDecision::Repeat(enrolled_answer(machine, true)));
        }
        // A proven enrolment (rules 3) is held to the machine's remembered admin decisions,
        // device approval and a proof later than the one it last used.
        let proven = req.proved_at.is_some();
        if key.revoked_at.is_some() {
            return Err(OpError::KeyRevoked);
        }
        let decision = self.decisions.get(&decision_key(&key.org_id, req.node_public_key)).cloned().unwrap_or_default();
        if proven {
            if decision.deleted.is_some() {
                return Err(OpError::MachineDeleted);
            }
            if decision.node_key_revoked_for.as_deref() == Some(req.auth_key_id) {
                return Err(OpError::NodeKeyRevoked);
            }
        }
        let node = (req.auth_key_id.to_string(), req.node_public_key.to_string());
        let newest = self.machine_by_key_and_node.get(&node).and_then(|m| m.values().next_back());
        // Re-enrolment is an enrolment: the key must still be in date (rules 2).
        if newest.is_some() && self.meta.rules >= 2 && now >= key.expires_at {
            return Err(OpError::KeyExpired);
        }
        if let Some(machine) = newest.and_then(|id| self.machines.get(id)).filter(|m| !m.node_key_revoked) {
            // The same machine asking again (its first answer was lost, or it re-keys): same
            // machine, a fresh node key that works, and no further use spent. A machine whose
            // node key was revoked does not get here.
            if let (Some(proved_at), Some(last)) = (req.proved_at, machine.proved_at) {
                if proved_at <= last {
                    // A delayed copy of an older attempt: it rotates nothing.
                    return Err(OpError::ProofReplayed);
                }
            }
            if proven && self.meta.rules >= 4 {
                self.rekey_log(&machine.machine_id).window.allows(now, REKEYS_PER_MACHINE, "this machine")?;
                self.rekey_window(req.auth_key_id).allows(now, REKEYS_PER_KEY, "this auth key's machines")?;
            }
            return Ok(EnrolDecision::Rekey { machine_id: machine.machine_id.clone() });
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
        if self.meta.rules >= 4 {
            self.check_enrolments_today(now, &key.org_id)?;
        }
        let state = if !proven {
            MachineState::Active
        } else if decision.quarantined {
            MachineState::Quarantined
        } else if !key.preauthorized {
            MachineState::Pending
        } else {
            MachineState::Active
        };
        let approved = proven && key.preauthorized;
        Ok(EnrolDecision::New { state, approved, clear_node_key_revoked: decision.node_key_revoked_for.is_some() })
    }

    /// Applies enrolment `req` as [`KeyStore::decide_enrol`] decided.
    pub(crate) fn enrol(&mut self, log_index: u64, now: Millis, req: EnrolRequest<'_>) -> Outcome {
        match self.decide_enrol(now, &req)? {
            EnrolDecision::Repeat(answer) => Ok(OpOk::Enrolled(answer)),
            EnrolDecision::Rekey { machine_id } => self.rekey(log_index, now, &req, machine_id),
            EnrolDecision::New { state, approved, clear_node_key_revoked } => {
                self.new_machine(log_index, now, &req, state, approved, clear_node_key_revoked)
            }
        }
    }

    fn rekey(&mut self, log_index: u64, now: Millis, req: &EnrolRequest<'_>, machine_id: String) -> Outcome {
        let proven = req.proved_at.is_some();
        let Some(machine) = self.machines.get_mut(&machine_id) else { return Err(OpError::IdCollision) };
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
                machine_id: machine_id.clone(),
                node_key_fingerprint: fingerprint(req.node_public_key),
                at: now,
                log_index,
                deregistered: None,
                rekey: true,
                checked_by: req.checked_by,
            };
            self.rows.put(rows::enrolment_row(req.auth_key_id, seq), &rekey);
            if self.meta.rules >= 4 {
                self.count_rekey(now, req.auth_key_id, &machine_id, seq);
            }
        }
        Ok(OpOk::Enrolled(enrolled))
    }

    /// Counts a re-key against its machine's and its key's windows, and keeps the machine's
    /// last [`REKEY_TAIL`] re-keys in the key's history (rules 4).
    fn count_rekey(&mut self, now: Millis, auth_key_id: &str, machine_id: &str, seq: u64) {
        let mut log = self.rekey_log(machine_id);
        log.total += 1;
        log.window = log.window.at(now);
        log.window.count += 1;
        log.seqs.push(seq);
        while log.seqs.len() > REKEY_TAIL {
            let oldest = log.seqs.remove(0);
            self.rows.delete(rows::enrolment_row(auth_key_id, oldest));
        }
        self.rows.put(rows::rekey_log_row(machine_id), &log);
        let mut window = self.rekey_window(auth_key_id).at(now);
        window.count += 1;
        self.rows.put(rows::rekey_window_row(auth_key_id), &window);
    }

    /// A machine's re-keys so far (rules 4).
    pub(crate) fn rekey_log(&self, machine_id: &str) -> RekeyLog {
        self.rows.get(&rows::rekey_log_row(machine_id)).unwrap_or_default()
    }

    fn rekey_window(&self, auth_key_id: &str) -> RekeyWindow {
        self.rows.get(&rows::rekey_window_row(auth_key_id)).unwrap_or_default()
    }

    fn new_machine(
        &mut self,
        log_index: u64,
        now: Millis,
        req: &EnrolRequest<'_>,
        state: MachineState,
        approved: bool,
        clear_node_key_revoked: bool,
    ) -> Outcome {
        let Some(mut key) = self.auth_key_record(req.auth_key_id) else { return Err(OpError::InvalidAuthKey) };
        let row = decision_key(&key.org_id, req.node_public_key);
        if clear_node_key_revoked {
            // Enrolled again with another auth key: the operator gave it a fresh one.
            let mut cleared = self.decisions.get(&row).cloned().unwrap_or_default();
            cleared.node_key_revoked_for = None;
            self.put_decision(row, cleared, None);
        }
        let seq = self.next_seq();
        let (approved_by, approved_at) =
            if approved { (Some(format!("{} (pre-authorized)", key.key_id)), Some(now)) } else { (None, None) };
        // A machine waiting for approval has no tags' rights: its grant waits in `granted_tags`.
        let tags = if state == MachineState::Pending { Vec::new() } else { key.tags.clone() };
        let machine = Machine {
            machine_id: req.machine_id.to_string(),
            org_id: key.org_id.clone(),
            hostname: req.hostname.to_string(),
            node_public_key: req.node_public_key.to_string(),
            node_key_id: req.node_key.id.clone(),
            node_key_hash: req.node_key.hash,
            auth_key_id: req.auth_key_id.to_string(),
            granted_tags: key.tags.clone(),
            tags,
            ephemeral: key.ephemeral,
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
            node_key_fingerprint: fingerprint(req.node_public_key),
            at: now,
            log_index,
            deregistered: None,
            rekey: false,
            checked_by: req.checked_by,
        };
        let answer = enrolled_answer(&machine, false);
        self.rows.put(rows::auth_key_row(req.auth_key_id), &key);
        self.rows.put(rows::enrolment_row(req.auth_key_id, seq), &enrolment);
        self.dirty.insert(Row::Machine(machine.machine_id.clone()));
        let node = (req.auth_key_id.to_string(), req.node_public_key.to_string());
        self.machine_by_key_and_node.entry(node).or_default().insert(seq, machine.machine_id.clone());
        self.machine_by_node_key.insert(machine.node_key_id.clone(), machine.machine_id.clone());
        *self.machines_per_org.entry(machine.org_id.clone()).or_default() += 1;
        if self.meta.rules >= 4 {
            let row = rows::enrol_day_row(&machine.org_id);
            let mut today: EnrolDay = self.rows.get(&row).unwrap_or_default();
            if today.day != now / 86_400_000 {
                today = EnrolDay { day: now / 86_400_000, count: 0 };
            }
            today.count += 1;
            self.rows.put(row, &today);
        }
        self.machines.insert(machine.machine_id.clone(), machine);
        Ok(OpOk::Enrolled(answer))
    }

    /// Refuses a new machine of `org_id` past its limit of new machines a day (its machine
    /// limit, per UTC day of cluster time; rules 4).
    fn check_enrolments_today(&self, now: Millis, org_id: &str) -> Result<(), OpError> {
        let limit = self.org_limits(org_id).machines;
        let today: EnrolDay = self.rows.get(&rows::enrol_day_row(org_id)).unwrap_or_default();
        if today.day == now / 86_400_000 && today.count >= limit {
            return Err(OpError::QuotaExceeded(format!(
                "org {org_id} has enrolled its limit of {limit} new machines today (UTC); the operator can raise it with `ztna org-admin set-limits`"
            )));
        }
        Ok(())
    }

    /// Refuses a new machine of `org_id` past its machine limit.
    pub(super) fn check_machine_quota(&self, org_id: &str) -> Result<(), OpError> {
        let limit = self.org_limits(org_id).machines;
        if self.machines_per_org.get(org_id).copied().unwrap_or(0) >= limit {
            return Err(OpError::QuotaExceeded(format!(
                "org {org_id} has its limit of {limit} machines; delete some, or the operator can raise it with `ztna org-admin set-limits`"
            )));
        }
        Ok(())
    }

    /// `org_id`'s limits (the defaults unless the operator set them).
    pub(crate) fn org_limits(&self, org_id: &str) -> OrgLimits {
        self.org_quotas.get(org_id).and_then(|q| q.limits).unwrap_or_default()
    }
}

pub(super) fn enrolled_answer(machine: &Machine, repeated: bool) -> Enrolled {
    Enrolled {
        machine_id: machine.machine_id.clone(),
        org_id: machine.org_id.clone(),
        tags: machine.tags.clone(),
        ephemeral: machine.ephemeral,
        auth_key_id: machine.auth_key_id.clone(),
        repeated,
    }
}

/// The refusal of a proof issued `skew_ms` from cluster time.
pub fn stale_proof_error(skew_ms: Millis) -> OpError {
    OpError::ProofInvalid(format!(
        "the proof was issued {} s from cluster time (at most {} s): check this machine's clock",
        skew_ms / 1000,
        crate::proof::MAX_AGE_MS / 1000
    ))
}
