//! Membership changes against real processes: a fourth node joins and a voter leaves while
//! machines enrol, one change at a time, and node ids are never reused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Cluster, Load};

async fn membership(cluster: &Cluster, via: u64, body: Value) -> (u16, Value) {
    cluster.post(via, "/api/cluster/membership", &body, Some(&cluster.operator_key.clone())).await
}

fn voters(info: &Value) -> Vec<u64> {
    let members = info["members"].as_array().cloned().unwrap_or_default();
    members.iter().filter(|m| m["voter"] == true).filter_map(|m| m["id"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_and_the_leader_leaves_under_enrolment_load() {
    let mut cluster = Cluster::start().await;
    let key = cluster.create_key(2, json!({"reusable": true, "expires_in": 3600})).await;
    let auth_key = key["key"].as_str().expect("secret").to_string();
    let targets = Arc::new(Mutex::new((1..=3).map(|id| cluster.url(id)).collect::<Vec<_>>()));
    let load = Load::start(targets.clone(), &auth_key, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Bad input names the field and changes nothing.
    for (body, field) in [
        (json!({"action": "add_node", "node_id": 4, "raft_addr": "nowhere", "api_addr": "127.0.0.1:1"}), "raft_addr"),
        (json!({"action": "add_node", "node_id": 0, "raft_addr": "127.0.0.1:1", "api_addr": "127.0.0.1:2"}), "node_id"),
        (json!({"action": "promote_node", "node_id": 4}), "action"),
        (json!({"action": "remove_node", "node_id": 3, "force": true}), "force"),
    ] {
        let (status, refused) = membership(&cluster, 1, body).await;
        assert_eq!(status, 400, "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap_or_default().contains(field), "{refused}");
    }
    let (status, refused) = membership(&cluster, 1, json!({"action": "remove_node", "node_id": 9})).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (404, Some("not_a_member")), "{refused}");

    // Only the operator changes membership.
    let (status, _) = cluster
        .post(2, "/api/cluster/membership", &json!({"action": "remove_node", "node_id": 3}), Some(&cluster.api_key))
        .await;
    assert_eq!(status, 403, "an org's API key must not change membership");

    // add-node through a follower, before node 4 runs: it waits for node 4 to catch up, and
    // a second change meanwhile is refused with the reason.
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // Node 4 is listed now and started only after the add began.
    let (raft4, api4) = cluster.list_node(4);
    let add = json!({"action": "add_node", "node_id": 4, "raft_addr": raft4, "api_addr": api4});
    let adding = {
        let (url, operator, add) = (cluster.url(follower), cluster.operator_key.clone(), add.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let r = http.post(format!("{url}/api/cluster/membership")).bearer_auth(operator).json(&add).send().await;
            let r = r.expect("add_node answered");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, busy) = membership(&cluster, leader, json!({"action": "remove_node", "node_id": 3})).await;
    assert_eq!(status, 409, "{busy}");
    assert_eq!(busy["error"]["code"], "membership_change_in_progress", "{busy}");
    assert!(busy["error"]["message"].as_str().unwrap_or_default().contains("adding node 4"), "{busy}");

    cluster.spawn(4);
    let (status, added) = adding.await.expect("add task");
    assert_eq!(status, 200, "add_node: {added}\n{}", cluster.logs());
    targets.lock().unwrap().push(cluster.url(4));
    assert_eq!(voters(&json!({"members": added["members"]})).len(), 4, "{added}");
    // Node 4 itself learns the new configuration with the next append.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut now_voting = cluster.cluster_info(4).await.map(|info| voters(&info)).unwrap_or_default();
        now_voting.sort_unstable();
        if now_voting == vec![1, 2, 3, 4] {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 sees voters {now_voting:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Adding it again, or reusing any id, is refused.
    let (status, again) = membership(&cluster, 4, add.clone()).await;
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("membership_conflict")), "{again}");

    // Remove the leader itself, through the CLI.
    let leader = cluster.wait_ready().await;
    let out = cluster
        .cli()
        .args(["cluster", "remove-node", "--id", &leader.to_string()])
        .env("ZTNA_OPERATOR_KEY", &cluster.operator_key)
        .output()
        .expect("ztna cluster remove-node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "remove-node: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("node {leader} removed")), "{stdout}");
    targets.lock().unwrap().retain(|url| *url != cluster.url(leader));
    // The removed node learns it and stops on its own.
    let exited = cluster.wait_exit(leader, Duration::from_secs(30)).await;
    assert_eq!(exited, Some(false), "the removed node should stop with an error:\n{}", cluster.logs());
    assert!(cluster.log(leader).contains("was removed from the cluster"), "{}", cluster.log(leader));

    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_ready().await;
    assert!(remaining.contains(&new_leader));
    let (status, reused) = membership(
        &cluster,
        new_leader,
        json!({"action": "add_node", "node_id": leader, "raft_addr": "127.0.0.1:1", "api_addr": "127.0.0.1:2"}),
    )
    .await;
    assert_eq!((status, reused["error"]["code"].as_str()), (409, Some("node_id_used")), "{reused}");

    // Restarted with its old data directory, the removed node refuses before taking any part
    // in Raft: it exits at once, and the others hear no vote request from it.
    let refusals_before: usize = remaining.iter().map(|id| cluster.log(*id).matches("refuses to vote").count()).sum();
    let started = Instant::now();
    cluster.spawn(leader);
    let exited = cluster.wait_exit(leader, Duration::from_secs(10)).await;
    assert_eq!(exited, Some(false), "the removed node must refuse to start:\n{}", cluster.log(leader));
    assert!(started.elapsed() < Duration::from_secs(5), "it took {:?} to refuse", started.elapsed());
    assert!(cluster.log(leader).contains("refusing to start"), "{}", cluster.log(leader));
    let refusals_after: usize = remaining.iter().map(|id| cluster.log(*id).matches("refuses to vote").count()).sum();
    assert_eq!(refusals_before, refusals_after, "the removed node asked for votes");

    // Removing it again says so and succeeds.
    let out = cluster
        .cli()
        .env("ZTNA_SERVER", cluster.url(new_leader))
        .args(["cluster", "remove-node", "--id", &leader.to_string()])
        .env("ZTNA_OPERATOR_KEY", &cluster.operator_key)
        .output()
        .expect("ztna cluster remove-node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "remove-node again: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("already removed"), "{stdout}");

    // `ztna cluster status` given one node lists every member, as the cluster knows them.
    let out = cluster.cli().env("ZTNA_SERVER", cluster.url(new_leader)).args(["cluster", "status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for id in &remaining {
        assert!(stdout.lines().any(|l| l.split_whitespace().next() == Some(&id.to_string())), "node {id}: {stdout}");
    }
    assert!(!stdout.lines().any(|l| l.split_whitespace().next() == Some(&leader.to_string())), "{stdout}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acknowledged, failures) = load.finish().await;
    assert!(failures.is_empty(), "enrolments failed beyond the documented retry: {failures:?}");
    assert!(acknowledged.len() > 20, "too little load to mean anything: {}", acknowledged.len());

    // Every acknowledged enrolment is there, on every remaining node's answer.
    for id in &remaining {
        let record = cluster.get_key(*id, key["key_id"].as_str().expect("key id")).await;
        assert_eq!(record["uses"].as_u64(), Some(acknowledged.len() as u64), "node {id}: {record}");
    }

    // A member down: `ztna cluster status` marks it and fails.
    let down = remaining.iter().copied().find(|id| *id != new_leader).expect("a follower");
    cluster.kill(down);
    let out = cluster.cli().env("ZTNA_SERVER", cluster.url(new_leader)).args(["cluster", "status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with(&down.to_string()) && l.contains("unreachable")), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_cannot_rejoin_under_its_old_id() {
    let mut cluster = Cluster::start().await;
    cluster.create_key(1, json!({"expires_in": 3600})).await;
    let leader = cluster.wait_ready().await;
    let wiped = (1..=3).find(|id| *id != leader).expect("a follower");
    // Let it register its data directory first.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.log(wiped).contains("registered this data directory") {
        assert!(Instant::now() < deadline, "node {wiped} never registered:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill(wiped);
    std::fs::remove_dir_all(&cluster.node(wiped).data_dir).expect("wipe");
    cluster.spawn(wiped);
    let exited = cluster.wait_exit(wiped, Duration::from_secs(30)).await;
    assert_eq!(exited, Some(false), "a wiped node must be refused:\n{}", cluster.logs());
    let log = cluster.log(wiped);
    assert!(log.contains("must not rejoin under its old id"), "{log}");
    assert!(log.contains("replace-node"), "the message should say what to do: {log}");

    // A data directory started under another node's id is refused at once.
    let other = (1..=3).find(|id| *id != leader && *id != wiped).expect("the third node");
    cluster.kill(other);
    let out = std::process::Command::new(crate::support::ztna())
        .args(["server", "--cluster"])
        .arg(cluster.dir.path().join("cluster.toml"))
        .args(["--id", &wiped.to_string(), "--data-dir"])
        .arg(&cluster.node(other).data_dir)
        .output()
        .expect("run ztna server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("belongs to node {other}, not node {wiped}")), "{stderr}");
}
