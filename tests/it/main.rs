//! Integration tests against real `ztna server` processes on loopback. One binary, so the
//! crate compiles once; `support` starts and stops the clusters.

mod abuse;
mod browser;
mod console;
mod crash;
mod edges;
mod errors;
mod failover;
mod local_cluster;
mod machines;
mod membership;
mod ops;
mod races;
mod resilience;
mod runbook;
mod security;
mod support;
mod tailscale;
mod time;
mod tls;
mod trust;
mod walkthrough;
