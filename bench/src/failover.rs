//! Failover: under a steady enrolment load, `kill -9` the leader and measure the time from the
//! kill to the first successful enrolment invoked after it, and to 90% of the throughput
//! before it. Repeated, with the killed node restarted and the cluster settled in between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, Completion};
use crate::systems::Cluster;

/// The load before the kill.
const BASELINE: Duration = Duration::from_secs(3);
/// The load after the kill.
const AFTER: Duration = Duration::from_secs(8);
/// A client's patience with one request: well below the recovery times measured (a few
/// hundred milliseconds), so the figure is the system's, not the client's retry timing; well
/// above a request's latency under this load (p99.9 of a few tens of milliseconds).
const CLIENT_TIMEOUT: Duration = Duration::from_millis(100);
/// Window for "90% of the previous throughput".
const WINDOW_MS: f64 = 250.0;

#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub leader: usize,
    pub baseline_ops_per_sec: f64,
    /// From the kill to the first success invoked after it.
    pub first_ok_ms: Option<f64>,
    /// From the kill to the end of the first 250 ms window at ≥ 90% of the baseline rate.
    pub recovered_90_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub clients: usize,
    pub kills: Vec<Kill>,
    pub median_first_ok_ms: Option<f64>,
    pub median_recovered_90_ms: Option<f64>,
}

impl Failover {
    /// The kills of several runs as one result.
    pub fn merge(runs: Vec<Failover>) -> Failover {
        let clients = runs.first().map_or(0, |f| f.clients);
        Failover::of_kills(clients, runs.into_iter().flat_map(|f| f.kills).collect())
    }

    /// The kills and their medians.
    fn of_kills(clients: usize, kills: Vec<Kill>) -> Failover {
        let firsts = kills.iter().filter_map(|k| k.first_ok_ms).collect();
        let recovered = kills.iter().filter_map(|k| k.recovered_90_ms).collect();
        Failover { clients, median_first_ok_ms: median(firsts), median_recovered_90_ms: median(recovered), kills }
    }
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Runs `kills` leader kills under `op` from `clients` clients.
pub async fn measure<F, Fut>(cluster: &Cluster, kills: usize, clients: usize, op: F) -> anyhow::Result<Failover>
where
    F: Fn(usize, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    let op = Arc::new(op);
    let mut results = Vec::new();
    for _ in 0..kills {
        let leader = cluster.wait_leader(Duration::from_secs(30)).await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let started = Instant::now();
        let op = op.clone();
        // Clients give up on a request after CLIENT_TIMEOUT and send the next one (to the next
        // node), as a control plane's client would; otherwise one request stuck on a dead leader
        // would hide the recovery of the others.
        let load = tokio::spawn(load::run(clients, cluster.urls.len(), BASELINE + AFTER, true, move |c, n, s| {
            let attempt = op(c, n, s);
            async move {
                tokio::time::timeout(CLIENT_TIMEOUT, attempt)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            }
        }));
        tokio::time::sleep_until((started + BASELINE).into()).await;
        let killed_at_ms = started.elapsed().as_secs_f64() * 1e3;
        cluster.kill(leader).await;
        let run = load.await?;
        results.push(analyse(&run.completions, leader, killed_at_ms));
        cluster.start(leader).await?;
        settle(cluster).await;
    }
    Ok(Failover::of_kills(clients, results))
}

/// Waits until every node answers and the restarted one has caught up.
async fn settle(cluster: &Cluster) {
    let _ = cluster.wait_leader(Duration::from_secs(30)).await;
    if cluster.kind == crate::systems::Kind::Ztna {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut applied = Vec::new();
            for node in 0..cluster.urls.len() {
                applied.push(cluster.applied_index(node).await);
            }
            let all: Option<Vec<u64>> = applied.into_iter().collect();
            if all.is_some_and(|a| a.iter().max().copied().unwrap_or(0) - a.iter().min().copied().unwrap_or(0) < 100) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn analyse(completions: &[Completion], leader: usize, killed_at_ms: f64) -> Kill {
    let baseline_from = killed_at_ms - 2000.0;
    let baseline =
        completions.iter().filter(|c| c.ok && c.completed_ms >= baseline_from && c.completed_ms < killed_at_ms).count()
            as f64
            / 2.0;
    let first_ok_ms = completions
        .iter()
        .filter(|c| c.ok && c.invoked_ms >= killed_at_ms)
        .map(|c| c.completed_ms - killed_at_ms)
        .min_by(f64::total_cmp);
    let oks: Vec<f64> =
        completions.iter().filter(|c| c.ok && c.completed_ms >= killed_at_ms).map(|c| c.completed_ms).collect();
    let needed = (0.9 * baseline * WINDOW_MS / 1000.0).ceil() as usize;
    let mut recovered_90_ms = None;
    if needed > 0 {
        // Slide a window over the successes after the kill; `oks` is sorted.
        let mut start = 0;
        for end in 0..oks.len() {
            while oks[end] - oks[start] > WINDOW_MS {
                start += 1;
            }
            if end + 1 - start >= needed && oks[end] - killed_at_ms >= WINDOW_MS {
                recovered_90_ms = Some(oks[end] - killed_at_ms);
                break;
            }
        }
    }
    Kill { leader: leader + 1, baseline_ops_per_sec: baseline, first_ok_ms, recovered_90_ms }
}
