//! The rows under the state machine: the committed rows (a [`RowSource`]: RocksDB in a node, a
//! `BTreeMap` in unit tests) and, on top, the overlay of writes made since the storage adapter
//! last took them.
//!
//! The large tables (auth keys, their org index, enrolments, remembered requests) are not held in
//! memory: the rules read them through [`Rows`], which looks in the overlay first, so a command
//! sees what earlier commands of the same entry wrote. The adapter writes the overlay with the
//! applied id in one batch before the next entry is applied, so the source is always the state
//! as of the last applied entry.
//!
//! A read that fails (I/O error, undecodable row) cannot become a replicated answer: it is
//! recorded as a fault, the rule sees "absent", and the adapter refuses the whole entry (nothing
//! of it is written) when [`Rows::fault`] is set. Queries check it the same way.
//!
//! This module must not know about RocksDB or decide anything about keys.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::codec;

/// Committed rows in key order.
pub trait RowSource: Send + Sync {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Visits the rows whose keys are `>= from`, in key order, until `visit` returns false.
    fn scan(&self, from: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), String>;
}

/// How a stored value is read back: in this build's form, or — for records that gained fields —
/// in the form an older build wrote, converted (the row is rewritten in the new form when it
/// next changes).
pub trait Stored: Sized {
    fn decode_stored(bytes: &[u8]) -> Result<Self, codec::CodecError>;
}

/// Values stored in one form only.
macro_rules! stored_as_is {
    ($($t:ty),* $(,)?) => {
        $(impl Stored for $t {
            fn decode_stored(bytes: &[u8]) -> Result<Self, codec::CodecError> {
                codec::decode(bytes)
            }
        })*
    };
}

stored_as_is!(String, (), u32);

/// A record that gained fields: this build's form first, else the older one.
#[macro_export]
macro_rules! stored_with_older {
    ($new:ty, $old:ty) => {
        impl $crate::sm::backing::Stored for $new {
            fn decode_stored(bytes: &[u8]) -> Result<Self, $crate::codec::CodecError> {
                $crate::codec::decode::<$new>(bytes).or_else(|_| $crate::codec::decode::<$old>(bytes).map(<$new>::from))
            }
        }
    };
}

/// Writes waiting to be persisted: `None` deletes the row.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Committed rows plus this apply's overlay.
pub struct Rows {
    source: Arc<dyn RowSource>,
    overlay: Writes,
    /// Bytes of keys and values in `overlay` (roughly: a row written twice counts twice).
    overlay_bytes: usize,
    /// The first failed read or write since the node started: sticky, the store cannot be
    /// trusted after it.
    fault: Mutex<Option<String>>,
    /// The last few committed rows read, newest last: an enrolment reads its auth key's row to
    /// authenticate and again to decide, with other reads in between. Emptied by every write,
    /// so it only ever holds what the source holds.
    recent: Mutex<Vec<RecentRead>>,
}

/// A row key and what the source held under it.
type RecentRead = (Vec<u8>, Option<Vec<u8>>);

/// How many committed rows [`Rows`] keeps from its last reads.
const RECENT_READS: usize = 4;

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").field("pending", &self.overlay.len()).field("fault", &self.fault()).finish()
    }
}

impl Rows {
    pub fn new(source: Arc<dyn RowSource>) -> Self {
        Rows {
            source,
            overlay: Writes::new(),
            overlay_bytes: 0,
            fault: Mutex::new(None),
            recent: Mutex::new(Vec::new()),
        }
    }

    fn record_fault(&self, message: String) {
        let mut fault = self.fault.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if fault.is_none() {
            tracing::error!(%message, "state machine storage fault");
            *fault = Some(message);
        }
    }

    /// The storage fault seen so far, if any.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The raw value of `key`, overlay first.
    pub fn get_raw(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(pending) = self.overlay.get(key) {
            return pending.clone();
        }
        let recent = || self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, value)) = recent().iter().find(|(k, _)| k.as_slice() == key) {
            return value.clone();
        }
        // Read without the lock (readers share it); the source cannot change meanwhile: it
        // changes only through `&mut self`.
        match self.source.get(key) {
            Ok(value) => {
                let mut recent = recent();
                if recent.len() == RECENT_READS {
                    recent.remove(0);
                }
                recent.push((key.to_vec(), value.clone()));
                value
            }
            Err(e) => {
                self.record_fault(format!("reading row {}: {e}", show_key(key)));
                None
            }
        }
    }

    /// Forgets the rows kept from the last reads: the source is about to change.
    fn forget_recent(&mut self) {
        self.recent.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// The decoded value of `key`.
    pub fn get<T: Stored>(&self, key: &[u8]) -> Option<T> {
        let bytes = self.get_raw(key)?;
        T::decode_stored(&bytes).map_err(|e| self.record_fault(format!("decoding row {}: {e}", show_key(key)))).ok()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.get_raw(key).is_some()
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, key: Vec<u8>, value: &T) {
        match codec::encode(value) {
            Ok(bytes) => self.put_encoded(key, bytes),
            Err(e) => self.record_fault(format!("encoding row {}: {e}", show_key(&key))),
        }
    }

    /// Stores bytes already encoded by [`codec::encode`].
    pub fn put_encoded(&mut self, key: Vec<u8>, bytes: Vec<u8>) {
        self.forget_recent();
        self.overlay_bytes += key.len() + bytes.len();
        self.overlay.insert(key, Some(bytes));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.forget_recent();
        self.overlay_bytes += key.len();
        self.overlay.insert(key, None);
    }

    /// Roughly how many bytes of writes wait in the overlay.
    pub fn pending_bytes(&self) -> usize {
        self.overlay_bytes
    }

    /// Visits the live rows with keys `>= from` in key order, the overlay merged over the
    /// committed rows, until `visit` returns false.
    pub fn scan(&self, from: &[u8], mut visit: impl FnMut(&[u8], &[u8]) -> bool) {
        let mut pending = self.overlay.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)).peekable();
        let mut more = true;
        let scanned = self.source.scan(from, &mut |key, value| {
            while let Some((k, v)) = pending.next_if(|(k, _)| k.as_slice() < key) {
                if let Some(v) = v {
                    if !visit(k, v) {
                        more = false;
                        return false;
                    }
                }
            }
            let value = match pending.next_if(|(k, _)| k.as_slice() == key) {
                Some((_, None)) => return true,
                Some((_, Some(newer))) => newer.as_slice(),
                None => value,
            };
            more = visit(key, value);
            more
        });
        if let Err(e) = scanned {
            self.record_fault(format!("scanning from {}: {e}", show_key(from)));
            return;
        }
        if more {
            for (k, v) in pending {
                if let Some(v) = v {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
        }
    }

    /// Visits the decoded rows whose keys start with `prefix`, from `from` (which must start
    /// with `prefix`), until `visit` returns false.
    pub fn scan_prefix<T: Stored>(&self, prefix: &[u8], from: &[u8], mut visit: impl FnMut(&[u8], T) -> bool) {
        self.scan(from, |key, value| {
            if !key.starts_with(prefix) {
                return false;
            }
            match T::decode_stored(value) {
                Ok(decoded) => visit(key, decoded),
                Err(e) => {
                    self.record_fault(format!("decoding row {}: {e}", show_key(key)));
                    false
                }
            }
        })
    }

    /// The writes made since the last call, for the adapter to persist in one batch.
    pub fn take_writes(&mut self) -> Writes {
        self.forget_recent();
        self.overlay_bytes = 0;
        std::mem::take(&mut self.overlay)
    }

    /// Forgets the writes made since the last [`Rows::take_writes`] (the entry is refused).
    pub fn discard_writes(&mut self) {
        self.forget_recent();
        self.overlay_bytes = 0;
        self.overlay.clear();
    }
}

/// A row key for messages: printable bytes as text, the rest as hex escapes.
fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// Committed rows in memory: the source of unit tests and of tools that read a copy of a store.
#[derive(Debug, Default)]
pub struct MemRows(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>);

impl MemRows {
    /// Persists `writes` as the adapter would.
    pub fn write(&self, writes: Writes) {
        let mut rows = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, value) in writes {
            match value {
                Some(value) => rows.insert(key, value),
                None => rows.remove(&key),
            };
        }
    }

    /// Every row, in key order.
    pub fn all(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let rows = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        rows.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl RowSource for MemRows {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key).cloned())
    }

    fn scan(&self, from: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), String> {
        let rows = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, value) in rows.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_merges_the_overlay_over_committed_rows() {
        let mem = Arc::new(MemRows::default());
        let mut seed = Writes::new();
        for key in ["a1", "a3", "a5", "b1"] {
            seed.insert(key.as_bytes().to_vec(), Some(codec::encode(key).unwrap()));
        }
        mem.write(seed);
        let mut rows = Rows::new(mem.clone());
        rows.put(b"a2".to_vec(), "a2");
        rows.put(b"a3".to_vec(), "a3 new");
        rows.delete(b"a5".to_vec());
        rows.put(b"a6".to_vec(), "a6");
        let mut seen = Vec::new();
        rows.scan_prefix::<String>(b"a", b"a", |_, v| {
            seen.push(v);
            true
        });
        assert_eq!(seen, ["a1", "a2", "a3 new", "a6"]);
        let mut first_two = Vec::new();
        rows.scan_prefix::<String>(b"a", b"a2", |_, v| {
            first_two.push(v);
            first_two.len() < 2
        });
        assert_eq!(first_two, ["a2", "a3 new"]);
        assert_eq!(rows.get::<String>(b"a5"), None);
        mem.write(rows.take_writes());
        let keys: Vec<_> = mem.all().into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect();
        assert_eq!(keys, ["a1", "a2", "a3", "a6", "b1"]);
        assert_eq!(rows.fault(), None);
    }
}
