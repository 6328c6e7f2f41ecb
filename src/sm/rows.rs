//! How the key store is laid out as rows, and how a store is opened over them.
//!
//! A row key is a one-byte table tag followed by the record's id; the value is the record encoded
//! by [`crate::codec`]. Small tables (the meta row, orgs, API keys, machines, node ids) are also held in
//! memory: they are loaded when the store opens, and the rows of the records an entry changed are
//! written back by [`KeyStore::take_writes`]. The large tables (auth keys, the org index of auth
//! keys, enrolments, remembered requests and their expiry order) live only in rows and are read
//! through [`Rows`].
//!
//! This module must not know about RocksDB.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::backing::{RowSource, Rows, Writes};
use super::{KeyStore, Meta, RememberedRequest};
use crate::codec::{self, CodecError};
use crate::sm::model::*;

// How each stored type reads back (see `backing::Stored`).
crate::stored_with_older!(Meta, super::MetaV1);
crate::stored_with_older!(ApiKeyRecord, ApiKeyRecordV1);
crate::stored_with_older!(AuthKeyRecord, AuthKeyRecordV1);
/// An enrolment row: this build's form, or either older one.
impl super::backing::Stored for Enrolment {
    fn decode_stored(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode::<Enrolment>(bytes)
            .or_else(|_| codec::decode::<EnrolmentV2>(bytes).map(Enrolment::from))
            .or_else(|_| codec::decode::<EnrolmentV1>(bytes).map(Enrolment::from))
    }
}
crate::stored_with_older!(Machine, MachineV1);

macro_rules! stored_as_is {
    ($($t:ty),* $(,)?) => {
        $(impl super::backing::Stored for $t {
            fn decode_stored(bytes: &[u8]) -> Result<Self, CodecError> {
                codec::decode(bytes)
            }
        })*
    };
}
stored_as_is!(
    Org,
    OrgQuota,
    Decision,
    super::nodes::NodeRecord,
    super::keys::RekeyLog,
    super::keys::RekeyWindow,
    super::keys::EnrolDay,
    Vec<String>
);

/// A remembered request whose outcome an older build wrote (a record in it has since gained
/// fields): its time and digest are kept, so it still expires and still tells a retry from a
/// reused id, but its answer cannot be given again. Every replica reads the same bytes, so every
/// replica answers the same.
impl super::backing::Stored for RememberedRequest {
    fn decode_stored(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode::<RememberedRequest>(bytes).or_else(|_| {
            let (at, digest) = codec::decode_head::<(Millis, [u8; 32])>(bytes)?;
            let outcome = Err(OpError::AnswerForgotten);
            Ok(RememberedRequest { at, digest, outcome })
        })
    }
}

/// A changed record of an in-memory table, named by table and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Row {
    Meta,
    Org(String),
    ApiKey(String),
    Machine(String),
    Node(String),
    OrgQuota(String),
    /// (org, node public key), joined by a 0 byte.
    Decision(String),
}

const TAG_META: u8 = b'M';
const TAG_LAYOUT: u8 = b'V';
const TAG_ORG: u8 = b'o';
const TAG_API_KEY: u8 = b'a';
const TAG_MACHINE: u8 = b'm';
const TAG_NODE: u8 = b'n';
const TAG_ORG_QUOTA: u8 = b'q';
const TAG_DECISION: u8 = b'd';
const TAG_AUTH_KEY: u8 = b'k';
const TAG_ORG_KEY: u8 = b'K';
const TAG_ENROLMENT: u8 = b'e';
const TAG_REQUEST: u8 = b'r';
const TAG_REQUEST_EXPIRY: u8 = b'R';
/// A machine's re-keys (rules 4).
const TAG_REKEY_LOG: u8 = b'x';
/// An auth key's machines' re-keys in the current window (rules 4).
const TAG_REKEY_WINDOW: u8 = b'y';
/// The granted tags of a machine an admin deleted, beside its decision (rules 4).
const TAG_DECISION_TAGS: u8 = b'g';
/// An org's new machines enrolled on the current UTC day (rules 4).
const TAG_ENROL_DAY: u8 = b'z';

/// The row layout this build writes. 1: every table in memory, no index rows. 2: auth keys,
/// enrolments and requests only in rows, with index rows for listings and request expiry.
const LAYOUT: u32 = 2;

fn tagged(tag: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len() + 9);
    key.push(tag);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `tag id 0x00 seq`: rows of one parent in sequence order.
fn tagged_seq(tag: u8, id: &str, seq: u64) -> Vec<u8> {
    let mut key = child_prefix(tag, id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn child_prefix(tag: u8, id: &str) -> Vec<u8> {
    let mut key = tagged(tag, id);
    key.push(0);
    key
}

pub(crate) fn auth_key_row(key_id: &str) -> Vec<u8> {
    tagged(TAG_AUTH_KEY, key_id)
}

/// Auth key ids starting with `prefix`.
pub(crate) fn auth_key_id_prefix(prefix: &str) -> Vec<u8> {
    tagged(TAG_AUTH_KEY, prefix)
}

/// The org's listing index: `(org, seq) → key id`.
pub(crate) fn org_key_row(org_id: &str, seq: u64) -> Vec<u8> {
    tagged_seq(TAG_ORG_KEY, org_id, seq)
}

pub(crate) fn org_key_prefix(org_id: &str) -> Vec<u8> {
    child_prefix(TAG_ORG_KEY, org_id)
}

pub(crate) fn enrolment_row(key_id: &str, seq: u64) -> Vec<u8> {
    tagged_seq(TAG_ENROLMENT, key_id, seq)
}

pub(crate) fn enrolment_prefix(key_id: &str) -> Vec<u8> {
    child_prefix(TAG_ENROLMENT, key_id)
}

pub(crate) fn rekey_log_row(machine_id: &str) -> Vec<u8> {
    tagged(TAG_REKEY_LOG, machine_id)
}

pub(crate) fn rekey_window_row(auth_key_id: &str) -> Vec<u8> {
    tagged(TAG_REKEY_WINDOW, auth_key_id)
}

pub(crate) fn enrol_day_row(org_id: &str) -> Vec<u8> {
    tagged(TAG_ENROL_DAY, org_id)
}

/// Beside decision `decision_key` (`org 0x00 node public key`).
pub(crate) fn decision_tags_row(decision_key: &str) -> Vec<u8> {
    tagged(TAG_DECISION_TAGS, decision_key)
}

/// Every row of the node-id registry (a restore leaves them behind: the new cluster's nodes
/// register afresh).
pub(crate) fn node_registry_prefix() -> Vec<u8> {
    vec![TAG_NODE]
}

/// The remembered outcome of request `request_id` of caller `scope` (an API key id, a node
/// key id, an auth key id, or one of the state machine's own scopes): `scope 0x00 id`, so no
/// caller can reach another's ids. (Rows written before scopes were `request id` alone; their
/// expiry rows name them the same way, so they still expire.)
pub(crate) fn request_row(scope: &str, request_id: &str) -> Vec<u8> {
    let mut key = child_prefix(TAG_REQUEST, scope);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// Where builds before request scopes remembered request `request_id`.
pub(crate) fn legacy_request_row(request_id: &str) -> Vec<u8> {
    tagged(TAG_REQUEST, request_id)
}

/// The expiry order of remembered requests: `(time, request row key without its tag) → ()`.
pub(crate) fn request_expiry_row(at: Millis, request_row: &[u8]) -> Vec<u8> {
    let mut key = vec![TAG_REQUEST_EXPIRY];
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(request_row.strip_prefix(&[TAG_REQUEST]).unwrap_or(request_row));
    key
}

pub(crate) fn request_expiry_prefix() -> Vec<u8> {
    vec![TAG_REQUEST_EXPIRY]
}

/// The time of an expiry row and the key of the request row it expires.
pub(crate) fn parse_request_expiry(key: &[u8]) -> Option<(Millis, Vec<u8>)> {
    let body = key.strip_prefix(&[TAG_REQUEST_EXPIRY])?;
    let at = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let mut row = vec![TAG_REQUEST];
    row.extend_from_slice(&body[8..]);
    Some((at, row))
}

impl Row {
    /// The row's key in storage.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Row::Meta => vec![TAG_META],
            Row::Org(id) => tagged(TAG_ORG, id),
            Row::ApiKey(id) => tagged(TAG_API_KEY, id),
            Row::Machine(id) => tagged(TAG_MACHINE, id),
            Row::Node(id) => tagged(TAG_NODE, id),
            Row::OrgQuota(id) => tagged(TAG_ORG_QUOTA, id),
            Row::Decision(id) => tagged(TAG_DECISION, id),
        }
    }
}

/// A stored row that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("row {key:?}: {source}")]
    Codec { key: String, source: CodecError },
    #[error("the rows cannot be read: {0}")]
    Storage(String),
    #[error(
        "the rows were written in layout {0}, newer than this build's {LAYOUT}; was the data written by a newer ztna?"
    )]
    NewerLayout(u32),
}

impl KeyStore {
    /// Opens the store over committed rows: loads the in-memory tables and rebuilds their
    /// indexes. Rows of the older layout get their index rows made; those writes wait in
    /// [`KeyStore::take_writes`] like an entry's.
    pub fn open(source: Arc<dyn RowSource>) -> Result<Self, RowError> {
        let mut store = KeyStore {
            meta: Meta::default(),
            orgs: Default::default(),
            api_keys: Default::default(),
            machines: Default::default(),
            nodes: Default::default(),
            machine_by_key_and_node: Default::default(),
            machine_by_node_key: Default::default(),
            org_quotas: Default::default(),
            machines_per_org: Default::default(),
            decisions_per_org: Default::default(),
            decisions: Default::default(),
            rows: Rows::new(source),
            expiry_seek: request_expiry_prefix(),
            oldest_request_at: None,
            dirty: BTreeSet::new(),
        };
        store.meta = store.load_meta()?;
        store.orgs = store.load_table(TAG_ORG)?;
        store.api_keys = store.load_table(TAG_API_KEY)?;
        store.decisions = store.load_table(TAG_DECISION)?;
        store.org_quotas = store.load_table(TAG_ORG_QUOTA)?;
        store.machines = store.load_table(TAG_MACHINE)?;
        store.nodes = store.load_table(TAG_NODE)?;
        for key in store.decisions.keys() {
            let org = key.split('\u{0}').next().unwrap_or_default().to_string();
            *store.decisions_per_org.entry(org).or_default() += 1;
        }
        for m in store.machines.values() {
            *store.machines_per_org.entry(m.org_id.clone()).or_default() += 1;
            let node = (m.auth_key_id.clone(), m.node_public_key.clone());
            store.machine_by_key_and_node.entry(node).or_default().insert(m.enrolment_seq, m.machine_id.clone());
            store.machine_by_node_key.insert(m.node_key_id.clone(), m.machine_id.clone());
        }
        match store.load_one::<u32>(&[TAG_LAYOUT])? {
            Some(LAYOUT) => {}
            Some(newer) if newer > LAYOUT => return Err(RowError::NewerLayout(newer)),
            _ => store.upgrade_layout()?,
        }
        Ok(store)
    }

    /// The meta row (a new store: the defaults).
    fn load_meta(&self) -> Result<Meta, RowError> {
        Ok(self.load_one(&Row::Meta.key())?.unwrap_or_default())
    }

    fn check_fault(&self) -> Result<(), RowError> {
        self.rows.fault().map_or(Ok(()), |fault| Err(RowError::Storage(fault)))
    }

    fn load_one<T: super::backing::Stored>(&self, key: &[u8]) -> Result<Option<T>, RowError> {
        let Some(bytes) = self.rows.get_raw(key) else { return self.check_fault().map(|()| None) };
        T::decode_stored(&bytes)
            .map(Some)
            .map_err(|source| RowError::Codec { key: key.escape_ascii().to_string(), source })
    }

    fn load_table<T: super::backing::Stored>(
        &self,
        tag: u8,
    ) -> Result<std::collections::BTreeMap<String, T>, RowError> {
        let mut table = std::collections::BTreeMap::new();
        self.rows.scan_prefix::<T>(&[tag], &[tag], |key, value| {
            table.insert(String::from_utf8_lossy(&key[1..]).into_owned(), value);
            true
        });
        self.check_fault()?;
        Ok(table)
    }

    /// Layout 1 → 2: makes the org index and request expiry rows from the records.
    fn upgrade_layout(&mut self) -> Result<(), RowError> {
        let mut index = Vec::new();
        self.rows.scan_prefix::<AuthKeyRecord>(&[TAG_AUTH_KEY], &[TAG_AUTH_KEY], |_, key| {
            index.push((org_key_row(&key.org_id, key.seq), key.key_id));
            true
        });
        let mut expiry = Vec::new();
        self.rows.scan_prefix::<RememberedRequest>(&[TAG_REQUEST], &[TAG_REQUEST], |key, request| {
            expiry.push(request_expiry_row(request.at, key));
            true
        });
        self.check_fault()?;
        for (row, key_id) in index {
            self.rows.put(row, &key_id);
        }
        for row in expiry {
            self.rows.put(row, &());
        }
        self.rows.put(vec![TAG_LAYOUT], &LAYOUT);
        Ok(())
    }

    /// Every write since the last call: the in-memory records an entry changed and the rows it
    /// wrote, for the storage adapter to persist in one batch with the applied id.
    pub fn take_writes(&mut self) -> Result<Writes, CodecError> {
        for row in std::mem::take(&mut self.dirty) {
            let key = row.key();
            let value = match &row {
                Row::Meta => Some(codec::encode(&self.meta)?),
                Row::Org(id) => self.orgs.get(id).map(codec::encode).transpose()?,
                Row::ApiKey(id) => self.api_keys.get(id).map(codec::encode).transpose()?,
                Row::Machine(id) => self.machines.get(id).map(codec::encode).transpose()?,
                Row::Node(id) => self.nodes.get(id).map(codec::encode).transpose()?,
                Row::OrgQuota(id) => self.org_quotas.get(id).map(codec::encode).transpose()?,
                Row::Decision(id) => self.decisions.get(id).map(codec::encode).transpose()?,
            };
            match value {
                Some(bytes) => self.rows.put_encoded(key, bytes),
                None => self.rows.delete(key),
            }
        }
        Ok(self.rows.take_writes())
    }

    /// Roughly how many bytes of row writes wait for [`KeyStore::take_writes`].
    pub fn pending_bytes(&self) -> usize {
        self.rows.pending_bytes()
    }

    /// Drops an entry's writes: a storage fault made its outcomes untrustworthy.
    pub fn discard_writes(&mut self) {
        self.dirty.clear();
        self.rows.discard_writes();
    }

    /// The first storage fault this store saw, if any; an entry applied after one is refused.
    pub fn fault(&self) -> Option<String> {
        self.rows.fault()
    }
}
