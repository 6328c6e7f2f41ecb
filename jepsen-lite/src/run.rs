//! One run, start to verdict: hosts and cluster up, workloads and nemeses for `--time`
//! seconds, heal, final reads, checkers, report.
//!
//! This is the one place that wires the parts together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use serde_json::{json, Value};

use crate::checker::{self, Verdict};
use crate::cluster::Cluster;
use crate::history::{f, History, OpType};
use crate::hosts::Hosts;
use crate::options::{expand, RunOptions};
use crate::workload::{self, Ctx};
use crate::{nemesis, report};

/// The outcome of a run.
pub struct RunResult {
    pub verdict: Verdict,
    pub dir: PathBuf,
    pub results: checker::Results,
}

pub async fn run(options: RunOptions) -> anyhow::Result<RunResult> {
    let seed = options.seed.unwrap_or_else(|| rand::thread_rng().gen_range(1..1_000_000));
    let nemeses = expand(&options.nemesis, nemesis::ALL, "nemesis")?;
    let workloads = expand(&options.workload, workload::ALL, "workload")?;
    if workloads.is_empty() {
        bail!("--workload none leaves nothing to check");
    }
    let ztna = match options.ztna.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("ztna"),
    };
    if !ztna.exists() {
        bail!("no ztna binary at {}; build it (cargo build --release) or pass --ztna", ztna.display());
    }
    let stamp = stamp()?;
    std::fs::create_dir_all(&options.store).with_context(|| format!("create {}", options.store.display()))?;
    // Two runs with one seed started in the same second get folders of their own.
    let mut dir = options.store.join(format!("{stamp}-{seed}"));
    if std::fs::create_dir(&dir).is_err() {
        dir = options.store.join(format!("{stamp}-{seed}-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let dir = dir.canonicalize()?;
    let skew_ms = if nemeses.iter().any(|n| n == "clock") { nemesis::MAX_CLOCK_JUMP_MS as u64 + 500 } else { 500 };

    let hosts = Hosts::create(3).await?;
    let mode = hosts.mode();
    let env: Vec<(String, String)> = options.faults.iter().map(|f| (f.clone(), "1".to_string())).collect();
    let mut cluster = Cluster::new(hosts, &dir, &ztna, env).await?;
    cluster.set_snapshots(options.snapshot_every, options.log_kept)?;
    // The power nemesis loses unsynced data when the data directories are on lazyfs.
    let lazy = nemeses.iter().any(|n| n == "power") && !options.no_lazyfs && crate::lazyfs::available();
    let mounted =
        if lazy { cluster.mount_lazyfs().map_err(|e| eprintln!("jepsen-lite: lazyfs: {e:#}")).is_ok() } else { false };
    let power_mode = if mounted {
        "lazyfs: unsynced writes are lost at a power cut"
    } else {
        "kill -9: the page cache survives a power cut"
    };
    eprintln!("jepsen-lite: power nemesis mode: {power_mode}");
    let started = start(&mut cluster).await;
    let cluster = Arc::new(cluster);
    let outcome = match started {
        Ok(()) => drive(cluster.clone(), &options, seed, &nemeses, &workloads, &dir, skew_ms).await,
        Err(e) => Err(e),
    };
    cluster.stop_all().await;
    cluster.unmount_lazyfs();
    cluster.hosts.teardown();
    if !options.keep_data {
        let _ = std::fs::remove_dir_all(cluster.data_dir());
    }
    let (history, mut header) = outcome?;
    header["power_mode"] = json!(power_mode);

    let ops = history.snapshot();
    crate::history::write_jsonl(&dir.join("history.jsonl"), &header, &ops)?;
    let config = checker::Config { skew_ms, search_limit: Duration::from_secs(options.search_limit) };
    let mut results = check_in_thread(ops.clone(), config).await?;
    let stop_ns = options.time.saturating_mul(1_000_000_000);
    results.coverage = checker::coverage::check(&ops, &workloads, stop_ns, &mut results);
    report::write(&dir, &header, &ops, &results, mode)?;
    Ok(RunResult { verdict: results.verdict(), dir, results })
}

/// The current UTC time as a run folder's prefix.
pub fn stamp() -> anyhow::Result<String> {
    Ok(time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]"))?)
}

/// The checkers can recurse deeply; give them their own thread and stack.
pub async fn check_in_thread(
    ops: Vec<crate::history::Op>,
    config: checker::Config,
) -> anyhow::Result<checker::Results> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("checkers".into()).stack_size(256 << 20).spawn(move || {
        let _ = tx.send(checker::check_all(&ops, config));
    })?;
    Ok(rx.await?)
}

/// Starts the nodes, waits for a leader and initialises the cluster (org and API key).
async fn start(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.start_all().await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await.context("no leader within 60 s of start")?;
    let mut initialiser = cluster.api.clone();
    initialiser.api_key = cluster.bootstrap_token.clone();
    let init = initialiser.post(leader, "/api/cluster/init", &json!({ "org_name": "jepsen" }), true).await;
    if init.kind != OpType::Ok {
        bail!("cluster init failed: {:?}", init.error);
    }
    cluster.api.org_id = init.body["org_id"].as_str().unwrap_or_default().to_string();
    cluster.api.api_key = init.body["api_key"].as_str().unwrap_or_default().to_string();
    cluster.api.operator_key = init.body["operator_key"].as_str().unwrap_or_default().to_string();
    Ok(())
}

async fn drive(
    cluster: Arc<Cluster>,
    options: &RunOptions,
    seed: u64,
    nemeses: &[String],
    workloads: &[String],
    dir: &Path,
    skew_ms: u64,
) -> anyhow::Result<(History, Value)> {
    let mut header = json!({
        "jepsen_lite": env!("CARGO_PKG_VERSION"),
        "seed": seed,
        "commit": commit(),
        "time_s": options.time,
        "nemesis": nemeses,
        "workload": workloads,
        "faults": options.faults,
        "snapshot_every": options.snapshot_every,
        "log_kept": options.log_kept,
        "hosts": cluster.hosts.mode(),
        "dir": dir.display().to_string(),
    });
    let history = History::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let ctx = Ctx::new(cluster.clone(), history.clone(), stop, seed, skew_ms, dir);
    let work = tokio::spawn(workload::run(ctx.clone(), workloads.to_vec()));
    let faults = tokio::spawn(nemesis::run(ctx.clone(), nemeses.to_vec(), seed));
    tokio::time::sleep(Duration::from_secs(options.time)).await;
    let _ = stop_tx.send(true);
    let _ = faults.await;
    let _ = work.await;

    final_phase(&ctx).await;
    header["skipped_rounds"] = json!(ctx.skipped());
    eprintln!("jepsen-lite: run finished, {} history entries", history.snapshot().len());
    Ok((history, header))
}

/// Heal everything, wait for one leader and a quiet period, then read every key and list them.
async fn final_phase(ctx: &Arc<Ctx>) {
    let cluster = &ctx.cluster;
    ctx.history.nemesis("heal", json!({ "phase": "start", "detail": "heal network, reset clocks, start every node" }));
    let _ = cluster.hosts.heal();
    for &id in &cluster.ids {
        let _ = cluster.set_clock_offset(id, 0).await;
    }
    let _ = cluster.start_all().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    ctx.history.nemesis("heal", json!({ "phase": "end", "detail": format!("leader {leader:?}") }));
    // A cluster without a leader a minute after the heal gets a short look, not another minute.
    record_nodes(ctx, if leader.is_some() { COME_BACK } else { Duration::from_secs(5) }).await;
    ctx.fleet.settle(ctx).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let key_ids: Vec<String> = ctx
        .history
        .snapshot()
        .iter()
        .filter(|op| op.f == f::CREATE && op.kind == OpType::Ok)
        .filter_map(|op| op.key.clone())
        .collect();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let reads = key_ids.into_iter().map(|key_id| {
        let (ctx, semaphore) = (ctx.clone(), semaphore.clone());
        async move {
            let _permit = semaphore.acquire().await;
            for attempt in 0..5 {
                let mut client = ctx.client();
                let read = client.read(client.random_node(), &key_id, true).await;
                // A definite answer, found or not, ends the retries.
                if read.kind == OpType::Ok || matches!(read.error.as_deref(), Some("not_found" | "unauthorized")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    });
    futures::future::join_all(reads).await;
    for attempt in 0..5 {
        let mut client = ctx.client();
        if client.list(client.random_node(), true).await.kind == OpType::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
    }
    record_digests(ctx).await;
}

/// Asks every node for the hash of its state (`GET /api/cluster/hash`) until all stand at the
/// same applied index (the run is over: only the cluster's own sweeps still write), and
/// records what they said as the `digests` event (judged by `checker::recovery`).
async fn record_digests(ctx: &Arc<Ctx>) {
    let cluster = &ctx.cluster;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let operator = cluster.api.operator_key.clone();
    let (nodes, detail) = loop {
        let asks = cluster.ids.iter().map(|&id| {
            let operator = operator.clone();
            async move { (id, cluster.api.get_as(id, "/api/cluster/hash", &operator).await) }
        });
        let answers = futures::future::join_all(asks).await;
        let nodes: Vec<Value> = answers
            .iter()
            .filter(|(_, a)| a.kind == OpType::Ok)
            .map(|(id, a)| json!({ "node": id, "applied_index": a.body["applied_index"], "rows": a.body["rows"], "hash": a.body["hash"] }))
            .collect();
        let indexes: std::collections::BTreeSet<String> =
            nodes.iter().map(|n| n["applied_index"].to_string()).collect();
        if nodes.len() == cluster.ids.len() && indexes.len() == 1 {
            break (nodes, None);
        }
        if tokio::time::Instant::now() >= deadline {
            let errors: Vec<String> =
                answers.iter().filter_map(|(id, a)| a.error.as_ref().map(|e| format!("n{id}: {e}"))).collect();
            // What each node's Raft says of itself (role, term, leader, last log, applied,
            // snapshot and purge points), for whoever has to find out why one lags.
            let views = futures::future::join_all(cluster.ids.iter().map(|&id| {
                let operator = operator.clone();
                async move {
                    let view = cluster.api.get_as(id, "/api/cluster", &operator).await;
                    let keep = [
                        "role",
                        "term",
                        "leader",
                        "last_log_index",
                        "last_applied_index",
                        "snapshot_index",
                        "purged_index",
                    ];
                    let fields: Vec<String> =
                        keep.iter().map(|k| format!("{k}={}", view.body.get(*k).unwrap_or(&Value::Null))).collect();
                    format!("n{id}: {}", fields.join(" "))
                }
            }))
            .await;
            let detail =
                format!("after 30 s: applied indexes {indexes:?}; {}; raft: {}", errors.join(", "), views.join("; "));
            break (nodes, Some(detail));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ctx.history.nemesis(checker::recovery::DIGESTS, json!({ "phase": "final", "nodes": nodes, "detail": detail }));
}

/// How long the nodes get, after the heal, to come back and catch up.
const COME_BACK: Duration = Duration::from_secs(60);

/// Waits up to `patience` ([`COME_BACK`]) for every node to answer, follow the one leader and
/// apply up to the leader's last log index as it was when the wait began, then records what
/// each node showed as the `nodes` event (judged by `checker::recovery`).
async fn record_nodes(ctx: &Arc<Ctx>, patience: Duration) {
    let cluster = &ctx.cluster;
    let deadline = tokio::time::Instant::now() + patience;
    // (leader, its last log index when first seen leading): a new leader's log may lack an
    // uncommitted tail of the old one's, so its own index is the target.
    let mut seen: Option<(u64, u64)> = None;
    let (views, leader, target) = loop {
        let views = cluster.views().await;
        let leaders: Vec<&crate::cluster::View> = views.iter().filter(|v| v.role == "leader").collect();
        let leader = match leaders.as_slice() {
            [leader] => Some(leader.node),
            _ => None,
        };
        if let [l] = leaders.as_slice() {
            if seen.is_none_or(|(node, _)| node != l.node) {
                seen = Some((l.node, l.last_log_index.unwrap_or(0)));
            }
        }
        let target = seen.map(|(_, index)| index);
        let all_back = cluster.ids.iter().all(|&id| node_back(&views, id, leader, target));
        if all_back || tokio::time::Instant::now() >= deadline {
            break (views, leader, target);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut nodes = Vec::new();
    for &id in &cluster.ids {
        let view = views.iter().find(|v| v.node == id);
        let back = node_back(&views, id, leader, target);
        // A process that ended on its own during the run is reported even if it came back.
        let exit = cluster.exited(id).await;
        let last_error = if back && exit.is_none() { None } else { cluster.last_error(id) };
        nodes.push(json!({
            "node": id,
            "back": back,
            "answered": view.is_some(),
            "role": view.map(|v| v.role.clone()),
            "leader": view.and_then(|v| v.leader),
            "applied": view.and_then(|v| v.last_applied_index),
            "exit": exit,
            "last_error": last_error,
        }));
    }
    let value = json!({ "phase": "final", "leader": leader, "target_index": target, "nodes": nodes });
    ctx.history.nemesis(checker::recovery::EVENT, value);
}

/// Node `id` answers, follows `leader` (the one node that leads now) and has applied `target`.
fn node_back(views: &[crate::cluster::View], id: u64, leader: Option<u64>, target: Option<u64>) -> bool {
    let (Some(leader), Some(target)) = (leader, target) else { return false };
    views.iter().any(|v| v.node == id && v.leader == Some(leader) && v.last_applied_index.is_some_and(|a| a >= target))
}

/// The commit the run's binaries were built from, as far as git can tell: `HEAD`, marked
/// `-dirty` when tracked files differ from it (a figure from such a run names no commit).
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => head,
            _ => format!("{head}-dirty"),
        },
        None => "unknown".into(),
    }
}
