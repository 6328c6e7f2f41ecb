//! The one place a node is wired together: storage, Raft, the proposer, both listeners.
//!
//! [`Node::start`] opens RocksDB, starts openraft with the RocksDB log and state machine, starts
//! the group-commit [`Proposer`], serves the public API and the internal listener, and bootstraps
//! the cluster's membership on first start. [`Node::write`] and [`Node::read`] are how the API
//! reaches the state machine from any node: on the leader directly, on a follower by forwarding
//! to the leader over the pooled peer client.
//!
//! This module must not parse HTTP requests (that is `api`) or decide anything about keys (`sm`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::clock::{Clock, ClusterClock};
use crate::config::NodeConfig;
use crate::election_hold::ElectionHold;
use crate::forwarder::Forwarder;
use crate::identity::DataDir;
use crate::liveness::Liveness;
use crate::membership::{ChangeLock, PeerView};
use crate::network::{ForwardError, ForwardedQuery, NetworkFactory, PeerClient};
use crate::proposer::Proposer;
use crate::raft_types::{NodeId, NodeInfo, Raft};
use crate::sm::model::{Actor, Command, Op, OpError, OpOk, Outcome};
use crate::sm::query::{Answer, Query};
use crate::store::state_machine::{read_state, SharedState};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    #[error("invalid Raft settings: {0}")]
    Raft(String),
    /// Raft could not start from what this node stored (its log, state or snapshot).
    #[error("cannot start Raft from this node's stored state: {0}")]
    RaftState(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("refusing to start: {0}")]
    Refused(String),
}

/// A request that could not reach a leader in time. The outcome of a write is then unknown:
/// retrying it with the same request id is safe.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no leader could be reached within {waited_ms} ms ({last_error})")]
pub struct Unavailable {
    pub waited_ms: u64,
    pub last_error: String,
    /// This node refuses requests because its disk is full (see `disk`).
    pub disk_full: bool,
}

/// A running node's shared parts.
pub struct Node {
    id: NodeId,
    /// The leader's view of machine liveness (see `liveness`); empty on followers.
    liveness: std::sync::Mutex<Liveness>,
    /// Origin of the monotonic milliseconds `liveness` works in.
    started: Instant,
    raft: Raft,
    state: SharedState,
    proposer: Proposer,
    /// Batches the writes this node forwards to the leader when it is a follower.
    forwarder: Forwarder,
    peers: PeerClient,
    /// The cluster time this node stamps on entries when it leads (see `clock`).
    clock: ClusterClock,
    config: NodeConfig,
    /// Holds this node's elections while a leader streams it a snapshot.
    election_hold: ElectionHold,
    /// The state machine's store, for backups (a clone: it shares the database).
    backups: crate::store::StateMachineStore,
    /// One membership change at a time (on the leader).
    membership_changes: ChangeLock,
    /// The free-space watchdog's view of the data directory.
    disk: crate::disk::DiskState,
    /// Set when the node must stop on its own (e.g. it was removed from the cluster).
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// Failed-authentication counts of the public API.
    throttle: crate::api::throttle::Throttle,
    /// Creates whose answer did not reach the client, for its retry (see `api::held`).
    held_creates: crate::api::held::HeldCreates,
    /// This node's enrolment key pair: machines prove possession of their keys to it (`proof`).
    enrol_key: crate::proof::EnrolKey,
    /// The proofs it accepted lately: each is good for one use (`proof::SeenProofs`).
    seen_proofs: crate::proof::SeenProofs,
    /// Every member's view of the cluster, as last asked (`GET /api/cluster/nodes`).
    cluster_views: crate::cluster_view::Cache,
    /// One leadership confirmation at a time ([`Node::confirm_leading`]), and when the last
    /// one that succeeded began.
    confirming: tokio::sync::Mutex<()>,
    confirmed_round: std::sync::Mutex<Option<Instant>>,
    /// Counts the sweeps done, for heartbeats waiting on one (see [`Liveness::observe`]).
    sweeps_done: tokio::sync::watch::Sender<u64>,
}

/// A node this far from applying what it has received is catching up, not ready.
pub const CATCHING_UP_ENTRIES: u64 = 1000;

/// What `GET /api/cluster` reports.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    pub cluster_name: String,
    pub node_id: NodeId,
    pub role: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The last index of this node's newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index are purged from this node's log.
    pub purged_index: Option<u64>,
    /// This node stopped taking part in Raft because its disk is full.
    pub disk_full: bool,
    pub members: Vec<MemberInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberInfo {
    pub id: NodeId,
    pub api_addr: String,
    pub raft_addr: String,
    pub voter: bool,
}

/// What a sweep must propose: the term it was decided in, inactive ephemeral machines (as judged),
/// and last-seen times if due.
struct LivenessDue {
    term: u64,
    expired: Vec<crate::sm::model::SweptMachine>,
    seen: Option<Vec<(String, crate::sm::model::Millis)>>,
    /// Whether this node leads (not, only under the `forward_sweep` fault).
    leading: bool,
}

/// Where a request goes: this node is the leader, or the leader over the internal listener.
pub(crate) enum Route {
    Local,
    Remote(crate::network::Peer),
}

/// How long a heartbeat waits for a leader before this node answers 503.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(2);

/// Upper bound on one forwarded request; the request deadline usually cuts it shorter.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a backup was not taken here.
#[derive(Debug, thiserror::Error)]
pub enum BackupRefusal {
    #[error(transparent)]
    Refused(#[from] OpError),
    /// Backups are taken on the leader; this is its public API address.
    #[error("backups are taken on the leader (node {leader}, {api_addr})")]
    NotLeader { leader: NodeId, api_addr: String },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Failed(#[from] crate::store::backup::BackupError),
}

/// Why the operator was not authorised on this node.
#[derive(Debug, thiserror::Error)]
pub enum OperatorRefusal {
    #[error(transparent)]
    Refused(OpError),
    #[error("this node is not the leader")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Unavailable(String),
}

/// A started node: wait on it, or shut it down.
pub struct Running {
    pub node: Arc<Node>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Resolves with the reason when the node must stop on its own (see [`Node::fatal`]).
    pub async fn failed(&self) -> String {
        let mut fatal = self.node.fatal.subscribe();
        let reason = fatal.wait_for(Option::is_some).await.map(|r| r.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops serving and stops Raft; everything acknowledged is already durable.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Raises this process's limit of open files to its hard limit (as Go's runtime does), so each
/// listener's `max_connections` fit beside RocksDB's files; warns when they still do not.
fn open_files_for(max_connections: usize) {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return;
        }
    };
    let needed = 2 * max_connections as u64 + 1024;
    if open_files < needed {
        tracing::warn!(
            open_files,
            needed,
            "the open-files limit is below what two listeners of max_connections and RocksDB need: raise it \
             (LimitNOFILE= in the systemd unit, ulimit -n) or lower max_connections"
        );
    }
}

impl Node {
    /// Starts a node and returns once both listeners are bound.
    pub async fn start(config: NodeConfig) -> Result<Running, StartError> {
        let settings = config.settings().clone();
        open_files_for(settings.max_connections);
        if settings.test_only_min_expiry_secs < crate::sm::model::MIN_EXPIRY_SECS {
            tracing::warn!(
                "TEST ONLY setting test_only_min_expiry_secs = {}: keys may expire sooner than 5 minutes",
                settings.test_only_min_expiry_secs
            );
        }
        if !settings.test_only_dial.is_empty() {
            tracing::warn!("TEST ONLY setting test_only_dial = {:?}", settings.test_only_dial);
        }
        if settings.test_only_log_kept_after_snapshot != 1000 {
            tracing::warn!(
                "TEST ONLY setting test_only_log_kept_after_snapshot = {}",
                settings.test_only_log_kept_after_snapshot
            );
        }
        if settings.test_only_clock_offset_ms != 0 {
            tracing::warn!("TEST ONLY setting test_only_clock_offset_ms = {}", settings.test_only_clock_offset_ms);
        }
        let (election_timeout_min, election_timeout_max) = settings.raft_election_timers();
        let raft_config = openraft::Config {
            cluster_name: settings.cluster_name.clone(),
            heartbeat_interval: settings.heartbeat_interval_ms,
            election_timeout_min,
            election_timeout_max,
            // Snapshots are triggered by the number of commands applied (below), not entries.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: settings.test_only_log_kept_after_snapshot,
            // A follower installs a snapshot when it receives the last chunk, and answers that
            // chunk only then: with a million keys that takes seconds, not openraft's default
            // 200 ms, after which the leader would resend the snapshot forever.
            install_snapshot_timeout: 120_000,
            // Each chunk renews the follower's leader lease, and no heartbeat reaches it while
            // a chunk is in flight: small chunks keep it from calling an election mid-transfer.
            snapshot_max_chunk_size: 1024 * 1024,
            // Heartbeats only while no entry is being replicated (see `drive_heartbeats`).
            enable_heartbeat: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;

        // Certificates and ports first: either stops the node before it touches its data.
        let tls = config.tls_paths().map(|paths| crate::tls::NodeTls::load(&paths, config.id)).transpose()?;
        crate::faults::crash_point("start");
        let me = config.me().clone();
        let api_listener = bind(&me.api_addr).await?;
        let raft_listener = bind(&me.raft_addr).await?;
        let clock = ClusterClock::new(Clock::new(settings.test_only_clock_offset_ms));
        let peers =
            PeerClient::new(tls.as_ref().map(|t| t.peer.clone())).with_clock(clock.clone()).with_identity(config.id);
        let internal_tls = tls.as_ref().map(|t| t.internal.clone());
        let (identity, peer_view) = match crate::identity::inspect(&config.data_dir, &settings.cluster_name, config.id)?
        {
            DataDir::Existing(identity) => (identity, None),
            DataDir::Fresh => {
                let answering = Some((&raft_listener, internal_tls.clone()));
                let view = crate::membership::ask_peers(&config, &peers, answering).await?;
                (crate::identity::create(&config.data_dir, &settings.cluster_name, config.id)?, Some(view))
            }
        };

        let enrol_key_path = config.data_dir.join("enrol.key");
        let enrol_key = crate::proof::EnrolKey::load_or_make(&enrol_key_path).map_err(|source| {
            StartError::Refused(format!("cannot read or make {}: {source}", enrol_key_path.display()))
        })?;
        let (log_store, mut sm_store) = crate::store::open(&config.data_dir).await?;
        let snapshot_due = sm_store.snapshot_every(settings.snapshot_every_commands);
        let state = sm_store.shared();
        // A removed node refuses before it takes any part in Raft (no vote request, no 503s):
        // its own state may say so, or, if it stopped before learning it, another node.
        if read_state(&state).store.node_record(config.id).is_some_and(|r| r.removed_at.is_some()) {
            return Err(StartError::Refused(format!(
                "node {} was removed from the cluster; its id is retired (this data directory says so). \
                 To bring this host back, start it with a new id and an empty data directory and add it",
                config.id
            )));
        }
        if peer_view.is_none() {
            if let Some(reason) = crate::membership::removed_at_start(&config, &peers).await {
                return Err(StartError::Refused(format!(
                    "{reason}. To bring this host back, start it with a new id and an empty data directory and add it"
                )));
            }
        }
        let backups = sm_store.clone();
        let network = NetworkFactory { client: peers.clone(), settings: Arc::new(settings.clone()) };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log_store, sm_store)
            .await
            .map_err(|e| StartError::RaftState(e.to_string()))?;
        let trigger = raft.clone();
        tokio::spawn(async move {
            loop {
                snapshot_due.notified().await;
                if let Err(e) = trigger.trigger().snapshot().await {
                    tracing::warn!("cannot start a snapshot: {e}");
                    return;
                }
            }
        });
        tokio::spawn(count_leader_changes(raft.metrics()));
        let election_hold = ElectionHold::start(
            raft.clone(),
            Duration::from_millis(settings.election_timeout_max_ms.saturating_mul(5).max(1000)),
        );
        let proposer = Proposer::start(crate::proposer::Setup {
            raft: raft.clone(),
            clock: clock.clone(),
            state: state.clone(),
            max_batch: settings.max_batch,
            max_in_flight: settings.max_in_flight_entries,
        });
        let forwarder =
            Forwarder::start(peers.clone(), FORWARD_TIMEOUT, settings.max_batch, settings.max_in_flight_entries);

        let sweep_gap = settings.sweep_interval() * 2 + Duration::from_secs(1);
        let liveness = std::sync::Mutex::new(Liveness::new(
            settings.ephemeral_inactivity_timeout_ms,
            settings.last_seen_persist_interval_ms,
            sweep_gap.as_millis() as u64,
        ));
        let node = Arc::new(Node {
            id: config.id,
            liveness,
            started: Instant::now(),
            raft,
            state,
            proposer,
            forwarder,
            peers,
            clock,
            config,
            election_hold,
            backups,
            membership_changes: ChangeLock::default(),
            disk: crate::disk::DiskState::default(),
            fatal: tokio::sync::watch::channel(None).0,
            throttle: crate::api::throttle::Throttle::new(
                settings.auth_failures_per_minute,
                settings.trusted_proxies.clone(),
            ),
            held_creates: crate::api::held::HeldCreates::default(),
            enrol_key,
            seen_proofs: crate::proof::SeenProofs::default(),
            cluster_views: crate::cluster_view::Cache::default(),
            confirming: tokio::sync::Mutex::default(),
            sweeps_done: tokio::sync::watch::channel(0).0,
            confirmed_round: std::sync::Mutex::default(),
        });

        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let stop_sweeper = stop.clone();
        let limits = settings.listener_limits();
        // Peers are authenticated in the handshake (bounded by the header timeout) and keep
        // their pooled connections open between calls: hyper's header timer also runs while a
        // kept-alive connection waits for its next request, so it is the idle timeout here.
        let internal_limits = crate::listener::Limits { header_read: limits.idle, ..limits };
        let api_tls = tls.as_ref().and_then(|t| t.api.clone());
        let admit = internal_tls.is_some().then(|| {
            let node = Arc::downgrade(&node);
            let admit: crate::listener::Admit = Arc::new(move |cert| {
                let id = crate::tls::named_node(&cert.0).ok_or("the client certificate names no node")?;
                let node = node.upgrade().ok_or("the node is stopping")?;
                // A node that may not call (removed, or out of the configuration) holds one
                // connection, to ask whether it was removed.
                if node.peer_allowed(id) {
                    Ok(crate::listener::Admitted::Member(id))
                } else {
                    Ok(crate::listener::Admitted::Retired(id))
                }
            });
            admit
        });
        let servers = vec![
            crate::listener::serve(
                raft_listener,
                internal_tls,
                crate::network::server::router(node.clone()),
                internal_limits,
                // Without TLS between nodes (the opt-out) nothing names a member: counted per
                // address like the public listener.
                admit.map_or_else(
                    || crate::listener::Clients::Public { trusted_proxies: Arc::new([]) },
                    crate::listener::Clients::Members,
                ),
                stop.clone(),
            ),
            crate::listener::serve(
                api_listener,
                api_tls.clone(),
                crate::api::router(node.clone()),
                limits,
                crate::listener::Clients::Public { trusted_proxies: settings.trusted_proxies.clone().into() },
                stop,
            ),
        ];
        node.bootstrap_if_first(peer_view).await;
        tokio::spawn(sweep_inactive_machines(Arc::downgrade(&node), stop_sweeper.clone()));
        tokio::spawn(drive_heartbeats(Arc::downgrade(&node), stop_sweeper.clone()));
        tokio::spawn(watch_free_space(Arc::downgrade(&node), stop_sweeper.clone()));
        tokio::spawn(prune_throttle(Arc::downgrade(&node), stop_sweeper));
        tokio::spawn(crate::membership::keep_registered(Arc::downgrade(&node), identity.incarnation));
        match (&tls, &api_tls) {
            (Some(_), Some(_)) => {
                tracing::info!(node = node.id, api = %me.api_addr, raft = %me.raft_addr, "node started: HTTPS API, mutual TLS between nodes")
            }
            (Some(_), None) => {
                tracing::warn!(node = node.id, api = %me.api_addr, raft = %me.raft_addr, "node started: mutual TLS between nodes, plain HTTP API (no api_cert in [tls]): keep the API on loopback or a trusted network")
            }
            _ => tracing::error!(
                node = node.id, api = %me.api_addr, raft = %me.raft_addr,
                "INSECURE: node started with plain HTTP between nodes (insecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster): anyone who reaches raft_addr can take this cluster over"
            ),
        }
        Ok(Running { node, servers, shutdown })
    }

    /// The lowest-id node of the cluster file initialises the membership on a fresh cluster,
    /// unless another node says a cluster already exists (`view`: what the other nodes said
    /// when this node started without data; asked now if it did not).
    async fn bootstrap_if_first(&self, view: Option<PeerView>) {
        let lowest = self.config.cluster.nodes.iter().map(|n| n.id).min();
        if lowest != Some(self.id) {
            return;
        }
        match self.raft.is_initialized().await {
            Ok(false) => {
                let view = match view {
                    Some(view) => view,
                    None => match crate::membership::ask_peers(&self.config, &self.peers, None).await {
                        Ok(view) => view,
                        Err(e) => return tracing::error!("{e}"),
                    },
                };
                if view.cluster_exists {
                    tracing::warn!(
                        "the cluster already exists: not initialising a new one; this node joins when added \
                         with `ztna cluster add-node`"
                    );
                    return;
                }
                let members: BTreeMap<NodeId, NodeInfo> = self.config.cluster.members();
                match self.raft.initialize(members).await {
                    Ok(()) => tracing::info!("initialised a new cluster"),
                    Err(e) => tracing::warn!("cluster initialisation: {e}"),
                }
            }
            Ok(true) => {}
            Err(e) => tracing::error!("cannot read raft state: {e}"),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn clock(&self) -> &ClusterClock {
        &self.clock
    }

    pub fn throttle(&self) -> &crate::api::throttle::Throttle {
        &self.throttle
    }

    /// Whether credential `text` (of `kind`) verifies against this node's applied state: an
    /// API key not revoked or expired, a current node key. A throttled address's requests are
    /// served only with one (see `api::throttle`); this node's state may lag a brand-new key by
    /// a moment, which only delays such a client.
    pub fn credential_valid_here(&self, kind: crate::secret::CredentialKind, text: &str) -> bool {
        use crate::secret::CredentialKind;
        let Some(presented) = crate::secret::parse_credential(kind, text) else { return false };
        let state = read_state(&self.state);
        match kind {
            CredentialKind::ApiKey => state.store.authenticate(&Actor::api_key(presented)).is_ok(),
            CredentialKind::NodeKey => {
                let actor = Actor::NodeKey { node_key_id: presented.id, secret_hash: presented.hash };
                state.store.authenticate_machine(&actor).is_ok()
            }
            CredentialKind::BootstrapToken => {
                self.config.settings().bootstrap_token_sha256.as_deref().is_some_and(|hex| {
                    let mut expected = [0u8; 32];
                    hex::decode_to_slice(hex, &mut expected).is_ok()
                        && crate::secret::hashes_equal(&presented.hash, &expected)
                })
            }
            _ => false,
        }
    }

    /// Whether an auth key's `text` is one this node knows (it may still be spent or revoked).
    pub fn auth_key_known_here(&self, text: &str) -> bool {
        use crate::secret::{hashes_equal, parse_credential, CredentialKind};
        let Some(presented) = parse_credential(CredentialKind::AuthKey, text) else { return false };
        let id = format!("{}{}", crate::sm::model::AUTH_KEY_ID_PREFIX, presented.id);
        read_state(&self.state).store.auth_key(&id).is_some_and(|k| hashes_equal(&k.secret_hash, &presented.hash))
    }

    pub fn held_creates(&self) -> &crate::api::held::HeldCreates {
        &self.held_creates
    }

    pub fn enrol_key(&self) -> &crate::proof::EnrolKey {
        &self.enrol_key
    }

    /// Whether `proof` is used here for the first time within its window (see
    /// `proof::SeenProofs`).
    pub fn proof_first_use(&self, proof: &str) -> bool {
        self.seen_proofs.first_use(proof, self.mono_ms())
    }

    /// The rules the cluster's entries are applied by (see `sm::Meta::rules`): an op an older
    /// build cannot read is only proposed once they are this build's.
    pub fn rules(&self) -> u32 {
        read_state(&self.state).store.rules()
    }

    /// This node's applied copy of an auth key, possibly behind the leader. Only the
    /// `stale_read_enrol` fault switch may base a decision on it.
    pub fn local_auth_key(&self, key_id: &str) -> Option<crate::sm::model::AuthKeyRecord> {
        read_state(&self.state).store.auth_key(key_id)
    }

    /// Marks a snapshot chunk in flight (see `election_hold`).
    pub fn snapshot_chunk(&self) -> crate::election_hold::ChunkInFlight {
        self.election_hold.chunk()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    pub(crate) fn membership_changes(&self) -> &ChangeLock {
        &self.membership_changes
    }

    /// What the replicated registry (as applied here) knows of node `id`.
    pub fn node_record(&self, id: NodeId) -> Option<crate::sm::nodes::NodeRecord> {
        read_state(&self.state).store.node_record(id).cloned()
    }

    /// Whether `actor` is the operator, on this node as the leader, by a state that holds every
    /// write acknowledged before the call: after a linearizable barrier (a quorum confirms the
    /// leadership, and this node has applied its predecessors' entries). Operator keys are
    /// revoked by `rotate_operator_key`, so the applied state alone could be stale in a way that
    /// matters: a rotated-out key authorised in a fresh leader's first moments. Fails with
    /// `NotLeader` on a node that does not lead.
    pub async fn authorize_operator(&self, actor: &Actor) -> Result<(), OperatorRefusal> {
        self.confirm_leading().await.map_err(|e| match e {
            ForwardError::NotLeader { leader } => OperatorRefusal::NotLeader(leader),
            e => OperatorRefusal::Unavailable(e.to_string()),
        })?;
        read_state(&self.state).store.authorize_operator(actor).map_err(OperatorRefusal::Refused)
    }

    /// A consistent backup of the state on this node, which must be the leader: after a
    /// linearizable barrier, so it holds every write acknowledged before the call. Answers the
    /// open file (already unlinked: it vanishes when dropped) and what it holds.
    pub async fn backup(
        &self,
        actor: &Actor,
    ) -> Result<(std::fs::File, crate::store::backup::BackupInfo), BackupRefusal> {
        if self.disk.is_full() {
            return Err(BackupRefusal::Unavailable(self.disk_full_message()));
        }
        let not_leader = |leader: Option<NodeId>| match leader.and_then(|l| Some((l, self.member(l)?))) {
            Some((leader, info)) => BackupRefusal::NotLeader { leader, api_addr: info.api_addr },
            None => BackupRefusal::Unavailable("no leader is known".into()),
        };
        match self.leader() {
            Some((leader, _)) if leader == self.id => {}
            other => {
                // Only the operator is sent on to the leader: checked there, through the same
                // linearizable read any operator query takes, so a wrong key is refused the
                // same wherever it is sent, and a freshly rotated one is not refused by a
                // follower that has not applied the rotation yet.
                match self.read(actor, &Query::ListOrgs).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(BackupRefusal::Refused(e)),
                    Err(e) => return Err(BackupRefusal::Unavailable(e.to_string())),
                }
                return Err(not_leader(other.map(|(l, _)| l)));
            }
        }
        // After the barrier, which the backup needs anyway: it then holds every write
        // acknowledged before the call, and the operator key is checked against the same state.
        self.authorize_operator(actor).await.map_err(|e| match e {
            OperatorRefusal::Refused(e) => BackupRefusal::Refused(e),
            OperatorRefusal::NotLeader(leader) => not_leader(leader),
            OperatorRefusal::Unavailable(why) => BackupRefusal::Unavailable(why),
        })?;
        let path = self.config.data_dir.join(format!("backup-{}.tmp", crate::clock::wall_ms()));
        let store = self.backups.clone();
        let written = tokio::task::spawn_blocking(move || {
            let info = store.write_backup(&path);
            let file = std::fs::File::open(&path);
            let _ = std::fs::remove_file(&path);
            (info, file)
        })
        .await
        .map_err(|e| BackupRefusal::Unavailable(format!("the backup task failed: {e}")))?;
        let info = written.0?;
        let file = written.1.map_err(|e| BackupRefusal::Unavailable(format!("cannot reopen the backup: {e}")))?;
        tracing::info!(index = info.index, rows = info.rows, bytes = info.bytes, "backup taken");
        Ok((file, info))
    }

    /// This node's applied index, row count and the hash of its state (see
    /// `StateMachineStore::state_digest`), read off the async threads.
    pub async fn state_hash(&self) -> Result<(Option<u64>, u64, String), String> {
        let store = self.backups.clone();
        tokio::task::spawn_blocking(move || store.state_digest()).await.map_err(|e| e.to_string())?
    }

    /// What a full disk makes every answer say.
    pub fn disk_full_message(&self) -> String {
        let minimum = self.config.settings().min_free_disk_mb << 20;
        crate::disk::full_message(&self.config.data_dir, self.disk.free_bytes(), minimum)
    }

    pub fn disk_full(&self) -> bool {
        self.disk.is_full()
    }

    /// The watchdog's last reading: free bytes, and whether the node stopped for want of space.
    pub fn disk_state(&self) -> (u64, bool) {
        (self.disk.free_bytes(), self.disk.is_full())
    }

    /// Stops the node on its own, with `reason` in its log (see [`Running::failed`]).
    pub fn fatal(&self, reason: String) {
        tracing::error!("stopping: {reason}");
        self.fatal.send_replace(Some(reason));
    }

    /// The leader's id and where to reach it: here, or its internal address.
    pub(crate) fn route_to_leader(&self) -> Result<(NodeId, Route), ForwardError> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => Ok((leader, Route::Local)),
            Some((leader, Some(info))) => {
                let addr = self.config.settings().dial_addr(leader, &info.raft_addr);
                Ok((leader, Route::Remote(crate::network::Peer { id: leader, addr })))
            }
            Some((leader, None)) => Err(ForwardError::Unavailable(format!("leader {leader} has no address"))),
            None => Err(ForwardError::NotLeader { leader: None }),
        }
    }

    /// Member `id`'s addresses, if it is a member.
    fn member(&self, id: NodeId) -> Option<NodeInfo> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    fn leader(&self) -> Option<(NodeId, Option<NodeInfo>)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let info = metrics.membership_config.membership().get_node(&leader).cloned();
        Some((leader, info))
    }

    /// Waits until a leader is known or `deadline` passes.
    async fn wait_for_leader(&self, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        while metrics.borrow().current_leader.is_none() {
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return;
            }
        }
    }

    /// Applies `command` through the leader, wherever it is, retrying until the request
    /// timeout. A retry resends the same command (same request id, same ids and secrets), which
    /// the state machine applies at most once.
    pub async fn write(&self, command: Command) -> Result<Outcome, Unavailable> {
        let command = &command;
        self.via_leader(self.config.settings().request_timeout(), |route, deadline| async move {
            match route {
                Route::Local => self.propose_as_leader(command.clone()).await,
                Route::Remote(leader) => {
                    crate::metrics::global().forwarded(true);
                    self.forwarder.propose(leader, command.clone(), deadline).await
                }
            }
        })
        .await
    }

    /// A linearizable read through the leader, wherever it is.
    pub async fn read(&self, actor: &Actor, query: &Query) -> Result<Result<Answer, OpError>, Unavailable> {
        if crate::faults::local_read() {
            // The forbidden shortcut, on purpose: this node's state, however stale.
            return Ok(read_state(&self.state).store.query(actor, query));
        }
        let forwarded = &ForwardedQuery { actor: actor.clone(), query: query.clone() };
        // A heartbeat that cannot reach the leader from here fails fast, so its agent asks the
        // next node within the same heartbeat interval (see `agent`).
        let timeout = match query {
            Query::MachineStatus => self.config.settings().request_timeout().min(HEARTBEAT_WAIT),
            _ => self.config.settings().request_timeout(),
        };
        self.via_leader(timeout, |route, deadline| async move {
            match route {
                Route::Local => self.query_as_leader(actor, query).await,
                // A leader of an older build cannot decode a newer query: it is not sent (again).
                Route::Remote(leader) if self.peers.queries_of(&leader.addr).is_some_and(|q| q < query.since()) => {
                    Err(ForwardError::Unavailable(format!(
                        "the leader ({leader}) runs an older build that cannot answer this request; \
                         it can once the rolling upgrade reaches the leader"
                    )))
                }
                Route::Remote(leader) => {
                    crate::metrics::global().forwarded(false);
                    let timeout = deadline.saturating_duration_since(Instant::now()).min(FORWARD_TIMEOUT);
                    self.peers.query(&leader, forwarded, timeout).await
                }
            }
        })
        .await
    }

    /// Runs `attempt` on the leader (here, or forwarded to its internal address) until it
    /// answers or the request timeout passes. Each attempt is bounded by the same deadline (which
    /// it is given, so a forwarded call ends there too): a leader cut off from its quorum may
    /// never commit.
    async fn via_leader<T, F, Fut>(&self, timeout: Duration, mut attempt: F) -> Result<T, Unavailable>
    where
        F: FnMut(Route, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, ForwardError>>,
    {
        let started = Instant::now();
        if self.disk.is_full() {
            let last_error = self.disk_full_message();
            return Err(Unavailable { waited_ms: 0, last_error, disk_full: true });
        }
        let deadline = started + timeout;
        loop {
            let result = match self.route_to_leader() {
                Ok((leader, route)) => {
                    // Give up on this leader as soon as another one is known: a deposed or cut-off
                    // leader may never answer. A write retried elsewhere keeps its request id, so
                    // it applies at most once.
                    let answer = tokio::time::timeout_at(deadline, attempt(route, deadline));
                    tokio::select! {
                        answer = answer => answer
                            .unwrap_or_else(|_| Err(ForwardError::Transport("the leader did not answer in time".into()))),
                        new = self.leader_other_than(leader) => Err(ForwardError::NotLeader { leader: Some(new) }),
                    }
                }
                Err(e) => Err(e),
            };
            let last_error = match result {
                Ok(answer) => return Ok(answer),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Unavailable {
                    waited_ms: started.elapsed().as_millis() as u64,
                    last_error,
                    disk_full: false,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.wait_for_leader(deadline).await;
        }
    }

    /// Resolves when this node learns of a leader other than `leader`.
    async fn leader_other_than(&self, leader: NodeId) -> NodeId {
        let mut metrics = self.raft.metrics();
        let changed =
            metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != leader)).await.map(|m| m.current_leader);
        match changed {
            Ok(new) => new.unwrap_or(leader),
            // Raft stopped: the deadline ends the request.
            Err(_) => std::future::pending().await,
        }
    }

    /// Proposes on this node, which must be the leader. A command its caller may not send is
    /// refused here (see [`Node::refusal`]), before anything is proposed, replicated or fsynced;
    /// the state machine checks again when applying.
    pub async fn propose_as_leader(&self, command: Command) -> Result<Outcome, ForwardError> {
        if let Some(refused) = self.refusal(&command).await? {
            return Ok(Err(refused));
        }
        // A re-key is a sign of life from the moment it is proposed: a sweep decided while it
        // commits must not judge the machine by its old timer (and see the new node key).
        // (The state lock is let go before the liveness lock is taken: the sweep takes them in
        // the other order.)
        let rekeyed = read_state(&self.state).store.machine_an_enrolment_rekeys(&command.op);
        if let Some(machine_id) = rekeyed {
            self.liveness().alive(&machine_id, self.mono_ms());
        }
        let outcome = self.proposer.propose(command).await?;
        if let Ok(OpOk::EnrolledAs { enrolled, .. }) = &outcome {
            // An enrolment or a re-key is a sign of life, as a heartbeat is.
            self.liveness().alive(&enrolled.machine_id, self.mono_ms());
        }
        Ok(outcome)
    }

    /// Why `command` is refused before Raft, if it is: whatever the state machine would refuse
    /// it for, deciding from this leader's state at the time it would stamp (`KeyStore::admit`:
    /// a credential that does not authenticate, a call outside its scopes or org, a spent,
    /// revoked or expired key, a stale proof, a re-key too many, a request id reused for
    /// another command); a copy of a command the state machine remembers goes on, to be
    /// answered from its memory. A refusal is only answered once a quorum confirmed, after it was found, that this node
    /// still leads and it applied everything committed before ([`Node::confirm_leading`]): a
    /// new leader's applied state may lack its predecessor's last entries, and a deposed
    /// leader's the new leader's, and a definite refusal of a credential that exists would be
    /// a lie. What passes here is proposed, and the state machine decides.
    async fn refusal(&self, command: &Command) -> Result<Option<OpError>, ForwardError> {
        let refused = || {
            let term = self.raft.metrics().borrow().current_term;
            let state = read_state(&self.state);
            if state.store.rules() < 2 {
                return None;
            }
            let now = self.clock.peek(term, state.store.clock());
            state.store.admit(command, now).err()
        };
        if refused().is_none() || crate::faults::stale_refusal() {
            return Ok(refused());
        }
        self.confirm_leading().await?;
        Ok(refused())
    }

    /// Resolves once a quorum confirmed this node's leadership in a round that began after the
    /// call, and this node applied everything committed before that round (openraft's
    /// `ensure_linearizable`: heartbeats, no log entry). Concurrent callers share rounds: one
    /// round at a time, and a caller is served by the first round that began after it asked.
    pub async fn confirm_leading(&self) -> Result<(), ForwardError> {
        let asked = Instant::now();
        let _one_round_at_a_time = self.confirming.lock().await;
        // Strictly after: a round that began in the same instant may have begun before.
        if self.confirmed_round.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|began| began > asked) {
            return Ok(());
        }
        let began = Instant::now();
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
                ForwardError::NotLeader { leader: f.leader_id.filter(|l| *l != self.id) }
            }
            e => ForwardError::Unavailable(e.to_string()),
        })?;
        *self.confirmed_round.lock().unwrap_or_else(|p| p.into_inner()) = Some(began);
        Ok(())
    }

    /// Answers a read on this node, which must be the leader. Reads of keys and listings wait for
    /// a read barrier (an entry proposed after the read began, applied here: see `proposer`), so
    /// they see every write proposed before them that will ever commit, at the cluster time of
    /// the state machine. A machine's own status query is its heartbeat: it only confirms
    /// leadership with a quorum (no log entry), and the leader records it without a Raft write.
    pub async fn query_as_leader(&self, actor: &Actor, query: &Query) -> Result<Result<Answer, OpError>, ForwardError> {
        if let Some(why) = self.raft_stopped() {
            return Err(ForwardError::Unavailable(why));
        }
        if matches!(query, Query::MachineStatus) {
            self.confirm_leading().await?;
        } else {
            // Refused reads are answered before the barrier, which would cost a log entry: from
            // a state confirmed current, as refused writes are (see `Node::refusal`).
            let refused = || read_state(&self.state).store.admit_query(actor, query).err();
            if refused().is_some() && !crate::faults::stale_refusal() {
                self.confirm_leading().await?;
            }
            if let Some(refused) = refused() {
                return Ok(Err(refused));
            }
            self.proposer.barrier().await?;
        }
        if matches!(query, Query::MachineStatus) {
            self.heartbeat_seen(actor).await?;
        }
        let mut answer = read_state(&self.state).store.query(actor, query);
        match &mut answer {
            Ok(Answer::Machine(machine)) => {
                machine.last_seen = self.liveness().last_seen(&machine.machine_id).or(machine.last_seen);
            }
            Ok(Answer::Machines(machines)) => {
                let liveness = self.liveness();
                for machine in machines {
                    machine.last_seen = liveness.last_seen(&machine.machine_id).or(machine.last_seen);
                }
            }
            _ => {}
        }
        Ok(answer)
    }

    /// Whether node `id` may make internal calls to this one: a member of the configuration, a
    /// node `add-node` admitted (joining), or, before the cluster is formed, a node of the cluster
    /// file. A removed node may not.
    ///
    /// A node the registry says was removed may not, even while still in the configuration;
    /// nor may one that registered its data directory (it was a member) but is out of the
    /// configuration: its removal is half done (the leader finishes it, see
    /// [`Node::finish_removals`]), and it gets no access meanwhile.
    pub fn peer_allowed(&self, id: NodeId) -> bool {
        let (in_config, formed) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            (membership.get_node(&id).is_some(), membership.nodes().count() > 0)
        };
        match self.node_record(id) {
            Some(record) if record.removed_at.is_some() => false,
            // Before this node has loaded its configuration (just started), a registered member
            // is let in: the leader's appends are how it learns it.
            Some(record) => in_config || record.incarnation.is_none() || !formed,
            None => in_config || (!formed && self.config.cluster.node(id).is_some()),
        }
    }

    /// On the leader: retires the ids of nodes that were members (they registered their data
    /// directory) and are out of the configuration, but whose removal stopped before their id
    /// was retired (the leader that removed them stopped first). A removal is thus complete,
    /// never half done for long.
    async fn finish_removals(&self) {
        if self.rules() < 4 {
            return;
        }
        let (leading, config): (bool, Vec<NodeId>) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let joint = membership.get_joint_config().len() > 1;
            (metrics.state == ServerState::Leader && !joint, membership.nodes().map(|(id, _)| *id).collect())
        };
        if !leading {
            return;
        }
        let half_done: Vec<NodeId> = read_state(&self.state)
            .store
            .node_records()
            .filter(|r| r.removed_at.is_none() && r.incarnation.is_some() && !config.contains(&r.node_id))
            .map(|r| r.node_id)
            .collect();
        for node_id in half_done {
            tracing::warn!(
                node = node_id,
                "node {node_id} is out of the configuration but its id was not retired: retiring it"
            );
            let command = Command {
                request_id: crate::api::new_request_id(),
                actor: Actor::Anonymous,
                op: Op::RetireNode { node_id },
            };
            let timeout = self.config.settings().request_timeout();
            if !matches!(tokio::time::timeout(timeout, self.proposer.propose(command)).await, Ok(Ok(Ok(_)))) {
                tracing::warn!(node = node_id, "could not retire node {node_id} this time");
            }
        }
    }

    /// Whether this node can serve (see [`Node::readiness`]).
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Whether this node is a member that knows a leader.
    pub fn is_member_with_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader.is_some() && metrics.membership_config.membership().get_node(&self.id).is_some()
    }

    /// Why this node's Raft takes no part any more (its disk filled, or Raft stopped on a fatal
    /// error), if it does not: it then refuses Raft calls at once, without involving Raft.
    pub fn raft_stopped(&self) -> Option<String> {
        if self.disk.is_full() {
            return Some(format!("raft stopped on node {}: its disk is full", self.id));
        }
        let state = self.raft.metrics().borrow().state;
        (state == ServerState::Shutdown).then(|| format!("raft stopped on node {}", self.id))
    }

    /// Whether this node can serve, for `GET /readyz`: the leader it knows, or the code and
    /// reason it cannot (`disk_full`, `raft_stopped`, `not_a_member`, `no_leader`,
    /// `catching_up`: more than [`CATCHING_UP_ENTRIES`] entries received but not applied yet).
    pub fn readiness(&self) -> Result<Option<NodeId>, (&'static str, String)> {
        if self.disk.is_full() {
            return Err(("disk_full", self.disk_full_message()));
        }
        if let Some(reason) = self.fatal.borrow().clone() {
            return Err(("raft_stopped", reason));
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Shutdown {
            return Err(("raft_stopped", format!("raft stopped on node {}", self.id)));
        }
        if metrics.membership_config.membership().get_node(&self.id).is_none() {
            return Err(("not_a_member", format!("node {} is not a member of the cluster", self.id)));
        }
        let Some(leader) = metrics.current_leader else {
            return Err(("no_leader", "this node knows no leader".to_string()));
        };
        let received = metrics.last_log_index.unwrap_or(0);
        let applied = metrics.last_applied.map_or(0, |a| a.index);
        if received.saturating_sub(applied) > CATCHING_UP_ENTRIES {
            return Err(("catching_up", format!("catching up: {applied} of {received} entries applied")));
        }
        Ok(Some(leader))
    }

    /// Every member's own view of the cluster (see `cluster_view`).
    pub async fn cluster_view(self: &Arc<Self>) -> crate::cluster_view::ClusterView {
        self.cluster_views.get(self).await
    }

    pub(crate) fn cluster_views(&self) -> &crate::cluster_view::Cache {
        &self.cluster_views
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, info)| MemberInfo {
                id: *id,
                api_addr: info.api_addr.clone(),
                raft_addr: info.raft_addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterInfo {
            cluster_name: self.config.settings().cluster_name.clone(),
            node_id: self.id,
            role: role.to_string(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|l| l.index),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            disk_full: self.disk.is_full(),
            members,
        }
    }
}

impl Node {
    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// On the leader: the ephemeral machines past their timeout, and last-seen times due to be
    /// persisted. Elsewhere: forgets liveness and answers `None`.
    fn liveness_due(&self) -> Option<LivenessDue> {
        let (term, leading) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_term, metrics.state == ServerState::Leader)
        };
        let mut liveness = self.liveness();
        let swept_term = match (leading, liveness.term()) {
            (true, _) => term,
            // The forbidden shortcut, on purpose: sweep the view kept from the old term.
            (false, Some(old)) if crate::faults::forward_sweep() => old,
            (false, _) => {
                liveness.step_down();
                return None;
            }
        };
        let state = read_state(&self.state);
        let machines = state.store.machine_liveness_ids();
        let mono = self.mono_ms();
        let expired = liveness.sweep(swept_term, mono, machines.iter().map(|(id, eph)| (id.as_str(), *eph)));
        let expired = expired.iter().filter_map(|id| state.store.swept_machine(id)).collect();
        let seen = if leading { liveness.take_persist(mono) } else { None };
        Some(LivenessDue { term, expired, seen, leading })
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat of the machine `actor` names, before its answer is read. If the sweep
    /// in flight is deleting it, waits until that sweep's outcome is known and this node still
    /// leads (a sweep proposed by a leader deposed before it committed may still commit under
    /// the next): the answer then comes from the state after the sweep, so a machine is never
    /// told it is fine just before it is deleted.
    async fn heartbeat_seen(&self, actor: &Actor) -> Result<(), ForwardError> {
        let mut sweeps = self.sweeps_done.subscribe();
        let Ok(machine_id) = read_state(&self.state).store.authenticate_machine(actor).map(|m| m.machine_id.clone())
        else {
            return Ok(());
        };
        if !self.observe_alive(&machine_id) || crate::faults::sweep_unchecked() {
            return Ok(());
        }
        let timeout = self.config.settings().request_timeout();
        if tokio::time::timeout(timeout, sweeps.changed()).await.is_err() {
            return Err(ForwardError::Unavailable(
                "this machine is being swept and the sweep has not committed yet; ask again".into(),
            ));
        }
        self.confirm_leading().await?;
        self.observe_alive(&machine_id);
        Ok(())
    }

    fn observe_alive(&self, machine_id: &str) -> bool {
        self.liveness().observe(machine_id, self.mono_ms(), self.clock.wall().now_ms())
    }

    /// One sweep: on the leader, deregister ephemeral machines past their timeout and persist
    /// last-seen times when due; elsewhere, forget liveness. What a sweep decides is proposed
    /// here only, never forwarded: it is this leader's view, and only in its term (the state
    /// machine ignores the deregistration in an entry of any other term, and skips a machine
    /// that re-keyed or was seen since it was judged). A sweep not proposed within the request
    /// timeout is dropped, never proposed later.
    async fn sweep_once(&self) {
        self.adopt_rules_when_everyone_can().await;
        self.finish_removals().await;
        let Some(LivenessDue { term, expired, seen, leading }) = self.liveness_due() else { return };
        let system = |op| Command { request_id: crate::api::new_request_id(), actor: Actor::Anonymous, op };
        let timeout = self.config.settings().request_timeout();
        let local = |command| tokio::time::timeout(timeout, self.proposer.propose(command));
        let mut deadline = std::time::Instant::now() + timeout;
        if !expired.is_empty() {
            let ids: Vec<&str> = expired.iter().map(|m| m.machine_id.as_str()).collect();
            tracing::info!(count = expired.len(), term, machines = ?ids, "deregistering inactive ephemeral machines");
            crate::faults::delay_point("sweep:decided").await;
            if crate::faults::sweep_unchecked() {
                // The fault: the decision is proposed a while after it was made.
                tokio::time::sleep(Duration::from_secs(4)).await;
                deadline = std::time::Instant::now() + timeout;
            }
            // Until every member runs this build, the op its older peers can read.
            let op = match self.rules() {
                4.. => Op::SweepSilent { term, machines: expired },
                2 | 3 => Op::SweepInactive { term, machine_ids: expired.into_iter().map(|m| m.machine_id).collect() },
                _ => Op::DeregisterInactive { machine_ids: expired.into_iter().map(|m| m.machine_id).collect() },
            };
            let decided = if !leading && crate::faults::forward_sweep() {
                // The fault: forwarded to the new leader, in its term.
                tokio::time::timeout(timeout, self.write(system(op))).await.map(|r| r.map_err(|e| e.last_error))
            } else {
                // Proposed within the request timeout or not at all, and then waited for until it
                // commits or this node stops leading: heartbeats of these machines wait for the
                // outcome, so none is answered "fine" before a deletion that is still to come.
                Ok(self.proposer.propose_before(system(op), deadline).await.map_err(|e| e.to_string()))
            };
            match decided {
                Ok(Ok(Ok(OpOk::Count(count)))) => crate::metrics::global().ephemeral_deleted(count),
                Ok(Ok(other)) => tracing::warn!("inactive machines not deregistered: {other:?}"),
                Ok(Err(e)) => tracing::warn!("inactive machines not deregistered this sweep: {e}"),
                Err(_) => tracing::warn!("inactive machines not deregistered this sweep: no commit in time"),
            }
        }
        self.liveness().swept(self.mono_ms());
        self.sweeps_done.send_modify(|n| *n += 1);
        if let Some(seen) = seen {
            if !matches!(local(system(Op::RecordLastSeen { seen })).await, Ok(Ok(Ok(_)))) {
                tracing::warn!("last-seen times not persisted this time");
            }
            self.liveness().swept(self.mono_ms());
        }
    }
}

impl Node {
    /// On the leader of a cluster whose entries are still applied by older rules: once every
    /// member says its build knows this build's rules, proposes to apply later entries by them
    /// (`AdoptRules`). A rolling upgrade thus switches every replica at the same log index.
    async fn adopt_rules_when_everyone_can(&self) {
        let rules = read_state(&self.state).store.rules();
        if rules >= crate::sm::RULES || self.raft.metrics().borrow().state != ServerState::Leader {
            return;
        }
        let members = self.cluster_info().members;
        let settings = self.config.settings();
        let ready = members.iter().filter(|m| m.id != self.id).all(|m| {
            let addr = settings.dial_addr(m.id, &m.raft_addr);
            self.peers.rules_of(&addr).is_some_and(|r| r >= crate::sm::RULES)
        });
        if !ready {
            return;
        }
        let op = Op::AdoptRules { version: crate::sm::RULES };
        let command = Command { request_id: crate::api::new_request_id(), actor: Actor::Anonymous, op };
        let timeout = self.config.settings().request_timeout();
        match tokio::time::timeout(timeout, self.proposer.propose(command)).await {
            Ok(Ok(Ok(_))) => tracing::info!(
                from = rules,
                to = crate::sm::RULES,
                "every member runs this build: adopted its state-machine rules"
            ),
            _ => tracing::warn!("could not adopt the new state-machine rules this time"),
        }
    }
}

/// Runs [`Node::sweep_once`] every sweep interval until the node stops.
async fn sweep_inactive_machines(node: std::sync::Weak<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = match node.upgrade() {
        Some(node) => node.config.settings().sweep_interval(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let Some(node) = node.upgrade() else { return };
        node.sweep_once().await;
    }
}

/// Drops the throttle's ended windows every few seconds, off the request path.
async fn prune_throttle(node: std::sync::Weak<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let Some(node) = node.upgrade() else { return };
        node.throttle.prune();
    }
}

/// The free-space watchdog (see `disk`): once a second, and once short of space, for good.
async fn watch_free_space(node: std::sync::Weak<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut told_space_is_back = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let Some(node) = node.upgrade() else { return };
        let minimum = node.config.settings().min_free_disk_mb << 20;
        let free = match crate::disk::free_bytes(&node.config.data_dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!("cannot read the free space of {}: {e}", node.config.data_dir.display());
                continue;
            }
        };
        if node.disk.observe(free, minimum) {
            tracing::error!("{}", node.disk_full_message());
            if let Err(e) = node.raft.shutdown().await {
                tracing::warn!("raft shutdown: {e}");
            }
        } else if node.disk.is_full() && free >= minimum && !told_space_is_back {
            told_space_is_back = true;
            tracing::warn!(free_mib = free >> 20, "space is back on the data directory: restart this node to rejoin");
        }
    }
}

/// The leader's heartbeats, sent only when nothing was proposed for a heartbeat interval.
///
/// openraft 0.9 keeps one AppendEntries in flight per follower and sends its heartbeats through
/// the same stream, every interval, busy or not: across regions a new entry then often waits a
/// whole round trip behind a heartbeat. Appends (and the commit notices that follow them)
/// already reset the followers' election timers, so heartbeats are only needed when idle.
/// Checked five times per interval, the longest silence a follower sees stays near one
/// interval, as with openraft's own timer.
async fn drive_heartbeats(node: std::sync::Weak<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = match node.upgrade() {
        Some(node) => Duration::from_millis(node.config.settings().heartbeat_interval_ms),
        None => return,
    };
    let mut last_heartbeat = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval / 5) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let Some(node) = node.upgrade() else { return };
        let leading = node.raft.metrics().borrow().state == ServerState::Leader;
        if !leading || node.proposer.idle_for() < interval || last_heartbeat.elapsed() < interval {
            continue;
        }
        last_heartbeat = Instant::now();
        if node.raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

/// Counts every change of the known leader to a new one (for `ztna_raft_leader_changes_total`).
async fn count_leader_changes(mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, NodeInfo>>) {
    let mut last = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            if last.is_some() {
                crate::metrics::global().leader_changed();
            }
            last = leader;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr: addr.to_string(), source })
}
