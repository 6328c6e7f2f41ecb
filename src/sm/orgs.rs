//! The rules about orgs and API keys: the cluster's initialisation (first org, its admin key and
//! the operator key), orgs, API keys with lifetimes and grants, the operator key's rotation, and
//! each org's limits. Everything here is the operator's but the initialisation.
//!
//! Pure like the rest of `sm`.

use super::model::*;
use super::{KeyStore, Row, RULES};

impl KeyStore {
    /// Whether `actor` may make operator op `op` now (the org it names exists); changes nothing.
    pub(super) fn admit_operator_op(&self, actor: &Actor, org_id: Option<&str>) -> Result<(), OpError> {
        self.authorize_operator(actor)?;
        match org_id {
            Some(org_id) if !self.orgs.contains_key(org_id) => Err(OpError::NotFound(format!("no org {org_id:?}"))),
            _ => Ok(()),
        }
    }

    pub(super) fn init_cluster(
        &mut self,
        now: Millis,
        org_id: &str,
        org_name: &str,
        operator_key: &NewCredential,
        admin_key: &NewCredential,
    ) -> Outcome {
        if self.meta.initialized {
            return Err(OpError::AlreadyInitialized);
        }
        let org = Org { org_id: org_id.to_string(), name: org_name.to_string(), created_at: now };
        self.put_org(org.clone());
        self.new_api_key(now, ApiKeyScope::Operator, operator_key, "operator")?;
        self.new_api_key(now, ApiKeyScope::Org(org_id.to_string()), admin_key, "admin")?;
        self.meta.initialized = true;
        // A new cluster starts on this build's rules (every replica applies this same entry).
        self.meta.rules = self.meta.rules.max(RULES);
        self.dirty.insert(Row::Meta);
        Ok(OpOk::Initialized { org, operator_key_id: operator_key.id.clone(), admin_key_id: admin_key.id.clone() })
    }

    pub(super) fn create_org(&mut self, now: Millis, org_id: &str, name: &str) -> Outcome {
        if self.orgs.contains_key(org_id) {
            return Err(OpError::IdCollision);
        }
        let org = Org { org_id: org_id.to_string(), name: name.to_string(), created_at: now };
        self.put_org(org.clone());
        Ok(OpOk::Org(org))
    }

    fn put_org(&mut self, org: Org) {
        self.dirty.insert(Row::Org(org.org_id.clone()));
        self.orgs.insert(org.org_id.clone(), org);
    }

    /// An org's API key with a lifetime (`None`: none) and grants.
    pub(super) fn create_org_api_key(
        &mut self,
        now: Millis,
        org_id: &str,
        key: &NewCredential,
        description: &str,
        expires_in_secs: Option<u64>,
        grants: &Grants,
    ) -> Outcome {
        let scope = ApiKeyScope::Org(org_id.to_string());
        let mut record = self.new_api_key(now, scope, key, description)?;
        record.expires_at = expires_in_secs.map(|secs| now.saturating_add(secs.saturating_mul(1000)));
        record.grants = grants.clone();
        self.api_keys.insert(record.api_key_id.clone(), record.clone());
        Ok(OpOk::ApiKey(record))
    }

    pub(super) fn new_api_key(
        &mut self,
        now: Millis,
        scope: ApiKeyScope,
        key: &NewCredential,
        description: &str,
    ) -> Result<ApiKeyRecord, OpError> {
        if self.api_keys.contains_key(&key.id) {
            return Err(OpError::IdCollision);
        }
        let record = ApiKeyRecord {
            api_key_id: key.id.clone(),
            scope,
            description: description.to_string(),
            secret_hash: key.hash,
            created_at: now,
            revoked_at: None,
            expires_at: None,
            last_used_at: None,
            grants: Grants::all(),
        };
        self.api_keys.insert(key.id.clone(), record.clone());
        self.dirty.insert(Row::ApiKey(key.id.clone()));
        Ok(record)
    }

    /// Whether the operator may revoke API key `api_key_id` (an org's; the operator key is
    /// replaced by rotation instead).
    pub(super) fn admit_revoke_api_key(&self, actor: &Actor, api_key_id: &str) -> Result<(), OpError> {
        self.authorize_operator(actor)?;
        let record =
            self.api_keys.get(api_key_id).ok_or_else(|| OpError::NotFound(format!("no API key {api_key_id:?}")))?;
        if record.scope == ApiKeyScope::Operator {
            return Err(OpError::Forbidden("the operator key cannot be revoked through the API".into()));
        }
        Ok(())
    }

    pub(super) fn revoke_api_key(&mut self, now: Millis, api_key_id: &str) -> Outcome {
        let record =
            self.api_keys.get_mut(api_key_id).ok_or_else(|| OpError::NotFound(format!("no API key {api_key_id:?}")))?;
        record.revoked_at.get_or_insert(now);
        let record = record.clone();
        self.dirty.insert(Row::ApiKey(api_key_id.to_string()));
        Ok(OpOk::ApiKey(record))
    }

    /// The operator key is replaced by `key`; every earlier operator key is revoked.
    pub(super) fn rotate_operator_key(&mut self, now: Millis, key: &NewCredential) -> Outcome {
        if self.api_keys.contains_key(&key.id) {
            return Err(OpError::IdCollision);
        }
        let old: Vec<String> = self
            .api_keys
            .values()
            .filter(|k| k.scope == ApiKeyScope::Operator && k.revoked_at.is_none())
            .map(|k| k.api_key_id.clone())
            .collect();
        for id in old {
            if let Some(record) = self.api_keys.get_mut(&id) {
                record.revoked_at = Some(now);
                self.dirty.insert(Row::ApiKey(id));
            }
        }
        Ok(OpOk::ApiKey(self.new_api_key(now, ApiKeyScope::Operator, key, "operator")?))
    }

    pub(super) fn set_org_limits(&mut self, org_id: &str, limits: Option<OrgLimits>) -> Outcome {
        self.org_quotas.entry(org_id.to_string()).or_default().limits = limits;
        self.dirty.insert(Row::OrgQuota(org_id.to_string()));
        Ok(OpOk::OrgLimits { org_id: org_id.to_string(), limits: limits.unwrap_or_default() })
    }

    /// Stamps the API key `actor` presents as used at `now` (its writes; from rules 4 only
    /// those that succeeded).
    pub(super) fn api_key_used(&mut self, now: Millis, actor: &Actor) {
        if let Actor::ApiKey { api_key_id, .. } = actor {
            if let Some(record) = self.api_keys.get_mut(api_key_id) {
                record.last_used_at = Some(now);
                self.dirty.insert(Row::ApiKey(api_key_id.clone()));
            }
        }
    }
}
