//! Writes the results as a markdown table and JSON: ops/s, p50/p99/p99.9 latency, errors and
//! the ratio ours/etcd on every row, failover and scale against their targets, with the
//! machine's core count and the commit.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::bench::{Results, Spread};
use crate::systems::Kind;

/// Machine facts for the header.
pub fn machine() -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC"))
        .unwrap_or_default();
    json!({ "cores": cores, "cpu": cpu, "kernel": kernel, "commit": commit, "date": date })
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A duration in whole milliseconds, or — when it was not measured.
pub fn opt_ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0} ms"))
}

fn check(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

fn spread(s: Spread, fmt: fn(f64) -> String) -> String {
    format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
}

fn rate(v: f64) -> String {
    format!("{v:.0}")
}

pub fn markdown(results: &Results, machine: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark results{}\n", if results.quick { " (--quick)" } else { "" });
    let _ = writeln!(
        out,
        "Commit `{}`, {}, {} cores ({}), kernel {}. Made by `scripts/bench{}` (`ztna-bench run`); every figure below comes from that one run.\n",
        machine["commit"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        if results.quick { " --quick" } else { "" },
    );
    if !results.rows.is_empty() {
        let _ = writeln!(
            out,
            "Three ztna nodes and three etcd {} nodes on loopback and the same disk, fsync on, each system's default settings, mutual TLS between the nodes of both. Every workload starts on a fresh cluster of each system; each configuration ran {} times, the systems alternating (ztna, etcd, ztna, …); {} s per phase. One closed-loop load generator spreads the clients over the three nodes: ztna over HTTP/1.1 keep-alive with its JSON API, etcd over gRPC with its native client (`etcd-client`, one HTTP/2 connection per 10 clients), each operation one transaction as an etcd user would write it (see `docs/bench/README.md`). A transaction whose compare failed counts as an error, never as throughput.\n",
            etcd_version(),
            results.runs,
            results.seconds_per_phase,
        );
        out.push_str("## Throughput and latency (median of the runs, range in brackets)\n\n");
        out.push_str("| workload | clients | ztna ops/s | etcd ops/s | ztna/etcd (median of runs) | worst case (worst ztna / best etcd) | ztna p50 / p99 ms | etcd p50 / p99 ms | errors ztna / etcd | notes |\n");
        out.push_str("|---|---:|---|---|---:|---:|---|---|---|---|\n");
        for r in &results.rows {
            let errors = |kind| r.samples(kind).iter().map(|s| s.stats.errors).sum::<u64>();
            let dry = r.ran_dry();
            let notes = if dry.is_empty() {
                String::new()
            } else {
                let after: Vec<String> = dry.iter().map(|s| format!("{s:.1} s")).collect();
                format!("pre-made keys ran out in {} run(s), after {}", dry.len(), after.join(", "))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | **{:.2}×** | {:.2}× | {} / {} | {} / {} | {} / {} | {} |",
                r.workload,
                r.clients,
                spread(r.ops(Kind::Ztna), rate),
                spread(r.ops(Kind::Etcd), rate),
                r.median_ratio(),
                r.worst_ratio(),
                ms(r.p50(Kind::Ztna).median),
                ms(r.p99(Kind::Ztna).median),
                ms(r.p50(Kind::Etcd).median),
                ms(r.p99(Kind::Etcd).median),
                errors(Kind::Ztna),
                errors(Kind::Etcd),
                notes,
            );
        }
        out.push_str("\n## CPU per operation (median of the runs, CPU microseconds)\n\n");
        out.push_str("Each node's user + system CPU time over the phase (from `/proc/<pid>/stat`), divided by the phase's successful operations. Two cores serve three nodes and the generator, so throughput here is bounded by CPU, and this is the figure to drive down.\n\n");
        out.push_str("| workload | clients | ztna leader | ztna follower | ztna all nodes | etcd leader | etcd follower | etcd all nodes | generator cores ztna / etcd |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &results.rows {
            let cpu = |kind, f: fn(&crate::bench::NodeCpu) -> f64| {
                format!("{:.0}", Spread::of(r.samples(kind).iter().map(|s| f(&s.cpu))).median)
            };
            let generator =
                |kind| format!("{:.2}", Spread::of(r.samples(kind).iter().map(|s| s.stats.generator_cpu_cores)).median);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                r.workload,
                r.clients,
                cpu(Kind::Ztna, |c| c.leader_us_per_op),
                cpu(Kind::Ztna, |c| c.follower_us_per_op),
                cpu(Kind::Ztna, |c| c.total_us_per_op),
                cpu(Kind::Etcd, |c| c.leader_us_per_op),
                cpu(Kind::Etcd, |c| c.follower_us_per_op),
                cpu(Kind::Etcd, |c| c.total_us_per_op),
                generator(Kind::Ztna),
                generator(Kind::Etcd),
            );
        }
        out.push_str("\n## Targets\n\nA target counts as met when the median ratio meets it; the worst case stands beside it.\n\n");
        for r in &results.rows {
            let (p50_ok, p99_ok) = (
                r.p50(Kind::Ztna).median <= r.p50(Kind::Etcd).median,
                r.p99(Kind::Ztna).median <= r.p99(Kind::Etcd).median,
            );
            let verdict = match (r.workload, r.clients) {
                ("key creation", _) => Some((r.median_ratio() >= 1.0, "≥ 1× etcd".to_string())),
                (_, c) if c >= 64 => Some((r.median_ratio() >= 2.0 && p99_ok, "≥ 2× etcd, p99 no worse".to_string())),
                _ => None,
            };
            if let Some((ok, what)) = verdict {
                let _ = writeln!(
                    out,
                    "- {} {} at {} clients {what}: {:.2}× (worst case {:.2}×), p99 {} vs {} ms",
                    check(ok),
                    r.workload,
                    r.clients,
                    r.median_ratio(),
                    r.worst_ratio(),
                    ms(r.p99(Kind::Ztna).median),
                    ms(r.p99(Kind::Etcd).median),
                );
            }
            if r.clients == 1 {
                let _ = writeln!(
                    out,
                    "- {} {} at 1 client, p50 no worse: {} vs {} ms",
                    check(p50_ok),
                    r.workload,
                    ms(r.p50(Kind::Ztna).median),
                    ms(r.p50(Kind::Etcd).median),
                );
            }
        }
    }
    if !results.failover.is_empty() {
        out.push_str("\n## Failover (kill -9 of the leader under 16 clients using one reusable key)\n\n");
        out.push_str("Both systems with the same Raft timing: heartbeat 20 ms, election timeout 100 ms randomised up to 200 ms. A client gives up on a request after 100 ms and sends the next to the next node. Time from the kill to the first success of a request sent after it, and to the end of the first 250 ms window at ≥ 90% of the rate before the kill.\n\n");
        out.push_str("| system | kills | median to first success | median to 90% throughput | each kill (first success / 90%) |\n|---|---:|---:|---:|---|\n");
        for (system, f) in &results.failover {
            let each: Vec<String> =
                f.kills.iter().map(|k| format!("{} / {}", opt_ms(k.first_ok_ms), opt_ms(k.recovered_90_ms))).collect();
            let _ = writeln!(
                out,
                "| {system} | {} | {} | {} | {} |",
                f.kills.len(),
                opt_ms(f.median_first_ok_ms),
                opt_ms(f.median_recovered_90_ms),
                each.join(", ")
            );
        }
        let ours = results.failover.iter().find(|(s, _)| *s == "ztna").and_then(|(_, f)| f.median_first_ok_ms);
        let theirs = results.failover.iter().find(|(s, _)| *s == "etcd").and_then(|(_, f)| f.median_first_ok_ms);
        if let (Some(o), Some(t)) = (ours, theirs) {
            let _ = writeln!(
                out,
                "\n- {} median to first success under 1 s and below etcd's ({o:.0} ms vs {t:.0} ms; ranges {} and {})",
                check(o < 1000.0 && o < t),
                kill_range(results, "ztna"),
                kill_range(results, "etcd"),
            );
        }
    }
    if let Some(Err(why)) = &results.scale {
        let _ = writeln!(out, "\n## Scale\n\n❌ The scale measurement did not complete: {why}");
    }
    if let Some(Ok(s)) = &results.scale {
        let _ = writeln!(out, "\n## Scale: {} auth keys in ztna\n", s.keys);
        out.push_str("| measure | value | target |\n|---|---|---|\n");
        let rss: Vec<String> =
            s.rss_mib.iter().map(|r| r.map_or("stopped".into(), |r| format!("{r:.0} MiB"))).collect();
        let max_rss = s.rss_mib.iter().flatten().copied().chain(s.follower_rss_mib).fold(0.0, f64::max);
        let _ =
            writeln!(out, "| load rate (create_auth_key, 256 clients, 2 nodes) | {:.0} keys/s | |", s.load_ops_per_sec);
        let _ = writeln!(
            out,
            "| resident memory per node after loading | {} | {} every node < 400 MiB |",
            rss.join(", "),
            check(max_rss < 400.0)
        );
        let _ = writeln!(
            out,
            "| resident memory of the follower after catching up | {} | {} < 400 MiB |",
            s.follower_rss_mib.map_or("—".into(), |r| format!("{r:.0} MiB")),
            check(s.follower_rss_mib.is_some_and(|r| r < 400.0))
        );
        let disk: Vec<String> = s.disk_mib.iter().map(|d| format!("{d:.0} MiB")).collect();
        let _ = writeln!(out, "| data directory on disk per node (RocksDB + snapshot) | {} | |", disk.join(", "));
        let _ = writeln!(
            out,
            "| last snapshot built while loading | {} ({} rows, {}) | |",
            s.snapshot_build_ms.map_or("—".into(), |m| format!("{m} ms")),
            s.snapshot_rows.map_or("—".into(), |r| r.to_string()),
            s.snapshot_mib.map_or("—".into(), |m| format!("{m:.0} MiB"))
        );
        let _ = writeln!(
            out,
            "| stopped follower's catch-up after restart | {:.0} ms ({}) | |",
            s.follower_catch_up_ms,
            if s.follower_installed_snapshot { "by snapshot" } else { "by log replay" }
        );
        let _ = writeln!(
            out,
            "| restart-to-ready (kill -9, start, /readyz and everything applied) | {:.0} ms | {} < 2 s |",
            s.restart_to_ready_ms,
            check(s.restart_to_ready_ms < 2000.0)
        );
        let _ = writeln!(
            out,
            "| listing page of 100, p50 / p99 | {} / {} ms | {} < 50 ms |",
            ms(s.list_page_100_p50_ms),
            ms(s.list_page_100_p99_ms),
            check(s.list_page_100_p99_ms < 50.0)
        );
        let _ = writeln!(
            out,
            "| listing page of 1000, p50 / p99 | {} / {} ms | |",
            ms(s.list_page_1000_p50_ms),
            ms(s.list_page_1000_p99_ms)
        );
    }
    out
}

/// The range of the first-success times of `system`'s kills.
fn kill_range(results: &Results, system: &str) -> String {
    let times: Vec<f64> = results
        .failover
        .iter()
        .filter(|(s, _)| *s == system)
        .flat_map(|(_, f)| f.kills.iter().filter_map(|k| k.first_ok_ms))
        .collect();
    let s = Spread::of(times);
    format!("{:.0}–{:.0} ms", s.min, s.max)
}

/// `etcd --version`'s version, for the header.
fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "(version unknown)".into())
}

/// Writes `<stem>.md` and `<stem>.json` in `dir`.
pub fn write(dir: &Path, stem: &str, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let machine = machine();
    std::fs::write(dir.join(format!("{stem}.md")), markdown(results, &machine))?;
    let json = json!({ "machine": machine, "results": results });
    std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
