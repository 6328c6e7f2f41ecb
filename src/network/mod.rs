//! Node-to-node traffic over the internal listener: Raft RPCs, and requests a follower forwards
//! to the leader.
//!
//! Every body is encoded by [`crate::codec`] (bincode with a version byte). One pooled HTTP/1.1
//! client (keep-alive) serves all peers, so forwarding costs no new connection per request.
//! [`server`] is the receiving side.
//!
//! This module must not decide anything about keys; it moves bytes between nodes.

pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::config::Settings;
use crate::raft_types::{NodeId, NodeInfo, TypeConfig};
use crate::sm::model::{Actor, Command, OpError, Outcome};
use crate::sm::query::{Answer, Query};

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub const PATH_PROPOSE: &str = "/internal/propose";
pub const PATH_QUERY: &str = "/internal/query";
/// A node's own view of the cluster (`cluster_view`).
pub const PATH_CLUSTER_INFO: &str = "/internal/cluster-info";

/// Why a forwarded request did not get an answer from the leader it was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Unavailable(String),
    /// The request may or may not have reached the leader (e.g. a timeout after sending).
    #[error("no answer from the leader: {0}")]
    Transport(String),
}

/// A peer to call: its node id and the address to dial (its `raft_addr`, or a test-only
/// override). With TLS the call is made to the node's identity name
/// (`node-<id>.ztna-peer.invalid`, resolved to `addr`), so the answering certificate must name
/// that node: an API certificate, or another node's, cannot answer for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} at {}", self.id, self.addr)
    }
}

/// Resolves the peers' identity names to the addresses they are dialled at.
#[derive(Default)]
struct PeerNames(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl reqwest::dns::Resolve for PeerNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(name.as_str()).cloned();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let host = host.ok_or_else(|| format!("{name} is no peer this node dials"))?;
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `host:port` (`[v6]:port` too) as host and port.
fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().ok()?))
}

/// A forwarded read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedQuery {
    pub actor: Actor,
    pub query: Query,
}

/// The pooled client all node-to-node requests share.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// `http`, or `https` with mutual TLS.
    scheme: &'static str,
    /// Where peers' wall-clock readings go (see `clock`); none outside a node.
    clock: Option<crate::clock::ClusterClock>,
    /// The state-machine rules each peer (by address) says its build knows.
    peer_rules: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    /// The queries each peer (by address) says its build reads (`QUERIES_HEADER`).
    peer_queries: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    /// The node id this node calls as (`PEER_HEADER`); its certificate must name it.
    me: Option<NodeId>,
    /// Which peers take part in Raft, said in the log only when it changes.
    health: Arc<crate::log_every::PeerHealth>,
    /// Where each peer's identity name is dialled (with TLS).
    names: Arc<PeerNames>,
}

/// The request header naming the calling node; the receiving node checks that the caller's
/// certificate names that node and that it is a member (see `server`).
pub const PEER_HEADER: &str = "x-ztna-node";

/// The response header on the internal listener saying which state-machine rules the
/// answering node's build knows (see `sm::Meta::rules`).
pub const RULES_HEADER: &str = "x-ztna-rules";

/// The response header on the internal listener saying which set of queries the answering
/// node's build reads (`sm::query::QUERIES`): a node forwards a newer query to a leader of an
/// older build only to be refused, so it does not.
pub const QUERIES_HEADER: &str = "x-ztna-queries";

impl PeerClient {
    /// A client for plain HTTP, or for mutual TLS with `tls` (the node's certificate and the
    /// cluster CA).
    pub fn new(tls: Option<rustls::ClientConfig>) -> Self {
        crate::tls::ensure_provider();
        let names = Arc::new(PeerNames::default());
        let builder = reqwest::Client::builder()
            .dns_resolver(names.clone())
            // Closed by this side before the peer's idle timeout (60 s) closes it under a call.
            .pool_idle_timeout(Duration::from_secs(45))
            // Below what a node lets one member hold (`max_connections_per_address`).
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let builder = match tls {
            Some(config) => builder.use_preconfigured_tls(config),
            None => builder,
        };
        let http = builder.build().unwrap_or_else(|_| reqwest::Client::new());
        PeerClient {
            http,
            scheme,
            clock: None,
            peer_rules: Arc::default(),
            peer_queries: Arc::default(),
            me: None,
            health: Arc::default(),
            names,
        }
    }

    /// The set of queries the peer at `addr` last said its build reads (see `Query::since`);
    /// none before the first answer from it.
    pub fn queries_of(&self, addr: &str) -> Option<u32> {
        self.peer_queries.lock().unwrap_or_else(|p| p.into_inner()).get(addr).copied()
    }

    /// The state-machine rules the peer at `addr` last said its build knows.
    pub fn rules_of(&self, addr: &str) -> Option<u32> {
        self.peer_rules.lock().unwrap_or_else(|p| p.into_inner()).get(addr).copied()
    }

    /// Calls as node `id`.
    pub fn with_identity(mut self, id: NodeId) -> Self {
        self.me = Some(id);
        self
    }

    /// Records the wall clock every answering peer reports into `clock`.
    pub fn with_clock(mut self, clock: crate::clock::ClusterClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The URL of `path` on `peer`: with TLS at its identity name (pinned: only a certificate
    /// naming that node answers), else at its address.
    fn url(&self, peer: &Peer, path: &str) -> String {
        if self.scheme == "http" {
            return format!("http://{}{path}", peer.addr);
        }
        let name = crate::tls::peer_name(peer.id);
        let Some((host, port)) = split_host_port(&peer.addr) else {
            return format!("https://{}{path}", peer.addr);
        };
        self.names.0.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), host);
        format!("https://{name}:{port}{path}")
    }

    /// Posts an encoded body and decodes the answer.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &Peer,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let addr = peer.addr.as_str();
        let bytes = codec::encode(body).map_err(|e| CallError::Encode(e.to_string()))?;
        let mut request = self.http.post(self.url(peer, path)).timeout(timeout).body(bytes);
        if let Some(me) = self.me {
            request = request.header(PEER_HEADER, me);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                CallError::Unreachable(e.to_string())
            } else {
                CallError::Sent(e.to_string())
            }
        })?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let (Some(clock), Some(wall)) = (&self.clock, header(crate::clock::WALL_HEADER)) {
            clock.observe_peer(addr, wall);
        }
        if let Some(rules) = header(RULES_HEADER) {
            self.peer_rules.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), rules as u32);
            // A build that says its rules but not its queries reads the first set only.
            let queries = header(QUERIES_HEADER).unwrap_or(1) as u32;
            self.peer_queries.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), queries);
        }
        if !response.status().is_success() {
            // The peer's reason, e.g. a format version it does not know (a node of a newer build).
            let status = response.status();
            let reason = response.text().await.unwrap_or_default();
            return Err(CallError::Answered(format!("{addr}{path} answered {status}: {}", reason.trim())));
        }
        let bytes = response.bytes().await.map_err(|e| CallError::Sent(e.to_string()))?;
        codec::decode(&bytes).map_err(|e| CallError::Sent(format!("bad answer from {addr}: {e}")))
    }

    /// Forwards a batch of commands to the leader `peer`; one outcome per command.
    pub async fn propose(
        &self,
        peer: &Peer,
        commands: &[Command],
        timeout: Duration,
    ) -> Result<Vec<Result<Outcome, ForwardError>>, ForwardError> {
        match self.call::<_, Vec<Result<Outcome, ForwardError>>>(peer, PATH_PROPOSE, &commands, timeout).await {
            Ok(answers) => Ok(answers),
            Err(CallError::Unreachable(e)) | Err(CallError::Encode(e)) => Err(ForwardError::Unavailable(e)),
            Err(CallError::Sent(e)) | Err(CallError::Answered(e)) => Err(ForwardError::Transport(e)),
        }
    }

    /// Forwards a read to the leader `peer`.
    pub async fn query(
        &self,
        peer: &Peer,
        query: &ForwardedQuery,
        timeout: Duration,
    ) -> Result<Result<Answer, OpError>, ForwardError> {
        match self.call::<_, Result<Result<Answer, OpError>, ForwardError>>(peer, PATH_QUERY, query, timeout).await {
            Ok(answer) => answer,
            Err(CallError::Unreachable(e)) | Err(CallError::Encode(e)) => Err(ForwardError::Unavailable(e)),
            Err(CallError::Sent(e)) | Err(CallError::Answered(e)) => Err(ForwardError::Transport(e)),
        }
    }
}

impl PeerClient {
    /// The view of the cluster of node `peer`.
    pub async fn cluster_info(&self, peer: &Peer, timeout: Duration) -> Result<crate::node::ClusterInfo, String> {
        self.call(peer, PATH_CLUSTER_INFO, &(), timeout).await.map_err(|e| e.to_string())
    }

    /// Asks node `peer` what it knows of a node id.
    pub async fn whois(
        &self,
        peer: &Peer,
        request: &crate::membership::WhoisRequest,
        timeout: Duration,
    ) -> Result<crate::membership::WhoisAnswer, String> {
        self.call(peer, crate::membership::PATH_WHOIS, request, timeout).await.map_err(|e| e.to_string())
    }

    /// Forwards a membership change to the leader `peer`.
    pub async fn change_membership(
        &self,
        peer: &Peer,
        actor: &Actor,
        change: &crate::membership::Change,
        timeout: Duration,
    ) -> Result<Vec<crate::node::MemberInfo>, crate::membership::MembershipError> {
        use crate::membership::MembershipError;
        let request = (actor, change);
        match self.call(peer, crate::membership::PATH_MEMBERSHIP, &request, timeout).await {
            Ok(answer) => answer,
            Err(CallError::Unreachable(_)) => Err(MembershipError::NotLeader(None)),
            Err(e) => Err(MembershipError::Unavailable(format!("the leader did not answer: {e}"))),
        }
    }
}

/// The longest wait between retries to a peer that answers but refuses (its Raft stopped, its
/// disk full, not a member): it will not take part soon, and each retry is a line of
/// openraft's log on this node and a refusal on that one.
const LONGEST_BACKOFF_REFUSED: Duration = Duration::from_secs(2);

/// The waits between retries to a peer that does not take part: 50 ms doubling, to
/// [`LONGEST_BACKOFF_REFUSED`] while the peer answers with a refusal, and to
/// `longest_unreachable` while it cannot be reached at all.
struct PeerBackoff {
    next: Duration,
    longest_unreachable: Duration,
    /// Whether the last failed call was answered with a refusal (set by [`PeerNetwork::rpc`]).
    refused: Arc<AtomicBool>,
}

impl Iterator for PeerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let longest =
            if self.refused.load(Ordering::Relaxed) { LONGEST_BACKOFF_REFUSED } else { self.longest_unreachable };
        let wait = self.next.min(longest);
        self.next = (self.next * 2).min(LONGEST_BACKOFF_REFUSED);
        Some(wait)
    }
}

/// The longest wait between retries to a peer that cannot be reached (each retry is one failed
/// connection and one line of openraft's log): a node restarted after a long outage must hear
/// the leader before its own election timer, at least `election_timeout_min_ms` after it
/// starts, runs out. Otherwise it campaigns with a log it knows is short: it loses, but it
/// raises the term, which deposes the live leader, and openraft then holds its next campaign
/// back by twice its lease, which slows the next failover.
fn longest_peer_backoff(settings: &Settings) -> Duration {
    Duration::from_millis(settings.election_timeout_min_ms.clamp(50, 2000))
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Sent(String),
    /// The peer answered with an error status (it refused the call).
    #[error("{0}")]
    Answered(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

/// Makes a [`PeerNetwork`] per Raft peer.
#[derive(Clone)]
pub struct NetworkFactory {
    pub client: PeerClient,
    /// For the test-only dial overrides.
    pub settings: Arc<Settings>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            client: self.client.clone(),
            peer: Peer { id: target, addr: self.settings.dial_addr(target, &node.raft_addr) },
            longest_backoff: longest_peer_backoff(&self.settings),
            refused: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The Raft RPC client for one peer.
pub struct PeerNetwork {
    client: PeerClient,
    peer: Peer,
    longest_backoff: Duration,
    /// Whether the last failed call was answered with a refusal rather than not at all.
    refused: Arc<AtomicBool>,
}

/// What the receiving side answers to a Raft RPC: the response, or the remote error's text.
type RpcAnswer<T> = Result<T, String>;

impl PeerNetwork {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>> {
        let health = &self.client.health;
        match self.client.call::<_, RpcAnswer<Resp>>(&self.peer, path, req, option.hard_ttl()).await {
            Ok(Ok(resp)) => {
                health.answered(&self.peer.addr);
                Ok(resp)
            }
            // The peer answered but cannot take part (its Raft stopped, it is not a member, it
            // refused our certificate), or the call failed on the way: both back off (openraft
            // retries a `Network` error at once, thousands of times a second, each logged).
            // Raft's calls are idempotent, so a retry after a lost answer is safe.
            Ok(Err(remote)) => {
                self.refused.store(true, Ordering::Relaxed);
                let why = Message(format!("node {} refused {path}: {remote}", self.peer.id));
                health.failed(&self.peer.addr, &why);
                Err(RPCError::Unreachable(Unreachable::new(&why)))
            }
            Err(e) => {
                self.refused.store(matches!(e, CallError::Answered(_)), Ordering::Relaxed);
                health.failed(&self.peer.addr, &format_args!("node {}: {e}", self.peer.id));
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(PATH_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc(PATH_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(PATH_VOTE, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry a peer quickly at first (a restarted node rejoins within a heartbeat or two),
        // then less often: one that cannot be reached about once per minimum election timeout,
        // one that refuses every 2 s. Either costs a few log lines a second, not thousands.
        openraft::network::Backoff::new(PeerBackoff {
            next: Duration::from_millis(50),
            longest_unreachable: self.longest_backoff,
            refused: self.refused.clone(),
        })
    }
}
