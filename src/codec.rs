//! The one place that turns values into bytes and back.
//!
//! Everything stored (log entries, state-machine rows, snapshots, the vote) and everything sent
//! between nodes goes through [`encode`] and [`decode`]: bincode 2 through serde, behind a format
//! version byte. A node that finds a version it does not know refuses it with a clear error rather
//! than misreading it.
//!
//! This module must not know about RocksDB, HTTP or openraft: it only encodes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version byte written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes could not be turned back into a value (or a value into bytes).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty input: expected a format version byte")]
    Empty,
    #[error("unknown format version {found} (this build reads version {FORMAT_VERSION}); was the data written by a newer ztna?")]
    UnknownVersion { found: u8 },
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` with the format version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes a value written by [`encode`], refusing unknown versions and trailing garbage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, read) = bincode::serde::decode_from_slice(body, config())?;
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(value)
}

/// Decodes the leading part of a value written by [`encode`] as `T`, ignoring what follows:
/// for reading the fixed head of a record whose tail an older build wrote in another form.
pub fn decode_head<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    Ok(bincode::serde::decode_from_slice(body, config())?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let bytes = encode(&("a".to_string(), 7u64, Some(vec![1u8, 2]))).unwrap();
        let back: (String, u64, Option<Vec<u8>>) = decode(&bytes).unwrap();
        assert_eq!(back, ("a".to_string(), 7, Some(vec![1, 2])));

        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode::<(String, u64, Option<Vec<u8>>)>(&newer), Err(CodecError::UnknownVersion { .. })));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut trailing = encode(&5u64).unwrap();
        trailing.push(0);
        assert!(matches!(decode::<u64>(&trailing), Err(CodecError::Trailing(1))));
    }
}
