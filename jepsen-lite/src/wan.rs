//! The WAN test: a cluster whose nodes are a fixed round trip apart, started with the timing
//! profile a cluster file documents (`cluster/three-regions.example.toml`).
//!
//! It checks two promises of that profile: enrolment through any node succeeds with latency
//! bounded by about two round trips (one to forward to the leader, one to replicate), and a
//! quiet minute sees no leader change and no new term. Latency is netem on the nodes'
//! interfaces where the kernel has it, else the in-namespace relays (or loopback proxies
//! without root), which delay only traffic between nodes.
//!
//! This module must not decide anything about keys; it measures and compares.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::cluster::Cluster;
use crate::history::OpType;
use crate::hosts::Hosts;

#[derive(Debug, Clone, Args)]
pub struct WanOptions {
    /// Round trip between any two nodes, in ms (half of it each way).
    #[arg(long, default_value_t = 100)]
    pub rtt_ms: u64,
    /// Seconds of quiet in which no leader change may happen.
    #[arg(long, default_value_t = 60)]
    pub quiet_secs: u64,
    /// Enrolments measured through each node (60: the p99 is then the second slowest, so one
    /// slow fsync on a busy CI host does not decide the verdict; the slowest is reported).
    #[arg(long, default_value_t = 60)]
    pub enrolments: u64,
    /// The cluster file whose timing settings the nodes get.
    #[arg(long, default_value = "cluster/three-regions.example.toml")]
    pub profile: PathBuf,
    /// The `ztna` binary to run (default: next to this executable).
    #[arg(long)]
    pub ztna: Option<PathBuf>,
    /// Where the run folder goes.
    #[arg(long, default_value = "jepsen-lite/store")]
    pub store: PathBuf,
}

/// The settings a timing profile may set.
const TIMING_KEYS: &[&str] =
    &["heartbeat_interval_ms", "election_timeout_min_ms", "election_timeout_max_ms", "request_timeout_ms"];

/// The timing lines of `profile`'s `[settings]`.
fn timing_of(profile: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(profile).with_context(|| format!("read {}", profile.display()))?;
    let file: toml::Table = text.parse().with_context(|| format!("parse {}", profile.display()))?;
    let settings = file.get("settings").and_then(|s| s.as_table()).context("the profile has no [settings]")?;
    let mut lines = String::new();
    for key in TIMING_KEYS {
        if let Some(value) = settings.get(*key) {
            lines.push_str(&format!("{key} = {value}\n"));
        }
    }
    Ok(lines)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the test; answers whether every promise held.
pub async fn run(options: WanOptions) -> anyhow::Result<bool> {
    let ztna = match &options.ztna {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ztna"),
    };
    let timing = timing_of(&options.profile)?;
    let dir = options.store.join(format!("wan-{}", crate::run::stamp()?));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let hosts = Hosts::create(3).await?;
    let answers_delayed = hosts.set_latency(options.rtt_ms / 2)?;
    let cluster = Cluster::with_timing(hosts, &dir, &ztna, Vec::new(), timing.clone()).await?;
    let result = measure(&cluster, &options, answers_delayed, &timing).await;
    cluster.stop_all().await;
    let _ = cluster.hosts.set_latency(0);
    cluster.hosts.teardown();
    let _ = std::fs::remove_dir_all(cluster.data_dir());
    let passed = result?;
    println!("wan: logs in {}", dir.display());
    Ok(passed)
}

async fn measure(cluster: &Cluster, options: &WanOptions, answers_delayed: bool, timing: &str) -> anyhow::Result<bool> {
    let rtt = options.rtt_ms as f64;
    println!(
        "wan: {} ms round trip between nodes ({}), timing profile {}:\n{}",
        options.rtt_ms,
        cluster.hosts.mode(),
        options.profile.display(),
        timing.trim_end().lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    );
    let mut api = cluster.api.clone();
    cluster.start_all().await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await.context("no leader within 60 s")?;
    api.api_key = cluster.bootstrap_token.clone();
    let init = api.post(leader, "/api/cluster/init", &json!({ "org_name": "wan" }), true).await;
    if init.kind != OpType::Ok {
        bail!("cluster init failed: {:?}", init.error);
    }
    api.org_id = init.body["org_id"].as_str().unwrap_or_default().to_string();
    api.api_key = init.body["api_key"].as_str().unwrap_or_default().to_string();
    let key =
        api.key_management(leader, "create_auth_key", json!({ "reusable": true, "expires_in": 3600 }), true).await;
    let secret = key.body["key"].as_str().context("create_auth_key answered no key")?.to_string();

    // Enrolments one at a time through each node (after one each to open the pooled
    // connections between nodes).
    let mut passed = true;
    let mut device = 0u64;
    // Each node's enrolment key, for the proofs (fetched before timing anything).
    let mut server_keys = std::collections::BTreeMap::new();
    for node in 1..=3u64 {
        let key = api.get(node, "/api/enrol/key").await.context("GET /api/enrol/key")?;
        server_keys.insert(node, key["server_key"].as_str().unwrap_or_default().to_string());
    }
    let mut enrol = |node: u64| {
        device += 1;
        let (private, public) = ztna_proof::new_key_pair();
        let body = ztna_proof::enrol_body(
            &private,
            &public,
            &server_keys[&node],
            &secret,
            &format!("wan-{device}"),
            &format!("wan-{device}"),
            ztna_proof::issued_now(),
        );
        let api = api.clone();
        async move {
            let started = Instant::now();
            let outcome = api.post(node, "/api/enrol", &body, true).await;
            (outcome, started.elapsed().as_secs_f64() * 1000.0)
        }
    };
    for node in 1..=3 {
        let _ = enrol(node).await;
    }
    let leader = cluster.leader().await.unwrap_or(leader);
    // Forwarding to the leader costs one round trip, replication another; the client's own
    // leg to the node crosses the delay too when netem is on the nodes' interfaces.
    let client_leg = if answers_delayed { rtt / 2.0 } else { 0.0 };
    for node in 1..=3u64 {
        // Steady state: one more enrolment right before measuring, so the connections this
        // node's requests use are open (pools drop connections idle for a few seconds while
        // the other nodes are measured; a first request after idle pays their handshakes).
        let _ = enrol(node).await;
        let mut ms = Vec::new();
        for _ in 0..options.enrolments {
            let (outcome, elapsed) = enrol(node).await;
            if outcome.kind != OpType::Ok {
                println!("FAIL: enrolment through node {node} answered {:?}", outcome.error);
                passed = false;
            }
            ms.push(elapsed);
        }
        ms.sort_by(f64::total_cmp);
        // Two round trips: through a follower, one to forward to the leader and one to
        // replicate; through the leader, one to replicate and, for back-to-back requests, one
        // for the commit notice of the request before (openraft 0.9 keeps one append in flight
        // per follower). Fsyncs and processing add a little; a third round trip does not fit.
        let bound = 2.0 * rtt + client_leg;
        let (p50, p99, max) = (percentile(&ms, 0.5), percentile(&ms, 0.99), ms[ms.len() - 1]);
        let ok = p50 <= bound + 0.25 * rtt && p99 <= bound + 0.75 * rtt;
        println!(
            "{} enrolment through node {node} ({}): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms (bound: p50 \
             within a quarter and p99 within three quarters of a round trip over {bound:.0} ms = 2 round trips{})",
            if ok { "ok  " } else { "FAIL" },
            if node == leader { "leader" } else { "follower" },
            if client_leg > 0.0 { " + the client's leg" } else { "" },
        );
        passed &= ok;
    }

    // A quiet minute: no leader change, no new term, on any node.
    let before = cluster.views().await;
    println!("wan: quiet for {} s …", options.quiet_secs);
    tokio::time::sleep(Duration::from_secs(options.quiet_secs)).await;
    let after = cluster.views().await;
    let terms = |views: &[crate::cluster::View]| views.iter().map(|v| (v.node, v.term, v.leader)).collect::<Vec<_>>();
    let quiet = before.len() == 3 && terms(&before) == terms(&after) && after.iter().all(|v| v.leader.is_some());
    println!(
        "{} quiet minute: (node, term, leader) before {:?}, after {:?}",
        if quiet { "ok  " } else { "FAIL" },
        terms(&before),
        terms(&after)
    );
    Ok(passed && quiet)
}
