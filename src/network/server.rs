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
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    ForwardError, ForwardedQuery, PATH_APPEND, PATH_CLUSTER_INFO, PATH_PROPOSE, PATH_QUERY, PATH_SNAPSHOT, PATH_VOTE,
};
use crate::codec;
use crate::node::Node;
use crate::sm::model::Command;

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
    next.run(request).await
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

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    if let Some(why) = node.raft_stopped() {
        return reply(&Err::<(), String>(why));
    }
    match decode(&body) {
        Ok(rpc) => reply(&node.raft().append_entries(rpc).await.map_err(|e| e.to_string())),
        Err(bad) => bad.into_response(),
    }
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    if let Some(why) = node.raft_stopped() {
        return reply(&Err::<(), String>(why));
    }
    match decode::<openraft::raft::VoteRequest<crate::raft_types::NodeId>>(&body) {
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

async fn whois(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode::<crate::membership::WhoisRequest>(&body) {
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

async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    if let Some(why) = node.raft_stopped() {
        return reply(&Err::<(), String>(why));
    }
    let _holding_elections = node.snapshot_chunk();
    match decode(&body) {
        Ok(rpc) => reply(&node.raft().install_snapshot(rpc).await.map_err(|e| e.to_string())),
        Err(bad) => bad.into_response(),
    }
}

/// A follower's batch of forwarded writes: proposed together, answered in order.
async fn propose(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match decode::<Vec<Command>>(&body) {
        Ok(commands) => {
            let answers = futures::future::join_all(commands.into_iter().map(|c| node.propose_as_leader(c))).await;
            reply(&answers)
        }
        Err(bad) => bad.into_response(),
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
