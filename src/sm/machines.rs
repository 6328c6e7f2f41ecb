//! The rules about enrolled machines: node-key authentication, admin actions (quarantine,
//! delete, tags, node-key revocation, approval) and the decisions they leave behind, a machine's
//! own actions, and the leader's deregistration of inactive ephemeral machines.
//!
//! Admin decisions are remembered against (org, node public key), so they survive the
//! machine's removal; from rules 4 an org keeps at most as many as its machine limit allows, so
//! a holder of a machines-scoped key cannot grow them without bound, and a deletion also keeps
//! the machine's granted tags, so that a tag-scoped key allows back only what it could delete.
//!
//! Like the rest of `sm`, this is pure: the leader decides *which* ephemeral machines were
//! inactive (see `liveness`), and this module only applies that replicated decision.

use super::model::*;
use super::{decision_key, rows, KeyStore, Row};
use crate::secret::hashes_equal;

impl KeyStore {
    /// The machine a node key belongs to, if the key is current.
    pub(crate) fn authenticate_machine(&self, actor: &Actor) -> Result<&Machine, OpError> {
        let Actor::NodeKey { node_key_id, secret_hash } = actor else {
            return Err(OpError::UnknownNodeKey);
        };
        let machine = self
            .machine_by_node_key
            .get(node_key_id)
            .and_then(|id| self.machines.get(id))
            .ok_or(OpError::UnknownNodeKey)?;
        if !hashes_equal(&machine.node_key_hash, secret_hash) {
            return Err(OpError::UnknownNodeKey);
        }
        if machine.node_key_revoked {
            return Err(OpError::NodeKeyRevoked);
        }
        Ok(machine)
    }

    /// Whether `actor` may take `action` on `machine_id` of `org_id` now; changes nothing.
    pub(super) fn admit_machine_admin(
        &self,
        actor: &Actor,
        org_id: &str,
        machine_id: &str,
        action: &MachineAction,
    ) -> Result<(), OpError> {
        let grants = self.authorize_org_for(actor, org_id, Permission::Machines)?;
        if let MachineAction::SetTags(tags) = action {
            // A tag-scoped API key sets only tags it may put on keys.
            super::access::check_tags_granted(grants, tags)?;
        }
        let machine = self.machines.get(machine_id).filter(|m| m.org_id == org_id);
        if self.meta.rules < 4 {
            // Rules 3: a machine whose granted tags were all within the scope (an untagged one
            // too); a missing machine is 404 below.
            if let (Some(scope), Some(machine)) = (&grants.tags, machine) {
                let outside: Vec<&str> =
                    machine.granted_tags.iter().filter(|t| !scope.contains(t)).map(String::as_str).collect();
                if !outside.is_empty() {
                    return Err(OpError::ScopeDenied(format!(
                        "this API key may act only on machines tagged within {}; this one is granted {}",
                        scope.join(", "),
                        outside.join(", ")
                    )));
                }
            }
        }
        let machine = machine.ok_or_else(|| OpError::NotFound(format!("no machine {machine_id:?} in this org")))?;
        if self.meta.rules >= 4 {
            self.check_reaches(grants, &machine.granted_tags, &format!("machine {machine_id}"))?;
        }
        Ok(())
    }

    pub(crate) fn machine_admin(
        &mut self,
        now: Millis,
        actor: &Actor,
        org_id: &str,
        machine_id: &str,
        action: &MachineAction,
    ) -> Outcome {
        self.admit_machine_admin(actor, org_id, machine_id, action)?;
        // What its decisions may push out when the org is at its limit (see `put_decision`).
        let scope = self.authorize_org_for(actor, org_id, Permission::Machines)?.tags.clone();
        let scope = scope.as_deref();
        let admin = match actor {
            Actor::ApiKey { api_key_id, .. } => api_key_id.clone(),
            _ => "?".to_string(),
        };
        let rules = self.meta.rules;
        let not_found = || OpError::NotFound(format!("no machine {machine_id:?} in this org"));
        let machine = self.machines.get_mut(machine_id).filter(|m| m.org_id == org_id).ok_or_else(not_found)?;
        let row = decision_key(org_id, &machine.node_public_key);
        let mut decision = self.decisions.get(&row).cloned().unwrap_or_default();
        match action {
            MachineAction::Quarantine => {
                machine.state = MachineState::Quarantined;
                decision.quarantined = true;
            }
            MachineAction::Unquarantine => {
                // Back to active, or to pending if it was never approved.
                // (A machine enrolled before device approval, without a proof, never waited.)
                let approved = rules < 3 || machine.approved_at.is_some() || machine.proved_at.is_none();
                machine.state = if approved { MachineState::Active } else { MachineState::Pending };
                decision.quarantined = false;
            }
            MachineAction::SetTags(tags) => {
                // An admin may widen: what it sets is what the machine is granted.
                machine.tags = tags.clone();
                machine.granted_tags = tags.clone();
            }
            MachineAction::RevokeNodeKey => {
                machine.node_key_revoked = true;
                decision.node_key_revoked_for = Some(machine.auth_key_id.clone());
            }
            MachineAction::Approve => {
                if machine.state == MachineState::Pending {
                    machine.state = MachineState::Active;
                }
                if machine.approved_at.is_none() {
                    // Its tags' rights begin now.
                    machine.tags = machine.granted_tags.clone();
                    machine.approved_by = Some(admin);
                    machine.approved_at = Some(now);
                }
            }
            MachineAction::Delete | MachineAction::Reject => {
                if rules >= 4 {
                    // What it was granted, for a tag-scoped key's `allow_reenrol`.
                    self.rows.put(rows::decision_tags_row(&row), &machine.granted_tags);
                }
                if rules >= 3 {
                    decision.deleted = Some(Actioned { by: admin, at: now });
                    self.put_decision(row, decision, scope);
                }
                self.remove_machine(machine_id, now, DeregisterReason::Deleted);
                return Ok(OpOk::MachineRemoved { machine_id: machine_id.to_string() });
            }
        }
        let machine = machine.clone();
        self.dirty.insert(Row::Machine(machine_id.to_string()));
        if rules >= 3 {
            self.put_decision(row, decision, scope);
        }
        Ok(OpOk::Machine(machine))
    }

    /// Whether `actor` may let the machine with `node_public_key` enrol again: from rules 4, a
    /// tag-scoped key only a machine that was deleted with tags within its scope.
    pub(super) fn admit_allow_reenrol(
        &self,
        actor: &Actor,
        org_id: &str,
        node_public_key: &str,
    ) -> Result<(), OpError> {
        let grants = self.authorize_org_for(actor, org_id, Permission::Machines)?;
        if self.meta.rules >= 4 && grants.tags.is_some() {
            let row = rows::decision_tags_row(&decision_key(org_id, node_public_key));
            let tags: Vec<String> = self.rows.get(&row).unwrap_or_default();
            self.check_reaches(grants, &tags, "that machine")?;
        }
        Ok(())
    }

    pub(super) fn allow_reenrol(&mut self, org_id: &str, node_public_key: &str) -> Outcome {
        let row = decision_key(org_id, node_public_key);
        let mut decision = self.decisions.get(&row).cloned().unwrap_or_default();
        decision.deleted = None;
        decision.node_key_revoked_for = None;
        if self.meta.rules >= 4 {
            self.rows.delete(rows::decision_tags_row(&row));
        }
        self.put_decision(row, decision, None);
        Ok(OpOk::Count(0))
    }

    /// Replaces the decision stored under `row` (an empty one is deleted). From rules 4 an org
    /// keeps about as many decisions as its machine limit: a new one past that forgets the
    /// org's oldest deletion that its maker could have allowed back (`scope`: the tag scope of
    /// the API key deciding, `None` for one without), so a tag-scoped key never frees a machine
    /// an admin deleted outside its tags; when there is none, the new one is kept over the
    /// limit (one more: the next one may push it out). An admin's action on a machine is never
    /// refused for want of room, so a compromised machine can always be contained.
    pub(crate) fn put_decision(&mut self, row: String, decision: Decision, scope: Option<&[String]>) {
        let org = row.split('\u{0}').next().unwrap_or_default().to_string();
        let existed = self.decisions.contains_key(&row);
        if decision == Decision::default() {
            self.forget_decision(&org, &row);
            return;
        }
        if !existed && self.meta.rules >= 4 {
            let limit = self.org_limits(&org).machines;
            if self.decisions_per_org.get(&org).copied().unwrap_or(0) >= limit {
                if let Some(oldest) = self.oldest_deletion(&org, scope) {
                    self.forget_decision(&org, &oldest);
                }
            }
        }
        self.decisions.insert(row.clone(), decision);
        if !existed {
            *self.decisions_per_org.entry(org).or_default() += 1;
        }
        self.dirty.insert(Row::Decision(row));
    }

    fn forget_decision(&mut self, org: &str, row: &str) {
        if self.decisions.remove(row).is_some() {
            if let Some(count) = self.decisions_per_org.get_mut(org) {
                *count = count.saturating_sub(1);
            }
            if self.meta.rules >= 4 {
                self.rows.delete(rows::decision_tags_row(row));
            }
        }
        self.dirty.insert(Row::Decision(row.to_string()));
    }

    /// The org's decision about a deleted machine made longest ago (ties by key) that a key of
    /// tag scope `scope` could allow back: with a scope, only one about a machine deleted with
    /// tags, all within it.
    fn oldest_deletion(&self, org: &str, scope: Option<&[String]>) -> Option<String> {
        let prefix = format!("{org}\u{0}");
        let allowed_back = |key: &String| {
            let Some(scope) = scope else { return true };
            let tags: Vec<String> = self.rows.get(&rows::decision_tags_row(key)).unwrap_or_default();
            !tags.is_empty() && tags.iter().all(|t| scope.contains(t))
        };
        self.decisions
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(key, _)| allowed_back(key))
            .filter_map(|(key, d)| d.deleted.as_ref().map(|deleted| (deleted.at, key)))
            .min()
            .map(|(_, key)| key.clone())
    }

    /// Whether a machine may take `action` on itself now; changes nothing.
    pub(super) fn admit_machine_self(&self, actor: &Actor, action: &SelfAction) -> Result<(), OpError> {
        let machine = self.authenticate_machine(actor)?;
        let SelfAction::SetTags(tags) = action else { return Ok(()) };
        if self.meta.rules < 3 {
            return Ok(());
        }
        // A machine may narrow its tags within what it was granted, nothing more, and not while
        // an admin holds it.
        match machine.state {
            MachineState::Quarantined => {
                return Err(OpError::MachineQuarantined(
                    "this machine is quarantined: its tags can only be changed by an admin".into(),
                ))
            }
            MachineState::Pending => return Err(OpError::PendingApproval),
            MachineState::Active => {}
        }
        let extra: Vec<&str> = tags.iter().filter(|t| !machine.granted_tags.contains(t)).map(String::as_str).collect();
        if extra.is_empty() {
            return Ok(());
        }
        Err(OpError::TagNotGranted(format!(
            "{} {} not granted to this machine (granted: {}); an admin can set wider tags",
            extra.join(", "),
            if extra.len() == 1 { "was" } else { "were" },
            if machine.granted_tags.is_empty() { "none".to_string() } else { machine.granted_tags.join(", ") }
        )))
    }

    pub(crate) fn machine_self(&mut self, now: Millis, actor: &Actor, action: &SelfAction) -> Outcome {
        self.admit_machine_self(actor, action)?;
        let machine_id = self.authenticate_machine(actor)?.machine_id.clone();
        match action {
            SelfAction::SetTags(tags) => {
                let machine = self.machines.get_mut(&machine_id).ok_or(OpError::UnknownNodeKey)?;
                machine.tags = tags.clone();
                let machine = machine.clone();
                self.dirty.insert(Row::Machine(machine_id));
                Ok(OpOk::Machine(machine))
            }
            SelfAction::Logout => {
                self.remove_machine(&machine_id, now, DeregisterReason::LoggedOut);
                Ok(OpOk::MachineRemoved { machine_id })
            }
        }
    }

    /// Deletes the listed machines that still exist and are ephemeral.
    pub(crate) fn deregister_inactive(&mut self, now: Millis, machine_ids: &[String]) -> Outcome {
        let mut removed = 0;
        for id in machine_ids {
            if self.machines.get(id).is_some_and(|m| m.ephemeral) {
                self.remove_machine(id, now, DeregisterReason::Inactive);
                removed += 1;
            }
        }
        Ok(OpOk::Count(removed))
    }

    /// Deletes the swept machines that still exist, are ephemeral, and have not changed since the
    /// sweep judged them (the same node key, no later last-seen time).
    pub(crate) fn deregister_silent(&mut self, now: Millis, machines: &[SweptMachine]) -> Outcome {
        let mut removed = 0;
        for swept in machines {
            let unchanged = self.machines.get(&swept.machine_id).is_some_and(|m| {
                m.ephemeral
                    && ((m.node_key_id == swept.node_key_id && m.last_seen <= swept.last_seen)
                        || crate::faults::sweep_unchecked())
            });
            if unchanged {
                self.remove_machine(&swept.machine_id, now, DeregisterReason::Inactive);
                removed += 1;
            }
        }
        Ok(OpOk::Count(removed))
    }

    /// What a sweep judging `machine_id` silent records of it (see [`SweptMachine`]).
    pub fn swept_machine(&self, machine_id: &str) -> Option<SweptMachine> {
        self.machines.get(machine_id).map(|m| SweptMachine {
            machine_id: m.machine_id.clone(),
            node_key_id: m.node_key_id.clone(),
            last_seen: m.last_seen,
        })
    }

    /// Records coarse last-seen times; a time never moves backwards.
    pub(crate) fn record_last_seen(&mut self, seen: &[(String, Millis)]) -> Outcome {
        let mut changed = 0;
        for (id, at) in seen {
            if let Some(machine) = self.machines.get_mut(id) {
                if machine.last_seen.is_none_or(|prev| prev < *at) {
                    machine.last_seen = Some(*at);
                    self.dirty.insert(Row::Machine(id.clone()));
                    changed += 1;
                }
            }
        }
        Ok(OpOk::Count(changed))
    }

    /// Removes a machine and its node key, and marks its enrolment deregistered.
    fn remove_machine(&mut self, machine_id: &str, now: Millis, reason: DeregisterReason) {
        let Some(machine) = self.machines.remove(machine_id) else { return };
        if let Some(count) = self.machines_per_org.get_mut(&machine.org_id) {
            *count = count.saturating_sub(1);
        }
        self.machine_by_node_key.remove(&machine.node_key_id);
        let node = (machine.auth_key_id.clone(), machine.node_public_key.clone());
        if let Some(machines) = self.machine_by_key_and_node.get_mut(&node) {
            machines.remove(&machine.enrolment_seq);
            if machines.is_empty() {
                self.machine_by_key_and_node.remove(&node);
            }
        }
        let row = rows::enrolment_row(&machine.auth_key_id, machine.enrolment_seq);
        if let Some(mut enrolment) = self.rows.get::<Enrolment>(&row) {
            enrolment.deregistered = Some(Deregistration { at: now, reason });
            self.rows.put(row, &enrolment);
        }
        if self.meta.rules >= 4 {
            // Its re-key count goes with it; the re-keys kept stay in the key's history.
            self.rows.delete(rows::rekey_log_row(machine_id));
        }
        self.dirty.insert(Row::Machine(machine_id.to_string()));
    }

    /// Every machine's id and whether it is ephemeral, for the leader's inactivity sweep.
    pub fn machine_liveness_ids(&self) -> Vec<(String, bool)> {
        self.machines.values().map(|m| (m.machine_id.clone(), m.ephemeral)).collect()
    }
}
