//! Creates (and the cluster's initialisation) whose answer did not reach the client — the node
//! answered 503, the outcome unknown —
//! held in this node's memory so that the client's retry under the same request id sends the
//! *identical* command again (same ids, same secret hash). The state machine answers an
//! identical command with its first outcome, so the retry is answered with the record and the
//! secret the first try made, instead of 409 `already_created`.
//!
//! A held secret lives in memory only, for at most the state machine's request memory, and is
//! handed back only to a retry that presents the same API key, the same request id and the same
//! request (ids aside), and only once the cluster answered that command with the record the
//! secret belongs to. It is never written, logged or sent to another node. A node that restarts
//! forgets what it held: a retry there answers `already_created`, naming the key to revoke.
//!
//! This module must not decide anything about keys; it only remembers what a handler made.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secret::Secret;
use crate::sm::model::{Actor, Op};

/// How long a create is held: the state machine remembers a request id this long.
const HOLD_FOR: Duration = Duration::from_millis(crate::sm::REQUEST_MEMORY_MS);
/// Most creates held at once; the oldest goes first.
const MAX_HELD: usize = 1024;

struct Held {
    at: Instant,
    actor: Actor,
    request_id: String,
    op: Op,
    secrets: Vec<Secret>,
}

/// What a create made that only its answer carries: one secret (a key), or two (the cluster's
/// initialisation: the operator key and the first org's admin key).
pub trait Secrets: Sized {
    fn into_held(self) -> Vec<Secret>;
    fn from_held(held: Vec<Secret>) -> Option<Self>;
}

impl Secrets for Secret {
    fn into_held(self) -> Vec<Secret> {
        vec![self]
    }
    fn from_held(mut held: Vec<Secret>) -> Option<Self> {
        (held.len() == 1).then(|| held.pop()).flatten()
    }
}

impl Secrets for (Secret, Secret) {
    fn into_held(self) -> Vec<Secret> {
        vec![self.0, self.1]
    }
    fn from_held(held: Vec<Secret>) -> Option<Self> {
        let [a, b]: [Secret; 2] = held.try_into().ok()?;
        Some((a, b))
    }
}

#[derive(Default)]
pub struct HeldCreates(Mutex<Vec<Held>>);

impl HeldCreates {
    /// Holds a create whose outcome the client did not learn.
    pub fn hold(&self, actor: Actor, request_id: String, op: Op, secrets: impl Secrets) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|h| h.at.elapsed() < HOLD_FOR && !(h.actor == actor && h.request_id == request_id));
        if held.len() >= MAX_HELD {
            held.remove(0);
        }
        held.push(Held { at: Instant::now(), actor, request_id, op, secrets: secrets.into_held() });
    }

    /// The held command and secrets for this caller's `request_id`, if `fresh` (the same request
    /// made anew, with new ids) asks for the same thing; taken out either way.
    pub fn take<S: Secrets>(&self, actor: &Actor, request_id: &str, fresh: &Op) -> Option<(Op, S)> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = held.iter().position(|h| h.actor == *actor && h.request_id == request_id)?;
        let found = held.remove(at);
        if found.at.elapsed() >= HOLD_FOR || !same_request(&found.op, fresh) {
            return None;
        }
        Some((found.op, S::from_held(found.secrets)?))
    }
}

/// Whether `fresh` is `held` with other generated ids (and secret hashes).
fn same_request(held: &Op, fresh: &Op) -> bool {
    let mut fresh = fresh.clone();
    match (&mut fresh, held) {
        (Op::CreateAuthKey { key, .. }, Op::CreateAuthKey { key: held_key, .. })
        | (Op::CreateAuthKeyWith { key, .. }, Op::CreateAuthKeyWith { key: held_key, .. })
        | (Op::CreateApiKey { key, .. }, Op::CreateApiKey { key: held_key, .. })
        | (Op::CreateApiKeyWith { key, .. }, Op::CreateApiKeyWith { key: held_key, .. }) => *key = held_key.clone(),
        (
            Op::InitCluster { org_id, operator_key, admin_key, .. },
            Op::InitCluster { org_id: held_org, operator_key: held_operator, admin_key: held_admin, .. },
        ) => {
            *org_id = held_org.clone();
            *operator_key = held_operator.clone();
            *admin_key = held_admin.clone();
        }
        _ => return false,
    }
    fresh == *held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{new_credential, random_base62, CredentialKind, ID_LEN};
    use crate::sm::model::{AuthKeySpec, NewCredential, MIN_EXPIRY_SECS};

    fn create(description: &str) -> (Op, Secret) {
        let secret = new_credential(CredentialKind::AuthKey, random_base62(ID_LEN));
        let key = NewCredential { id: format!("ak_{}", secret.id), hash: secret.hash };
        let spec = AuthKeySpec::new(false, false, 3600, vec![], description.into(), None, MIN_EXPIRY_SECS).unwrap();
        (Op::CreateAuthKey { org_id: "org_a".into(), key, spec }, secret)
    }

    fn caller(id: &str) -> Actor {
        Actor::ApiKey { api_key_id: id.into(), secret_hash: crate::secret::hash(id) }
    }

    #[test]
    fn a_retry_of_the_same_request_by_the_same_caller_gets_the_held_command_and_secret() {
        let held = HeldCreates::default();
        let (op, secret) = create("fleet");
        let text = secret.text.clone();
        held.hold(caller("api_a"), "r1".into(), op.clone(), secret);
        // Another caller, or another request id, gets nothing.
        assert!(held.take::<Secret>(&caller("api_b"), "r1", &create("fleet").0).is_none());
        assert!(held.take::<Secret>(&caller("api_a"), "r2", &create("fleet").0).is_none());
        let (again, again_secret): (Op, Secret) = held.take(&caller("api_a"), "r1", &create("fleet").0).expect("held");
        assert_eq!((again, again_secret.text), (op, text));
        // Handed back once.
        assert!(held.take::<Secret>(&caller("api_a"), "r1", &create("fleet").0).is_none());
    }

    #[test]
    fn a_different_request_under_the_same_id_is_not_answered_with_the_held_secret() {
        let held = HeldCreates::default();
        let (op, secret) = create("fleet");
        held.hold(caller("api_a"), "r1".into(), op, secret);
        assert!(held.take::<Secret>(&caller("api_a"), "r1", &create("another").0).is_none());
    }
}
