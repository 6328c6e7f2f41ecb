//! Every member's own view of the cluster, asked over the internal listener (mutual TLS when
//! the cluster has it): what the console's cluster page and `GET /api/cluster/nodes` show.
//!
//! A member that does not answer within [`ASK_TIMEOUT`] is reported as unreachable with the
//! reason, never left out. One round of questions runs at a time, in its own task that every
//! caller waiting for it shares (a caller that hangs up does not cancel it), and its answer is
//! kept for [`FRESH_FOR`]: however often the page is asked, and by however many clients, a node
//! sends each peer at most a few small requests a second.
//!
//! This module only reads; it must not change the cluster or decide anything about keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;

use crate::node::{ClusterInfo, Node};
use crate::raft_types::NodeId;

/// How long one member is given to answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);
/// How long an assembled view is served again.
const FRESH_FOR: Duration = Duration::from_millis(500);

/// One member as it answered (or did not).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: NodeId,
    pub api_addr: String,
    pub voter: bool,
    pub reachable: bool,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The leader this member knows of.
    pub leader: Option<NodeId>,
    /// Entries this member has yet to apply of the leader's log, when the leader answered.
    pub lag: Option<u64>,
    pub disk_full: Option<bool>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The cluster as its members see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The node that assembled this view (the one serving the page).
    pub served_by: NodeId,
    /// The leader, as the member with the highest term that knows one says.
    pub leader: Option<NodeId>,
    pub nodes: Vec<NodeView>,
}

/// The last view assembled and when, and the round of questions under way.
#[derive(Default)]
pub struct Cache(std::sync::Mutex<Rounds>);

#[derive(Default)]
struct Rounds {
    fresh: Option<(Instant, ClusterView)>,
    under_way: Option<Shared<BoxFuture<'static, ClusterView>>>,
}

impl Cache {
    /// A view no older than [`FRESH_FOR`]; callers arriving while one is assembled wait for it.
    pub async fn get(&self, node: &Arc<Node>) -> ClusterView {
        let round = {
            let mut rounds = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, view)) = &rounds.fresh {
                if at.elapsed() < FRESH_FOR {
                    return view.clone();
                }
            }
            match &rounds.under_way {
                Some(round) => round.clone(),
                None => {
                    let round = start_round(Arc::clone(node));
                    rounds.under_way = Some(round.clone());
                    round
                }
            }
        };
        round.await
    }

    fn finish(&self, view: &ClusterView) {
        let mut rounds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rounds.fresh = Some((Instant::now(), view.clone()));
        rounds.under_way = None;
    }
}

/// One round of questions in its own task, which records its answer when done.
fn start_round(node: Arc<Node>) -> Shared<BoxFuture<'static, ClusterView>> {
    let served_by = node.id();
    let task = tokio::spawn(async move {
        let view = assemble(&node).await;
        node.cluster_views().finish(&view);
        view
    });
    // The task only ends early when the runtime shuts down; then nobody reads the page.
    async move { task.await.unwrap_or(ClusterView { served_by, leader: None, nodes: Vec::new() }) }.boxed().shared()
}

/// Asks every member this node knows of (itself locally, the others at their internal address).
async fn assemble(node: &Node) -> ClusterView {
    let mine = &node.cluster_info();
    let asked = mine.members.iter().map(|member| async move {
        let answer = if member.id == node.id() {
            Ok(mine.clone())
        } else {
            let peer = crate::network::Peer {
                id: member.id,
                addr: node.config().settings().dial_addr(member.id, &member.raft_addr),
            };
            node.peers().cluster_info(&peer, ASK_TIMEOUT).await
        };
        (member, answer)
    });
    let answers = futures::future::join_all(asked).await;
    let leader = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .filter(|info| info.leader.is_some())
        .max_by_key(|info| info.term)
        .and_then(|info| info.leader);
    let leader_last_log = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .find(|info| Some(info.node_id) == leader)
        .and_then(|info| info.last_log_index);
    let nodes = answers.into_iter().map(|(member, answer)| view_of(member, answer, leader_last_log)).collect();
    ClusterView { served_by: node.id(), leader, nodes }
}

fn view_of(
    member: &crate::node::MemberInfo,
    answer: Result<ClusterInfo, String>,
    leader_last_log: Option<u64>,
) -> NodeView {
    let mut view = NodeView {
        id: member.id,
        api_addr: member.api_addr.clone(),
        voter: member.voter,
        reachable: false,
        role: None,
        term: None,
        last_log_index: None,
        last_applied_index: None,
        leader: None,
        lag: None,
        disk_full: None,
        error: None,
    };
    match answer {
        Ok(info) => {
            view.reachable = true;
            view.lag = leader_last_log.map(|last| last.saturating_sub(info.last_applied_index.unwrap_or(0)));
            view.role = Some(info.role);
            view.term = Some(info.term);
            view.last_log_index = info.last_log_index;
            view.last_applied_index = info.last_applied_index;
            view.leader = info.leader;
            view.disk_full = Some(info.disk_full);
        }
        Err(why) => view.error = Some(why),
    }
    view
}
