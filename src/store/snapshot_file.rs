//! The snapshot file: the state machine's rows, streamed to and from disk one row at a time, so
//! that neither building, sending nor installing a snapshot holds the whole state in memory.
//!
//! Layout: the magic `ZTNASNAP`, a format version byte, the [`SnapshotMeta`] (length-prefixed,
//! encoded by `codec`), then one frame per row (`u32` key length, key, `u32` value length,
//! value, little-endian lengths), then an end mark (`u32::MAX`), the row count (`u64`) and the
//! SHA-256 of every byte before the end mark. A file that is cut short, altered, or of another
//! version is refused with a message saying which.
//!
//! This module must not know about Raft rules or keys; it moves rows.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::codec;
use crate::raft_types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"ZTNASNAP";
/// The snapshot file format this build writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 1;
const END: u32 = u32::MAX;
const BUFFER: usize = 1 << 20;

/// Why a snapshot file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("snapshot file {path} is not a ztna snapshot (bad magic)")]
    NotASnapshot { path: String },
    #[error(
        "snapshot file {path} has format {found}; this build reads format {SNAPSHOT_FORMAT} (written by a newer ztna?)"
    )]
    UnknownFormat { path: String, found: u8 },
    #[error("snapshot file {path}: {message}")]
    Corrupt { path: String, message: String },
}

/// Writes a snapshot file row by row.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    rows: u64,
    bytes: u64,
    path: String,
}

impl SnapshotWriter {
    /// Creates `path` (truncating it) and writes the header.
    pub fn create(path: &Path, meta: &SnapshotMeta) -> Result<Self, SnapshotFileError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|source| SnapshotFileError::Io { path: name.clone(), source })?;
        let meta = codec::encode(meta).map_err(|e| corrupt(&name, e))?;
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(BUFFER, file),
            hasher: Sha256::new(),
            rows: 0,
            bytes: 0,
            path: name,
        };
        writer.put(MAGIC)?;
        writer.put(&[SNAPSHOT_FORMAT])?;
        writer.put(&frame_len(&writer.path, meta.len())?.to_le_bytes())?;
        writer.put(&meta)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|source| SnapshotFileError::Io { path: self.path.clone(), source })
    }

    pub fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotFileError> {
        self.put(&frame_len(&self.path, key.len())?.to_le_bytes())?;
        self.put(key)?;
        self.put(&frame_len(&self.path, value.len())?.to_le_bytes())?;
        self.put(value)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the end mark, row count and digest, and fsyncs. Returns (rows, bytes).
    pub fn finish(mut self) -> Result<(u64, u64), SnapshotFileError> {
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let io = |source| SnapshotFileError::Io { path: self.path.clone(), source };
        let mut trailer = Vec::with_capacity(44);
        trailer.extend_from_slice(&END.to_le_bytes());
        trailer.extend_from_slice(&self.rows.to_le_bytes());
        trailer.extend_from_slice(&digest);
        self.out.write_all(&trailer).map_err(io)?;
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        if !crate::faults::skip_snapshot_fsync() {
            file.sync_all().map_err(io)?;
        }
        Ok((self.rows, self.bytes + trailer.len() as u64))
    }
}

fn frame_len(path: &str, len: usize) -> Result<u32, SnapshotFileError> {
    u32::try_from(len)
        .ok()
        .filter(|&n| n != END)
        .ok_or_else(|| corrupt(path, format!("a row of {len} bytes is too long")))
}

fn corrupt(path: &str, message: impl std::fmt::Display) -> SnapshotFileError {
    SnapshotFileError::Corrupt { path: path.to_string(), message: message.to_string() }
}

/// One row: key and value.
pub type SnapshotRow = (Vec<u8>, Vec<u8>);

/// Reads a snapshot file row by row.
pub struct SnapshotReader {
    input: BufReader<File>,
    hasher: Sha256,
    path: String,
    pub meta: SnapshotMeta,
    rows: u64,
}

impl SnapshotReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, SnapshotFileError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| SnapshotFileError::Io { path: name.clone(), source })?;
        let mut reader = SnapshotReader {
            input: BufReader::with_capacity(BUFFER, file),
            hasher: Sha256::new(),
            path: name,
            meta: SnapshotMeta::default(),
            rows: 0,
        };
        let mut magic = [0u8; 8];
        reader.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotFileError::NotASnapshot { path: reader.path });
        }
        let mut format = [0u8; 1];
        reader.take(&mut format)?;
        if format[0] != SNAPSHOT_FORMAT {
            return Err(SnapshotFileError::UnknownFormat { path: reader.path, found: format[0] });
        }
        let len = reader.take_len()?.ok_or_else(|| corrupt(&reader.path, "no metadata"))?;
        let meta = reader.take_vec(len)?;
        reader.meta = codec::decode(&meta).map_err(|e| corrupt(&reader.path, e))?;
        Ok(reader)
    }

    /// Fills `buf` from the file; an early end means the file was cut short.
    fn read_frame_bytes(&mut self, buf: &mut [u8]) -> Result<(), SnapshotFileError> {
        self.input.read_exact(buf).map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt(&self.path, "cut short (no end mark)"),
            _ => SnapshotFileError::Io { path: self.path.clone(), source },
        })
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotFileError> {
        self.read_frame_bytes(buf)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn take_vec(&mut self, len: usize) -> Result<Vec<u8>, SnapshotFileError> {
        let mut buf = vec![0u8; len];
        self.take(&mut buf)?;
        Ok(buf)
    }

    /// A frame length, or `None` at the end mark (which is not hashed).
    fn take_len(&mut self) -> Result<Option<usize>, SnapshotFileError> {
        let mut len = [0u8; 4];
        self.read_frame_bytes(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len == END {
            return Ok(None);
        }
        self.hasher.update(len.to_le_bytes());
        Ok(Some(len as usize))
    }

    /// The next row, or `None` after the last one, once the row count and digest are checked.
    pub fn next_row(&mut self) -> Result<Option<SnapshotRow>, SnapshotFileError> {
        let Some(key_len) = self.take_len()? else {
            self.check_trailer()?;
            return Ok(None);
        };
        let key = self.take_vec(key_len)?;
        let value_len = self.take_len()?.ok_or_else(|| corrupt(&self.path, "end mark inside a row"))?;
        let value = self.take_vec(value_len)?;
        self.rows += 1;
        Ok(Some((key, value)))
    }

    fn check_trailer(&mut self) -> Result<(), SnapshotFileError> {
        let mut trailer = [0u8; 40];
        self.input.read_exact(&mut trailer).map_err(|_| corrupt(&self.path, "cut short in its trailer"))?;
        let rows = u64::from_le_bytes(trailer[..8].try_into().unwrap_or_default());
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if rows != self.rows {
            return Err(corrupt(&self.path, format!("says {rows} rows but holds {}", self.rows)));
        }
        if digest[..] != trailer[8..] {
            return Err(corrupt(&self.path, "SHA-256 does not match its contents"));
        }
        let mut rest = [0u8; 1];
        match self.input.read(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(corrupt(&self.path, "bytes after the trailer")),
            Err(source) => Err(SnapshotFileError::Io { path: self.path.clone(), source }),
        }
    }
}

/// Reads the whole file once: its metadata and row count, after checking its digest.
pub fn verify(path: &Path) -> Result<(SnapshotMeta, u64), SnapshotFileError> {
    let mut reader = SnapshotReader::open(path)?;
    let mut rows = 0;
    while reader.next_row()?.is_some() {
        rows += 1;
    }
    Ok((reader.meta, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let meta = SnapshotMeta { snapshot_id: "s1".into(), ..Default::default() };
        let mut writer = SnapshotWriter::create(&path, &meta).unwrap();
        writer.row(b"k1", b"v1").unwrap();
        writer.row(b"k2", b"").unwrap();
        writer.finish().unwrap();

        let mut reader = SnapshotReader::open(&path).unwrap();
        assert_eq!(reader.meta.snapshot_id, "s1");
        assert_eq!(reader.next_row().unwrap(), Some((b"k1".to_vec(), b"v1".to_vec())));
        assert_eq!(reader.next_row().unwrap(), Some((b"k2".to_vec(), Vec::new())));
        assert_eq!(reader.next_row().unwrap(), None);
        assert_eq!(verify(&path).unwrap().1, 2);

        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        let at = bytes.len() - 50;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(verify(&path), Err(SnapshotFileError::Corrupt { .. })));
        std::fs::write(&path, &bytes[..bytes.len() - 45]).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("cut short"));
        let mut newer = bytes.clone();
        newer[8] = SNAPSHOT_FORMAT + 1;
        std::fs::write(&path, &newer).unwrap();
        assert!(matches!(verify(&path), Err(SnapshotFileError::UnknownFormat { found: 2, .. })));
    }
}
