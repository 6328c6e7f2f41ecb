//! jepsen-lite: a Jepsen-style test of ztna-keystore's promises against a real cluster.
//!
//! - [`hosts`]: network namespaces (root) or loopback with proxies, and the partitions;
//! - [`cluster`]: the three `ztna server` processes and their faults;
//! - [`api`]: the HTTP client and the outcome table (ok, fail, info);
//! - [`history`]: invocations and completions, with Jepsen's field names;
//! - [`workload`]: the clients racing over keys; [`nemesis`]: the fault schedule;
//! - [`checker`]: one file per promise; [`report`] and [`plot`]: the run folder;
//! - [`run`] wires one run together; [`selftest`] proves the checkers catch real bugs;
//! - [`wan`]: the multi-region timing test (latency bound, quiet minute).

pub mod api;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod hosts;
pub mod lazyfs;
pub mod nemesis;
pub mod options;
pub mod plot;
pub mod report;
pub mod run;
pub mod selftest;
pub mod wan;
pub mod workload;
