//! Writes the results as a markdown table and JSON: ops/s, p50/p99/p99.9 latency, errors and
//! the ratio ours/etcd on every row, failover and scale against their targets, with the
//! machine's core count and the commit.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::bench::Results;

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

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0} ms"))
}

fn check(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

pub fn markdown(results: &Results, machine: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark results{}\n", if results.quick { " (--quick)" } else { "" });
    let _ = writeln!(
        out,
        "Commit `{}`, {}, {} cores ({}), kernel {}. Three ztna nodes, then three etcd 3.4 nodes, on loopback and the same disk, fsync on, default settings; {} s per phase; one closed-loop load generator spreading clients over the three nodes (HTTP/1.1 keep-alive).\n",
        machine["commit"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        results.seconds_per_phase,
    );
    if !results.rows.is_empty() {
        out.push_str("## Throughput and latency\n\n");
        out.push_str("| workload | clients | ztna ops/s | etcd ops/s | ours/etcd | ztna p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | errors ztna / etcd | generator CPU (cores) ztna / etcd |\n");
        out.push_str("|---|---:|---:|---:|---:|---|---|---|---|\n");
        for r in &results.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | **{:.2}×** | {} / {} / {} | {} / {} / {} | {} / {} | {:.2} / {:.2} |",
                r.workload,
                r.clients,
                r.ztna.ops_per_sec,
                r.etcd.ops_per_sec,
                r.ratio,
                ms(r.ztna.p50_ms),
                ms(r.ztna.p99_ms),
                ms(r.ztna.p999_ms),
                ms(r.etcd.p50_ms),
                ms(r.etcd.p99_ms),
                ms(r.etcd.p999_ms),
                r.ztna.errors,
                r.etcd.errors,
                r.ztna.generator_cpu_cores,
                r.etcd.generator_cpu_cores,
            );
        }
        out.push_str("\nTargets: one-shot burn and hot reusable key at 64 and 256 clients at least 2× etcd with p99 no worse; at 1 client p50 no worse.\n\n");
        for r in results.rows.iter().filter(|r| r.workload != "key creation") {
            let verdict = if r.clients >= 64 {
                Some(r.ratio >= 2.0 && r.ztna.p99_ms <= r.etcd.p99_ms)
            } else if r.clients == 1 {
                Some(r.ztna.p50_ms <= r.etcd.p50_ms)
            } else {
                None
            };
            if let Some(ok) = verdict {
                let _ = writeln!(out, "- {} {} at {} clients", check(ok), r.workload, r.clients);
            }
        }
    }
    if !results.failover.is_empty() {
        out.push_str("\n## Failover (kill -9 of the leader under 16 clients of enrolments)\n\n");
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
                "\n- {} median to first success under 1 s and below etcd's ({o:.0} ms vs {t:.0} ms)",
                check(o < 1000.0 && o < t)
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
            "| resident memory per node after loading | {} | {} < 512 MiB |",
            rss.join(", "),
            check(max_rss < 512.0)
        );
        let _ = writeln!(
            out,
            "| resident memory of the follower after catching up | {} | |",
            s.follower_rss_mib.map_or("—".into(), |r| format!("{r:.0} MiB"))
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
            "| restart-to-ready (kill -9, start, /readyz and everything applied) | {:.0} ms | {} < 5 s |",
            s.restart_to_ready_ms,
            check(s.restart_to_ready_ms < 5000.0)
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

/// Writes `<stem>.md` and `<stem>.json` in `dir`.
pub fn write(dir: &Path, stem: &str, results: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let machine = machine();
    std::fs::write(dir.join(format!("{stem}.md")), markdown(results, &machine))?;
    let json = json!({ "machine": machine, "results": results });
    std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
