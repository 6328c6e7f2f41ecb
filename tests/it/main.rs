//! Integration tests against real `ztna server` processes on loopback. One binary, so the
//! crate compiles once; `support` starts and stops the clusters.

mod errors;
mod failover;
mod machines;
mod membership;
mod ops;
mod races;
mod support;
mod tls;
mod walkthrough;
