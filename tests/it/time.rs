//! Cluster time: a leader's clock jumping hours ahead or minutes back moves neither key expiry
//! nor the memory of request ids, and every key state answered is the state machine's.

use std::time::Duration;

use serde_json::json;

use crate::support::Cluster;

async fn enrol_status(cluster: &Cluster, node: u64, secret: &str, device: u64) -> (u16, String) {
    let (status, body) = cluster.enrol(node, secret, device).await;
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_clock_jumping_hours_ahead_or_minutes_back_moves_no_expiry_and_forgets_no_request() {
    let cluster = Cluster::start_with("test_only_min_expiry_secs = 1").await;
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // Hours ahead.
    let short = cluster.create_key(leader, json!({"reusable": true, "expires_in": 8})).await;
    let short_secret = short["key"].as_str().unwrap().to_string();
    let remembered = json!({"action": "create_auth_key", "reusable": true, "request_id": "made-before-the-jump"});
    assert_eq!(cluster.keys(leader, remembered.clone()).await.0, 200);
    cluster.set_clock_offset(leader, 3 * 3_600_000).await;
    assert_eq!(enrol_status(&cluster, follower, &short_secret, 1).await, (200, String::new()), "expired early");
    let key_id = short["key_id"].as_str().unwrap();
    assert_eq!(cluster.get_key(follower, key_id).await["state"], "valid");
    // Still remembered: a retry does not create a second key.
    let retried = cluster.keys(leader, remembered).await;
    assert_eq!((retried.0, retried.1["error"]["code"].as_str()), (409, Some("already_created")), "{}", retried.1);
    // And the key expires when it should, not three hours early or late.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(enrol_status(&cluster, follower, &short_secret, 2).await, (403, "key_expired".to_string()));
    assert_eq!(cluster.get_key(follower, key_id).await["state"], "expired");

    // Minutes back: a key does not live ten minutes longer.
    cluster.set_clock_offset(leader, -10 * 60_000).await;
    let key = cluster.create_key(leader, json!({"reusable": true, "expires_in": 5})).await;
    let secret = key["key"].as_str().unwrap().to_string();
    assert_eq!(enrol_status(&cluster, leader, &secret, 3).await.0, 200);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(enrol_status(&cluster, leader, &secret, 4).await, (403, "key_expired".to_string()), "lived longer");
    let listed = cluster.keys(follower, json!({"action": "list_auth_keys"})).await.1;
    let state =
        listed["keys"].as_array().unwrap().iter().find(|k| k["key_id"] == key["key_id"]).unwrap()["state"].clone();
    assert_eq!(state, "expired", "listings answer at cluster time");
    cluster.set_clock_offset(leader, 0).await;
}

/// A SIGHUP (the clock nemesis's reload, or `systemctl reload`) that reaches a node while it is
/// still starting is handled once it runs; it never ends the process, as the signal's default
/// action would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_a_node_starts_does_not_stop_it() {
    let mut cluster = Cluster::start().await;
    cluster.wait_ready().await;
    cluster.stop(2);
    cluster.spawn(2);
    // From 10 ms after the spawn (it starts in a few ms; opening its store takes longer) to 1 s.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        cluster.signal(2, "-HUP");
    }
    assert_eq!(cluster.wait_exit(2, Duration::from_secs(2)).await, None, "node 2 stopped: {}", cluster.log(2));
    cluster.wait_caught_up().await;
}
