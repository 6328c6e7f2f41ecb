//! Cluster membership: adding and removing nodes one change at a time, and keeping node ids
//! honest (never reused; a node that lost its data cannot come back under its old id).
//!
//! - [`Node::change_membership`] runs on the leader (any node forwards to it): `add` admits the
//!   id in the registry (`sm::nodes`), adds the node as a learner, waits until it has caught up
//!   (from a snapshot if the log was purged), then makes it a voter; `remove` takes it out of
//!   the configuration and retires its id. A second change while one is in flight is refused.
//! - [`ask_peers`]: a node starting with an empty data directory first asks the other nodes of
//!   the cluster file what they know of its id, and stops with a clear message if the id is
//!   registered to another data directory or was removed; it also tells the lowest-id node
//!   whether a cluster already exists, so a wiped founder never bootstraps a second one.
//! - [`keep_registered`]: a member registers its data directory's incarnation once, and stops
//!   the node if the cluster says its id was removed or belongs to another directory.
//! - [`vote_allowed`]: votes are only granted to members of the current configuration, so a
//!   removed node that keeps campaigning cannot disturb the cluster (openraft 0.9 has no
//!   pre-vote).
//!
//! This module must not decide anything about keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::network::PeerClient;
use crate::node::{MemberInfo, Node, Route, StartError};
use crate::raft_types::{NodeId, NodeInfo};
use crate::sm::model::{Actor, Command, Op, OpError};
use crate::sm::nodes::NodeRecord;

pub const PATH_WHOIS: &str = "/internal/whois";
pub const PATH_MEMBERSHIP: &str = "/internal/membership";

/// How long `add` waits for a new node to catch up before giving up (it stays a learner).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// "What do you know of node `node_id`?"
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoisRequest {
    pub node_id: NodeId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoisAnswer {
    pub cluster_name: String,
    pub answered_by: NodeId,
    /// The answering node belongs to an initialised cluster.
    pub initialized: bool,
    pub record: Option<NodeRecord>,
}

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Add { node_id: NodeId, raft_addr: String, api_addr: String },
    Remove { node_id: NodeId },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add { node_id, .. } => write!(f, "adding node {node_id}"),
            Change::Remove { node_id } => write!(f, "removing node {node_id}"),
        }
    }
}

/// Why a membership change was not made (or not finished).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("another membership change is in progress ({0}); changes go one at a time, retry when it is done")]
    InProgress(String),
    #[error(transparent)]
    Refused(OpError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotMember(String),
    #[error("{0}")]
    CatchUpTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("this node is not the leader")]
    NotLeader(Option<NodeId>),
}

/// Held while a change runs on this leader; a second change is refused, not queued.
#[derive(Default)]
pub struct ChangeLock(std::sync::Mutex<Option<String>>);

struct ChangeGuard<'a>(&'a ChangeLock);

impl ChangeLock {
    fn try_begin(&self, what: &Change) -> Result<ChangeGuard<'_>, MembershipError> {
        let mut running = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = running.as_ref() {
            return Err(MembershipError::InProgress(running.clone()));
        }
        *running = Some(what.to_string());
        Ok(ChangeGuard(self))
    }
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Node {
    /// Makes `change` on the leader, wherever it is; answers the members afterwards.
    pub async fn change_membership(&self, actor: &Actor, change: &Change) -> Result<Vec<MemberInfo>, MembershipError> {
        if self.disk_full() {
            return Err(MembershipError::Unavailable("this node's disk is full; ask another node".into()));
        }
        let deadline = Instant::now() + self.config().settings().request_timeout();
        loop {
            let result = match self.route_to_leader() {
                Ok((_, Route::Local)) => self.change_as_leader(actor, change).await,
                Ok((_, Route::Remote(leader))) => {
                    self.peers().change_membership(&leader, actor, change, CATCH_UP_TIMEOUT * 2).await
                }
                Err(_) => Err(MembershipError::NotLeader(None)),
            };
            match result {
                Err(MembershipError::NotLeader(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(MembershipError::NotLeader(_)) => {
                    return Err(MembershipError::Unavailable("no leader could be reached in time".into()))
                }
                other => return other,
            }
        }
    }

    /// [`Node::change_membership`] on this node, which must be the leader.
    pub async fn change_as_leader(&self, actor: &Actor, change: &Change) -> Result<Vec<MemberInfo>, MembershipError> {
        self.authorize_operator(actor).await.map_err(|e| match e {
            crate::node::OperatorRefusal::Refused(e) => MembershipError::Refused(e),
            crate::node::OperatorRefusal::NotLeader(leader) => MembershipError::NotLeader(leader),
            crate::node::OperatorRefusal::Unavailable(why) => MembershipError::Unavailable(why),
        })?;
        let _running = self.membership_changes().try_begin(change)?;
        // A change openraft has not finished (say, a joint configuration a deposed leader left)
        // is also in progress.
        let membership = self.raft().metrics().borrow().membership_config.clone();
        if membership.membership().get_joint_config().len() > 1 {
            return Err(MembershipError::InProgress("a joint configuration is not yet committed".into()));
        }
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.membership().learner_ids().collect();
        match change {
            Change::Add { node_id, raft_addr, api_addr } => {
                if voters.contains(node_id) {
                    return Err(MembershipError::Conflict(format!("node {node_id} is already a voter")));
                }
                let admitted = self.write_system(actor, Op::AdmitNode { node_id: *node_id }).await?;
                match admitted {
                    Ok(_) => {}
                    // A learner left by an earlier add that timed out: finish that add.
                    Err(OpError::NodeIdUsed(_)) if learners.contains(node_id) => {}
                    Err(e) => return Err(MembershipError::Refused(e)),
                }
                let info = NodeInfo { raft_addr: raft_addr.clone(), api_addr: api_addr.clone() };
                tracing::info!(node = node_id, "adding node as a learner");
                self.raft().add_learner(*node_id, info, false).await.map_err(|e| raft_error(e, "add the learner"))?;
                self.wait_caught_up(*node_id).await?;
                tracing::info!(node = node_id, "learner caught up; making it a voter");
                self.raft()
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*node_id])), false)
                    .await
                    .map_err(|e| raft_error(e, "make the learner a voter"))?;
            }
            Change::Remove { node_id } => {
                if voters.contains(node_id) {
                    if voters.len() == 1 {
                        return Err(MembershipError::Conflict(format!("node {node_id} is the only voter")));
                    }
                    self.raft()
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*node_id])), false)
                        .await
                        .map_err(|e| raft_error(e, "remove the voter"))?;
                } else if learners.contains(node_id) {
                    self.raft()
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*node_id])), false)
                        .await
                        .map_err(|e| raft_error(e, "remove the learner"))?;
                } else {
                    // Not in the configuration: removed already (a retried command, whose first
                    // answer was lost when the removed leader stopped), half removed (its id not
                    // yet retired), or never a member.
                    match self.node_record(*node_id) {
                        Some(record) if record.removed_at.is_some() => return Ok(self.cluster_info().members),
                        Some(_) => tracing::info!(node = node_id, "node already out of the configuration"),
                        None => return Err(MembershipError::NotMember(format!("node {node_id} is not a member"))),
                    }
                }
                tracing::info!(node = node_id, "node removed from the configuration; retiring its id");
                // The leader may have been the node removed: the write finds the next one.
                if let Err(e) = self.write_system(actor, Op::RetireNode { node_id: *node_id }).await? {
                    return Err(MembershipError::Refused(e));
                }
            }
        }
        Ok(self.cluster_info().members)
    }

    /// Waits until the learner's log matches the leader's last index as of now.
    async fn wait_caught_up(&self, node_id: NodeId) -> Result<(), MembershipError> {
        let mut metrics = self.raft().metrics();
        let target = metrics.borrow().last_log_index;
        let caught_up = metrics.wait_for(|m| {
            let matched = m.replication.as_ref().and_then(|r| r.get(&node_id)).and_then(|l| l.map(|l| l.index));
            m.state != openraft::ServerState::Leader || matched >= target
        });
        let leading = tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up)
            .await
            .map(|m| m.map(|m| m.state == openraft::ServerState::Leader).unwrap_or(false));
        match leading {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(MembershipError::Unavailable("this node stopped leading while the learner caught up".into()))
            }
            Err(_) => Err(MembershipError::CatchUpTimeout(format!(
                "node {node_id} did not catch up within {} s; it stays a learner: check that it runs and reaches \
                 this node's raft_addr, then run add-node again",
                CATCH_UP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Writes a registry op through the leader with a fresh request id.
    async fn write_system(&self, actor: &Actor, op: Op) -> Result<crate::sm::model::Outcome, MembershipError> {
        let command = Command { request_id: crate::api::new_request_id(), actor: actor.clone(), op };
        self.write(command).await.map_err(|e| MembershipError::Unavailable(e.to_string()))
    }

    /// What this node answers to [`WhoisRequest`].
    pub fn whois(&self, node_id: NodeId) -> WhoisAnswer {
        let initialized = self.raft().metrics().borrow().membership_config.membership().nodes().next().is_some();
        WhoisAnswer {
            cluster_name: self.config().settings().cluster_name.clone(),
            answered_by: self.id(),
            initialized,
            record: self.node_record(node_id),
        }
    }
}

fn raft_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>, doing: &str) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MembershipError::NotLeader(f.leader_id),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            MembershipError::InProgress(p.to_string())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Conflict(format!("cannot {doing}: {e}"))
        }
        RaftError::Fatal(e) => MembershipError::Unavailable(format!("raft stopped: {e}")),
    }
}

/// Whether this node may grant a vote to `candidate`: only members of its configuration may
/// campaign (before the first configuration, anyone may).
pub fn vote_allowed(node: &Node, candidate: Option<NodeId>) -> bool {
    let metrics = node.raft().metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if membership.nodes().next().is_none() {
        return true;
    }
    candidate.is_some_and(|c| membership.get_node(&c).is_some())
}

/// What a node starting without data learned from the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Some node answered that it belongs to an initialised cluster.
    pub cluster_exists: bool,
}

/// Why a node must not start with its id.
fn refusal(config: &NodeConfig, answer: &WhoisAnswer) -> Option<String> {
    let id = config.id;
    let record = answer.record.as_ref()?;
    if record.removed_at.is_some() {
        return Some(format!(
            "node id {id} was removed from cluster {:?} (node {} says so) and is never reused: start this host \
             with a new id and add it with `ztna cluster add-node`",
            answer.cluster_name, answer.answered_by
        ));
    }
    record.incarnation.as_ref()?;
    Some(format!(
        "this data directory is empty, but cluster {:?} (node {} says so) knows node id {id} with its data: a \
         node that lost its data must not rejoin under its old id (it would forget what it acknowledged). Use \
         `ztna cluster replace-node` to retire id {id} and add this host under a new id; or, if the data still \
         exists, point --data-dir at it",
        answer.cluster_name, answer.answered_by
    ))
}

/// Asks the other nodes of the cluster file about this node's id until a majority of the file
/// (counting this node) has answered. While asking, answers the same question from other
/// starting nodes on `listener` (a copy of the internal listener) with "nothing known".
pub async fn ask_peers(
    config: &NodeConfig,
    peers: &PeerClient,
    listener: Option<(&TcpListener, Option<Arc<rustls::ServerConfig>>)>,
) -> Result<PeerView, StartError> {
    let others: Vec<(NodeId, String)> = config
        .cluster
        .nodes
        .iter()
        .filter(|n| n.id != config.id)
        .map(|n| (n.id, config.settings().dial_addr(n.id, &n.raft_addr)))
        .collect();
    let needed = config.cluster.nodes.len() / 2;
    let stop_answering = match listener {
        Some((listener, tls)) => Some(answer_as_fresh(listener, tls, config)?),
        None => None,
    };
    let mut answered: BTreeMap<NodeId, WhoisAnswer> = BTreeMap::new();
    let started = Instant::now();
    let mut last_note = started;
    let result = loop {
        for (id, addr) in &others {
            if answered.contains_key(id) {
                continue;
            }
            let request = WhoisRequest { node_id: config.id };
            let peer = crate::network::Peer { id: *id, addr: addr.clone() };
            if let Ok(answer) = peers.whois(&peer, &request, Duration::from_secs(2)).await {
                if answer.cluster_name != config.settings().cluster_name {
                    tracing::error!(
                        peer = id,
                        "node {id} at {addr} belongs to cluster {:?}, not {:?}: check the cluster file",
                        answer.cluster_name,
                        config.settings().cluster_name
                    );
                    continue;
                }
                answered.insert(*id, answer);
            }
        }
        if let Some(reason) = answered.values().find_map(|a| refusal(config, a)) {
            break Err(StartError::Refused(reason));
        }
        if answered.len() >= needed {
            break Ok(PeerView { cluster_exists: answered.values().any(|a| a.initialized) });
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            tracing::warn!(
                "this node has no data yet: waiting for {} more of the other nodes to confirm node id {} is not \
                 in use ({} s so far)",
                needed - answered.len(),
                config.id,
                started.elapsed().as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(stop) = stop_answering {
        let _ = stop.send(true);
    }
    result
}

/// Answers [`WhoisRequest`]s with "nothing known" on a copy of `listener` until told to stop.
fn answer_as_fresh(
    listener: &TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    config: &NodeConfig,
) -> Result<tokio::sync::watch::Sender<bool>, StartError> {
    use std::os::fd::AsFd;
    let listen_error = |source| StartError::Listen { addr: config.me().raft_addr.clone(), source };
    let copy = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned().map_err(listen_error)?);
    let copy = TcpListener::from_std(copy).map_err(listen_error)?;
    let answer = WhoisAnswer {
        cluster_name: config.settings().cluster_name.clone(),
        answered_by: config.id,
        initialized: false,
        record: None,
    };
    let router = axum::Router::new().route(
        PATH_WHOIS,
        axum::routing::post(move || {
            let answer = answer.clone();
            async move { crate::network::server::reply(&answer) }
        }),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Only `whois`, answered the same to anyone the TLS layer let in: counted per address.
    let clients = crate::listener::Clients::Public { trusted_proxies: std::sync::Arc::new([]) };
    crate::listener::serve(copy, tls, router, config.settings().listener_limits(), clients, stopped);
    Ok(stop)
}

/// Registers this node's incarnation once it is a member, then watches for its removal; stops
/// the node (through `fatal`) if its id was removed or belongs to another data directory.
pub async fn keep_registered(node: Weak<Node>, incarnation: String) {
    let mut without_leader_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(node) = node.upgrade() else { return };
        let id = node.id();
        if !node.is_member_with_leader() {
            // Not a member, or no leader: after a while, ask whether this node was removed
            // (a removed node hears from no leader again).
            let since = *without_leader_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(5) {
                without_leader_since = Some(Instant::now());
                if let Some(reason) = removed_per_peers(&node).await {
                    node.fatal(reason);
                    return;
                }
            }
            continue;
        }
        without_leader_since = None;
        match node.node_record(id) {
            Some(record) if record.removed_at.is_some() => {
                node.fatal(format!("node {id} was removed from the cluster; its id is retired"));
                return;
            }
            Some(record) if record.incarnation.as_deref() == Some(incarnation.as_str()) => continue,
            Some(record) if record.incarnation.is_some() => {
                node.fatal(format!(
                    "node id {id} is registered to another data directory (incarnation {:?}, this one is {incarnation:?})",
                    record.incarnation.unwrap_or_default()
                ));
                return;
            }
            _ => {}
        }
        let command = Command {
            request_id: format!("register-{id}-{incarnation}"),
            actor: Actor::Anonymous,
            op: Op::RegisterNode { node_id: id, incarnation: incarnation.clone() },
        };
        match node.write(command).await {
            Ok(Ok(_)) => tracing::info!(node = id, "registered this data directory with the cluster"),
            Ok(Err(e @ (OpError::NodeIdUsed(_) | OpError::NodeRemoved(_)))) => {
                node.fatal(e.to_string());
                return;
            }
            Ok(Err(e)) => tracing::warn!("cannot register this node yet: {e}"),
            Err(e) => tracing::debug!("cannot register this node yet: {e}"),
        }
    }
}

/// At the start of a node with data, before Raft: asks every other node of the cluster file at
/// once (1.5 s each at most) whether this node's id was removed. No answer is no news: a whole
/// cluster restarting finds its peers down and starts.
pub async fn removed_at_start(config: &NodeConfig, peers: &PeerClient) -> Option<String> {
    let addrs = config.cluster.nodes.iter().map(|n| (n.id, n.raft_addr.clone())).collect();
    removed_says_a_peer(config, peers, addrs, Duration::from_millis(1500)).await
}

/// Asks every other node this one knows whether its id was removed.
async fn removed_per_peers(node: &Arc<Node>) -> Option<String> {
    let mut addrs: BTreeMap<NodeId, String> =
        node.config().cluster.nodes.iter().map(|n| (n.id, n.raft_addr.clone())).collect();
    for member in node.cluster_info().members {
        addrs.insert(member.id, member.raft_addr);
    }
    removed_says_a_peer(node.config(), node.peers(), addrs, Duration::from_secs(2)).await
}

/// Asks the nodes at `addrs` (by id; this node's own entry is skipped) at once, each within
/// `timeout`, whether this node's id was removed: the reason, if one says so.
async fn removed_says_a_peer(
    config: &NodeConfig,
    peers: &PeerClient,
    addrs: BTreeMap<NodeId, String>,
    timeout: Duration,
) -> Option<String> {
    let asks = addrs.into_iter().filter(|(id, _)| *id != config.id).map(|(id, addr)| {
        let peer = crate::network::Peer { id, addr: config.settings().dial_addr(id, &addr) };
        async move {
            let request = WhoisRequest { node_id: config.id };
            let answer = peers.whois(&peer, &request, timeout).await.ok()?;
            answer.record.as_ref().is_some_and(|r| r.removed_at.is_some()).then(|| {
                format!(
                    "node {} was removed from the cluster (node {} says so); its id is retired",
                    config.id, answer.answered_by
                )
            })
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().next()
}
