//! ztna-bench: the load generator and the benchmark of ztna-keystore against etcd.
//!
//! - [`systems`]: starting, killing and finding the leader of a three-node ztna or etcd cluster;
//! - [`ops`]: one operation of each workload for each system (ztna's HTTP API, etcd's v3 JSON
//!   gateway);
//! - [`load`]: the closed-loop load generator (tokio, HTTP/1.1 keep-alive), its statistics and
//!   its own CPU use;
//! - [`failover`], [`scale`]: the leader-kill and 1,000,000-key measurements;
//! - [`report`]: the markdown table and JSON under `docs/bench/`;
//! - [`bench`]: the whole benchmark wired together; [`selfcheck`]: the consistency check
//!   `scripts/test` runs.

pub mod bench;
pub mod failover;
pub mod load;
pub mod ops;
pub mod report;
pub mod scale;
pub mod selfcheck;
pub mod systems;
