//! How the key store is laid out as rows: one row per record, so that applying an entry writes
//! only what it changed.
//!
//! A row key is a one-byte table tag followed by the record's id; the value is the record encoded
//! by [`crate::codec`]. The storage adapter asks for [`KeyStore::row_value`] of each dirty row and
//! writes it (or deletes the row when the record is gone); on start it feeds every stored row to
//! [`KeyStore::load_row`] and then calls [`KeyStore::finish_load`].
//!
//! This module must not know about RocksDB.

use serde::{Deserialize, Serialize};

use super::{KeyStore, Meta, RememberedRequest};
use crate::codec::{self, CodecError};
use crate::sm::model::*;

/// A record that changed, named by table and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Row {
    Meta,
    Org(String),
    ApiKey(String),
    AuthKey(String),
    Enrolment(String, u64),
    Machine(String),
    Request(String),
}

const TAG_META: u8 = b'M';
const TAG_ORG: u8 = b'o';
const TAG_API_KEY: u8 = b'a';
const TAG_AUTH_KEY: u8 = b'k';
const TAG_ENROLMENT: u8 = b'e';
const TAG_MACHINE: u8 = b'm';
const TAG_REQUEST: u8 = b'r';

impl Row {
    /// The row's key in storage.
    pub fn key(&self) -> Vec<u8> {
        let tagged = |tag: u8, id: &str| {
            let mut key = Vec::with_capacity(1 + id.len());
            key.push(tag);
            key.extend_from_slice(id.as_bytes());
            key
        };
        match self {
            Row::Meta => vec![TAG_META],
            Row::Org(id) => tagged(TAG_ORG, id),
            Row::ApiKey(id) => tagged(TAG_API_KEY, id),
            Row::AuthKey(id) => tagged(TAG_AUTH_KEY, id),
            Row::Enrolment(key_id, seq) => {
                let mut key = tagged(TAG_ENROLMENT, key_id);
                key.push(0);
                key.extend_from_slice(&seq.to_be_bytes());
                key
            }
            Row::Machine(id) => tagged(TAG_MACHINE, id),
            Row::Request(id) => tagged(TAG_REQUEST, id),
        }
    }
}

/// A stored row that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("row {key:?}: {source}")]
    Codec { key: String, source: CodecError },
    #[error("row {0:?} has an unknown table tag")]
    UnknownTag(String),
}

impl KeyStore {
    /// The encoded value of `row`, or `None` when the record no longer exists.
    pub fn row_value(&self, row: &Row) -> Result<Option<Vec<u8>>, CodecError> {
        fn enc<T: Serialize>(value: Option<&T>) -> Result<Option<Vec<u8>>, CodecError> {
            value.map(codec::encode).transpose()
        }
        match row {
            Row::Meta => enc(Some(&self.meta)),
            Row::Org(id) => enc(self.orgs.get(id)),
            Row::ApiKey(id) => enc(self.api_keys.get(id)),
            Row::AuthKey(id) => enc(self.auth_keys.get(id)),
            Row::Enrolment(key_id, seq) => enc(self.enrolments.get(&(key_id.clone(), *seq))),
            Row::Machine(id) => enc(self.machines.get(id)),
            Row::Request(id) => enc(self.requests.get(id)),
        }
    }

    /// Every row of the store, for a snapshot.
    pub fn all_rows(&self) -> impl Iterator<Item = Row> + '_ {
        std::iter::once(Row::Meta)
            .chain(self.orgs.keys().cloned().map(Row::Org))
            .chain(self.api_keys.keys().cloned().map(Row::ApiKey))
            .chain(self.auth_keys.keys().cloned().map(Row::AuthKey))
            .chain(self.enrolments.keys().map(|(k, s)| Row::Enrolment(k.clone(), *s)))
            .chain(self.machines.keys().cloned().map(Row::Machine))
            .chain(self.requests.keys().cloned().map(Row::Request))
    }

    /// Loads one stored row. Call [`KeyStore::finish_load`] after the last one.
    pub fn load_row(&mut self, key: &[u8], value: &[u8]) -> Result<(), RowError> {
        let name = || String::from_utf8_lossy(key).into_owned();
        let codec_err = |source| RowError::Codec { key: name(), source };
        let (&tag, rest) = key.split_first().ok_or_else(|| RowError::UnknownTag(name()))?;
        let id = || String::from_utf8_lossy(rest).into_owned();
        match tag {
            TAG_META => self.meta = codec::decode::<Meta>(value).map_err(codec_err)?,
            TAG_ORG => {
                self.orgs.insert(id(), codec::decode(value).map_err(codec_err)?);
            }
            TAG_API_KEY => {
                self.api_keys.insert(id(), codec::decode(value).map_err(codec_err)?);
            }
            TAG_AUTH_KEY => {
                self.auth_keys.insert(id(), codec::decode(value).map_err(codec_err)?);
            }
            TAG_ENROLMENT => {
                let split = rest.len().checked_sub(9).ok_or_else(|| RowError::UnknownTag(name()))?;
                let key_id = String::from_utf8_lossy(&rest[..split]).into_owned();
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&rest[split + 1..]);
                let enrolment: Enrolment = codec::decode(value).map_err(codec_err)?;
                self.enrolments.insert((key_id, u64::from_be_bytes(seq)), enrolment);
            }
            TAG_MACHINE => {
                self.machines.insert(id(), codec::decode(value).map_err(codec_err)?);
            }
            TAG_REQUEST => {
                let request: RememberedRequest = codec::decode(value).map_err(codec_err)?;
                self.requests.insert(id(), request);
            }
            _ => return Err(RowError::UnknownTag(name())),
        }
        Ok(())
    }

    /// Rebuilds the derived indexes after loading rows.
    pub fn finish_load(&mut self) {
        self.org_keys = self.auth_keys.values().map(|k| ((k.org_id.clone(), k.seq), k.key_id.clone())).collect();
        self.machine_by_key_and_node.clear();
        for m in self.machines.values() {
            let node = (m.auth_key_id.clone(), m.node_public_key.clone());
            self.machine_by_key_and_node.entry(node).or_default().insert(m.enrolment_seq, m.machine_id.clone());
        }
        self.machine_by_node_key =
            self.machines.values().map(|m| (m.node_key_id.clone(), m.machine_id.clone())).collect();
        let mut expiry: Vec<(Millis, String)> = self.requests.iter().map(|(id, r)| (r.at, id.clone())).collect();
        expiry.sort();
        self.request_expiry = expiry.into();
        self.take_dirty();
    }
}
