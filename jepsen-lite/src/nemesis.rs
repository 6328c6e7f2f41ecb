//! The nemesis: faults on a seeded schedule, in two overlapping lanes.
//!
//! The process lane kills (the leader, a random node, or the leader 5–50 ms into a one-shot
//! burst), cuts the power of every node at once or of one node (sometimes twice, the second
//! time while it catches up), pauses with SIGSTOP beyond the election timeout, jumps, steps (by
//! minutes) or drifts one node's clock, and restarts every node in turn. The network lane
//! partitions (isolating the leader, isolating a follower, a bridge, a one-way ring) and adds
//! latency, loss and reordering. Each fault is recorded as a `start` event once it took effect
//! (the processes are dead, the rules are in place) and an `end` event once it was lifted, with
//! process `nemesis`; a fault that could not be applied or lifted is an `error` event, which
//! makes the run `unknown`. This module must not look at client results.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use crate::cluster::Cluster;
use crate::history::History;
use crate::hosts::{both_ways, Link};
use crate::workload::Ctx;

/// Nemesis names accepted by `--nemesis`.
pub const ALL: &[&str] = &["kill", "power", "partition", "pause", "clock", "netem", "restart"];

/// The largest small clock jump the clock nemesis makes. The expiry checker's skew bound
/// follows it: the cluster's time is the majority's, so a step of minutes on one node (below)
/// moves it no further than that.
pub const MAX_CLOCK_JUMP_MS: i64 = 3000;
/// A step of one node's clock past the proof window (5 minutes).
pub const MIN_CLOCK_STEP_MS: i64 = 6 * 60_000;
pub const MAX_CLOCK_STEP_MS: i64 = 12 * 60_000;

/// Runs both lanes until the run stops. Faults still in place at the end are healed by the
/// caller's final phase.
pub async fn run(ctx: Arc<Ctx>, kinds: Vec<String>, seed: u64) {
    let process: Vec<String> = kinds
        .iter()
        .filter(|k| matches!(k.as_str(), "kill" | "power" | "pause" | "clock" | "restart"))
        .cloned()
        .collect();
    let network: Vec<String> = kinds.iter().filter(|k| matches!(k.as_str(), "partition" | "netem")).cloned().collect();
    let a = tokio::spawn(lane(ctx.clone(), process, StdRng::seed_from(seed, 1)));
    let b = tokio::spawn(lane(ctx.clone(), network, StdRng::seed_from(seed, 2)));
    let _ = a.await;
    let _ = b.await;
}

trait SeedFrom {
    fn seed_from(seed: u64, lane: u64) -> Self;
}

impl SeedFrom for StdRng {
    fn seed_from(seed: u64, lane: u64) -> Self {
        rand::SeedableRng::seed_from_u64(seed.wrapping_add(lane.wrapping_mul(0x5851_F42D_4C95_7F2D)))
    }
}

async fn lane(ctx: Arc<Ctx>, kinds: Vec<String>, mut rng: StdRng) {
    if kinds.is_empty() {
        return;
    }
    // Deal the kinds from a shuffled deck, so that every kind comes up within one pass (about
    // 30 s for the process lane), even in a short run.
    let mut deck: Vec<String> = Vec::new();
    while ctx.sleep(Duration::from_millis(rng.gen_range(1500..4000))).await {
        if deck.is_empty() {
            deck = kinds.clone();
            deck.shuffle(&mut rng);
        }
        let kind = deck.pop().unwrap_or_default();
        let result = match kind.as_str() {
            "kill" => kill(&ctx, &mut rng).await,
            "power" => power_loss(&ctx, &mut rng).await,
            "pause" => pause(&ctx, &mut rng).await,
            "clock" => clock(&ctx, &mut rng).await,
            "restart" => rolling_restart(&ctx).await,
            "partition" => partition(&ctx, &mut rng).await,
            "netem" => netem(&ctx, &mut rng).await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            ctx.history.nemesis(&kind, json!({ "phase": "error", "detail": e.to_string() }));
        }
    }
}

fn event(history: &History, f: &str, phase: &str, detail: &str) {
    history.nemesis(f, json!({ "phase": phase, "detail": detail }));
}

/// The leader if one is known, else a random node.
async fn leader_or_any(cluster: &Cluster, rng: &mut StdRng) -> u64 {
    match cluster.leader().await {
        Some(id) => id,
        None => cluster.ids[rng.gen_range(0..cluster.ids.len())],
    }
}

fn other_than(cluster: &Cluster, id: u64, rng: &mut StdRng) -> u64 {
    let others: Vec<u64> = cluster.ids.iter().copied().filter(|&n| n != id).collect();
    others[rng.gen_range(0..others.len())]
}

async fn kill(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    let variant = rng.gen_range(0..9);
    let (victims, detail) = match variant {
        0..=2 => {
            let leader = leader_or_any(cluster, rng).await;
            (vec![leader], format!("kill -9 leader n{leader}"))
        }
        3..=5 => {
            // The leader, a few milliseconds into an enrolment burst.
            let mut bursts = ctx.bursts.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(2), bursts.recv()).await;
            let delay = rng.gen_range(5..=50);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let leader = leader_or_any(cluster, rng).await;
            (vec![leader], format!("kill -9 leader n{leader} {delay} ms into a burst"))
        }
        _ => {
            let id = cluster.ids[rng.gen_range(0..cluster.ids.len())];
            (vec![id], format!("kill -9 n{id}"))
        }
    };
    futures::future::join_all(victims.iter().map(|&id| cluster.kill(id))).await;
    event(&ctx.history, "kill", "start", &detail);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3000))).await;
    for &id in &victims {
        cluster.start(id).await?;
    }
    event(&ctx.history, "kill", "end", &format!("restarted {victims:?} with their data"));
    Ok(())
}

/// A power cut: of every node at once (a site losing power), or of one node's host, and then
/// sometimes of that host again a few seconds after it came back (a crash while it catches up,
/// say right after it installed a snapshot). On lazyfs every byte not fsynced is dropped and
/// every directory change not synced is undone; without it the page cache survives (see
/// `lazyfs`).
async fn power_loss(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    if rng.gen_bool(0.5) {
        futures::future::join_all(cluster.ids.iter().map(|&id| cluster.kill(id))).await;
        let detail = match cluster.power_cut(rng.gen()) {
            Some(lost) => format!("kill -9 every node at once; lazyfs dropped {lost} unsynced bytes"),
            None => "kill -9 every node at once (no lazyfs: the page cache survives)".to_string(),
        };
        event(&ctx.history, "power", "start", &detail);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        cluster.start_all().await?;
        event(&ctx.history, "power", "end", "every node restarted with its data");
        return Ok(());
    }
    let id = if rng.gen_bool(0.5) {
        leader_or_any(cluster, rng).await
    } else {
        cluster.ids[rng.gen_range(0..cluster.ids.len())]
    };
    let again = rng.gen_bool(0.5);
    let mut cuts = 0;
    loop {
        cluster.kill(id).await;
        cuts += 1;
        let detail = match cluster.power_cut_node(id, rng.gen()) {
            Some(lost) => format!("power cut of n{id}'s host; lazyfs dropped {lost} unsynced bytes"),
            None => format!("power cut of n{id}'s host as kill -9 (no lazyfs: the page cache survives)"),
        };
        event(&ctx.history, "power", "start", &detail);
        // Down long enough, at times, to need a snapshot when it comes back.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..4000))).await;
        cluster.start(id).await?;
        event(&ctx.history, "power", "end", &format!("n{id} restarted with its data"));
        // It restarts, hears the leader, perhaps installs a snapshot and appends: then it is cut
        // (unless the run is over by then).
        if !again || cuts == 2 || !ctx.sleep(Duration::from_millis(rng.gen_range(500..3000))).await {
            return Ok(());
        }
    }
}

async fn pause(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    let leader = leader_or_any(cluster, rng).await;
    let id = if rng.gen_bool(0.5) { leader } else { other_than(cluster, leader, rng) };
    let role = if id == leader { "leader" } else { "follower" };
    let hold = rng.gen_range(1500..4000);
    cluster.pause(id).await;
    event(&ctx.history, "pause", "start", &format!("SIGSTOP {role} n{id} for {hold} ms"));
    tokio::time::sleep(Duration::from_millis(hold)).await;
    cluster.resume(id).await;
    event(&ctx.history, "pause", "end", &format!("SIGCONT n{id}"));
    Ok(())
}

/// One node's clock goes wrong: a small jump (0.5–3 s), a step of minutes (beyond the 5-minute
/// window of an enrolment's proof, which no node's own clock may refuse), or a slow drift. Only
/// one node at a time: the cluster's time is the majority's.
async fn clock(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    let id = if rng.gen_bool(0.6) {
        leader_or_any(cluster, rng).await
    } else {
        cluster.ids[rng.gen_range(0..cluster.ids.len())]
    };
    let sign = if rng.gen_bool(0.5) { 1 } else { -1 };
    match rng.gen_range(0..3) {
        0 => {
            let jump = rng.gen_range(500..=MAX_CLOCK_JUMP_MS) * sign;
            cluster.set_clock_offset(id, jump).await?;
            event(&ctx.history, "clock", "start", &format!("n{id} clock jumps {jump:+} ms"));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..8000))).await;
        }
        1 => {
            let step = rng.gen_range(MIN_CLOCK_STEP_MS..=MAX_CLOCK_STEP_MS) * sign;
            cluster.set_clock_offset(id, step).await?;
            event(&ctx.history, "clock", "start", &format!("n{id} clock steps {:+} min", step / 60_000));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(4000..10_000))).await;
        }
        _ => {
            // 2–10% fast or slow, re-read every half second.
            let percent = rng.gen_range(2..=10) * sign;
            let run = Duration::from_millis(rng.gen_range(6000..12_000));
            event(&ctx.history, "clock", "start", &format!("n{id} clock drifts {percent:+}%"));
            let started = tokio::time::Instant::now();
            while started.elapsed() < run {
                let offset = started.elapsed().as_millis() as i64 * percent / 100;
                cluster.set_clock_offset(id, offset).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    cluster.set_clock_offset(id, 0).await?;
    event(&ctx.history, "clock", "end", &format!("n{id} clock reset"));
    Ok(())
}

async fn rolling_restart(ctx: &Ctx) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    for (n, &id) in cluster.ids.iter().enumerate() {
        cluster.stop(id).await;
        if n == 0 {
            event(&ctx.history, "restart", "start", "rolling restart (SIGTERM, start, wait until it answers)");
        }
        cluster.start(id).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline && cluster.api.get(id, "/readyz").await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    event(&ctx.history, "restart", "end", "every node restarted");
    Ok(())
}

async fn partition(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    let leader = leader_or_any(cluster, rng).await;
    let mut links: BTreeSet<Link> = BTreeSet::new();
    let detail = match rng.gen_range(0..4) {
        0 => {
            for &n in cluster.ids.iter().filter(|&&n| n != leader) {
                links.extend(both_ways(leader, n));
            }
            format!("isolate leader n{leader}")
        }
        1 => {
            let follower = other_than(cluster, leader, rng);
            for &n in cluster.ids.iter().filter(|&&n| n != follower) {
                links.extend(both_ways(follower, n));
            }
            format!("isolate follower n{follower}")
        }
        2 => {
            let middle = cluster.ids[rng.gen_range(0..cluster.ids.len())];
            let ends: Vec<u64> = cluster.ids.iter().copied().filter(|&n| n != middle).collect();
            links.extend(both_ways(ends[0], ends[1]));
            format!("bridge through n{middle}: n{} and n{} cannot talk", ends[0], ends[1])
        }
        _ => {
            let ids = &cluster.ids;
            for (i, &from) in ids.iter().enumerate() {
                links.insert((from, ids[(i + 1) % ids.len()]));
            }
            "one-way ring: n1→n2, n2→n3, n3→n1 dropped".to_string()
        }
    };
    cluster.hosts.partition(&links)?;
    event(&ctx.history, "partition", "start", &detail);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..8000))).await;
    cluster.hosts.partition(&BTreeSet::new())?;
    event(&ctx.history, "partition", "end", "healed");
    Ok(())
}

async fn netem(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<()> {
    let cluster = &ctx.cluster;
    cluster.hosts.netem(true)?;
    event(&ctx.history, "netem", "start", cluster.hosts.netem_description());
    tokio::time::sleep(Duration::from_millis(rng.gen_range(4000..8000))).await;
    cluster.hosts.netem(false)?;
    event(&ctx.history, "netem", "end", "healed");
    Ok(())
}
