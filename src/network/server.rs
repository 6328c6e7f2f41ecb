//! The internal listener's routes: Raft RPCs from peers, and commands and reads forwarded by
//! followers to this node as leader.
//!
//! Only nodes of the cluster get in. The TLS layer requires a client certificate signed by the
//! cluster CA; then [`authenticate_peer`] requires that the certificate names the node id the
//! caller claims (`x-ztna-node`) and that this node is a member of the cluster (or, for a
//! cluster not formed yet, listed in the cluster file; or admitted by `add-node`): a removed
//! node's certificate, or one node speaking for another, is refused before anything is decoded.
//! `/internal/whois` (what the registry knows of an id) only needs a certificate for the id it
//! asks as, so a new or removed node can learn where it stands. Forwarded commands still carry
//! their actor, which the leader and the state machine check.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    ForwardError, ForwardedQuery, PATH_APPEND, PATH_CLUSTER_INFO, PATH_PROPOSE, PATH_QUERY, PATH_SNAPSHOT, PATH_VOTE,
};
use crate::codec;
use crate::node::Node;
use crate::raft_types::NodeId;
use crate::sm::model::{Command, OpError};

/// The internal router. Bodies are limited only by what a snapshot chunk needs.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .route(PATH_PROPOSE, post(propose))
        .route(PATH_QUERY, post(query))
        .route(PATH_CLUSTER_INFO, post(cluster_info))
        .route(crate::membership::PATH_WHOIS, post(whois))
        .route(crate::membership::PATH_MEMBERSHIP, post(membership))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(node.clone(), authenticate_peer))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(node.config().settings().body_read_timeout()))
        .layer(axum::middleware::map_response_with_state(node.clone(), tell_peer_facts))
        .with_state(node)
}

/// Lets in only a cluster node speaking for itself (see the module header).
async fn authenticate_peer(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if node.config().settings().plaintext_between_nodes() {
        return next.run(request).await;
    }
    let claimed = request.headers().get(super::PEER_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let cert = request.extensions().get::<crate::listener::PeerCertificate>();
    let refused = |status: StatusCode, why: String| {
        crate::metrics::global().peer_refused();
        static REFUSED: crate::log_every::LogEvery = crate::log_every::LogEvery::new(crate::log_every::PERIOD);
        REFUSED.warn(format_args!("internal call to {} from {claimed:?} refused: {why}", request.uri().path()));
        (status, why).into_response()
    };
    let (Some(id), Some(cert)) = (claimed, cert) else {
        return refused(StatusCode::UNAUTHORIZED, "a node's certificate and its id (x-ztna-node) are required".into());
    };
    if !crate::tls::names_node(&cert.0, id) {
        return refused(StatusCode::FORBIDDEN, format!("the client certificate is not node {id}'s"));
    }
    if request.uri().path() != crate::membership::PATH_WHOIS && !node.peer_allowed(id) {
        return refused(StatusCode::FORBIDDEN, format!("node {id} is not a member of this cluster (removed?)"));
    }
    let mut request = request;
    request.extensions_mut().insert(Caller(Some(id)));
    next.run(request).await
}

/// The node a call comes from, as its certificate proves (`None`: the plaintext opt-out, where
/// nothing is proven).
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<NodeId>);

/// Refuses a Raft message that speaks for another node than the caller: an append, a snapshot
/// chunk or a vote request carries the vote of the node that sends it (the leader, or the
/// candidate), which must be the caller's own.
fn speaks_for_caller(caller: Option<Caller>, vote: &openraft::Vote<NodeId>) -> Result<(), String> {
    let Some(Caller(Some(caller))) = caller else { return Ok(()) };
    match vote.leader_id().voted_for() {
        Some(sender) if sender == caller => Ok(()),
        sender => Err(format!("node {caller} sent a message in the name of {sender:?}")),
    }
}

/// Every answer carries this node's wall clock, from which the leader estimates the majority's
/// time (see `clock`), the state-machine rules its build knows (see `sm::Meta::rules`) and the
/// queries it reads (see `sm::query::QUERIES`).
async fn tell_peer_facts(State(node): State<Arc<Node>>, mut response: Response) -> Response {
    let wall = node.clock().wall().now_ms();
    let facts = [
        (crate::clock::WALL_HEADER, wall),
        (super::RULES_HEADER, u64::from(crate::sm::RULES)),
        (super::QUERIES_HEADER, u64::from(crate::sm::query::QUERIES)),
    ];
    for (name, value) in facts {
        if let Ok(value) = axum::http::HeaderValue::from_str(&value.to_string()) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

pub(crate) fn reply<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, (StatusCode, String)> {
    codec::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

/// The refusal of a message that does not come from the node it names.
fn impersonation(why: String) -> Response {
    crate::metrics::global().peer_refused();
    static REFUSED: crate::log_every::LogEvery = crate::log_every::LogEvery::new(crate::log_every::PERIOD);
    REFUSED.warn(format_args!("internal call refused: {why}"));
    (StatusCode::FORBIDDEN, why).into_response()
}

async fn append(State(node): State<Arc<Node>>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    if let Some(why) = node.raft_stopped() {
        return reply(&Err::<(), String>(why));
    }
    match decode::<openraft::raft::AppendEntriesRequest<crate::raft_types::TypeConfig>>(&body) {
        Ok(rpc) => match speaks_for_caller(caller.map(|c| c.0), &rpc.vote) {
            Ok(()) => reply(&node.raft().append_entries(rpc).await.map_err(|e| e.to_string())),
            Err(why) => impersonation(why),
        },
        Err(bad) => bad.into_response(),
    }
}

async fn vote(State(node): State<Arc<Node>>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    if let Some(why) = node.raft_stopped() {
        return reply(&Err::<(), String>(why));
    }
    match decode::<openraft::raft::VoteRequest<crate::raft_types::NodeId>>(&body) {
        Ok(rpc) if speaks_for_caller(caller.as_ref().map(|c| c.0), &rpc.vote).is_err() => {
            impersonation(format!("a vote request in the name of {:?}", rpc.vote.leader_id().voted_for()))
        }
        Ok(rpc) if !crate::membership::vote_allowed(&node, rpc.vote.leader_id().voted_for()) => {
            let refused: Result<(), String> = Err(format!(
                "node {} refuses to vote for {:?}: not a member of its configuration (removed?)",
                node.id(),
                rpc.vote.leader_id().voted_for()
            ));
            reply(&refused)
        }
        Ok(rpc) => reply(&node.raft().vote(rpc).await.map_err(|e| e.to_string())),
        Err(bad) => bad.into_response(),
    }
}

async fn cluster_info(State(node): State<Arc<Node>>) -> Response {
    reply(&node.cluster_info())
}

async fn whois(State(node): State<Arc<Node>>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    match decode::<crate::membership::WhoisRequest>(&body) {
        // A node asks about itself only (what the registry knows of the others is theirs).
        Ok(request) if caller.and_then(|c| c.0 .0).is_some_and(|id| id != request.node_id) => {
            impersonation(format!("a question about node {} from another node", request.node_id))
        }
        Ok(request) => reply(&node.whois(request.node_id)),
        Err(bad) => bad.into_response(),
    }
}

/// A membership change forwarded to this node as leader.
async fn membership(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode::<(crate::sm::model::Actor, crate::membership::Change)>(&body) {
        Ok((actor, change)) => reply(&node.change_as_leader(&actor, &change).await),
        Err(bad) => bad.into_response(),
    }
}

async fn snapshot(State(node): State<Arc<Node>>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    if let Some(why) = node.raft_stopped() {
        return reply(&Err::<(), String>(why));
    }
    let _holding_elections = node.snapshot_chunk();
    match decode::<openraft::raft::InstallSnapshotRequest<crate::raft_types::TypeConfig>>(&body) {
        Ok(rpc) => match speaks_for_caller(caller.map(|c| c.0), &rpc.vote) {
            Ok(()) => reply(&node.raft().install_snapshot(rpc).await.map_err(|e| e.to_string())),
            Err(why) => impersonation(why),
        },
        Err(bad) => bad.into_response(),
    }
}

/// A follower's batch of forwarded writes: proposed together, answered in order. Only what a
/// member may send on a client's behalf is proposed (see [`forwardable`]).
async fn propose(State(node): State<Arc<Node>>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    let caller = caller.and_then(|c| c.0 .0);
    let rules = node.rules();
    match decode::<Vec<Command>>(&body) {
        Ok(commands) => {
            let answers = futures::future::join_all(commands.into_iter().map(|command| {
                let node = node.clone();
                async move {
                    match forwardable(&command, caller, rules) {
                        Ok(()) => node.propose_as_leader(command).await,
                        Err(refused) => Ok(Err(refused)),
                    }
                }
            }))
            .await;
            crate::faults::delay_point("propose:answer").await;
            reply(&answers)
        }
        Err(bad) => bad.into_response(),
    }
}

/// Whether a member may forward `command`: anything a client's credential speaks for (an API
/// key, a node key, an enrolment's auth key and proof, checked by the node that received it,
/// which the checked form names: it must be the caller), the cluster's initialisation (its
/// bootstrap token checked there), and a node's registration of itself. The cluster's own ops
/// (sweeps, last-seen times, rules adoption) are the leader's to propose, never a member's.
fn forwardable(command: &Command, caller: Option<NodeId>, rules: u32) -> Result<(), OpError> {
    use crate::sm::model::{Actor, Op};
    let refused = |what: &str| Err(OpError::Forbidden(format!("a member does not forward {what}")));
    match (&command.actor, &command.op) {
        (Actor::ApiKey { .. } | Actor::NodeKey { .. }, op) if crate::sm::is_system_op(op) => {
            refused("the cluster's own ops (sweeps, last-seen times, rules, registrations)")
        }
        (
            Actor::ApiKey { .. } | Actor::NodeKey { .. },
            Op::Enrol { .. } | Op::EnrolProven { .. } | Op::EnrolChecked { .. },
        ) => refused("an enrolment in a key's name"),
        (Actor::ApiKey { .. } | Actor::NodeKey { .. }, _) => Ok(()),
        (Actor::Anonymous, Op::EnrolChecked { checked_by, .. }) => match caller {
            Some(caller) if caller != *checked_by => refused("an enrolment another node checked"),
            _ => Ok(()),
        },
        // From rules 4 an enrolment names the node that checked its proof.
        (Actor::Anonymous, Op::EnrolProven { .. } | Op::Enrol { .. }) if rules >= 4 => {
            refused("an enrolment that does not name the node that checked its proof")
        }
        (Actor::Anonymous, Op::EnrolProven { .. } | Op::Enrol { .. } | Op::InitCluster { .. }) => Ok(()),
        (Actor::Anonymous, Op::RegisterNode { node_id, .. }) => match caller {
            Some(caller) if caller != *node_id => refused("another node's registration"),
            _ => Ok(()),
        },
        (Actor::Anonymous, _) if crate::faults::forward_sweep() => Ok(()),
        (Actor::Anonymous, _) => refused("the cluster's own ops (sweeps, last-seen times, rules)"),
    }
}

async fn query(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode::<ForwardedQuery>(&body) {
        Ok(q) => {
            let answer: Result<_, ForwardError> = node.query_as_leader(&q.actor, &q.query).await;
            reply(&answer)
        }
        Err(bad) => bad.into_response(),
    }
}
