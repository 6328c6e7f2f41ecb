//! The registry of cluster node ids: which ids were ever admitted, which data directory
//! (incarnation) each belongs to, and which were removed.
//!
//! Raft's membership says who votes now; this registry remembers the past, so that a node id is
//! never reused and a node that lost its data cannot come back under its old id (it would have
//! forgotten entries it acknowledged and votes it cast). A node registers the incarnation written
//! in its data directory's identity file once it is a member; an id registered by another
//! incarnation, or removed, is refused for good.
//!
//! Pure like the rest of `sm`: membership itself is changed by openraft on the leader
//! (`crate::membership`); this module only keeps the replicated record of it.

use serde::{Deserialize, Serialize};

use super::model::*;
use super::{KeyStore, Row};
use crate::raft_types::NodeId;

/// What the cluster remembers of one node id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    /// The data directory that holds this id (`None`: admitted by `add-node`, not yet started).
    pub incarnation: Option<String>,
    pub admitted_at: Millis,
    pub removed_at: Option<Millis>,
}

/// The registry's key for a node id: fixed width, so rows sort by id.
pub(crate) fn node_key(node_id: NodeId) -> String {
    format!("{node_id:020}")
}

impl KeyStore {
    /// What the registry holds about `node_id`.
    pub fn node_record(&self, node_id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&node_key(node_id))
    }

    /// Every id the registry knows, in id order.
    pub fn node_records(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    fn put_node(&mut self, record: NodeRecord) {
        let key = node_key(record.node_id);
        self.dirty.insert(Row::Node(key.clone()));
        self.nodes.insert(key, record);
    }

    /// `add-node`: reserves an id that was never used. Re-admitting an id admitted before but
    /// never started is allowed (a retried `add-node`).
    pub(crate) fn admit_node(&mut self, now: Millis, actor: &Actor, node_id: NodeId) -> Outcome {
        self.authorize_operator(actor)?;
        match self.node_record(node_id) {
            None => {
                let record = NodeRecord { node_id, incarnation: None, admitted_at: now, removed_at: None };
                self.put_node(record.clone());
                Ok(OpOk::Node(record))
            }
            Some(record) if record.removed_at.is_none() && record.incarnation.is_none() => {
                Ok(OpOk::Node(record.clone()))
            }
            Some(_) => Err(OpError::NodeIdUsed(node_id)),
        }
    }

    /// A member records the incarnation of its data directory, once. The founding members
    /// register without being admitted.
    pub(crate) fn register_node(&mut self, now: Millis, node_id: NodeId, incarnation: &str) -> Outcome {
        let record = match self.node_record(node_id) {
            Some(record) if record.removed_at.is_some() => return Err(OpError::NodeRemoved(node_id)),
            Some(record) => match &record.incarnation {
                Some(known) if known == incarnation => return Ok(OpOk::Node(record.clone())),
                Some(_) => return Err(OpError::NodeIdUsed(node_id)),
                None => NodeRecord { incarnation: Some(incarnation.to_string()), ..record.clone() },
            },
            None => {
                NodeRecord { node_id, incarnation: Some(incarnation.to_string()), admitted_at: now, removed_at: None }
            }
        };
        self.put_node(record.clone());
        Ok(OpOk::Node(record))
    }

    /// `remove-node`: the id is retired for good, whether or not it ever started. From rules 4
    /// the cluster itself retires (`Actor::Anonymous`) a node out of the configuration whose
    /// removal was left half done; no member may forward that (`network::server`).
    pub(crate) fn retire_node(&mut self, now: Millis, actor: &Actor, node_id: NodeId) -> Outcome {
        if !(self.meta.rules >= 4 && *actor == Actor::Anonymous) {
            self.authorize_operator(actor)?;
        }
        let record = match self.node_record(node_id) {
            Some(record) => NodeRecord { removed_at: Some(record.removed_at.unwrap_or(now)), ..record.clone() },
            None => NodeRecord { node_id, incarnation: None, admitted_at: now, removed_at: Some(now) },
        };
        self.put_node(record.clone());
        Ok(OpOk::Node(record))
    }
}
