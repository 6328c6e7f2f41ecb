//! `ztna-bench`: see `docs/bench/README.md`. Parses arguments and hands over to the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ztna-bench", about = "Benchmark ztna-keystore against etcd on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The benchmark: throughput, latency, failover and scale; results under --out.
    Run {
        /// 5 s phases at 1 and 64 clients, two runs, and 100,000 keys for the scale test.
        #[arg(long)]
        quick: bool,
        /// Runs of each configuration, the systems alternating (default 3; 2 with --quick).
        #[arg(long)]
        runs: Option<usize>,
        /// Seconds per phase (default 10; 5 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
        #[command(flatten)]
        systems: Systems,
        #[arg(long, default_value = "docs/bench")]
        out: PathBuf,
        /// Keys for the scale test (default 1,000,000; 100,000 with --quick).
        #[arg(long)]
        keys: Option<u64>,
        /// Leader kills per failover run.
        #[arg(long, default_value_t = 3)]
        kills: usize,
        #[arg(long)]
        skip_scale: bool,
    },
    /// Failover of one system alone (fresh cluster, same Raft timing as `run`); prints each kill.
    Failover {
        #[arg(long)]
        system: String,
        /// Leader kills.
        #[arg(long, default_value_t = 5)]
        kills: usize,
        #[command(flatten)]
        systems: Systems,
    },
    /// The scale measurement alone; results under --out as results-scale.{md,json}.
    Scale {
        #[arg(long)]
        ztna: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value = "/var/tmp/ztna-bench")]
        work_dir: PathBuf,
        #[arg(long, default_value = "docs/bench")]
        out: PathBuf,
    },
    /// One workload of one system on a fresh cluster (for profiling); prints each phase.
    Throughput {
        #[arg(long)]
        system: String,
        #[arg(long, default_value = "one-shot burn")]
        workload: String,
        #[arg(long, default_value = "64")]
        clients: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[command(flatten)]
        systems: Systems,
    },
    /// One second of load against a small cluster; the counts must agree.
    Selfcheck {
        #[arg(long)]
        ztna: PathBuf,
        /// Also check the etcd client against this etcd.
        #[arg(long)]
        etcd: Option<PathBuf>,
        #[arg(long, default_value = "/var/tmp/ztna-bench-selfcheck")]
        work_dir: PathBuf,
    },
}

/// The binaries under test and where their data goes.
#[derive(clap::Args)]
struct Systems {
    #[arg(long)]
    ztna: PathBuf,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Scratch space for the clusters' data (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/ztna-bench")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() {
    // reqwest is built with rustls in this workspace: its clients need a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match run(Cli::parse().command).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ztna-bench: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            quick,
            runs,
            seconds,
            systems: Systems { ztna, etcd, work_dir },
            out,
            keys,
            kills,
            skip_scale,
        } => {
            ztna_bench::systems::require(&ztna, "build it with cargo build --release")?;
            ztna_bench::systems::require(&etcd, "install etcd-server (scripts/bench does)")?;
            let scale_keys = keys.unwrap_or(if quick { 100_000 } else { 1_000_000 });
            let options = ztna_bench::bench::Options {
                quick,
                ztna,
                etcd,
                work_dir,
                scale_keys,
                kills,
                skip_scale,
                runs: runs.unwrap_or(if quick { 2 } else { 3 }),
                seconds: seconds.unwrap_or(if quick { 5 } else { 10 }),
                levels: if quick { vec![1, 64] } else { vec![1, 16, 64, 256] },
            };
            let results = ztna_bench::bench::run(&options).await?;
            let stem = if quick { "results-quick" } else { "results" };
            ztna_bench::report::write(&out, stem, &results)?;
            print!("{}", ztna_bench::report::markdown(&results, &ztna_bench::report::machine()));
            Ok(())
        }
        Command::Throughput { system, workload, clients, seconds, systems } => {
            let kind = ztna_bench::systems::Kind::parse(&system)?;
            let levels: Vec<usize> = clients.split(',').map(str::parse).collect::<Result<_, _>>()?;
            let options = ztna_bench::bench::Options { seconds, levels: levels.clone(), ..one_part(systems) };
            let phase = std::time::Duration::from_secs(seconds);
            ztna_bench::bench::workload_on_fresh_cluster(&options, kind, &workload, &levels, phase).await.map(drop)
        }
        Command::Failover { system, kills, systems } => {
            let kind = ztna_bench::systems::Kind::parse(&system)?;
            let options = ztna_bench::bench::Options { kills, ..one_part(systems) };
            let failover = ztna_bench::bench::failover_run(&options, kind, 0).await?;
            for kill in &failover.kills {
                println!(
                    "kill of node {}: first success {}, 90% {}",
                    kill.leader,
                    ztna_bench::report::opt_ms(kill.first_ok_ms),
                    ztna_bench::report::opt_ms(kill.recovered_90_ms)
                );
            }
            println!(
                "{}: median to first success {}, to 90% {}",
                kind.name(),
                ztna_bench::report::opt_ms(failover.median_first_ok_ms),
                ztna_bench::report::opt_ms(failover.median_recovered_90_ms)
            );
            Ok(())
        }
        Command::Scale { ztna, keys, work_dir, out } => {
            ztna_bench::systems::require(&ztna, "build it with cargo build --release")?;
            let _ = std::fs::remove_dir_all(&work_dir);
            let scale =
                ztna_bench::scale::measure(&ztna, &work_dir.join("scale"), keys).await.map_err(|e| format!("{e:#}"));
            match &scale {
                Ok(_) => {
                    let _ = std::fs::remove_dir_all(&work_dir);
                }
                // Keep the nodes' logs and data to find out why.
                Err(_) => eprintln!("ztna-bench: kept {} for diagnosis", work_dir.display()),
            }
            let results = ztna_bench::bench::Results {
                quick: false,
                seconds_per_phase: 0,
                runs: 0,
                rows: Vec::new(),
                failover: Vec::new(),
                scale: Some(scale),
            };
            ztna_bench::report::write(&out, "results-scale", &results)?;
            print!("{}", ztna_bench::report::markdown(&results, &ztna_bench::report::machine()));
            Ok(())
        }
        Command::Selfcheck { ztna, etcd, work_dir } => {
            ztna_bench::selfcheck::run(&ztna, etcd.as_deref(), &work_dir).await
        }
    }
}

/// Options for one part of the benchmark run alone: one run, no scale test.
fn one_part(systems: Systems) -> ztna_bench::bench::Options {
    let Systems { ztna, etcd, work_dir } = systems;
    ztna_bench::bench::Options {
        quick: true,
        ztna,
        etcd,
        work_dir,
        scale_keys: 0,
        kills: 0,
        skip_scale: true,
        runs: 1,
        seconds: 0,
        levels: Vec::new(),
    }
}
