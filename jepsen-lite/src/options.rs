//! Command-line options of `jepsen-lite`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "jepsen-lite",
    about = "Breaks a real three-node ztna cluster mid-rollout and checks every key's promises"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One run: cluster, workloads, nemeses, final reads, checkers, report.
    Run(RunOptions),
    /// Runs with each test-only fault switch on (expecting `invalid`) and with all off
    /// (expecting `valid`), using a server built with `--features fault-injection`.
    SelfTest(SelfTestOptions),
    /// Nodes a fixed round trip apart with a cluster file's timing profile: enrolment latency
    /// through each node, and a quiet minute without leader changes.
    Wan(crate::wan::WanOptions),
    /// Re-checks a stored history.jsonl and rewrites its run folder's report.
    Check {
        history: PathBuf,
        /// Clock-skew bound of the expiry checks, in ms.
        #[arg(long, default_value_t = 3500)]
        skew_ms: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Seconds of workload and faults (the final phase comes after).
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Seed of the schedule and of the workloads' choices (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Comma-separated nemeses: kill, power, partition, pause, clock, netem, restart; `all` or `none`.
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// Comma-separated workloads: one-shot, max-uses, revoke, expiry, create-list, reenrol, agents,
    /// handoff; or `all`.
    #[arg(long, default_value = "all")]
    pub workload: String,
    /// The `ztna` binary to run (default: next to this executable).
    #[arg(long)]
    pub ztna: Option<PathBuf>,
    /// Where run folders go.
    #[arg(long, default_value = "jepsen-lite/store")]
    pub store: PathBuf,
    /// Test-only fault switches to set on every node, e.g. ZTNA_FAULT_SKIP_LIMIT_CHECK (needs a
    /// server built with `--features fault-injection`).
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Keep the nodes' data directories after the run.
    #[arg(long)]
    pub keep_data: bool,
    /// Seconds the linearizability search may spend per key before answering `unknown`.
    #[arg(long, default_value_t = 10)]
    pub search_limit: u64,
    /// The `power` nemesis without lazyfs: `kill -9` only, the page cache survives (lazyfs is
    /// used whenever it can run: /dev/fuse and root).
    #[arg(long)]
    pub no_lazyfs: bool,
    /// Each node builds a snapshot (and may purge its log) every this many commands.
    #[arg(long, default_value_t = 3000)]
    pub snapshot_every: u64,
    /// Log entries each node keeps behind a snapshot (fewer: a follower that fell behind
    /// installs a snapshot sooner).
    #[arg(long, default_value_t = 1000)]
    pub log_kept: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SelfTestOptions {
    /// A `ztna` built with `--features fault-injection`.
    #[arg(long)]
    pub ztna: PathBuf,
    /// Seconds per run.
    #[arg(long, default_value_t = 15)]
    pub time: u64,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value = "jepsen-lite/store")]
    pub store: PathBuf,
    /// Runs only the scenarios whose name contains this text (all when absent).
    #[arg(long)]
    pub only: Option<String>,
}

/// Expands a comma-separated list against the known names (`all`, `none`).
pub fn expand(list: &str, known: &[&str], what: &str) -> anyhow::Result<Vec<String>> {
    match list {
        "all" => return Ok(known.iter().map(|s| s.to_string()).collect()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim) {
        if !known.contains(&name) {
            anyhow::bail!("unknown {what} {name:?}; must be one of {}, all or none", known.join(", "));
        }
        out.push(name.to_string());
    }
    Ok(out)
}
