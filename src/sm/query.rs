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
/// The set of queries this build reads: 1, the first; 2 adds `ListAuthKeysWhere` and `WhoAmI`;
/// 3 adds `GetAuthKeyPage`. Told to peers (`network::QUERIES_HEADER`) so that a newer query is
/// never forwarded to a leader whose build cannot decode it.
pub const QUERIES: u32 = 3;
/// Most enrolments one page of a key's history holds.
pub const MAX_HISTORY_PAGE: usize = 1000;

/// Most keys a filtered listing looks at for one page: a page that finds fewer matches still
/// answers a cursor to go on from, so no request scans a whole large org.
pub const MAX_SCAN: usize = 2_000;

/// Which auth keys a filtered listing answers; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFilter {
    /// The key's state at the answer's cluster time.
    pub state: Option<KeyState>,
    pub reusable: Option<bool>,
    pub ephemeral: Option<bool>,
    /// A tag the key carries.
    pub tag: Option<String>,
    /// Lowercase text found in the description, the key id or the display prefix.
    pub search: Option<String>,
}

impl KeyFilter {
    fn matches(&self, key: &AuthKeyRecord, now: Millis) -> bool {
        self.state.is_none_or(|s| key.state(now) == s)
            && self.reusable.is_none_or(|r| key.reusable == r)
            && self.ephemeral.is_none_or(|e| key.ephemeral == e)
            && self.tag.as_ref().is_none_or(|t| key.tags.contains(t))
            && self.search.as_ref().is_none_or(|text| {
                key.description.to_lowercase().contains(text)
                    || key.key_id.to_lowercase().contains(text)
                    || key.display_prefix().to_lowercase().contains(text)
            })
    }
}

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
    /// Like `ListAuthKeys`, only the keys `filter` matches; at most [`MAX_SCAN`] keys are
    /// looked at per page. (New variants go last: older builds decode the ones before.)
    ListAuthKeysWhere {
        org_id: String,
        limit: usize,
        after_seq: Option<u64>,
        filter: KeyFilter,
    },
    /// The calling API key's own record (the console's sign-in).
    WhoAmI,
    /// One key with a page of its history: at most `limit` enrolments (0: none) after
    /// `after_seq`, so no read holds the state for a whole history.
    GetAuthKeyPage {
        org_id: String,
        key_id: String,
        limit: usize,
        after_seq: Option<u64>,
    },
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
    ApiKey(ApiKeyRecord),
    /// A key with a page of its history, and where the next page starts.
    AuthKeyPage {
        record: AuthKeyRecord,
        enrolments: Vec<Enrolment>,
        next_after_seq: Option<u64>,
        as_of: Millis,
    },
}

impl Query {
    /// The first set of queries (see [`QUERIES`]) with this one.
    pub fn since(&self) -> u32 {
        match self {
            Query::GetAuthKeyPage { .. } => 3,
            Query::ListAuthKeysWhere { .. } | Query::WhoAmI => 2,
            _ => 1,
        }
    }
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

    /// Whether `actor` may ask `query`: its credential, scope and grants (the refusals a read
    /// can get before it looks at anything). The leader checks this before a read's barrier, so
    /// a refused read costs no log entry.
    pub fn admit_query(&self, actor: &Actor, query: &Query) -> Result<(), OpError> {
        match query {
            Query::ListAuthKeys { org_id, .. }
            | Query::ListAuthKeysWhere { org_id, .. }
            | Query::GetAuthKey { org_id, .. }
            | Query::GetAuthKeyPage { org_id, .. } => {
                self.authorize_org_for(actor, org_id, Permission::AuthKeysRead).map(|_| ())
            }
            Query::ListMachines { org_id } => {
                self.authorize_org_for(actor, org_id, Permission::MachinesRead).map(|_| ())
            }
            Query::ListApiKeys { .. } | Query::ListOrgs => self.authorize_operator(actor),
            Query::WhoAmI => self.authenticate(actor).map(|_| ()),
            Query::MachineStatus => self.authenticate_machine(actor).map(|_| ()),
        }
    }

    fn answer(&self, actor: &Actor, query: &Query) -> Result<Answer, OpError> {
        self.admit_query(actor, query)?;
        // What a tag-scoped key may see: keys and machines it reaches (rules 4).
        let grants = match query {
            Query::ListAuthKeys { org_id, .. }
            | Query::ListAuthKeysWhere { org_id, .. }
            | Query::GetAuthKey { org_id, .. }
            | Query::GetAuthKeyPage { org_id, .. } => {
                Some(self.authorize_org_for(actor, org_id, Permission::AuthKeysRead)?.clone())
            }
            Query::ListMachines { org_id } => {
                Some(self.authorize_org_for(actor, org_id, Permission::MachinesRead)?.clone())
            }
            _ => None,
        };
        let grants = grants.unwrap_or_else(Grants::all);
        match query {
            Query::ListAuthKeys { org_id, limit, after_seq } => {
                Ok(self.list_auth_keys(org_id, *limit, *after_seq, &KeyFilter::default(), &grants))
            }
            Query::ListAuthKeysWhere { org_id, limit, after_seq, filter } => {
                Ok(self.list_auth_keys(org_id, *limit, *after_seq, filter, &grants))
            }
            Query::WhoAmI => {
                let Actor::ApiKey { api_key_id, .. } = actor else { return Err(OpError::Unauthorized) };
                self.api_keys.get(api_key_id).cloned().map(Answer::ApiKey).ok_or(OpError::Unauthorized)
            }
            Query::GetAuthKey { org_id, key_id } => {
                // The unpaged form (an older build's): its first page only, so no read holds
                // the state over a whole history.
                let record = self.visible_key(org_id, key_id, &grants)?;
                let (enrolments, _) = self.enrolment_page(key_id, MAX_HISTORY_PAGE, None);
                Ok(Answer::AuthKey { record, enrolments, as_of: self.clock() })
            }
            Query::GetAuthKeyPage { org_id, key_id, limit, after_seq } => {
                let record = self.visible_key(org_id, key_id, &grants)?;
                let (enrolments, next_after_seq) =
                    self.enrolment_page(key_id, (*limit).min(MAX_HISTORY_PAGE), *after_seq);
                Ok(Answer::AuthKeyPage { record, enrolments, next_after_seq, as_of: self.clock() })
            }
            Query::ListApiKeys { org_id } => {
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
            Query::ListOrgs => Ok(Answer::Orgs(self.orgs.values().cloned().collect())),
            Query::ListMachines { org_id } => Ok(Answer::Machines(
                self.machines
                    .values()
                    .filter(|m| &m.org_id == org_id && (self.meta.rules < 4 || self.reaches(&grants, &m.granted_tags)))
                    .cloned()
                    .collect(),
            )),
            Query::MachineStatus => Ok(Answer::Machine(self.authenticate_machine(actor)?.clone())),
        }
    }

    /// Key `key_id` of `org_id`, if it exists there and `grants` reach it (rules 4).
    fn visible_key(&self, org_id: &str, key_id: &str, grants: &Grants) -> Result<AuthKeyRecord, OpError> {
        self.auth_key_record(key_id)
            .filter(|k| k.org_id == org_id && (self.meta.rules < 4 || self.reaches(grants, &k.tags)))
            .ok_or_else(|| OpError::NotFound(format!("no auth key {key_id:?} in this org")))
    }
}

impl KeyStore {
    /// A page of `org_id`'s keys that `filter` matches, in creation order after `after_seq`.
    /// The page ends after `limit` matches (with a cursor when more keys follow) or after
    /// [`MAX_SCAN`] keys looked at (with a cursor at the last one looked at).
    fn list_auth_keys(
        &self,
        org_id: &str,
        limit: usize,
        after_seq: Option<u64>,
        filter: &KeyFilter,
        grants: &Grants,
    ) -> Answer {
        let limit = limit.clamp(1, MAX_PAGE);
        let now = self.clock();
        let prefix = rows::org_key_prefix(org_id);
        let start = rows::org_key_row(org_id, after_seq.map_or(0, |s| s.saturating_add(1)));
        let (mut keys, mut scanned, mut last_seq) = (Vec::new(), 0usize, None);
        let mut more = false;
        self.rows.scan_prefix::<String>(&prefix, &start, |_, key_id| {
            if keys.len() == limit || scanned == MAX_SCAN {
                more = true;
                return false;
            }
            scanned += 1;
            if let Some(key) = self.auth_key_record(&key_id) {
                last_seq = Some(key.seq);
                let reached = self.meta.rules < 4 || self.reaches(grants, &key.tags);
                if reached && filter.matches(&key, now) {
                    keys.push(key);
                }
            }
            true
        });
        let next_after_seq = if more { last_seq } else { None };
        Answer::AuthKeys { keys, next_after_seq, as_of: now }
    }

    /// An auth key's record, without authorisation: for tools that read a stopped node's store.
    pub fn auth_key(&self, key_id: &str) -> Option<AuthKeyRecord> {
        self.auth_key_record(key_id)
    }

    /// At most `limit` of an auth key's enrolments in commit order after `after_seq`, and the
    /// seq to go on from when more follow.
    fn enrolment_page(&self, key_id: &str, limit: usize, after_seq: Option<u64>) -> (Vec<Enrolment>, Option<u64>) {
        let prefix = rows::enrolment_prefix(key_id);
        let start = rows::enrolment_row(key_id, after_seq.map_or(0, |s| s.saturating_add(1)));
        let mut page = Vec::new();
        let (mut last, mut more) = (None, false);
        if limit == 0 {
            return (page, None);
        }
        self.rows.scan(&start, |key, value| {
            if !key.starts_with(&prefix) {
                return false;
            }
            if page.len() == limit {
                more = true;
                return false;
            }
            let seq = key.get(prefix.len()..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            if let (Some(seq), Ok(enrolment)) = (seq, <Enrolment as super::backing::Stored>::decode_stored(value)) {
                page.push(enrolment);
                last = Some(seq);
            }
            true
        });
        (page, if more { last } else { None })
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
