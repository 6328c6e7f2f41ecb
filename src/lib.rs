//! ztna-keystore: a replicated auth-key store for zero-trust network control planes.
//!
//! Three nodes replicate every key creation, enrolment and revocation through Raft (openraft)
//! over RocksDB, so no one-shot key enrols twice and any node answers the API. The layers, from
//! the inside out:
//!
//! - [`sm`]: the pure key state machine. Every decision about a key is made in its `apply`.
//! - [`codec`]: the one serialization format (bincode 2 behind a version byte).
//! - [`store`]: RocksDB: the Raft log with grouped fsyncs, the vote, the state machine's rows and
//!   snapshots. The only module that knows RocksDB.
//! - [`raft_types`]: openraft's type configuration; a log entry is a stamped batch of commands.
//! - [`network`]: node-to-node HTTP: Raft RPCs and forwarding of requests to the leader.
//! - [`proposer`] and [`clock`]: group commit and the leader's timestamps; [`forwarder`]: a
//!   follower's writes travel to the leader in batches.
//! - [`node`]: the one place a node is wired together; `write` and `read` reach the leader.
//! - [`api`]: the public HTTP API (the only module that knows HTTP status codes).
//! - [`client`] and [`cli`]: the `ztna` command line, talking to any node of `ZTNA_SERVER`.
//! - [`sm::model`] machines, [`liveness`] (the leader's heartbeat table) and [`agent`] (`ztna up`).
//! - [`membership`]: adding and removing nodes; [`identity`]: a data directory's owner.
//! - [`tls`]: mutual TLS between nodes, HTTPS for the API, `ztna cluster certs`.
//! - [`disk`]: the free-space watchdog.
//! - [`metrics`]: the Prometheus registry behind `GET /metrics`.
//! - [`config`]: cluster files; [`secret`]: credentials; [`private_file`]: 0600 files;
//!   [`faults`]: test-only fault switches.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster_view;
pub mod codec;
pub mod config;
pub mod disk;
pub mod election_hold;
pub mod faults;
pub mod forwarder;
pub mod identity;
pub mod listener;
pub mod liveness;
pub mod log_every;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod private_file;
pub mod proof;
pub mod proposer;
pub mod raft_types;
pub mod secret;
pub mod sm;
pub mod store;
pub mod tls;
