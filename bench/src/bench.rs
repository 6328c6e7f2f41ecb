//! The whole benchmark, in one run on one machine: throughput and latency of ztna and etcd,
//! failover of both with the same Raft timing, and ztna at scale.
//!
//! Every workload starts on a fresh cluster of each system, and each configuration runs
//! `runs` times, the systems alternating (ztna, etcd, ztna, etcd, …) so that a drift of the
//! machine during the run hits both. Each phase also measures every node's CPU time, so the
//! cost of one operation on the leader and on a follower is known.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::failover::{self, Failover};
use crate::load::{self, Stats};
use crate::ops::{Etcd, Ztna};
use crate::scale::{self, Scale};
use crate::systems::{Cluster, Kind, Timing};

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub ztna: PathBuf,
    pub etcd: PathBuf,
    /// Scratch space for the clusters' data (on the disk being measured).
    pub work_dir: PathBuf,
    pub scale_keys: u64,
    /// Leader kills per failover run.
    pub kills: usize,
    pub skip_scale: bool,
    /// How many times each configuration runs.
    pub runs: usize,
    pub seconds: u64,
    pub levels: Vec<usize>,
}

/// What the nodes' processes spent per successful operation, in CPU microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeCpu {
    pub leader_us_per_op: f64,
    /// The mean of the followers.
    pub follower_us_per_op: f64,
    /// All three nodes together.
    pub total_us_per_op: f64,
}

/// One phase of one system.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub run: usize,
    pub stats: Stats,
    pub cpu: NodeCpu,
}

/// Median and range of one figure over the runs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Spread { median, min: values[0], max: values[n - 1] }
    }
}

/// One workload at one concurrency: every run of both systems, and what they add up to.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub clients: usize,
    pub ztna: Vec<Sample>,
    pub etcd: Vec<Sample>,
}

impl Row {
    pub fn ops(&self, kind: Kind) -> Spread {
        Spread::of(self.samples(kind).iter().map(|s| s.stats.ops_per_sec))
    }

    pub fn p50(&self, kind: Kind) -> Spread {
        Spread::of(self.samples(kind).iter().map(|s| s.stats.p50_ms))
    }

    pub fn p99(&self, kind: Kind) -> Spread {
        Spread::of(self.samples(kind).iter().map(|s| s.stats.p99_ms))
    }

    pub fn samples(&self, kind: Kind) -> &[Sample] {
        match kind {
            Kind::Ztna => &self.ztna,
            Kind::Etcd => &self.etcd,
        }
    }

    /// The median of the runs' ratios ztna/etcd (run i of one against run i of the other,
    /// which ran next to each other).
    pub fn median_ratio(&self) -> f64 {
        Spread::of(self.ztna.iter().zip(&self.etcd).map(|(z, e)| ratio(z.stats.ops_per_sec, e.stats.ops_per_sec)))
            .median
    }

    /// The worst ztna run against the best etcd run.
    pub fn worst_ratio(&self) -> f64 {
        ratio(self.ops(Kind::Ztna).min, self.ops(Kind::Etcd).max)
    }

    /// Runs in which the pre-made keys ran out before the phase ended.
    pub fn ran_dry(&self) -> Vec<f64> {
        self.ztna.iter().chain(&self.etcd).filter_map(|s| s.stats.ran_dry_after_s).collect()
    }
}

fn ratio(ours: f64, theirs: f64) -> f64 {
    if theirs > 0.0 {
        ours / theirs
    } else {
        f64::INFINITY
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub quick: bool,
    pub seconds_per_phase: u64,
    pub runs: usize,
    pub rows: Vec<Row>,
    pub failover: Vec<(&'static str, Failover)>,
    /// The scale measurements, or why they could not be completed.
    pub scale: Option<Result<Scale, String>>,
}

pub const WORKLOADS: [&str; 3] = ["key creation", "one-shot burn", "hot reusable key"];

/// The hot key's limit: ztna's `max_uses`, etcd's compare on the counter's version.
const HOT_LIMIT: u32 = u32::MAX;

/// Enrolments made before a burn or hot-key phase (the one-shot keys they spend, and every
/// machine's key pair and proof), per second of the phase, by client count: well above what
/// ztna enrolled per second on the machines this ran on (up to about 7,000 at 64 clients on
/// two cores), so a phase does not run dry (when one does, its row says so).
fn enrolments_per_second(clients: usize) -> usize {
    match clients {
        1 => 2_500,
        2..=16 => 8_000,
        17..=64 => 10_000,
        _ => 11_000,
    }
}

pub async fn run(options: &Options) -> anyhow::Result<Results> {
    let phase = Duration::from_secs(options.seconds);
    let _ = std::fs::remove_dir_all(&options.work_dir);
    let mut rows: Vec<Row> = WORKLOADS
        .iter()
        .flat_map(|w| options.levels.iter().map(move |c| Row { workload: w, clients: *c, ztna: vec![], etcd: vec![] }))
        .collect();
    for run in 0..options.runs {
        for workload in WORKLOADS {
            for kind in [Kind::Ztna, Kind::Etcd] {
                eprintln!("bench: run {}/{}: {workload}, {}", run + 1, options.runs, kind.name());
                let measured = workload_on_fresh_cluster(options, kind, workload, &options.levels, phase).await?;
                for (clients, stats, cpu) in measured {
                    let row = rows
                        .iter_mut()
                        .find(|r| r.workload == workload && r.clients == clients)
                        .ok_or_else(|| anyhow::anyhow!("no row for {workload} at {clients}"))?;
                    let sample = Sample { run, stats, cpu };
                    match kind {
                        Kind::Ztna => row.ztna.push(sample),
                        Kind::Etcd => row.etcd.push(sample),
                    }
                }
            }
        }
    }

    eprintln!("bench: failover");
    let mut ztna_failover = Vec::new();
    let mut etcd_failover = Vec::new();
    for run in 0..options.runs {
        ztna_failover.push(failover_run(options, Kind::Ztna, run).await?);
        etcd_failover.push(failover_run(options, Kind::Etcd, run).await?);
    }
    let failover = vec![("ztna", Failover::merge(ztna_failover)), ("etcd", Failover::merge(etcd_failover))];

    let scale = if options.skip_scale {
        None
    } else {
        eprintln!("bench: scale ({} keys)", options.scale_keys);
        // A failure here is a result too: it is reported, and the other results are kept.
        Some(scale::measure(&options.ztna, &options.work_dir.join("scale"), options.scale_keys).await.map_err(|e| {
            eprintln!("bench: scale failed: {e:#}");
            format!("{e:#}")
        }))
    };
    let _ = std::fs::remove_dir_all(&options.work_dir);
    Ok(Results { quick: options.quick, seconds_per_phase: options.seconds, runs: options.runs, rows, failover, scale })
}

/// One failover run of `kind` on a fresh cluster: `options.kills` leader kills.
pub async fn failover_run(options: &Options, kind: Kind, run: usize) -> anyhow::Result<Failover> {
    match kind {
        Kind::Ztna => ztna_failover_run(options, run).await,
        Kind::Etcd => etcd_failover_run(options, run).await,
    }
}

async fn ztna_failover_run(options: &Options, run: usize) -> anyhow::Result<Failover> {
    let dir = options.work_dir.join(format!("ztna-failover-{run}"));
    let cluster = Cluster::start_ztna_timed(&options.ztna, &dir, Timing::Same).await?;
    let api = Ztna::connect(&cluster)?;
    let result = async {
        let (_, hot) = api.create_key(0, true, Some(HOT_LIMIT)).await?;
        failover::measure(&cluster, options.kills, 16, move |client, node, seq| {
            let (api, hot) = (api.clone(), hot.clone());
            async move { api.enrol(node, &hot, &format!("fo-{client}-{seq}")).await.map(|()| true) }
        })
        .await
    }
    .await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn etcd_failover_run(options: &Options, run: usize) -> anyhow::Result<Failover> {
    let dir = options.work_dir.join(format!("etcd-failover-{run}"));
    let cluster = Cluster::start_etcd(&options.etcd, &options.ztna, &dir, Timing::Same).await?;
    let result = async {
        let api = Etcd::connect(&cluster.urls, 16).await?;
        failover::measure(&cluster, options.kills, 16, move |client, node, seq| {
            let api = api.clone();
            async move {
                let device = format!("fo/{client}/{seq}/{}", rand::random::<u32>());
                api.use_counter(node, client, "hot", &device, i64::from(HOT_LIMIT)).await.map(|()| true)
            }
        })
        .await
    }
    .await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

type Measured = Vec<(usize, Stats, NodeCpu)>;

/// Starts a fresh cluster of `kind`, runs `workload` at each level on it, and removes it.
pub async fn workload_on_fresh_cluster(
    options: &Options,
    kind: Kind,
    workload: &str,
    levels: &[usize],
    phase: Duration,
) -> anyhow::Result<Measured> {
    let dir = options.work_dir.join(format!("{}-{}", kind.name(), workload.replace(' ', "-")));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = match kind {
        Kind::Ztna => Cluster::start_ztna(&options.ztna, &dir).await?,
        Kind::Etcd => Cluster::start_etcd(&options.etcd, &options.ztna, &dir, Timing::Defaults).await?,
    };
    let mut measured = Vec::new();
    let mut result = Ok(());
    for &clients in levels {
        let phase_result = match kind {
            Kind::Ztna => ztna_phase(&cluster, workload, clients, phase).await,
            Kind::Etcd => etcd_phase(&cluster, workload, clients, phase).await,
        };
        match phase_result {
            Ok((stats, cpu)) => {
                eprintln!(
                    "bench:   {clients:>3} clients: {:>8.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  errors {}  CPU/op leader {:.0} µs, follower {:.0} µs{}",
                    stats.ops_per_sec,
                    stats.p50_ms,
                    stats.p99_ms,
                    stats.errors,
                    cpu.leader_us_per_op,
                    cpu.follower_us_per_op,
                    stats.ran_dry_after_s.map_or(String::new(), |s| format!("  (keys ran out after {s:.1} s)")),
                );
                if let Some(error) = &stats.first_error {
                    eprintln!("bench:   first error: {error}");
                }
                measured.push((clients, stats, cpu));
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        settle().await;
    }
    cluster.stop().await;
    match result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(measured)
        }
        Err(e) => Err(e.context(format!("{} {workload}; kept {} for diagnosis", kind.name(), dir.display()))),
    }
}

/// Every node's CPU seconds and the leader, as a measured phase starts (`scripts/bench
/// --profile` waits for the line this prints).
async fn cpu_before(cluster: &Cluster) -> (Vec<Option<f64>>, Option<usize>) {
    eprintln!("bench:   phase started");
    let mut cpu = Vec::new();
    for node in 0..cluster.urls.len() {
        cpu.push(cluster.cpu_seconds(node).await);
    }
    (cpu, cluster.leader().await)
}

async fn cpu_per_op(cluster: &Cluster, before: (Vec<Option<f64>>, Option<usize>), ok: u64) -> NodeCpu {
    let (before, leader) = before;
    let mut spent = Vec::new();
    for (node, start) in before.iter().enumerate() {
        let end = cluster.cpu_seconds(node).await;
        spent.push(match (start, end) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        });
    }
    let per_op = |seconds: f64| if ok == 0 { 0.0 } else { seconds * 1e6 / ok as f64 };
    let leader = leader.unwrap_or(0);
    let followers: Vec<f64> = spent.iter().enumerate().filter(|(n, _)| *n != leader).map(|(_, s)| *s).collect();
    NodeCpu {
        leader_us_per_op: per_op(spent[leader]),
        follower_us_per_op: per_op(followers.iter().sum::<f64>() / followers.len().max(1) as f64),
        total_us_per_op: per_op(spent.iter().sum()),
    }
}

async fn ztna_phase(
    cluster: &Cluster,
    workload: &str,
    clients: usize,
    phase: Duration,
) -> anyhow::Result<(Stats, NodeCpu)> {
    let api = Ztna::connect(cluster)?;
    let nodes = cluster.urls.len();
    let (stats, cpu) = match workload {
        "key creation" => {
            let before = cpu_before(cluster).await;
            let a = api.clone();
            let run = load::run(clients, nodes, phase, false, move |_, node, _| {
                let api = a.clone();
                async move { api.create_key(node, false, None).await.map(|_| true) }
            })
            .await;
            let cpu = cpu_per_op(cluster, before, run.stats.ok).await;
            (run.stats, cpu)
        }
        "one-shot burn" | "hot reusable key" => {
            // The bodies each node gets, a third of the phase's and half as many again.
            let per_node = enrolments_per_second(clients) * phase.as_secs() as usize / nodes * 3 / 2;
            let secrets: Vec<Vec<String>> = if workload == "one-shot burn" {
                let keys = make_keys(&api, per_node * nodes).await?;
                (0..nodes).map(|n| keys.iter().skip(n).step_by(nodes).cloned().collect()).collect()
            } else {
                let (_, hot) = api.create_key(0, true, Some(HOT_LIMIT)).await?;
                (0..nodes).map(|_| vec![hot.clone(); per_node]).collect()
            };
            let mut pools = Vec::new();
            for (node, secrets) in secrets.into_iter().enumerate() {
                let bodies = api.prepare_enrolments(node, secrets, format!("{clients}")).await?;
                pools.push(Mutex::new(bodies));
            }
            let pools = Arc::new(pools);
            settle().await;
            let before = cpu_before(cluster).await;
            let (a, p) = (api.clone(), pools.clone());
            let run = load::run(clients, nodes, phase, false, move |_, node, _| {
                let (api, pools) = (a.clone(), p.clone());
                async move {
                    let Some(body) = pools[node].lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        return Ok(false);
                    };
                    api.enrol_prepared(node, &body).await.map(|()| true)
                }
            })
            .await;
            let cpu = cpu_per_op(cluster, before, run.stats.ok).await;
            let mut stats = run.stats;
            if pools.iter().any(|p| p.lock().unwrap_or_else(|e| e.into_inner()).is_empty()) {
                stats.ran_dry_after_s = Some(stats.seconds);
            }
            (stats, cpu)
        }
        other => anyhow::bail!("unknown workload {other}"),
    };
    Ok((stats, cpu))
}

/// Makes `count` one-shot keys (not measured); their secrets.
async fn make_keys(api: &Ztna, count: usize) -> anyhow::Result<Vec<String>> {
    let pool: Arc<Mutex<Vec<String>>> = Arc::default();
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(count));
    let (a, p, l) = (api.clone(), pool.clone(), left.clone());
    // Long enough for any count this benchmark asks for; the clients stop when it is made.
    let run = load::run(64, api.urls.len(), Duration::from_secs(600), false, move |_, node, _| {
        let (api, pool, left) = (a.clone(), p.clone(), l.clone());
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            if left.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_err() {
                return Ok(false);
            }
            match api.create_key(node, false, None).await {
                Ok((_, secret)) => {
                    pool.lock().unwrap_or_else(|e| e.into_inner()).push(secret);
                    Ok(true)
                }
                Err(e) => {
                    // Not made: another client makes it.
                    left.fetch_add(1, Relaxed);
                    Err(e)
                }
            }
        }
    })
    .await;
    let keys = std::mem::take(&mut *pool.lock().unwrap_or_else(|e| e.into_inner()));
    anyhow::ensure!(
        keys.len() == count,
        "made {} of {count} keys ({} errors: {:?})",
        keys.len(),
        run.stats.errors,
        run.stats.first_error
    );
    Ok(keys)
}

async fn etcd_phase(
    cluster: &Cluster,
    workload: &str,
    clients: usize,
    phase: Duration,
) -> anyhow::Result<(Stats, NodeCpu)> {
    let api = Etcd::connect(&cluster.urls, clients).await?;
    let nodes = cluster.urls.len();
    let before = cpu_before(cluster).await;
    let a = api.clone();
    let run =
        match workload {
            "key creation" => {
                load::run(clients, nodes, phase, false, move |client, node, seq| {
                    let api = a.clone();
                    async move {
                        api.put(node, client, &format!("create/{clients}/{client}/{seq}"), "key").await.map(|()| true)
                    }
                })
                .await
            }
            "one-shot burn" => {
                load::run(clients, nodes, phase, false, move |client, node, seq| {
                    let api = a.clone();
                    async move {
                        let key = format!("burn/{clients}/{client}/{seq}");
                        api.put_if_absent(node, client, &key, "device").await.map(|()| true)
                    }
                })
                .await
            }
            "hot reusable key" => {
                load::run(clients, nodes, phase, false, move |client, node, seq| {
                    let api = a.clone();
                    async move {
                        let device = format!("hot/device/{clients}/{client}/{seq}");
                        api.use_counter(node, client, &format!("hot/{clients}"), &device, i64::from(HOT_LIMIT))
                            .await
                            .map(|()| true)
                    }
                })
                .await
            }
            other => anyhow::bail!("unknown workload {other}"),
        };
    let cpu = cpu_per_op(cluster, before, run.stats.ok).await;
    Ok((run.stats, cpu))
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
