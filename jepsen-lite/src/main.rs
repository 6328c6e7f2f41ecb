//! `jepsen-lite`: see `docs/jepsen.md`. Parses arguments and hands over to the library.

use clap::Parser;
use jepsen_lite::options::{Cli, Command};

#[tokio::main]
async fn main() {
    // reqwest is built with rustls in this workspace: its clients need a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let code = match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jepsen-lite: {e:#}");
            3
        }
    };
    std::process::exit(code);
}

async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(options) => Ok(jepsen_lite::run::run(options).await?.verdict.exit_code()),
        Command::Wan(options) => Ok(if jepsen_lite::wan::run(options).await? { 0 } else { 1 }),
        Command::SelfTest(options) => Ok(if jepsen_lite::selftest::run(options).await? { 0 } else { 1 }),
        Command::Check { history, skew_ms } => {
            let (header, ops) = jepsen_lite::history::read_jsonl(&history)?;
            let config = jepsen_lite::checker::Config { skew_ms, search_limit: std::time::Duration::from_secs(10) };
            let mut results = jepsen_lite::run::check_in_thread(ops.clone(), config).await?;
            let workloads: Vec<String> = header["workload"]
                .as_array()
                .map(|w| w.iter().filter_map(|w| w.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let stop_ns = header["time_s"].as_u64().map_or(u64::MAX, |s| s.saturating_mul(1_000_000_000));
            results.coverage = jepsen_lite::checker::coverage::check(&ops, &workloads, stop_ns, &mut results);
            let dir = history.parent().unwrap_or(std::path::Path::new("."));
            let hosts = header["hosts"].as_str().unwrap_or("unknown").to_string();
            jepsen_lite::report::write(dir, &header, &ops, &results, &hosts)?;
            Ok(results.verdict().exit_code())
        }
    }
}
