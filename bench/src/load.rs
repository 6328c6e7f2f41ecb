//! The closed-loop load generator: `clients` tasks, each sending its next request as soon as
//! the last one is answered, for a fixed time. It measures latency of every request and its
//! own CPU use, so that a saturated generator is never mistaken for a slow system.
//!
//! Client `i` sends to node `i % 3` (every node gets a third of the clients); after an error it
//! moves to the next node.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What one load phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub clients: usize,
    pub seconds: f64,
    pub ok: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// CPU cores the load generator itself used on average.
    pub generator_cpu_cores: f64,
    /// When the phase ran out of work (pre-made keys) before its end: after how many seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_dry_after_s: Option<f64>,
    /// First error message, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Per-request record for time-series analyses (failover).
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// Since the phase started.
    pub invoked_ms: f64,
    pub completed_ms: f64,
    pub ok: bool,
}

/// A phase's statistics and, when asked for, every completion.
pub struct Run {
    pub stats: Stats,
    pub completions: Vec<Completion>,
}

/// The `p` quantile (0..=1) of `sorted` by the nearest-rank method; `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// CPU seconds (user + system) this process has used.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs `op(client, node, seq)` from `clients` tasks for `duration`. `op` returns `Ok(false)`
/// when it has nothing more to do (its client stops then).
pub async fn run<F, Fut>(clients: usize, nodes: usize, duration: Duration, keep_completions: bool, op: F) -> Run
where
    F: Fn(usize, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send,
{
    let op = Arc::new(op);
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut node = client % nodes;
                let mut latencies_us: Vec<u32> = Vec::new();
                let mut completions = Vec::new();
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut seq = 0u64;
                let mut last_done = started;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let result = op(client, node, seq).await;
                    let t1 = Instant::now();
                    seq += 1;
                    if keep_completions {
                        completions.push(Completion {
                            invoked_ms: (t0 - started).as_secs_f64() * 1e3,
                            completed_ms: (t1 - started).as_secs_f64() * 1e3,
                            ok: matches!(result, Ok(true)),
                        });
                    }
                    match result {
                        Ok(true) => {
                            ok += 1;
                            latencies_us.push((t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32);
                            last_done = t1;
                        }
                        Ok(false) => break,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                            node = (node + 1) % nodes;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                (latencies_us, completions, ok, errors, first_error, last_done)
            })
        })
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    let mut completions = Vec::new();
    let mut stats = Stats { clients, ..Stats::default() };
    let mut ended = started;
    for task in tasks {
        if let Ok((lat, comp, ok, errors, first_error, last_done)) = task.await {
            latencies.extend(lat);
            completions.extend(comp);
            stats.ok += ok;
            stats.errors += errors;
            if stats.first_error.is_none() {
                stats.first_error = first_error;
            }
            ended = ended.max(last_done);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // A phase whose clients ran out of work early is measured until its last success.
    stats.seconds = (ended - started).as_secs_f64().max(1e-3).min(wall);
    stats.ops_per_sec = stats.ok as f64 / stats.seconds;
    stats.generator_cpu_cores = (process_cpu_seconds() - cpu_before) / wall;
    latencies.sort_unstable();
    let pct = |p: f64| percentile(&latencies, p).map_or(0.0, |us| f64::from(us) / 1e3);
    stats.p50_ms = pct(0.50);
    stats.p99_ms = pct(0.99);
    stats.p999_ms = pct(0.999);
    completions.sort_by(|a: &Completion, b| a.completed_ms.total_cmp(&b.completed_ms));
    Run { stats, completions }
}
