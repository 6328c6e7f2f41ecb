//! Operating the cluster: `/metrics`, backup and restore, rolling restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{Cluster, Load};

/// Parses Prometheus text format strictly enough to catch a malformed exposition: every sample
/// line is `name{label="value",…} number`, every metric has `# TYPE` before its samples, and
/// histogram buckets are cumulative. Answers each series (name plus labels) with its value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut series = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "bad metric name {name:?}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad type {kind:?}");
            assert!(typed.insert(name.to_string(), kind.to_string()).is_none(), "{name} typed twice");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = key.split('{').next().unwrap_or_default();
        assert!(valid_name(name), "bad sample name in {line:?}");
        if let Some(labels) = key.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("labels in braces");
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (label, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(valid_name(label) && quoted.starts_with('"'), "bad label {pair:?} in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{name} has samples before its # TYPE");
        assert!(series.insert(key.to_string(), value).is_none(), "series {key} twice");
    }
    // Buckets are cumulative: each `le` bucket holds at least the one before it.
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("_bucket{")) {
        let (key, value) = line.rsplit_once(' ').expect("bucket value");
        let series_of = key.split(",le=").next().unwrap_or(key).replace("{le=", "{").to_string();
        let value: f64 = value.parse().expect("bucket count");
        let before = last.insert(series_of, value).unwrap_or(0.0);
        assert!(value >= before, "bucket {key} is below the one before it");
    }
    series
}

async fn scrape(cluster: &Cluster, id: u64) -> BTreeMap<String, f64> {
    let response = cluster.http.get(format!("{}/metrics", cluster.url(id))).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type}");
    parse_prometheus(&response.text().await.expect("metrics body"))
}

fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let before_leader = scrape(&cluster, leader).await;
    let before = scrape(&cluster, follower).await;
    assert_eq!(value(&before_leader, "ztna_raft_role{role=\"leader\"}"), 1.0);
    assert_eq!(value(&before, "ztna_raft_role{role=\"follower\"}"), 1.0);
    assert_eq!(value(&before, "ztna_raft_leader_id"), leader as f64);

    // Through the follower: one key, an enrolment, a second enrolment the one-shot key refuses.
    let mut body = json!({"action": "create_auth_key", "org_id": cluster.org_id, "expires_in": 3600});
    let (status, key) = cluster.post(follower, "/api/key-management", &body, Some(&cluster.api_key)).await;
    assert_eq!(status, 200, "{key}");
    let secret = key["key"].as_str().expect("secret");
    assert_eq!(cluster.enrol(follower, secret, 1).await.0, 200);
    assert_eq!(cluster.enrol(follower, secret, 2).await.0, 403);
    body["action"] = json!("no_such_action");
    assert_eq!(cluster.post(follower, "/api/key-management", &body, Some(&cluster.api_key)).await.0, 400);

    let after = scrape(&cluster, follower).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved("ztna_enrolments_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(moved("ztna_enrolments_total{outcome=\"key_used\"}"), 1.0);
    let created = "route=\"/api/key-management\",action=\"create_auth_key\"";
    assert_eq!(moved(&format!("ztna_api_requests_total{{{created},outcome=\"ok\"}}")), 1.0);
    assert_eq!(moved(&format!("ztna_api_request_seconds_count{{{created}}}")), 1.0);
    assert_eq!(moved("ztna_api_requests_total{route=\"/api/enrol\",action=\"-\",outcome=\"key_used\"}"), 1.0);
    assert_eq!(
        moved("ztna_api_requests_total{route=\"/api/key-management\",action=\"unknown\",outcome=\"invalid_request\"}"),
        1.0,
        "an unknown action is counted under `unknown`, not under its own name"
    );
    assert!(moved("ztna_forwarded_requests_total{kind=\"write\"}") >= 3.0);

    let after_leader = scrape(&cluster, leader).await;
    let leader_moved = |series: &str| value(&after_leader, series) - value(&before_leader, series);
    assert!(leader_moved("ztna_proposals_total") >= 1.0);
    assert!(leader_moved("ztna_proposal_commands_count") >= 1.0);
    assert!(leader_moved("ztna_log_fsync_seconds_count") >= 1.0);
    // Two entries at least: the key and the enrolment (the spent key's is refused before Raft).
    assert!(leader_moved("ztna_raft_applied_index") >= 2.0);
    assert!(value(&after_leader, "ztna_raft_commit_index") >= value(&before_leader, "ztna_raft_applied_index") + 2.0);
    assert_eq!(value(&after_leader, "ztna_raft_members{kind=\"voter\"}"), 3.0);
    for id in (1..=3).filter(|id| *id != leader) {
        let lag = format!("ztna_raft_replication_lag_entries{{follower=\"{id}\"}}");
        assert!(after_leader.contains_key(&lag), "no {lag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_new_cluster_has_every_key_use_and_machine() {
    let mut old = Cluster::start().await;
    // A cluster that has lived: two leaders killed, so the backup's entries are from a term
    // well above 1 (a restore once never committed then).
    for _ in 0..2 {
        let leader = old.wait_ready().await;
        old.kill(leader);
        old.wait_ready().await;
        old.spawn(leader);
        old.wait_caught_up().await;
    }
    let used = old.create_key(1, json!({"expires_in": 3600})).await;
    let reusable = old.create_key(2, json!({"reusable": true, "max_uses": 10, "expires_in": 3600})).await;
    let revoked = old.create_key(3, json!({"expires_in": 3600})).await;
    assert_eq!(old.enrol(1, used["key"].as_str().unwrap(), 1).await.0, 200);
    for device in 2..=4 {
        assert_eq!(old.enrol(device % 3 + 1, reusable["key"].as_str().unwrap(), device).await.0, 200);
    }
    let (status, _) = old.keys(1, json!({"action": "revoke_auth_key", "key_id": revoked["key_id"]})).await;
    assert_eq!(status, 200);
    let machines_before = old.machines(1).await;
    assert_eq!(machines_before.len(), 4);

    // The backup is asked of a follower, which sends the CLI to the leader.
    let leader = old.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let file = old.dir.path().join("backup.snap");
    let out = old
        .cli()
        .env("ZTNA_SERVER", old.url(follower))
        .env("ZTNA_OPERATOR_KEY", &old.operator_key)
        .args(["cluster", "backup", "--out"])
        .arg(&file)
        .output()
        .expect("ztna cluster backup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "backup: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Backup at log index"), "{stdout}");
    // Org names, hostnames and tags are in it: readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    for written in [file.clone(), old.dir.path().join("backup.snap.sha256")] {
        assert_eq!(std::fs::metadata(&written).expect("written").permissions().mode() & 0o777, 0o600);
    }
    let sums = std::fs::read_to_string(old.dir.path().join("backup.snap.sha256")).expect("checksum file");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&file).expect("backup")));
    assert_eq!(sums, format!("{digest}  backup.snap\n"));
    // Only the operator may take one, and a follower sends on only the operator: a wrong key
    // is refused the same wherever it is sent (the first build answered it 307 at a follower).
    for node in [leader, follower] {
        let (status, _) = old.post(node, "/api/cluster/backup", &json!({}), Some(&old.api_key)).await;
        assert_eq!(status, 403, "n{node}");
        let made_up = format!("tskey-api-{}-{}", "0".repeat(12), "1".repeat(32));
        let (status, _) = old.post(node, "/api/cluster/backup", &json!({}), Some(&made_up)).await;
        assert_eq!(status, 401, "n{node}");
    }

    let term = old.cluster_info(leader).await.and_then(|i| i["term"].as_u64()).unwrap_or_default();
    assert!(term >= 3, "the backup comes from term {term}");

    for id in 1..=3 {
        old.kill(id);
    }

    // New clusters of three nodes (1 and 2 restored from the file, 3 empty: it gets a
    // snapshot), one node, and five (only node 1 restored).
    for (size, restored) in [(3, &[1, 2][..]), (1, &[1][..]), (5, &[1][..])] {
        let mut new = Cluster::restore_from(&file, &old, size, restored).await;
        new.wait_caught_up().await;
        for id in 1..=size {
            let key = new.get_key(id, used["key_id"].as_str().unwrap()).await;
            assert_eq!(key["uses"], 1, "{size} nodes, node {id}: {key}");
            let key = new.get_key(id, reusable["key_id"].as_str().unwrap()).await;
            assert_eq!(key["uses"], 3, "{size} nodes, node {id}: {key}");
            let key = new.get_key(id, revoked["key_id"].as_str().unwrap()).await;
            assert!(!key["revoked_at"].is_null(), "{size} nodes, node {id}: {key}");
            assert_eq!(new.machines(id).await, machines_before, "{size} nodes, node {id}");
        }
        // The rules hold on the restored state, and it takes new writes.
        let (status, again) = new.enrol(size, used["key"].as_str().unwrap(), 9).await;
        assert_eq!((status, again["error"]["code"].as_str()), (403, Some("key_used")), "{size} nodes: {again}");
        assert_eq!(new.enrol(1, reusable["key"].as_str().unwrap(), 9).await.0, 200, "{size} nodes");
        new.create_key(size, json!({"expires_in": 3600})).await;
        // And after its leader is killed (a single node: restarted), the cluster elects a
        // leader again and takes writes too.
        let leader = new.wait_ready().await;
        new.kill(leader);
        if size == 1 {
            new.spawn(leader);
        }
        let survivor = new.wait_ready().await;
        assert_eq!(new.enrol(survivor, reusable["key"].as_str().unwrap(), 10).await.0, 200, "{size} nodes");
        if size > 1 {
            new.spawn(leader);
        }
        new.wait_caught_up().await;
        let key = new.get_key(leader, reusable["key_id"].as_str().unwrap()).await;
        assert_eq!(key["uses"], 5, "{size} nodes: {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_acknowledged_enrolment() {
    let mut cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"reusable": true, "expires_in": 3600})).await;
    let targets = Arc::new(Mutex::new((1..=3).map(|id| cluster.url(id)).collect::<Vec<_>>()));
    let load = Load::start(targets, key["key"].as_str().expect("secret"), 4);
    // One node at a time, as an upgrade would: stop, start, wait until it has caught up.
    for id in [1, 2, 3] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.stop(id);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.spawn(id);
        cluster.wait_ready().await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (acknowledged, failures) = load.finish().await;
    assert!(failures.is_empty(), "enrolments failed beyond the documented retry: {failures:?}");
    assert!(acknowledged.len() > 20, "too little load to mean anything: {}", acknowledged.len());
    cluster.wait_caught_up().await;
    for id in 1..=3 {
        let record = cluster.get_key(id, key["key_id"].as_str().expect("key id")).await;
        assert_eq!(record["uses"].as_u64(), Some(acknowledged.len() as u64), "node {id}: {record}");
    }
}

/// Runs `ztna server` with `cluster_file` as node 1 and answers its exit status and stderr;
/// it must stop on its own.
fn start_refused(dir: &std::path::Path, cluster_file: &str) -> (Option<i32>, String) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, cluster_file).expect("write");
    let mut child = std::process::Command::new(crate::support::ztna())
        .args(["server", "--id", "1", "--cluster"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ztna server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            return (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the node did not stop on its own for:\n{cluster_file}");
}

#[test]
fn a_misconfigured_node_stops_at_start_with_one_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let busy_addr = busy.local_addr().expect("addr");
    let node = |api: &str| format!("[[nodes]]\nid = 1\napi_addr = \"{api}\"\nraft_addr = \"127.0.0.1:0\"\n");
    let plaintext = "insecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster = true\n";

    let (code, err) = start_refused(dir.path(), &format!("[settings]\nheartbeat_ms = 5\n{}", node("127.0.0.1:0")));
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `heartbeat_ms`"), "{err}");

    // No [tls] and no explicit opt-out: refused, saying how to fix it.
    let (code, err) = start_refused(dir.path(), &node("127.0.0.1:0"));
    assert_eq!(code, Some(1));
    assert!(err.contains("no [tls] table") && err.contains("ztna cluster certs"), "{err}");

    let (code, err) = start_refused(dir.path(), &format!("[settings]\n{plaintext}{}", node(&busy_addr.to_string())));
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("cannot listen on {busy_addr}")), "{err}");

    let tls =
        "\n[tls]\nca_cert = \"missing/ca.crt\"\ncert = \"missing/node{id}.crt\"\nkey = \"missing/node{id}.key\"\n";
    let (code, err) = start_refused(dir.path(), &format!("{}{tls}", node("127.0.0.1:0")));
    assert_eq!(code, Some(1));
    assert!(err.contains("missing/ca.crt"), "the message names the file: {err}");

    // Another cluster's data directory: exit status 3 (restarting cannot help).
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let other = r#"{"format": 1, "cluster_name": "staging", "node_id": 1, "incarnation": "x"}"#;
    std::fs::write(dir.path().join("data/identity.json"), other).expect("identity");
    let (code, err) =
        start_refused(dir.path(), &format!("[settings]\ncluster_name = \"prod\"\n{plaintext}{}", node("127.0.0.1:0")));
    assert_eq!(code, Some(3));
    assert!(err.contains("belongs to cluster \"staging\", not \"prod\""), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error")).count(), 1, "one message: {err}");
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_refuses_requests_and_rejoins_with_everything_once_space_is_back() {
    let mut cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"reusable": true, "expires_in": 3600})).await;
    let secret = key["key"].as_str().expect("secret").to_string();
    let key_id = key["key_id"].as_str().expect("key id").to_string();
    // The leader's disk fills: it must give way to the others.
    let full = cluster.wait_ready().await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != full).collect();

    // All nodes share one filesystem here, so node `full` gets a threshold just under today's
    // free space and a ballast file takes 400 MiB: only it falls below its threshold.
    let free_mib = ztna_keystore::disk::free_bytes(cluster.dir.path()).expect("free space") >> 20;
    assert!(free_mib > 2048, "the test needs 2 GiB free, has {free_mib} MiB");
    cluster.stop(full);
    cluster.spawn_with(full, &["--min-free-disk-mb", &(free_mib - 150).to_string()]);
    cluster.wait_ready().await;
    let mut device = 0;
    let mut enrolled = 0;
    for id in 1..=3 {
        device += 1;
        assert_eq!(cluster.enrol(id, &secret, device).await.0, 200);
        enrolled += 1;
    }

    let ballast = cluster.dir.path().join("ballast");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&ballast).expect("ballast");
        let chunk = vec![0x5a_u8; 1 << 20];
        for _ in 0..400 {
            file.write_all(&chunk).expect("write ballast");
        }
        file.sync_all().expect("sync ballast");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.cluster_info(full).await.is_none_or(|i| i["disk_full"] != true) {
        assert!(std::time::Instant::now() < deadline, "node {full} never noticed:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its answers and its log say why; the other two elect a leader and keep serving.
    device += 1;
    let (status, refused) = cluster.enrol(full, &secret, device).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (507, Some("disk_full")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or_default().contains("disk is full"), "{refused}");
    assert!(cluster.log(full).contains("disk is full"), "{}", cluster.log(full));
    cluster.wait_leader_among(&others).await;
    // It says it is not ready, and refuses even a malformed request with 507, unparsed.
    let ready = cluster.http.get(format!("{}/readyz", cluster.url(full))).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.expect("readyz json");
    assert_eq!(ready["error"]["code"], "disk_full", "{ready}");
    let (status, answer) = cluster.post(full, "/api/key-management", &json!({"action": 7}), None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (507, Some("disk_full")), "{answer}");
    let info = cluster.cluster_info(full).await.expect("cluster info");
    assert_eq!(info["role"], "shutdown", "{info}");
    // No log flood: over four seconds of the incident, every node's log grows by a few KB.
    let sizes = |c: &Cluster| (1..=3).map(|id| c.log(id).len()).collect::<Vec<_>>();
    let before = sizes(&cluster);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let grown: Vec<usize> = sizes(&cluster).iter().zip(&before).map(|(after, before)| after - before).collect();
    for (i, bytes) in grown.iter().enumerate() {
        // Before the fix: the full node ~650 KB/s, the leader ~1.2 MB/s.
        assert!(
            *bytes < 16 * 1024,
            "node {} logged {bytes} bytes in 4 s of a disk-full incident:\n{}",
            i + 1,
            cluster.logs()
        );
    }
    for id in &others {
        for _ in 0..3 {
            device += 1;
            let (status, answer) = cluster.enrol(*id, &secret, device).await;
            assert_eq!(status, 200, "node {id}: {answer}");
            enrolled += 1;
        }
    }

    // Space is back: the node says so; restarted, it rejoins with everything.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cluster.log(full).contains("space is back") {
        assert!(std::time::Instant::now() < deadline, "node {full} never saw the space come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop(full);
    cluster.spawn(full);
    cluster.wait_ready().await;
    cluster.wait_caught_up().await;
    let record = cluster.get_key(full, &key_id).await;
    assert_eq!(record["uses"], enrolled, "{record}");
    device += 1;
    assert_eq!(cluster.enrol(full, &secret, device).await.0, 200);
}
