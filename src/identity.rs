//! A data directory's identity: which cluster and node id it belongs to, and its incarnation
//! (a random id made when the directory was first used).
//!
//! `data_dir/identity.json` is written once, before anything else goes into the directory.
//! At every start it is checked against the cluster file and `--id`, so a data directory copied
//! to the wrong host, or started under the wrong id or cluster, stops the node with one clear
//! message instead of joining with someone else's log. The incarnation lets the cluster tell a
//! node that kept its data from one that lost it (see `sm::nodes` and `membership`).
//!
//! This module must not start anything; it reads and writes one small file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::raft_types::NodeId;

const FILE: &str = "identity.json";
/// The identity file's format; a newer one is refused.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub cluster_name: String,
    pub node_id: NodeId,
    pub incarnation: String,
}

/// Why a data directory cannot be used by this node.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot use {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a valid identity file: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path} belongs to node {found}, not node {expected}: start it with --id {found}, or give node {expected} its own data directory"
    )]
    OtherNode { path: String, found: NodeId, expected: NodeId },
    #[error(
        "{path} belongs to cluster {found:?}, not {expected:?} (the cluster file's cluster_name): this data directory is another cluster's"
    )]
    OtherCluster { path: String, found: String, expected: String },
    #[error("{path} has identity format {0}, newer than this build's {FORMAT}; was it written by a newer ztna?", .found)]
    NewerFormat { path: String, found: u32 },
}

/// What a node finds in its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Nothing yet: a node that has never run here (or lost its data).
    Fresh,
    /// The directory's identity, checked against this node's configuration.
    Existing(Identity),
}

fn file(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads and checks `data_dir`'s identity. A directory from before identity files (it has a
/// database but no identity) is given one now.
pub fn inspect(data_dir: &Path, cluster_name: &str, node_id: NodeId) -> Result<DataDir, IdentityError> {
    let path = file(data_dir);
    let shown = path.display().to_string();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let identity: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| IdentityError::Invalid { path: shown.clone(), message: e.to_string() })?;
            if identity.format > FORMAT {
                return Err(IdentityError::NewerFormat { path: shown, found: identity.format });
            }
            if identity.node_id != node_id {
                return Err(IdentityError::OtherNode { path: shown, found: identity.node_id, expected: node_id });
            }
            if identity.cluster_name != cluster_name {
                return Err(IdentityError::OtherCluster {
                    path: shown,
                    found: identity.cluster_name,
                    expected: cluster_name.to_string(),
                });
            }
            Ok(DataDir::Existing(identity))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if data_dir.join("db").exists() {
                create(data_dir, cluster_name, node_id).map(DataDir::Existing)
            } else {
                Ok(DataDir::Fresh)
            }
        }
        Err(source) => Err(IdentityError::Io { path: shown, source }),
    }
}

/// Makes `data_dir` this node's, with a new incarnation.
pub fn create(data_dir: &Path, cluster_name: &str, node_id: NodeId) -> Result<Identity, IdentityError> {
    let io = |source| IdentityError::Io { path: data_dir.display().to_string(), source };
    crate::private_file::create_dir_all_synced(data_dir).map_err(io)?;
    let identity = Identity {
        format: FORMAT,
        cluster_name: cluster_name.to_string(),
        node_id,
        incarnation: crate::secret::random_base62(16),
    };
    let bytes = serde_json::to_vec_pretty(&identity)
        .map_err(|e| IdentityError::Invalid { path: FILE.into(), message: e.to_string() })?;
    crate::private_file::write(&file(data_dir), &bytes).map_err(io)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_refused_by_another_node_or_cluster() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inspect(dir.path(), "prod", 2).unwrap(), DataDir::Fresh);
        let made = create(dir.path(), "prod", 2).unwrap();
        assert_eq!(inspect(dir.path(), "prod", 2).unwrap(), DataDir::Existing(made));
        let other_node = inspect(dir.path(), "prod", 3).unwrap_err().to_string();
        assert!(other_node.contains("belongs to node 2, not node 3"), "{other_node}");
        let other_cluster = inspect(dir.path(), "staging", 2).unwrap_err().to_string();
        assert!(other_cluster.contains("belongs to cluster \"prod\""), "{other_cluster}");

        let legacy = tempfile::tempdir().unwrap();
        std::fs::create_dir(legacy.path().join("db")).unwrap();
        assert!(matches!(inspect(legacy.path(), "prod", 1).unwrap(), DataDir::Existing(_)));
    }
}
