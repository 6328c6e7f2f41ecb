//! The whole benchmark, in one run on one machine: throughput and latency of ztna and etcd
//! (each started fresh and alone), failover of both, and ztna at scale.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::failover::{self, Failover};
use crate::load::{self, Stats};
use crate::ops::{http_client, Etcd, Ztna};
use crate::scale::{self, Scale};
use crate::systems::Cluster;

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub ztna: PathBuf,
    pub etcd: PathBuf,
    /// Scratch space for the clusters' data (on the disk being measured).
    pub work_dir: PathBuf,
    pub scale_keys: u64,
    pub kills: usize,
    pub skip_scale: bool,
}

/// One workload at one concurrency, both systems.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub clients: usize,
    pub ztna: Stats,
    pub etcd: Stats,
    /// ztna ops/s divided by etcd ops/s.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub quick: bool,
    pub seconds_per_phase: u64,
    pub rows: Vec<Row>,
    pub failover: Vec<(&'static str, Failover)>,
    /// The scale measurements, or why they could not be completed.
    pub scale: Option<Result<Scale, String>>,
}

pub const WORKLOADS: [&str; 3] = ["key creation", "one-shot burn", "hot reusable key"];

pub async fn run(options: &Options) -> anyhow::Result<Results> {
    let levels: Vec<usize> = if options.quick { vec![1, 64] } else { vec![1, 16, 64, 256] };
    let seconds = if options.quick { 5 } else { 20 };
    let phase = Duration::from_secs(seconds);
    let _ = std::fs::remove_dir_all(&options.work_dir);

    eprintln!("bench: ztna throughput");
    let ztna = Cluster::start_ztna(&options.ztna, &options.work_dir.join("ztna")).await?;
    let ours = ztna_phases(&ztna, &levels, phase).await;
    ztna.stop().await;
    let ours = ours?;

    eprintln!("bench: etcd throughput");
    let etcd = Cluster::start_etcd(&options.etcd, &options.work_dir.join("etcd")).await?;
    let theirs = etcd_phases(&etcd, &levels, phase).await;
    etcd.stop().await;
    let theirs = theirs?;

    let rows = ours
        .into_iter()
        .zip(theirs)
        .map(|((workload, clients, ztna), (_, _, etcd))| {
            let ratio = if etcd.ops_per_sec > 0.0 { ztna.ops_per_sec / etcd.ops_per_sec } else { f64::INFINITY };
            Row { workload, clients, ztna, etcd, ratio }
        })
        .collect();

    eprintln!("bench: failover");
    let mut failovers = Vec::new();
    let cluster = Cluster::start_ztna(&options.ztna, &options.work_dir.join("ztna-failover")).await?;
    let api = ztna_api(&cluster)?;
    let (_, hot) = api.create_key(0, true).await?;
    let result = failover::measure(&cluster, options.kills, 16, move |client, node, seq| {
        let (api, hot) = (api.clone(), hot.clone());
        async move { api.enrol(node, &hot, &format!("fo-{client}-{seq}")).await.map(|()| true) }
    })
    .await;
    cluster.stop().await;
    failovers.push(("ztna", result?));
    let cluster = Cluster::start_etcd(&options.etcd, &options.work_dir.join("etcd-failover")).await?;
    let etcd_api = Etcd { http: http_client()?, urls: cluster.urls.clone() };
    let result = failover::measure(&cluster, options.kills, 16, move |client, node, seq| {
        let api = etcd_api.clone();
        async move { api.put_if_absent(node, &format!("fo/{client}/{seq}/{}", rand::random::<u32>()), "device").await }
    })
    .await;
    cluster.stop().await;
    failovers.push(("etcd", result?));

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
    Ok(Results { quick: options.quick, seconds_per_phase: seconds, rows, failover: failovers, scale })
}

fn ztna_api(cluster: &Cluster) -> anyhow::Result<Ztna> {
    Ok(Ztna {
        http: http_client()?,
        urls: cluster.urls.clone(),
        api_key: cluster.api_key.clone(),
        org_id: cluster.org_id.clone(),
        server_keys: Default::default(),
    })
}

type Measured = Vec<(&'static str, usize, Stats)>;

/// Throughput of one system alone at the given levels, for profiling (`ztna-bench throughput`).
pub async fn throughput_only(
    options: &Options,
    system: crate::systems::Kind,
    levels: &[usize],
    seconds: u64,
) -> anyhow::Result<()> {
    let phase = Duration::from_secs(seconds);
    let dir = options.work_dir.join(system.name());
    let _ = std::fs::remove_dir_all(&dir);
    let (cluster, measured) = match system {
        crate::systems::Kind::Ztna => {
            let cluster = Cluster::start_ztna(&options.ztna, &dir).await?;
            let measured = ztna_phases(&cluster, levels, phase).await;
            (cluster, measured)
        }
        crate::systems::Kind::Etcd => {
            let cluster = Cluster::start_etcd(&options.etcd, &dir).await?;
            let measured = etcd_phases(&cluster, levels, phase).await;
            (cluster, measured)
        }
    };
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    measured.map(drop)
}

async fn ztna_phases(cluster: &Cluster, levels: &[usize], phase: Duration) -> anyhow::Result<Measured> {
    let api = ztna_api(cluster)?;
    let (_, hot) = api.create_key(0, true).await?;
    let mut out = Vec::new();
    for &clients in levels {
        // The keys created here are the ones the one-shot burn then spends.
        let pool: Arc<Mutex<Vec<String>>> = Arc::default();
        let (a, p) = (api.clone(), pool.clone());
        let create = load::run(clients, 3, phase, false, move |_, node, _| {
            let (api, pool) = (a.clone(), p.clone());
            async move {
                let (_, secret) = api.create_key(node, false).await?;
                pool.lock().unwrap_or_else(|e| e.into_inner()).push(secret);
                Ok(true)
            }
        })
        .await;
        settle().await;
        let (a, p) = (api.clone(), pool.clone());
        let burn = load::run(clients, 3, phase, false, move |client, node, seq| {
            let (api, pool) = (a.clone(), p.clone());
            async move {
                let Some(secret) = pool.lock().unwrap_or_else(|e| e.into_inner()).pop() else { return Ok(false) };
                api.enrol(node, &secret, &format!("burn-{client}-{seq}")).await.map(|()| true)
            }
        })
        .await;
        settle().await;
        let (a, h) = (api.clone(), hot.clone());
        let hot_run = load::run(clients, 3, phase, false, move |client, node, seq| {
            let (api, hot) = (a.clone(), h.clone());
            async move { api.enrol(node, &hot, &format!("hot-{client}-{seq}")).await.map(|()| true) }
        })
        .await;
        settle().await;
        report_phase("ztna", clients, &create.stats, &burn.stats, &hot_run.stats);
        out.push((WORKLOADS[0], clients, create.stats));
        out.push((WORKLOADS[1], clients, burn.stats));
        out.push((WORKLOADS[2], clients, hot_run.stats));
    }
    Ok(out)
}

async fn etcd_phases(cluster: &Cluster, levels: &[usize], phase: Duration) -> anyhow::Result<Measured> {
    let api = Etcd { http: http_client()?, urls: cluster.urls.clone() };
    let mut out = Vec::new();
    for &clients in levels {
        let a = api.clone();
        let create = load::run(clients, 3, phase, false, move |client, node, seq| {
            let api = a.clone();
            async move { api.put(node, &format!("create/{clients}/{client}/{seq}"), "key").await.map(|()| true) }
        })
        .await;
        settle().await;
        let a = api.clone();
        let burn = load::run(clients, 3, phase, false, move |client, node, seq| {
            let api = a.clone();
            async move {
                let key = format!("burn/{clients}/{client}/{seq}");
                match api.put_if_absent(node, &key, "device").await? {
                    true => Ok(true),
                    false => anyhow::bail!("{key} was already used"),
                }
            }
        })
        .await;
        settle().await;
        let a = api.clone();
        let hot_run = load::run(clients, 3, phase, false, move |_, node, _| {
            let api = a.clone();
            async move { api.increment(node, &format!("hot/{clients}")).await.map(|_| true) }
        })
        .await;
        settle().await;
        report_phase("etcd", clients, &create.stats, &burn.stats, &hot_run.stats);
        out.push((WORKLOADS[0], clients, create.stats));
        out.push((WORKLOADS[1], clients, burn.stats));
        out.push((WORKLOADS[2], clients, hot_run.stats));
    }
    Ok(out)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn report_phase(system: &str, clients: usize, create: &Stats, burn: &Stats, hot: &Stats) {
    eprintln!(
        "bench: {system} {clients:>3} clients: create {:>8.0}/s  burn {:>8.0}/s  hot {:>8.0}/s  (p99 {:.1}/{:.1}/{:.1} ms, errors {}/{}/{})",
        create.ops_per_sec, burn.ops_per_sec, hot.ops_per_sec, create.p99_ms, burn.p99_ms, hot.p99_ms, create.errors, burn.errors, hot.errors
    );
}
