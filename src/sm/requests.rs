//! The memory of request ids, which makes a retried write apply once: each command's outcome is
//! remembered under (its caller's scope, its request id) for [`REQUEST_MEMORY_MS`] of cluster
//! time, with a digest of what it asked, and forgotten in bounded steps.
//!
//! Pure like the rest of `sm`; it decides nothing about keys, only whether a command was seen.

use sha2::{Digest, Sha256};

use super::model::*;
use super::{rows, KeyStore, RememberedRequest, MAX_FORGET_PER_ENTRY, REQUEST_MEMORY_MS, SCOPE_CLUSTER};

impl KeyStore {
    /// The outcome remembered for `cmd`'s request id, if any (under its caller's scope, or the
    /// unscoped row of older rules when it remembers this same command).
    pub(super) fn remembered(&self, cmd: &Command) -> Option<RememberedRequest> {
        let row = rows::request_row(request_scope(cmd), &cmd.request_id);
        self.rows.get::<RememberedRequest>(&row).or_else(|| {
            let digest = command_digest(cmd);
            self.rows
                .get::<RememberedRequest>(&rows::legacy_request_row(&cmd.request_id))
                .filter(|seen| seen.digest == digest)
        })
    }

    /// Remembers `outcome` under the request row `row` until [`REQUEST_MEMORY_MS`] has passed.
    pub(super) fn remember(&mut self, now: Millis, row: Vec<u8>, digest: [u8; 32], outcome: Outcome) {
        self.rows.put(rows::request_expiry_row(now, &row), &());
        self.rows.put(row, &RememberedRequest { at: now, digest, outcome });
    }

    /// Forgets requests older than [`REQUEST_MEMORY_MS`], at most [`MAX_FORGET_PER_ENTRY`] per
    /// entry (rules 2 on).
    pub(super) fn forget_old_requests(&mut self, now: Millis) {
        if self.oldest_request_at.is_some_and(|oldest| now.saturating_sub(oldest) < REQUEST_MEMORY_MS) {
            return;
        }
        let prefix = rows::request_expiry_prefix();
        let forget_at_most = if self.meta.rules >= 2 { MAX_FORGET_PER_ENTRY } else { usize::MAX };
        let mut expired = Vec::new();
        let mut oldest_kept = None;
        self.rows.scan(&self.expiry_seek, |key, _| {
            if !key.starts_with(&prefix) {
                return false;
            }
            match rows::parse_request_expiry(key) {
                // Bounded work per entry: the rest is forgotten by the next entries.
                Some((at, _)) if expired.len() >= forget_at_most => {
                    oldest_kept = Some(at);
                    false
                }
                Some((at, row)) if now.saturating_sub(at) >= REQUEST_MEMORY_MS => {
                    expired.push((key.to_vec(), row));
                    true
                }
                Some((at, _)) => {
                    oldest_kept = Some(at);
                    false
                }
                None => false,
            }
        });
        // With nothing left, the next request remembered is the oldest (its time is `now` or
        // later: the clock never goes back).
        self.oldest_request_at = Some(oldest_kept.unwrap_or(now));
        for (expiry, row) in expired {
            self.rows.delete(row);
            self.expiry_seek = expiry.clone();
            self.rows.delete(expiry);
        }
    }
}

/// Whose request ids a command's id belongs to: the caller it names (API key, node key, or for
/// an enrolment the auth key), or the cluster itself. Ids are remembered per scope, so no
/// caller can occupy or probe another's.
pub(super) fn request_scope(cmd: &Command) -> &str {
    match (&cmd.actor, &cmd.op) {
        (Actor::ApiKey { api_key_id, .. }, _) => api_key_id,
        (Actor::NodeKey { node_key_id, .. }, _) => node_key_id,
        (
            Actor::Anonymous,
            Op::Enrol { auth_key_id, .. } | Op::EnrolProven { auth_key_id, .. } | Op::EnrolChecked { auth_key_id, .. },
        ) => auth_key_id,
        (Actor::Anonymous, _) => SCOPE_CLUSTER,
    }
}

/// A digest of what a command asks for (everything but its request id).
pub(super) fn command_digest(cmd: &Command) -> [u8; 32] {
    digest_of(&cmd.actor, &cmd.op)
}

fn digest_of(actor: &Actor, op: &Op) -> [u8; 32] {
    let mut hasher = Sha256::new();
    // Encoding an in-memory command cannot fail; an empty encoding would only weaken the
    // reused-id check, never apply a command twice.
    hasher.update(crate::codec::encode(&(actor, op)).unwrap_or_default());
    hasher.finalize().into()
}

/// Whether `cmd` is the create `seen` remembers, sent again by its client: the same command
/// but for the ids (and secret hash) the receiving node made for the new record. Checked by
/// putting the remembered record's ids into `cmd` and comparing digests, so every other field
/// must be equal. Nothing is written either way; the answer is the first record (without the
/// secret, which only the first answer carried).
pub(super) fn is_retried_create(cmd: &Command, seen: &RememberedRequest) -> bool {
    let mut op = cmd.op.clone();
    match (&mut op, &seen.outcome) {
        (Op::CreateAuthKey { key, .. } | Op::CreateAuthKeyWith { key, .. }, Ok(OpOk::AuthKey(record))) => {
            *key = NewCredential { id: record.key_id.clone(), hash: record.secret_hash };
        }
        (Op::CreateApiKey { key, .. } | Op::CreateApiKeyWith { key, .. }, Ok(OpOk::ApiKey(record))) => {
            *key = NewCredential { id: record.api_key_id.clone(), hash: record.secret_hash };
        }
        (Op::CreateOrg { org_id, .. }, Ok(OpOk::Org(org))) => *org_id = org.org_id.clone(),
        _ => return false,
    }
    digest_of(&cmd.actor, &op) == seen.digest
}
