//! A node's enrolment key: the X25519 key pair machines prove possession of their own keys to
//! (the construction and why it is sound: the `ztna_proof` crate and ARCHITECTURE.md).
//!
//! Every node has its own key pair (`enrol.key` in its data directory, mode 0600, made at first
//! start); its public part is published at `GET /api/enrol/key`. This module keeps the key and
//! checks proofs against it; it must not decide anything about keys or machines.

pub use ztna_proof::{enrol_body, new_key_pair, prove, ProofError, Statement, MAX_AGE_MS};

/// A node's enrolment key pair.
#[derive(Clone)]
pub struct EnrolKey {
    secret: [u8; 32],
    public_hex: String,
}

impl std::fmt::Debug for EnrolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolKey").field("public", &self.public_hex).field("secret", &"<redacted>").finish()
    }
}

impl EnrolKey {
    /// Loads the key from `path`, or makes one there (mode 0600) the first time.
    pub fn load_or_make(path: &std::path::Path) -> std::io::Result<Self> {
        let invalid = || {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not an enrolment key", path.display()))
        };
        let make = || -> std::io::Result<String> {
            let (private_hex, _) = new_key_pair();
            crate::private_file::create_new(path, format!("{private_hex}\n").as_bytes())?;
            Ok(private_hex)
        };
        let private_hex = match std::fs::read_to_string(path) {
            // Empty: an older build's first start was cut short before the key reached the
            // disk, so no proof was ever made for it. (This build never leaves one.)
            Ok(text) if text.trim().is_empty() => {
                tracing::warn!("{} is empty (a first start cut short): making a new enrolment key", path.display());
                std::fs::remove_file(path)?;
                make()?
            }
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => make()?,
            Err(e) => return Err(e),
        };
        let mut secret = [0u8; 32];
        hex::decode_to_slice(&private_hex, &mut secret).map_err(|_| invalid())?;
        let public_hex = ztna_proof::public_of(&private_hex).ok_or_else(invalid)?;
        Ok(EnrolKey { secret, public_hex })
    }

    /// The public part, published at `GET /api/enrol/key`.
    pub fn public_hex(&self) -> &str {
        &self.public_hex
    }

    /// Checks `proof` (hex) for `statement`, which must name this node's key.
    pub fn verify(&self, statement: &Statement<'_>, proof: &str) -> Result<(), ProofError> {
        if !crate::secret::text_equal(statement.server_key, &self.public_hex) {
            return Err(ProofError::OtherNode);
        }
        ztna_proof::verify(&self.secret, statement, proof)
    }
}

/// The proofs this node accepted in the last [`MAX_AGE_MS`] (and a minute): a proof is made for
/// one node's key, so remembering them here binds each to a single use. A captured copy is
/// refused `proof_replayed` even when the first never reached the state machine (it was refused
/// before Raft, or lost on the way), where the request id's memory would not catch it. Kept in
/// memory, in one bucket per minute; past [`SEEN_PROOFS_MAX`] the oldest bucket goes early.
#[derive(Default)]
pub struct SeenProofs {
    buckets: std::sync::Mutex<std::collections::VecDeque<(u64, std::collections::HashSet<[u8; 16]>)>>,
}

/// Most proofs remembered at once (16 bytes each, some 40 MB at most with the table's own).
pub const SEEN_PROOFS_MAX: usize = 1_000_000;

impl SeenProofs {
    /// Remembers `proof` (hex) at `now_ms` (this node's monotonic minutes will do); answers
    /// false if it was seen already.
    pub fn first_use(&self, proof: &str, now_ms: u64) -> bool {
        use sha2::Digest;
        // The same proof in other letters' case is the same proof (hex decodes either way).
        let digest = sha2::Sha256::digest(proof.to_ascii_lowercase().as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        let minute = now_ms / 60_000;
        let keep = MAX_AGE_MS / 60_000 + 2;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        while buckets.front().is_some_and(|(m, _)| minute.saturating_sub(*m) >= keep) {
            buckets.pop_front();
        }
        if buckets.iter().any(|(_, seen)| seen.contains(&key)) {
            return false;
        }
        let total: usize = buckets.iter().map(|(_, seen)| seen.len()).sum();
        if total >= SEEN_PROOFS_MAX && buckets.len() > 1 {
            buckets.pop_front();
        }
        match buckets.back_mut() {
            Some((m, seen)) if *m == minute => {
                seen.insert(key);
            }
            _ => buckets.push_back((minute, std::collections::HashSet::from([key]))),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_proof_is_accepted_once_within_its_window_and_forgotten_after() {
        let seen = super::SeenProofs::default();
        assert!(seen.first_use("aa", 0));
        assert!(!seen.first_use("aa", 1_000), "the same proof again");
        assert!(!seen.first_use("AA", 1_000), "in capitals, still the same proof");
        assert!(seen.first_use("bb", 1_000));
        assert!(!seen.first_use("aa", 5 * 60_000), "still within its window");
        assert!(seen.first_use("aa", 8 * 60_000), "forgotten once it could no longer be fresh");
    }

    use super::*;

    #[test]
    fn the_key_is_kept_and_a_proof_for_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let node = EnrolKey::load_or_make(&dir.path().join("enrol.key")).unwrap();
        let again = EnrolKey::load_or_make(&dir.path().join("enrol.key")).unwrap();
        assert_eq!(node.public_hex(), again.public_hex(), "the key is kept");
        let other_node = EnrolKey::load_or_make(&dir.path().join("other.key")).unwrap();
        let (private, public) = new_key_pair();
        let statement = Statement {
            server_key: node.public_hex(),
            node_public_key: &public,
            auth_key_id: "ak_x",
            hostname: "h",
            request_id: "r1",
            issued_at: 1,
        };
        let proof = prove(&private, &statement).unwrap();
        assert_eq!(node.verify(&statement, &proof), Ok(()));
        assert_eq!(other_node.verify(&statement, &proof), Err(ProofError::OtherNode));
    }
}
