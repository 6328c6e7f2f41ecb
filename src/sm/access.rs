//! Who may do what: credentials (API keys, node keys, an enrolment's auth key), scopes (the
//! operator; an org), grants (permissions and tags) — for the rules of every area.
//!
//! A tag-scoped API key (`Grants::tags`) acts only on what carries tags, all within its scope:
//! from rules 4, an untagged key or machine is outside every tag scope (before, an untagged
//! target passed vacuously), and listings show such a key only what it may act on.
//!
//! Pure like the rest of `sm`.

use super::model::*;
use super::KeyStore;
use crate::secret::hashes_equal;

impl KeyStore {
    /// Whether `cmd`'s caller is who it says: a current API key, a current node key, or for an
    /// enrolment an existing auth key with that secret. Checked before proposing (a refused
    /// credential costs no log entry) and again when applying. What the caller may do is
    /// decided by the op itself.
    pub fn authenticates(&self, cmd: &Command) -> Result<(), OpError> {
        match (&cmd.actor, &cmd.op) {
            (Actor::ApiKey { .. }, _) => self.authenticate(&cmd.actor).map(|_| ()),
            (Actor::NodeKey { .. }, _) => self.authenticate_machine(&cmd.actor).map(|_| ()),
            (Actor::Anonymous, Op::Enrol { auth_key_id, auth_key_hash, .. })
            | (Actor::Anonymous, Op::EnrolProven { auth_key_id, auth_key_hash, .. })
            | (Actor::Anonymous, Op::EnrolChecked { auth_key_id, auth_key_hash, .. }) => {
                let key = self.auth_key_record(auth_key_id).ok_or(OpError::InvalidAuthKey)?;
                if hashes_equal(&key.secret_hash, auth_key_hash) {
                    Ok(())
                } else {
                    Err(OpError::InvalidAuthKey)
                }
            }
            (Actor::Anonymous, _) => Ok(()),
        }
    }

    /// Checks an API key and returns its scope. Unknown, revoked and wrong secrets look alike.
    pub(crate) fn authenticate(&self, actor: &Actor) -> Result<&ApiKeyScope, OpError> {
        Ok(&self.api_key_of(actor)?.scope)
    }

    /// The record of the current API key `actor` presents.
    fn api_key_of(&self, actor: &Actor) -> Result<&ApiKeyRecord, OpError> {
        let Actor::ApiKey { api_key_id, secret_hash } = actor else {
            return Err(OpError::Unauthorized);
        };
        let record = self.api_keys.get(api_key_id).ok_or(OpError::Unauthorized)?;
        let expired = record.expires_at.is_some_and(|at| self.meta.clock >= at);
        if !hashes_equal(&record.secret_hash, secret_hash) || record.revoked_at.is_some() || expired {
            return Err(OpError::Unauthorized);
        }
        Ok(record)
    }

    pub(crate) fn authorize_operator(&self, actor: &Actor) -> Result<(), OpError> {
        match self.authenticate(actor)? {
            ApiKeyScope::Operator => Ok(()),
            ApiKeyScope::Org(_) => Err(OpError::Forbidden("this action needs the operator key".into())),
        }
    }

    pub(crate) fn authorize_org(&self, actor: &Actor, org_id: &str) -> Result<(), OpError> {
        match self.authenticate(actor)? {
            ApiKeyScope::Org(own) if own == org_id => Ok(()),
            ApiKeyScope::Org(_) => Err(OpError::Forbidden(format!("this API key does not belong to org {org_id:?}"))),
            ApiKeyScope::Operator => Err(OpError::Forbidden(
                "the operator key administers orgs and API keys; use an org's API key for its auth keys".into(),
            )),
        }
    }

    /// Like [`KeyStore::authorize_org`], and the key's grants must allow `needed`; answers them.
    pub(crate) fn authorize_org_for(
        &self,
        actor: &Actor,
        org_id: &str,
        needed: Permission,
    ) -> Result<&Grants, OpError> {
        self.authorize_org(actor, org_id)?;
        let record = self.api_key_of(actor)?;
        if !record.grants.allows(needed) {
            let granted: Vec<&str> = record.grants.permissions.iter().flatten().map(|p| p.name()).collect();
            return Err(OpError::ScopeDenied(format!(
                "this API key may not do this: it needs the scope {:?}, and has {}",
                needed.name(),
                if granted.is_empty() { "none".to_string() } else { granted.join(", ") }
            )));
        }
        Ok(&record.grants)
    }

    /// Whether `grants` reach something carrying `tags` (a key's, or a machine's granted tags):
    /// a key without a tag scope reaches everything of its org; a tag-scoped one only what has
    /// tags, all within its scope (from rules 4; before, an untagged target passed).
    pub(crate) fn reaches(&self, grants: &Grants, tags: &[String]) -> bool {
        match &grants.tags {
            None => true,
            Some(scope) => (!tags.is_empty() || self.meta.rules < 4) && tags.iter().all(|t| scope.contains(t)),
        }
    }

    /// [`KeyStore::reaches`], refused with a message naming `what` (e.g. "machine m_…").
    pub(crate) fn check_reaches(&self, grants: &Grants, tags: &[String], what: &str) -> Result<(), OpError> {
        if self.reaches(grants, tags) {
            return Ok(());
        }
        let scope = grants.tags.as_deref().unwrap_or_default().join(", ");
        Err(OpError::ScopeDenied(if tags.is_empty() {
            format!("this API key acts only on what is tagged within {scope}; {what} has no tags")
        } else {
            let outside: Vec<&str> =
                tags.iter().filter(|t| !grants.tags.iter().flatten().any(|s| s == *t)).map(String::as_str).collect();
            format!("this API key acts only on what is tagged within {scope}; {what} carries {}", outside.join(", "))
        }))
    }
}

/// With tag-limited grants, every tag of a new key must be granted, and there must be some.
pub(crate) fn check_tags_granted(grants: &Grants, tags: &[String]) -> Result<(), OpError> {
    let Some(granted) = &grants.tags else { return Ok(()) };
    if tags.is_empty() {
        return Err(OpError::ScopeDenied(format!(
            "this API key may only create keys with tags from {}: give tags",
            granted.join(", ")
        )));
    }
    let missing: Vec<&str> = tags.iter().filter(|t| !granted.contains(t)).map(String::as_str).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OpError::ScopeDenied(format!(
            "this API key may not put {} on a key (it may use {})",
            missing.join(", "),
            granted.join(", ")
        )))
    }
}
