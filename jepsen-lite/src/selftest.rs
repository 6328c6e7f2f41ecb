//! The self-test: the harness must catch real bugs. Each scenario runs a server built with the
//! `fault-injection` feature, with one fault switch on (expecting `invalid` and a witness) or
//! none (expecting `valid`).

use crate::checker::{Kind, Verdict};
use crate::options::{RunOptions, SelfTestOptions};

/// One self-test scenario.
pub struct Scenario {
    pub name: &'static str,
    pub fault: Option<&'static str>,
    pub workload: &'static str,
    pub nemesis: &'static str,
    pub expect: Verdict,
    /// The anomalies the fault must cause, as (checker, kind): the scenario passes only when
    /// one of them is reported (an anomaly of another kind is a fault caught for the wrong
    /// reason).
    pub caught_by: &'static [(&'static str, Kind)],
    /// Run the power nemesis as `kill -9` only (no lazyfs).
    pub no_lazyfs: bool,
    /// Runs of `--time` seconds a fault gets to be caught in: one for a switch every run
    /// catches; two for one whose catch depends on where the nemesis's faults fall. A run that
    /// decides nothing (`unknown`) is never run again: it fails the scenario.
    pub tries: u64,
    /// `snapshot_every_commands` of the nodes (3000 in a normal run).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (1000 in a normal run; fewer make installs common).
    pub log_kept: u64,
    /// Seconds per run when `--time` is too short for the fault to show.
    pub time: Option<u64>,
}

/// What a scenario is unless it says otherwise.
const BASE: Scenario = Scenario {
    name: "",
    fault: None,
    workload: "one-shot,max-uses,revoke",
    nemesis: "none",
    expect: Verdict::Invalid,
    caught_by: &[],
    no_lazyfs: false,
    tries: 1,
    snapshot_every: 3000,
    log_kept: 1000,
    time: None,
};

/// What a write acknowledged before it was durable looks like after a power cut: an
/// acknowledged enrolment or creation gone, a key enrolling past its limit or after its
/// revocation once the write that spent or revoked it is lost, or a history no order explains.
const LOST_WRITES: &[(&str, Kind)] = &[
    ("limits", Kind::LostAcknowledgement),
    ("limits", Kind::OverLimit),
    ("linearizable", Kind::NotLinearizable),
    ("listing", Kind::MissingFromListing),
    ("revoke", Kind::EnrolledAfterRevoke),
];

pub const SCENARIOS: &[Scenario] = &[
    // The correct server under every fault the switches below are caught by, with the
    // settings they run with (snapshots every 100 commands, 20 entries kept behind one, agents
    // and handoffs for 40 s, single-node power cuts on lazyfs, minute clock steps): what the
    // checkers report there is what they report on a server with nothing wrong.
    Scenario {
        name: "all switches off",
        workload: "one-shot,max-uses,revoke,agents,handoff",
        nemesis: "kill,power,partition,pause,clock",
        expect: Verdict::Valid,
        snapshot_every: 100,
        log_kept: 20,
        time: Some(40),
        ..BASE
    },
    Scenario {
        name: "skip the limit check",
        fault: Some("ZTNA_FAULT_SKIP_LIMIT_CHECK"),
        workload: "one-shot,max-uses",
        caught_by: &[("limits", Kind::OverLimit), ("linearizable", Kind::NotLinearizable)],
        ..BASE
    },
    Scenario {
        name: "decide use from a stale local read",
        fault: Some("ZTNA_FAULT_STALE_READ_ENROL"),
        workload: "one-shot,max-uses",
        caught_by: &[("limits", Kind::OverLimit), ("linearizable", Kind::NotLinearizable)],
        ..BASE
    },
    Scenario {
        name: "acknowledge before the log is durable",
        fault: Some("ZTNA_FAULT_ACK_BEFORE_FSYNC"),
        nemesis: "power",
        caught_by: LOST_WRITES,
        // Caught when a cut takes every node (half the power faults) or the wrong one.
        tries: 2,
        ..BASE
    },
    // Reads answered from a node's own state: a node cut off by a partition answers from the
    // past (a revoked key shown valid, a listing without keys created since).
    Scenario {
        name: "serve reads from local state",
        fault: Some("ZTNA_FAULT_LOCAL_READ"),
        workload: "revoke,create-list,reenrol",
        nemesis: "partition",
        caught_by: &[("linearizable", Kind::NotLinearizable), ("listing", Kind::MissingFromListing)],
        // A stale read shows only when a key read on the cut-off node changed after the cut.
        tries: 2,
        ..BASE
    },
    // A real missing fsync: the WAL is written to the OS but never synced. Only a power cut
    // that loses the page cache (lazyfs) can see it; with `kill -9` alone it must pass.
    Scenario {
        name: "skip the log's fsync, power as kill -9",
        fault: Some("ZTNA_FAULT_SKIP_FSYNC"),
        nemesis: "power",
        expect: Verdict::Valid,
        no_lazyfs: true,
        ..BASE
    },
    Scenario {
        name: "skip the log's fsync, power on lazyfs",
        fault: Some("ZTNA_FAULT_SKIP_FSYNC"),
        nemesis: "power",
        caught_by: LOST_WRITES,
        // Caught when a power cut takes a majority's unsynced writes (every node, or a node
        // whose log the others' cannot make up for): not every cut does.
        tries: 2,
        ..BASE
    },
    // A missing fsync of the state machine's own files: snapshots built every 100 commands are
    // renamed into place but never synced. `kill -9` leaves them in the page cache; a lazyfs
    // power cut leaves them empty (or gone), and a node cannot start from that.
    Scenario {
        name: "skip the snapshot's fsync, power as kill -9",
        fault: Some("ZTNA_FAULT_SKIP_SNAPSHOT_FSYNC"),
        nemesis: "power",
        expect: Verdict::Valid,
        no_lazyfs: true,
        snapshot_every: 100,
        ..BASE
    },
    Scenario {
        name: "skip the snapshot's fsync, power on lazyfs",
        fault: Some("ZTNA_FAULT_SKIP_SNAPSHOT_FSYNC"),
        nemesis: "power",
        caught_by: &[("recovery", Kind::NodeNotBack)],
        // Caught only if a power cut comes after the first snapshot.
        tries: 2,
        snapshot_every: 100,
        ..BASE
    },
    // A sweep decided from a deposed leader's stale view, forwarded to its successor: only a
    // change of leader while the leader lives (a partition, a pause) makes a node deposed with
    // a view to forward. The view must then go stale for the inactivity timeout (10 s).
    Scenario {
        name: "forward the sweep, no nemesis",
        fault: Some("ZTNA_FAULT_FORWARD_SWEEP"),
        workload: "agents,one-shot",
        expect: Verdict::Valid,
        time: Some(30),
        ..BASE
    },
    Scenario {
        name: "forward the sweep to a new leader",
        fault: Some("ZTNA_FAULT_FORWARD_SWEEP"),
        workload: "agents,one-shot",
        nemesis: "partition,pause",
        caught_by: &[("machines", Kind::LiveMachineDeleted)],
        tries: 2,
        time: Some(30),
        ..BASE
    },
    // A leader that refuses a credential from its applied state as it stands: right after a
    // failover that state lacks the last entries its predecessor acknowledged, and a key made a
    // moment before the leader died is refused `invalid_auth_key` through the survivors.
    Scenario {
        name: "refuse from a fresh leader's stale state, no nemesis",
        fault: Some("ZTNA_FAULT_STALE_REFUSAL"),
        workload: "handoff",
        expect: Verdict::Valid,
        ..BASE
    },
    Scenario {
        name: "refuse from a fresh leader's stale state",
        fault: Some("ZTNA_FAULT_STALE_REFUSAL"),
        workload: "handoff",
        nemesis: "kill",
        caught_by: &[("credentials", Kind::RefusedValidCredential), ("linearizable", Kind::NotLinearizable)],
        tries: 2,
        time: Some(30),
        ..BASE
    },
    // A snapshot install that leaves the log's purge to later: a node cut right after it
    // installed a snapshot and appended past it keeps the old log, a hole and the new entries,
    // and openraft cannot start from that. `kill -9` is enough (the hole is on disk).
    Scenario {
        name: "purge the log after a snapshot install, later",
        fault: Some("ZTNA_FAULT_INSTALL_DEFERS_PURGE"),
        nemesis: "power",
        caught_by: &[("recovery", Kind::NodeNotBack)],
        no_lazyfs: true,
        // Caught when a node's power is cut (alone or with the others) in the ten seconds
        // the fault leaves its log with a hole after an install: a minute holds several.
        tries: 2,
        snapshot_every: 100,
        log_kept: 20,
        time: Some(60),
        ..BASE
    },
    // A sweep that deletes what it decided whatever happened since, proposed a moment late:
    // an agent that crashed before saving its node key and enrols again as its machine is
    // judged silent loses the machine it just re-keyed.
    Scenario {
        name: "sweep without checking again at commit",
        fault: Some("ZTNA_FAULT_SWEEP_UNCHECKED"),
        workload: "agents,one-shot",
        caught_by: &[("machines", Kind::LiveMachineDeleted)],
        tries: 2,
        time: Some(40),
        ..BASE
    },
];

/// The switches only a power cut that loses the page cache can catch.
const SEEN_ONLY_BY_LAZYFS: &[&str] = &["ZTNA_FAULT_SKIP_FSYNC", "ZTNA_FAULT_SKIP_SNAPSHOT_FSYNC"];

/// Runs every scenario; `Ok(true)` when each met its expectation.
pub async fn run(options: SelfTestOptions) -> anyhow::Result<bool> {
    let mut all_ok = true;
    let mut lines = Vec::new();
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        if options.only.as_deref().is_some_and(|only| !scenario.name.contains(only)) {
            continue;
        }
        // Only lazyfs can see a missing fsync; without /dev/fuse or root the scenario cannot run.
        let missing_fsync = scenario.fault.is_some_and(|f| SEEN_ONLY_BY_LAZYFS.contains(&f));
        if missing_fsync && !scenario.no_lazyfs && !crate::lazyfs::available() {
            lines.push(format!("SKIP {:<52} lazyfs needs /dev/fuse and root", scenario.name));
            continue;
        }
        let mut attempt = 0;
        let result = loop {
            eprintln!("jepsen-lite self-test: {} …", scenario.name);
            let run = RunOptions {
                time: scenario.time.unwrap_or(0).max(options.time),
                seed: options.seed.map(|s| s + i as u64 + 1000 * attempt),
                nemesis: scenario.nemesis.into(),
                workload: scenario.workload.into(),
                ztna: Some(options.ztna.clone()),
                store: options.store.clone(),
                faults: scenario.fault.iter().map(|f| f.to_string()).collect(),
                keep_data: false,
                search_limit: 10,
                no_lazyfs: scenario.no_lazyfs,
                snapshot_every: scenario.snapshot_every,
                log_kept: scenario.log_kept,
            };
            let result = crate::run::run(run).await?;
            // Only a fault not caught in a run that decided (`valid`) gets another run.
            let missed = scenario.expect == Verdict::Invalid && result.verdict == Verdict::Valid;
            if missed && attempt + 1 < scenario.tries {
                lines.push(format!("AGAIN {:<52} not caught in this run — {}", scenario.name, result.dir.display()));
                attempt += 1;
                continue;
            }
            break result;
        };
        let mut caught: std::collections::BTreeMap<(&str, Kind), usize> = Default::default();
        for a in &result.results.anomalies {
            *caught.entry((a.checker, a.kind)).or_default() += 1;
        }
        let expected = scenario.caught_by.iter().any(|pair| caught.contains_key(pair));
        let ok = result.verdict == scenario.expect && (scenario.caught_by.is_empty() || expected);
        all_ok &= ok;
        let shown: Vec<String> = caught.iter().map(|((c, k), n)| format!("{c}/{} ×{n}", k.name())).collect();
        lines.push(format!(
            "{} {:<52} expected {:?}, got {:?} ({}) — {}",
            if ok { "PASS" } else { "FAIL" },
            scenario.name,
            scenario.expect,
            result.verdict,
            if shown.is_empty() { "no anomalies".to_string() } else { shown.join(", ") },
            result.dir.display()
        ));
    }
    println!("\n== jepsen-lite self-test");
    for line in lines {
        println!("{line}");
    }
    Ok(all_ok)
}
