//! Crashes in the middle of a snapshot install: wherever a follower dies while a leader's
//! snapshot is coming in, it starts again and catches up with everything, and its state is
//! byte for byte the others'.

use std::time::Duration;

use serde_json::json;

use crate::support::Cluster;

/// Node `id`'s applied index, row count and state digest, read from its stopped data directory.
async fn digest(cluster: &Cluster, id: u64) -> (Option<u64>, u64, String) {
    let (_log, sm) = ztna_keystore::store::open(&cluster.node(id).data_dir).await.expect("open store");
    sm.state_digest().expect("digest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_snapshot_install_loses_nothing() {
    // Snapshots every 300 commands; openraft keeps 1,000 entries behind a snapshot, so a node
    // 1,500 entries behind needs one.
    let mut cluster = Cluster::start_with("snapshot_every_commands = 300").await;
    let key = cluster.create_key(1, json!({"reusable": true})).await;
    let secret = key["key"].as_str().unwrap().to_string();
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let mut device = 0u64;
    // `append:after-install`: the first entries after an install are durable, which they are
    // before a purge done apart from the install would be.
    let points =
        ["install:received", "install:promoted", "install:rows", "install:applied", "append:after-install", "purge"];
    for point in points {
        let leader = cluster.wait_ready().await;
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        cluster.stop(victim);
        let before = cluster.cluster_info(leader).await.unwrap()["last_log_index"].as_u64().unwrap();
        // One entry per enrolment (one client at a time).
        while cluster.cluster_info(leader).await.unwrap()["purged_index"].as_u64().unwrap_or(0) < before + 100 {
            for _ in 0..100 {
                device += 1;
                let (status, body) = cluster.enrol(leader, &secret, device).await;
                assert_eq!(status, 200, "{body}");
            }
        }
        cluster.spawn_env(victim, &[], &[("ZTNA_TEST_ONLY_CRASH_AT", point)]);
        let crashed = cluster.wait_exit(victim, Duration::from_secs(60)).await;
        assert_eq!(crashed, Some(false), "{point}: node {victim} did not crash there:\n{}", cluster.log(victim));
        assert!(cluster.log(victim).contains(&format!("aborting at {point}")), "{point}:\n{}", cluster.log(victim));
        cluster.spawn(victim);
        cluster.wait_ready().await;
        cluster.wait_caught_up().await;
        let uses = cluster.get_key(victim, &key_id).await["uses"].as_u64().unwrap();
        assert_eq!(uses, device, "{point}: every enrolment is counted");
    }
    // Same applied index, same rows on every node.
    cluster.wait_caught_up().await;
    for id in 1..=3 {
        cluster.stop(id);
    }
    let digests = [digest(&cluster, 1).await, digest(&cluster, 2).await, digest(&cluster, 3).await];
    assert!(digests.iter().all(|d| *d == digests[0]), "the replicas differ: {digests:?}");
}
