//! Reads of the key store: listings and single records, with the same authorisation rules as
//! writes. A query runs on the leader after a read barrier (see `proposer`), or for a machine's
//! heartbeat after `ensure_linearizable`, so it never sees stale state. Key states are
//! answered at the state machine's clock, never at a node's wall clock.
//!
//! This module must not change the store.

use serde::{Deserialize, Serialize};

use super::model::*;
use super::{rows, KeyStore};

/// Most records one listing page may hold.
pub const MAX_PAGE: usize = 1000;
/// Records per page when the client does not say.
pub const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A page of an org's auth keys in creation order, starting after `after_seq`.
    ListAuthKeys {
        org_id: String,
        limit: usize,
        after_seq: Option<u64>,
    },
    GetAuthKey {
        org_id: String,
        key_id: String,
    },
    ListApiKeys {
        org_id: Option<String>,
    },
    ListOrgs,
    /// An org's machines in id order (admin).
    ListMachines {
        org_id: String,
    },
    /// The calling machine itself (actor: its node key); a heartbeat.
    MachineStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// `as_of`: the cluster time the answer holds at (the state machine's clock), which decides
    /// whether a key is `expired`.
    AuthKeys {
        keys: Vec<AuthKeyRecord>,
        next_after_seq: Option<u64>,
        as_of: Millis,
    },
    AuthKey {
        record: AuthKeyRecord,
        enrolments: Vec<Enrolment>,
        as_of: Millis,
    },
    ApiKeys(Vec<ApiKeyRecord>),
    Orgs(Vec<Org>),
    Machines(Vec<Machine>),
    Machine(Machine),
}

impl KeyStore {
    /// Answers `query` for `actor`.
    pub fn query(&self, actor: &Actor, query: &Query) -> Result<Answer, OpError> {
        let answer = self.answer(actor, query);
        // A failed read looked like a missing row; the answer cannot be trusted.
        match self.fault() {
            Some(fault) => Err(OpError::Storage(fault)),
            None => answer,
        }
    }

    fn answer(&self, actor: &Actor, query: &Query) -> Result<Answer, OpError> {
        match query {
            Query::ListAuthKeys { org_id, limit, after_seq } => {
                self.authorize_org_for(actor, org_id, Permission::AuthKeysRead)?;
                let limit = (*limit).clamp(1, MAX_PAGE);
                let prefix = rows::org_key_prefix(org_id);
                let start = rows::org_key_row(org_id, after_seq.map_or(0, |s| s.saturating_add(1)));
                let mut key_ids = Vec::new();
                self.rows.scan_prefix::<String>(&prefix, &start, |_, key_id| {
                    key_ids.push(key_id);
                    key_ids.len() <= limit
                });
                let mut keys: Vec<AuthKeyRecord> =
                    key_ids.iter().filter_map(|key_id| self.auth_key_record(key_id)).collect();
                let next_after_seq = if keys.len() > limit {
                    keys.truncate(limit);
                    keys.last().map(|k| k.seq)
                } else {
                    None
                };
                Ok(Answer::AuthKeys { keys, next_after_seq, as_of: self.clock() })
            }
            Query::GetAuthKey { org_id, key_id } => {
                self.authorize_org_for(actor, org_id, Permission::AuthKeysRead)?;
                let record = self
                    .auth_key_record(key_id)
                    .filter(|k| &k.org_id == org_id)
                    .ok_or_else(|| OpError::NotFound(format!("no auth key {key_id:?} in this org")))?;
                let enrolments = self.enrolments_of(key_id);
                Ok(Answer::AuthKey { record, enrolments, as_of: self.clock() })
            }
            Query::ListApiKeys { org_id } => {
                self.authorize_operator(actor)?;
                let keys = self
                    .api_keys
                    .values()
                    .filter(|k| match org_id {
                        None => true,
                        Some(org) => k.scope == ApiKeyScope::Org(org.clone()),
                    })
                    .cloned()
                    .collect();
                Ok(Answer::ApiKeys(keys))
            }
            Query::ListOrgs => {
                self.authorize_operator(actor)?;
                Ok(Answer::Orgs(self.orgs.values().cloned().collect()))
            }
            Query::ListMachines { org_id } => {
                self.authorize_org_for(actor, org_id, Permission::MachinesRead)?;
                Ok(Answer::Machines(self.machines.values().filter(|m| &m.org_id == org_id).cloned().collect()))
            }
            Query::MachineStatus => Ok(Answer::Machine(self.authenticate_machine(actor)?.clone())),
        }
    }
}

impl KeyStore {
    /// An auth key's record, without authorisation: for tools that read a stopped node's store.
    pub fn auth_key(&self, key_id: &str) -> Option<AuthKeyRecord> {
        self.auth_key_record(key_id)
    }

    /// An auth key's enrolments in commit order.
    pub fn enrolments_of(&self, key_id: &str) -> Vec<Enrolment> {
        let prefix = rows::enrolment_prefix(key_id);
        let mut enrolments = Vec::new();
        self.rows.scan_prefix::<Enrolment>(&prefix, &prefix, |_, enrolment| {
            enrolments.push(enrolment);
            true
        });
        enrolments
    }
}
