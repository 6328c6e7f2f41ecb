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
        let private_hex = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (private_hex, _) = new_key_pair();
                crate::private_file::create_new(path, format!("{private_hex}\n").as_bytes())?;
                private_hex
            }
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

#[cfg(test)]
mod tests {
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
