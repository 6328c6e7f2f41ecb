//! Scale: load N auth keys (1,000,000 by default) into a fresh ztna cluster while one follower
//! is stopped, then measure resident memory, RocksDB size on disk, snapshot build time, the
//! stopped follower's catch-up (by snapshot, the leader having purged its log), a node's
//! restart-to-ready time, and the latency of listing pages.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::load;
use crate::ops::Ztna;
use crate::systems::{disk_usage, Cluster};

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub keys: u64,
    pub load_ops_per_sec: f64,
    /// Per node (1-based order), after loading.
    pub rss_mib: Vec<Option<f64>>,
    pub disk_mib: Vec<f64>,
    /// The last snapshot the leader built while loading.
    pub snapshot_build_ms: Option<u64>,
    pub snapshot_rows: Option<u64>,
    pub snapshot_mib: Option<f64>,
    /// The follower stopped during the load: from its restart until it applied everything.
    pub follower_catch_up_ms: f64,
    pub follower_installed_snapshot: bool,
    pub follower_rss_mib: Option<f64>,
    /// A node killed and restarted: until it answers /readyz with every entry applied.
    pub restart_to_ready_ms: f64,
    pub list_page_100_p50_ms: f64,
    pub list_page_100_p99_ms: f64,
    pub list_page_1000_p50_ms: f64,
    pub list_page_1000_p99_ms: f64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub async fn measure(ztna: &Path, dir: &Path, keys: u64) -> anyhow::Result<Scale> {
    let cluster = Cluster::start_ztna(ztna, dir).await?;
    let result = run(&cluster, keys).await;
    cluster.stop().await;
    result
}

async fn run(cluster: &Cluster, keys: u64) -> anyhow::Result<Scale> {
    let api = Ztna::connect(cluster)?;
    let leader = cluster.leader().await.context("no leader")?;
    let stopped = (leader + 1) % 3;
    cluster.kill(stopped).await;
    let live: Vec<usize> = (0..3).filter(|&n| n != stopped).collect();

    eprintln!("scale: loading {keys} keys with node {} stopped", stopped + 1);
    let created = Arc::new(AtomicU64::new(0));
    let (api2, created2, live2) = (api.clone(), created.clone(), live.clone());
    let loaded = load::run(256, 1, Duration::from_secs(3600), false, move |client, _, _| {
        let (api, created, live) = (api2.clone(), created2.clone(), live2.clone());
        async move {
            if created.fetch_add(1, Ordering::Relaxed) >= keys {
                return Ok(false);
            }
            api.create_key(live[client % live.len()], false, None).await.map(|_| true)
        }
    })
    .await;
    let load_ops_per_sec = loaded.stats.ops_per_sec;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut rss_mib = Vec::new();
    let mut disk_mib = Vec::new();
    for node in 0..3 {
        rss_mib.push(cluster.rss_bytes(node).await.map(mib));
        disk_mib.push(mib(disk_usage(&cluster.data_dir(node))));
    }
    let snapshot = last_snapshot(&cluster.log_path(leader));

    eprintln!("scale: restarting node {} to catch up", stopped + 1);
    let target = cluster.applied_index(leader).await.context("leader applied index")?;
    let t0 = Instant::now();
    cluster.start(stopped).await?;
    wait_applied(cluster, stopped, target, Duration::from_secs(120)).await?;
    let follower_catch_up_ms = t0.elapsed().as_secs_f64() * 1e3;
    let follower_installed_snapshot = std::fs::read_to_string(cluster.log_path(stopped))
        .map(|log| log.contains("snapshot installed"))
        .unwrap_or(false);
    let follower_rss_mib = cluster.rss_bytes(stopped).await.map(mib);

    eprintln!("scale: restart-to-ready of node {}", stopped + 1);
    let target = cluster.applied_index(leader).await.context("leader applied index")?;
    cluster.kill(stopped).await;
    let t0 = Instant::now();
    cluster.start(stopped).await?;
    while !cluster.ready(stopped).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_applied(cluster, stopped, target, Duration::from_secs(120)).await?;
    let restart_to_ready_ms = t0.elapsed().as_secs_f64() * 1e3;

    let (p100_50, p100_99) = list_latency(&api, 100, 300).await?;
    let (p1000_50, p1000_99) = list_latency(&api, 1000, 100).await?;
    Ok(Scale {
        keys,
        load_ops_per_sec,
        rss_mib,
        disk_mib,
        snapshot_build_ms: snapshot.map(|s| s.0),
        snapshot_rows: snapshot.map(|s| s.1),
        snapshot_mib: snapshot.map(|s| mib(s.2)),
        follower_catch_up_ms,
        follower_installed_snapshot,
        follower_rss_mib,
        restart_to_ready_ms,
        list_page_100_p50_ms: p100_50,
        list_page_100_p99_ms: p100_99,
        list_page_1000_p50_ms: p1000_50,
        list_page_1000_p99_ms: p1000_99,
    })
}

async fn wait_applied(cluster: &Cluster, node: usize, target: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cluster.applied_index(node).await.is_some_and(|i| i >= target) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("node {} did not catch up within {timeout:?}", node + 1)
}

/// `(elapsed_ms, rows, bytes)` of the last "snapshot built" line in a node's log.
fn last_snapshot(log: &Path) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("snapshot built"))?;
    let field = |name: &str| -> Option<u64> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((field("elapsed_ms")?, field("rows")?, field("bytes")?))
}

/// Walks the listing with pages of `limit`, through every node in turn; p50 and p99 in ms.
async fn list_latency(api: &Ztna, limit: u64, pages: usize) -> anyhow::Result<(f64, f64)> {
    let mut latencies = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..pages {
        let t0 = Instant::now();
        cursor = api.list_page(page % 3, cursor.as_deref(), limit).await?;
        latencies.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let median = crate::failover::median(latencies.clone()).unwrap_or(0.0);
    latencies.sort_by(f64::total_cmp);
    Ok((median, load::percentile(&latencies, 0.99).unwrap_or(0.0)))
}
