//! The rules about enrolled machines: node-key authentication, admin actions (quarantine,
//! delete, tags, node-key revocation), a machine's own actions, and the leader's deregistration
//! of inactive ephemeral machines.
//!
//! Like the rest of `sm`, this is pure: the leader decides *which* ephemeral machines were
//! inactive (see `liveness`), and this module only applies that replicated decision.

use super::model::*;
use super::{KeyStore, Row};
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

    pub(crate) fn machine_admin(
        &mut self,
        now: Millis,
        actor: &Actor,
        org_id: &str,
        machine_id: &str,
        action: &MachineAction,
    ) -> Outcome {
        let grants = self.authorize_org_for(actor, org_id, Permission::Machines)?.clone();
        if let MachineAction::SetTags(tags) = action {
            // A tag-scoped API key sets only tags it may put on keys.
            super::check_tags_granted(&grants, tags)?;
        }
        if let (Some(scope), Some(machine)) = (&grants.tags, self.machines.get(machine_id)) {
            // …and acts only on machines whose every granted tag is within its scope.
            if machine.org_id == org_id {
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
        let admin = match actor {
            Actor::ApiKey { api_key_id, .. } => api_key_id.clone(),
            _ => "?".to_string(),
        };
        let rules = self.meta.rules;
        let not_found = || OpError::NotFound(format!("no machine {machine_id:?} in this org"));
        let machine = self.machines.get_mut(machine_id).filter(|m| m.org_id == org_id).ok_or_else(not_found)?;
        let row = super::decision_key(org_id, &machine.node_public_key);
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
                if rules >= 3 {
                    decision.deleted = Some(Actioned { by: admin, at: now });
                    self.put_decision(row, decision);
                }
                self.remove_machine(machine_id, now, DeregisterReason::Deleted);
                return Ok(OpOk::MachineRemoved { machine_id: machine_id.to_string() });
            }
        }
        let machine = machine.clone();
        self.dirty.insert(Row::Machine(machine_id.to_string()));
        if rules >= 3 {
            self.put_decision(row, decision);
        }
        Ok(OpOk::Machine(machine))
    }

    pub(crate) fn machine_self(&mut self, now: Millis, actor: &Actor, action: &SelfAction) -> Outcome {
        let machine_id = self.authenticate_machine(actor)?.machine_id.clone();
        let rules = self.meta.rules;
        match action {
            SelfAction::SetTags(tags) => {
                let machine = self.machines.get_mut(&machine_id).ok_or(OpError::UnknownNodeKey)?;
                if rules >= 3 {
                    // A machine may narrow its tags within what it was granted, nothing more, and
                    // not while an admin holds it.
                    match machine.state {
                        MachineState::Quarantined => {
                            return Err(OpError::MachineQuarantined(
                                "this machine is quarantined: its tags can only be changed by an admin".into(),
                            ))
                        }
                        MachineState::Pending => return Err(OpError::PendingApproval),
                        MachineState::Active => {}
                    }
                    let extra: Vec<&str> =
                        tags.iter().filter(|t| !machine.granted_tags.contains(t)).map(String::as_str).collect();
                    if !extra.is_empty() {
                        return Err(OpError::TagNotGranted(format!(
                            "{} {} not granted to this machine (granted: {}); an admin can set wider tags",
                            extra.join(", "),
                            if extra.len() == 1 { "was" } else { "were" },
                            if machine.granted_tags.is_empty() {
                                "none".to_string()
                            } else {
                                machine.granted_tags.join(", ")
                            }
                        )));
                    }
                }
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
        let row = super::rows::enrolment_row(&machine.auth_key_id, machine.enrolment_seq);
        if let Some(mut enrolment) = self.rows.get::<Enrolment>(&row) {
            enrolment.deregistered = Some(Deregistration { at: now, reason });
            self.rows.put(row, &enrolment);
        }
        self.dirty.insert(Row::Machine(machine_id.to_string()));
    }

    /// Every machine's id and whether it is ephemeral, for the leader's inactivity sweep.
    pub fn machine_liveness_ids(&self) -> Vec<(String, bool)> {
        self.machines.values().map(|m| (m.machine_id.clone(), m.ephemeral)).collect()
    }
}
