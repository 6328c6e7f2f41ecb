//! The worst moments of a real cluster: a frozen leader, a frozen node that agents list first,
//! a leader that stops answering the followers forwarding to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::Cluster;

/// The machines the cluster still has, through any node that answers.
async fn machine_ids(cluster: &Cluster, through: &[u64]) -> Vec<String> {
    for id in through {
        let body = json!({"action": "list_machines", "org_id": cluster.org_id});
        let (status, answer) = cluster.post(*id, "/api/machine-admin", &body, Some(&cluster.api_key.clone())).await;
        if status == 200 {
            let mut ids: Vec<String> = answer["machines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["machine_id"].as_str().map(String::from))
                .collect();
            ids.sort();
            return ids;
        }
    }
    panic!("no node listed the machines:\n{}", cluster.logs());
}

/// Defect: a leader frozen past the inactivity timeout heard no heartbeat, and once thawed its
/// sweep (forwarded to the new leader) deleted every live ephemeral machine. The agents here
/// list the leader last, so they keep heartbeating through the others while it is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_thawed_deletes_no_live_ephemeral_machine() {
    let cluster = Cluster::start_with("ephemeral_inactivity_timeout_ms = 4000").await;
    let key = cluster.create_key(1, json!({"reusable": true, "ephemeral": true})).await;
    let secret = key["key"].as_str().unwrap();
    let mut agents = Vec::new();
    let mut enrolled: Option<Vec<String>> = None;
    for round in 1..=3 {
        let leader = cluster.wait_ready().await;
        let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        order.push(leader);
        let servers = order.iter().map(|id| cluster.url(*id)).collect::<Vec<_>>().join(",");
        // The same machines (same state directories), now listing this round's leader last.
        for mut agent in agents.drain(..) {
            let agent: &mut crate::support::Agent = &mut agent;
            agent.terminate().await;
        }
        agents = (0..4).map(|n| cluster.agent_with(secret, &format!("eph{n}"), "300ms", &servers)).collect();
        for agent in &agents {
            agent.wait_for("state: active").await;
        }
        let ids = enrolled.get_or_insert_with(|| {
            let mut ids: Vec<String> = agents.iter().map(|a| a.machine_id()).collect();
            ids.sort();
            ids
        });
        // Twice the timeout: the frozen leader hears nothing, the others elect a new one.
        cluster.pause(leader);
        tokio::time::sleep(Duration::from_secs(8)).await;
        cluster.resume(leader);
        // Longer than the timeout again: a sweep decided from the blackout would have committed.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        assert_eq!(&machine_ids(&cluster, &others).await, ids, "round {round}: a live machine was deleted");
        for agent in &mut agents {
            assert!(agent.is_running(), "round {round}: an agent stopped:\n{}", agent.output());
        }
    }
}

/// Defect: the CLI and agent waited 15 s for each node; a node that accepts connections but
/// answers nothing (frozen) made every agent listing it first miss its heartbeats, and a short
/// inactivity timeout deleted them all though the leader never changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_whose_first_node_is_frozen_keep_their_ephemeral_machines() {
    let cluster = Cluster::start_with("ephemeral_inactivity_timeout_ms = 12000").await;
    let leader = cluster.wait_ready().await;
    let frozen = (1..=3).find(|id| *id != leader).unwrap();
    let key = cluster.create_key(leader, json!({"reusable": true, "ephemeral": true})).await;
    let secret = key["key"].as_str().unwrap();
    // The frozen follower first in every agent's list.
    let mut order = vec![frozen];
    order.extend((1..=3).filter(|id| *id != frozen));
    let servers = order.iter().map(|id| cluster.url(*id)).collect::<Vec<_>>().join(",");
    let mut agents: Vec<_> = (0..4).map(|n| cluster.agent_with(secret, &format!("first{n}"), "2s", &servers)).collect();
    for agent in &agents {
        agent.wait_for("state: active").await;
    }
    let mut enrolled: Vec<String> = agents.iter().map(|a| a.machine_id()).collect();
    enrolled.sort();
    cluster.pause(frozen);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let listed = machine_ids(&cluster, &[leader]).await;
    cluster.resume(frozen);
    assert_eq!(listed, enrolled, "live machines were deleted while a follower was frozen");
    for agent in &mut agents {
        assert!(agent.is_running(), "an agent stopped:\n{}", agent.output());
    }
}

/// Defect: forwarded calls to a leader that stopped answering kept the follower's two
/// forwarding slots for the 30 s call timeout, so writes through that follower failed for
/// ~30 s after a failover that took well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_succeed_within_two_seconds_of_the_leader_freezing() {
    let cluster = Arc::new(Cluster::start().await);
    let leader = cluster.wait_ready().await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let key = cluster.create_key(leader, json!({"reusable": true})).await;
    let secret = key["key"].as_str().unwrap().to_string();
    // Enrolments through both followers from several clients each, so their forwarding slots
    // are busy when the leader freezes. One of them becomes the leader; the other keeps
    // forwarding, now to the new leader.
    let successes = Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant, Instant)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let through = followers[client as usize % 2];
        let (cluster, successes, stop, secret) = (cluster.clone(), successes.clone(), stop.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            let mut device = client * 1_000_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                device += 1;
                let started = Instant::now();
                if cluster.enrol(through, &secret, device).await.0 == 200 {
                    successes.lock().unwrap().push((through, started, Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen_at = Instant::now();
    cluster.pause(leader);
    let new_leader = cluster.wait_leader_among(&followers).await;
    let follower = followers.iter().copied().find(|id| *id != new_leader).unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
    }
    cluster.resume(leader);
    // The first write through the remaining follower that was sent after the freeze.
    let first_after = successes
        .lock()
        .unwrap()
        .iter()
        .filter(|(node, started, _)| *node == follower && *started > frozen_at)
        .map(|(_, _, done)| *done)
        .min();
    let Some(first_after) = first_after else {
        panic!("no write through follower {follower} succeeded in 8 s after the leader froze:\n{}", cluster.logs())
    };
    let waited = first_after - frozen_at;
    eprintln!("waited {waited:?} follower {follower} new leader {new_leader}");
    assert!(
        waited < Duration::from_secs(2),
        "the first write through follower {follower} took {waited:?} after the freeze"
    );
}
