//! Reads of the key store: listings and single records, with the same authorisation rules as
//! writes. A query runs on the leader after `ensure_linearizable`, so it never sees stale state.
//!
//! This module must not change the store.

use serde::{Deserialize, Serialize};

use super::model::*;
use super::KeyStore;

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
    AuthKeys { keys: Vec<AuthKeyRecord>, next_after_seq: Option<u64> },
    AuthKey { record: AuthKeyRecord, enrolments: Vec<Enrolment> },
    ApiKeys(Vec<ApiKeyRecord>),
    Orgs(Vec<Org>),
    Machines(Vec<Machine>),
    Machine(Machine),
}

impl KeyStore {
    /// Answers `query` for `actor`.
    pub fn query(&self, actor: &Actor, query: &Query) -> Result<Answer, OpError> {
        match query {
            Query::ListAuthKeys { org_id, limit, after_seq } => {
                self.authorize_org(actor, org_id)?;
                let limit = (*limit).clamp(1, MAX_PAGE);
                let start = (org_id.clone(), after_seq.map_or(0, |s| s.saturating_add(1)));
                let mut keys: Vec<AuthKeyRecord> = self
                    .org_keys
                    .range(start..)
                    .take_while(|((org, _), _)| org == org_id)
                    .take(limit + 1)
                    .filter_map(|(_, key_id)| self.auth_keys.get(key_id).cloned())
                    .collect();
                let next_after_seq = if keys.len() > limit {
                    keys.truncate(limit);
                    keys.last().map(|k| k.seq)
                } else {
                    None
                };
                Ok(Answer::AuthKeys { keys, next_after_seq })
            }
            Query::GetAuthKey { org_id, key_id } => {
                self.authorize_org(actor, org_id)?;
                let record = self
                    .auth_keys
                    .get(key_id)
                    .filter(|k| &k.org_id == org_id)
                    .ok_or_else(|| OpError::NotFound(format!("no auth key {key_id:?} in this org")))?;
                let enrolments = self.enrolments_of(key_id).cloned().collect();
                Ok(Answer::AuthKey { record: record.clone(), enrolments })
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
                self.authorize_org(actor, org_id)?;
                Ok(Answer::Machines(self.machines.values().filter(|m| &m.org_id == org_id).cloned().collect()))
            }
            Query::MachineStatus => Ok(Answer::Machine(self.authenticate_machine(actor)?.clone())),
        }
    }
}

impl KeyStore {
    /// An auth key's record, without authorisation: for tools that read a stopped node's store.
    pub fn auth_key(&self, key_id: &str) -> Option<&AuthKeyRecord> {
        self.auth_keys.get(key_id)
    }

    /// An auth key's enrolments in commit order.
    pub fn enrolments_of<'a>(&'a self, key_id: &str) -> impl Iterator<Item = &'a Enrolment> + 'a {
        self.enrolments.range((key_id.to_string(), 0)..=(key_id.to_string(), u64::MAX)).map(|(_, e)| e)
    }
}
