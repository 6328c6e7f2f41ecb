//! Concurrent enrolments of one key, spread over all three nodes.

use futures::future::join_all;
use serde_json::json;

use crate::support::Cluster;

async fn race(cluster: &Cluster, key: &str, machines: u64) -> (usize, Vec<String>) {
    let attempts = (0..machines).map(|device| {
        let node = device % 3 + 1;
        async move { cluster.enrol(node, key, 1000 + device).await }
    });
    let results = join_all(attempts).await;
    let ok = results.iter().filter(|(status, _)| *status == 200).count();
    let refused = results
        .iter()
        .filter(|(status, _)| *status != 200)
        .map(|(_, body)| body["error"]["code"].as_str().unwrap_or("?").to_string())
        .collect();
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_machines_race_for_one_shot_and_max_uses_keys() {
    let cluster = Cluster::start().await;

    let one_shot = cluster.create_key(1, json!({})).await;
    let (ok, refused) = race(&cluster, one_shot["key"].as_str().unwrap(), 20).await;
    assert_eq!(ok, 1, "exactly one enrolment of a one-shot key: {refused:?}");
    assert_eq!(refused.len(), 19);
    assert!(refused.iter().all(|code| code == "key_used"), "{refused:?}");
    let record = cluster.get_key(2, one_shot["key_id"].as_str().unwrap()).await;
    assert_eq!(record["uses"], 1);
    assert_eq!(record["state"], "used");
    assert_eq!(record["enrolments"].as_array().unwrap().len(), 1);

    let five = cluster.create_key(2, json!({"reusable": true, "max_uses": 5})).await;
    let (ok, refused) = race(&cluster, five["key"].as_str().unwrap(), 20).await;
    assert_eq!(ok, 5, "exactly max_uses enrolments: {refused:?}");
    assert!(refused.iter().all(|code| code == "key_exhausted"), "{refused:?}");
    let record = cluster.get_key(3, five["key_id"].as_str().unwrap()).await;
    assert_eq!(record["uses"], 5);
    assert_eq!(record["state"], "exhausted");
    let machines: std::collections::BTreeSet<&str> =
        record["enrolments"].as_array().unwrap().iter().map(|e| e["machine_id"].as_str().unwrap()).collect();
    assert_eq!(machines.len(), 5, "five distinct machines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_enrolment_returns_the_same_machine_and_spends_no_use() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({})).await;
    let secret = key["key"].as_str().unwrap();
    let (status, first) = cluster.enrol(1, secret, 7).await;
    assert_eq!(status, 200, "{first}");
    // The first answer was "lost": the same machine asks again through another node.
    let (status, again) = cluster.enrol(3, secret, 7).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first["machine_id"], again["machine_id"]);
    assert_ne!(first["node_key"], again["node_key"], "the retry gets a fresh node key that works");
    let record = cluster.get_key(2, key["key_id"].as_str().unwrap()).await;
    assert_eq!(record["uses"], 1);
    // Another machine is refused.
    let (status, other) = cluster.enrol(2, secret, 8).await;
    assert_eq!((status, other["error"]["code"].as_str()), (403, Some("key_used")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_with_the_same_request_id_applies_once() {
    let cluster = Cluster::start().await;
    let body = json!({"action": "revoke_auth_key", "key": "tskey-auth-zzzzz", "request_id": "r-1"});
    let (status, _) = cluster.keys(1, body).await;
    assert_eq!(status, 404);
    let create = json!({"action": "create_auth_key", "request_id": "create-1"});
    let (status, first) = cluster.keys(1, create.clone()).await;
    assert_eq!(status, 200);
    // A client retry with the same request id (its answer lost) creates nothing; the secret
    // cannot be shown again, so it answers which key the request made, to revoke.
    let (status, again) = cluster.keys(2, create).await;
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("already_created")), "{again}");
    let message = again["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(first["key_id"].as_str().unwrap()) && message.contains("revoke"), "{again}");
    // Another request under the same id is refused as such.
    let other = json!({"action": "create_auth_key", "reusable": true, "request_id": "create-1"});
    let (status, reused) = cluster.keys(3, other).await;
    assert_eq!((status, reused["error"]["code"].as_str()), (409, Some("request_id_reused")), "{reused}");
    // An org made twice under one request id is one org, answered both times.
    let org = json!({"action": "create_org", "name": "twice", "request_id": "org-1"});
    let operator = cluster.operator_key.clone();
    let (status, made) = cluster.post(1, "/api/org-admin", &org, Some(&operator)).await;
    assert_eq!(status, 200, "{made}");
    let (status, again) = cluster.post(2, "/api/org-admin", &org, Some(&operator)).await;
    assert_eq!((status, &again["org_id"]), (200, &made["org_id"]), "{again}");
    // An API key likewise: made once, and the retry names it.
    let api_key =
        json!({"action": "create_api_key", "org_id": made["org_id"], "description": "ci", "request_id": "api-1"});
    let (status, first_api) = cluster.post(1, "/api/org-admin", &api_key, Some(&operator)).await;
    assert_eq!(status, 200, "{first_api}");
    let (status, again_api) = cluster.post(3, "/api/org-admin", &api_key, Some(&operator)).await;
    assert_eq!((status, again_api["error"]["code"].as_str()), (409, Some("already_created")), "{again_api}");
    let named = again_api["error"]["message"].as_str().unwrap_or_default();
    assert!(named.contains(first_api["api_key_id"].as_str().unwrap_or("?")), "{again_api}");
    let listing = json!({"action": "list_api_keys", "org_id": made["org_id"]});
    let (_, api_keys) = cluster.post(2, "/api/org-admin", &listing, Some(&operator)).await;
    assert_eq!(api_keys["api_keys"].as_array().map(Vec::len), Some(1), "{api_keys}");
    let (_, list) = cluster.keys(3, json!({"action": "list_auth_keys"})).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(list["keys"][0]["key_id"], first["key_id"]);
}
