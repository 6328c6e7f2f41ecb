//! The self-test: the harness must catch real bugs. Each scenario runs a server built with the
//! `fault-injection` feature, with one fault switch on (expecting `invalid` and a witness) or
//! none (expecting `valid`).

use crate::checker::Verdict;
use crate::options::{RunOptions, SelfTestOptions};

/// One self-test scenario.
pub struct Scenario {
    pub name: &'static str,
    pub fault: Option<&'static str>,
    pub workload: &'static str,
    pub nemesis: &'static str,
    pub expect: Verdict,
    /// The checker that must report the anomaly.
    pub caught_by: &'static [&'static str],
    /// Run the power nemesis as `kill -9` only (no lazyfs).
    pub no_lazyfs: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "all switches off",
        fault: None,
        workload: "one-shot,max-uses,revoke",
        nemesis: "kill,power,partition",
        expect: Verdict::Valid,
        caught_by: &[],
        no_lazyfs: false,
    },
    Scenario {
        name: "skip the limit check",
        fault: Some("ZTNA_FAULT_SKIP_LIMIT_CHECK"),
        workload: "one-shot,max-uses",
        nemesis: "none",
        expect: Verdict::Invalid,
        caught_by: &["limits", "linearizable"],
        no_lazyfs: false,
    },
    Scenario {
        name: "decide use from a stale local read",
        fault: Some("ZTNA_FAULT_STALE_READ_ENROL"),
        workload: "one-shot,max-uses",
        nemesis: "none",
        expect: Verdict::Invalid,
        caught_by: &["limits", "linearizable"],
        no_lazyfs: false,
    },
    Scenario {
        name: "acknowledge before the log is durable",
        fault: Some("ZTNA_FAULT_ACK_BEFORE_FSYNC"),
        workload: "one-shot,max-uses,revoke",
        nemesis: "power",
        expect: Verdict::Invalid,
        caught_by: &["limits", "linearizable", "listing", "revoke"],
        no_lazyfs: false,
    },
    // A real missing fsync: the WAL is written to the OS but never synced. Only a power cut
    // that loses the page cache (lazyfs) can see it; with `kill -9` alone it must pass.
    Scenario {
        name: "skip the log's fsync, power as kill -9",
        fault: Some("ZTNA_FAULT_SKIP_FSYNC"),
        workload: "one-shot,max-uses,revoke",
        nemesis: "power",
        expect: Verdict::Valid,
        caught_by: &[],
        no_lazyfs: true,
    },
    Scenario {
        name: "skip the log's fsync, power on lazyfs",
        fault: Some("ZTNA_FAULT_SKIP_FSYNC"),
        workload: "one-shot,max-uses,revoke",
        nemesis: "power",
        expect: Verdict::Invalid,
        caught_by: &["limits", "linearizable", "listing", "revoke"],
        no_lazyfs: false,
    },
];

/// Runs every scenario; `Ok(true)` when each met its expectation.
pub async fn run(options: SelfTestOptions) -> anyhow::Result<bool> {
    let mut all_ok = true;
    let mut lines = Vec::new();
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        // Only lazyfs can see a missing fsync; without /dev/fuse or root the scenario cannot run.
        if scenario.fault == Some("ZTNA_FAULT_SKIP_FSYNC") && !scenario.no_lazyfs && !crate::lazyfs::available() {
            lines.push(format!("SKIP {:<40} lazyfs needs /dev/fuse and root", scenario.name));
            continue;
        }
        // A run that could decide nothing (`unknown`: too little happened, e.g. the cluster never
        // came back from a power cut) says nothing about the checkers either way: it is run
        // once more with another seed, and its verdict stands after that.
        let mut attempt = 0;
        let result = loop {
            eprintln!("jepsen-lite self-test: {} …", scenario.name);
            let run = RunOptions {
                time: options.time,
                seed: options.seed.map(|s| s + i as u64 + 1000 * attempt),
                nemesis: scenario.nemesis.into(),
                workload: scenario.workload.into(),
                ztna: Some(options.ztna.clone()),
                store: options.store.clone(),
                faults: scenario.fault.iter().map(|f| f.to_string()).collect(),
                keep_data: false,
                search_limit: 10,
                no_lazyfs: scenario.no_lazyfs,
            };
            let result = crate::run::run(run).await?;
            if result.verdict != Verdict::Unknown || attempt == 1 {
                break result;
            }
            lines.push(format!("AGAIN {:<39} unknown (decided nothing) — {}", scenario.name, result.dir.display()));
            attempt += 1;
        };
        let caught: Vec<&str> = result.results.anomalies.iter().map(|a| a.checker).collect();
        let ok = result.verdict == scenario.expect
            && (scenario.caught_by.is_empty() || caught.iter().any(|c| scenario.caught_by.contains(c)));
        all_ok &= ok;
        lines.push(format!(
            "{} {:<40} expected {:?}, got {:?} ({} anomalies) — {}",
            if ok { "PASS" } else { "FAIL" },
            scenario.name,
            scenario.expect,
            result.verdict,
            caught.len(),
            result.dir.display()
        ));
    }
    println!("\n== jepsen-lite self-test");
    for line in lines {
        println!("{line}");
    }
    Ok(all_ok)
}
