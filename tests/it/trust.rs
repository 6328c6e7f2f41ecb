//! A machine is who it says it is: enrolment proves possession of the machine's private key,
//! the retry path is no credential, tags stay as granted, admin decisions stick, and device
//! approval holds a machine until an admin decides. Real `ztna server` and `ztna up` processes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{device_keys, proven_enrol_body, Cluster};

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or_default()
}

fn row<'a>(machines: &'a [Value], machine_id: &str) -> Option<&'a Value> {
    machines.iter().find(|m| m["machine_id"] == machine_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_one_shot_key_and_a_victims_public_key_mint_nothing_and_a_captured_request_replays_nothing() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"tags": ["tag:server"]})).await;
    let secret = key["key"].as_str().unwrap();
    let mut victim = cluster.agent(secret, "victim");
    victim.wait_for("state: active").await;
    let victim_public = victim.state()["public_key"].as_str().unwrap().to_string();
    let machine = victim.machine_id();
    let key_id = key["key_id"].as_str().unwrap();

    // The attacker has the spent one-shot key and the victim's public key, not its private key.
    let server_key = cluster.http.get(format!("{}/api/enrol/key", cluster.url(2))).send().await.unwrap();
    let server_key: Value = server_key.json().await.unwrap();
    let server_key = server_key["server_key"].as_str().unwrap();
    let (attacker_private, _) = ztna_proof::new_key_pair();
    let bare = json!({"auth_key": secret, "hostname": "agent-host", "node_public_key": victim_public});
    let (status, answer) = cluster.post(2, "/api/enrol", &bare, None).await;
    assert_eq!((status, code(&answer)), (401, "proof_required"), "{answer}");
    let mut forged = ztna_proof::enrol_body(
        &attacker_private,
        &victim_public,
        server_key,
        secret,
        "agent-host",
        "forged-1",
        ztna_proof::issued_now(),
    );
    let (status, answer) = cluster.post(2, "/api/enrol", &forged, None).await;
    assert_eq!((status, code(&answer)), (401, "proof_invalid"), "{answer}");
    // A proof made for node 2 is refused by node 3.
    forged["request_id"] = json!("forged-2");
    let (status, answer) = cluster.post(3, "/api/enrol", &forged, None).await;
    assert_eq!((status, code(&answer)), (401, "wrong_server_key"), "{answer}");
    // A low-order point (whose shared secret anyone knows) or an alias of a key: refused.
    let zero = ztna_proof::enrol_body(
        &attacker_private,
        &"0".repeat(64),
        server_key,
        secret,
        "h",
        "low-1",
        ztna_proof::issued_now(),
    );
    let (status, answer) = cluster.post(2, "/api/enrol", &zero, None).await;
    assert_eq!((status, code(&answer)), (401, "proof_invalid"), "{answer}");
    let mut alias = hex::decode(&victim_public).unwrap();
    alias[31] |= 0x80;
    let alias = ztna_proof::enrol_body(
        &attacker_private,
        &hex::encode(alias),
        server_key,
        secret,
        "h",
        "alias-1",
        ztna_proof::issued_now(),
    );
    let (status, answer) = cluster.post(2, "/api/enrol", &alias, None).await;
    assert_eq!((status, code(&answer)), (400, "invalid_request"), "{answer}");

    // Nothing changed: one use, one history row, and the victim keeps heartbeating.
    let record = cluster.get_key(1, key_id).await;
    assert_eq!(record["uses"], 1, "{record}");
    assert_eq!(record["enrolments"].as_array().map(Vec::len), Some(1), "{record}");
    let beats = victim.output().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(victim.is_running(), "{}", victim.output());
    assert!(!victim.output()[beats..].contains("warning"), "{}", victim.output());
    let (status, answer) = agent_status(&cluster, &victim);
    assert!(status && answer.contains(&machine), "{answer}");

    // A captured request (a real machine's, proof and all) replayed: refused, to any node.
    let reusable = cluster.create_key(1, json!({"reusable": true})).await;
    let reusable_secret = reusable["key"].as_str().unwrap();
    let captured = proven_enrol_body(&cluster.http, &cluster.url(1), reusable_secret, "device-7", 7).await.unwrap();
    let (status, first) = cluster.post(1, "/api/enrol", &captured, None).await;
    assert_eq!(status, 200, "{first}");
    let (status, answer) = cluster.post(1, "/api/enrol", &captured, None).await;
    assert_eq!((status, code(&answer)), (401, "proof_replayed"), "{answer}");
    let (status, answer) = cluster.post(2, "/api/enrol", &captured, None).await;
    assert_eq!((status, code(&answer)), (401, "wrong_server_key"), "{answer}");
    // The machine itself re-keys with a fresh proof: same machine, recorded as a re-key.
    let (status, again) = cluster.enrol(3, reusable_secret, 7).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["machine_id"], first["machine_id"]);
    assert_ne!(again["node_key"], first["node_key"]);
    let record = cluster.get_key(2, reusable["key_id"].as_str().unwrap()).await;
    assert_eq!(record["uses"], 1, "{record}");
    let kinds: Vec<&str> = record["enrolments"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "rekey").count(), 1, "{record}");
    assert!(record["enrolments"].as_array().unwrap().iter().all(|e| e["log_index"].as_u64().is_some()));
    // A proof too old by the cluster's clock: refused.
    let (private, public) = device_keys(8);
    let server_key: Value =
        cluster.http.get(format!("{}/api/enrol/key", cluster.url(1))).send().await.unwrap().json().await.unwrap();
    let old = ztna_proof::enrol_body(
        &private,
        &public,
        server_key["server_key"].as_str().unwrap(),
        reusable_secret,
        "device-8",
        "old-1",
        ztna_proof::issued_now() - 10 * 60 * 1000,
    );
    let (status, answer) = cluster.post(1, "/api/enrol", &old, None).await;
    assert_eq!((status, code(&answer)), (401, "proof_invalid"), "{answer}");
}

fn agent_status(cluster: &Cluster, agent: &crate::support::Agent) -> (bool, String) {
    let out = std::process::Command::new(crate::support::ztna())
        .args(["status", "--output", "json", "--state-dir"])
        .arg(&agent.state_dir)
        .env("ZTNA_SERVER", cluster.servers())
        .output()
        .expect("ztna status");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_stay_as_granted_and_a_scoped_api_key_mints_only_within_its_tags() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"reusable": true, "tags": ["tag:ci", "tag:linux"]})).await;
    let (status, enrolled) = cluster.enrol(1, key["key"].as_str().unwrap(), 1).await;
    assert_eq!(status, 200, "{enrolled}");
    let node_key = enrolled["node_key"].as_str().unwrap();
    let (status, answer) =
        cluster.post(2, "/api/machine/set-tags", &json!({"tags": ["tag:prod"]}), Some(node_key)).await;
    assert_eq!((status, code(&answer)), (403, "tag_not_granted"), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("tag:prod"), "{answer}");
    let (status, answer) = cluster.post(3, "/api/machine/set-tags", &json!({"tags": ["tag:ci"]}), Some(node_key)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["granted_tags"], json!(["tag:ci", "tag:linux"]));
    // Quarantined: not even narrowing.
    let machine = enrolled["machine_id"].as_str().unwrap();
    assert_eq!(cluster.machine_admin(1, "quarantine", machine).await.0, 200);
    let (status, answer) = cluster.post(1, "/api/machine/set-tags", &json!({"tags": []}), Some(node_key)).await;
    assert_eq!((status, code(&answer)), (403, "machine_quarantined"), "{answer}");

    // A scoped API key, made with the CLI: it may create keys only, only with tag:ci.
    let operator_file = cluster.dir.path().join("operator.key");
    std::fs::write(&operator_file, &cluster.operator_key).unwrap();
    let (ok, out, err) = cluster.run_cli(&[
        "org-admin",
        "--operator-key-file",
        operator_file.to_str().unwrap(),
        "--output",
        "json",
        "create-api-key",
        &cluster.org_id,
        "--scopes",
        "auth_keys",
        "--tags",
        "tag:ci",
    ]);
    assert!(ok, "{out}{err}");
    let scoped: Value = serde_json::from_str(&out).unwrap();
    let scoped = scoped["key"].as_str().unwrap().to_string();
    let create = |tags: Value| json!({"action": "create_auth_key", "org_id": cluster.org_id, "tags": tags});
    let (status, answer) = cluster.post(2, "/api/key-management", &create(json!(["tag:prod"])), Some(&scoped)).await;
    assert_eq!((status, code(&answer)), (403, "scope_denied"), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("tag:prod"), "{answer}");
    let (status, answer) = cluster.post(2, "/api/key-management", &create(json!(["tag:ci"])), Some(&scoped)).await;
    assert_eq!(status, 200, "{answer}");
    // Scoped to keys only: machines are out of its reach.
    let list = json!({"action": "list_machines", "org_id": cluster.org_id});
    let (status, answer) = cluster.post(3, "/api/machine-admin", &list, Some(&scoped)).await;
    assert_eq!((status, code(&answer)), (403, "scope_denied"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_node_key_and_delete_survive_the_agents_restart() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"reusable": true})).await;
    let secret = key["key"].as_str().unwrap();
    let servers = cluster.servers();

    // Revoked node key: the agent stops; restarted with the installer's auth key it stops again.
    let mut a = cluster.agent(secret, "a");
    a.wait_for("state: active").await;
    let a_id = a.machine_id();
    assert_eq!(cluster.machine_admin(2, "revoke_node_key", &a_id).await.0, 200);
    assert!(!a.wait_exit().await);
    let mut a = cluster.agent(secret, "a");
    assert!(!a.wait_exit().await, "{}", a.output());
    assert!(a.output().contains("revoked"), "{}", a.output());
    // --force-reauth with the same auth key: still refused, that key no longer enrols it.
    let mut a = cluster.agent_args(secret, "a", "300ms", &servers, &["--force-reauth"]);
    assert!(!a.wait_exit().await, "{}", a.output());
    assert!(a.output().contains("fresh auth key"), "{}", a.output());
    // With a fresh key from the operator it comes back.
    let fresh = cluster.create_key(3, json!({})).await;
    let a = cluster.agent_args(fresh["key"].as_str().unwrap(), "a", "300ms", &servers, &["--force-reauth"]);
    a.wait_for("state: active").await;
    assert_eq!(cluster.get_key(1, key["key_id"].as_str().unwrap()).await["uses"], 1);

    // Deleted: stays out through a restart and --force-reauth, until an admin allows it back.
    let mut b = cluster.agent(secret, "b");
    b.wait_for("state: active").await;
    let b_id = b.machine_id();
    let b_public = b.state()["public_key"].as_str().unwrap().to_string();
    assert_eq!(cluster.machine_admin(3, "delete", &b_id).await.0, 200);
    assert!(!b.wait_exit().await);
    let mut b = cluster.agent_args(secret, "b", "300ms", &servers, &["--force-reauth"]);
    assert!(!b.wait_exit().await, "{}", b.output());
    assert!(b.output().contains("allow-reenrol"), "{}", b.output());
    assert!(row(&cluster.machines(1).await, &b_id).is_none());
    let (ok, out, err) =
        cluster.run_cli(&["machine-admin", "--action", "allow-reenrol", "--node-public-key", &b_public]);
    assert!(ok, "{out}{err}");
    let b = cluster.agent_args(secret, "b", "300ms", &servers, &["--force-reauth"]);
    b.wait_for("state: active").await;
    assert_ne!(b.machine_id(), b_id, "it comes back as a new machine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_enrolled_with_a_key_needing_approval_waits_until_an_admin_approves_it() {
    let cluster = Cluster::start().await;
    let (ok, out, err) = cluster.run_cli(&[
        "auth-key",
        "create",
        "--reusable",
        "--approval-required",
        "--tags",
        "tag:kiosk",
        "--output",
        "json",
    ]);
    assert!(ok, "{out}{err}");
    let key: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(key["preauthorized"], false, "{key}");
    let agent = cluster.agent(key["key"].as_str().unwrap(), "kiosk");
    agent.wait_for("state: pending").await;
    let machine = agent.machine_id();
    let pending = json!({"action": "list_machines", "org_id": cluster.org_id, "state": "pending"});
    let (status, answer) = cluster.post(2, "/api/machine-admin", &pending, Some(&cluster.api_key.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["machines"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(answer["machines"][0]["machine_id"], machine.as_str());
    let bad = json!({"action": "list_machines", "org_id": cluster.org_id, "state": "sleeping"});
    let (status, answer) = cluster.post(2, "/api/machine-admin", &bad, Some(&cluster.api_key.clone())).await;
    assert_eq!((status, code(&answer)), (400, "invalid_request"), "{answer}");
    // Pending: no rights of its own yet.
    let node_key = {
        let state = agent.state();
        state["node_key"].as_str().unwrap().to_string()
    };
    let (status, answer) = cluster.post(1, "/api/machine/set-tags", &json!({"tags": []}), Some(&node_key)).await;
    assert_eq!((status, code(&answer)), (403, "pending_approval"), "{answer}");
    let (status, beat) = cluster.post(2, "/api/machine/heartbeat", &json!({}), Some(&node_key)).await;
    assert_eq!((status, beat["state"].as_str()), (200, Some("pending")), "{beat}");
    assert_eq!(beat["tags"], json!([]), "no tags' rights while pending: {beat}");
    assert_eq!(beat["granted_tags"], json!(["tag:kiosk"]), "{beat}");
    // The admin approves with the CLI; the running agent hears it.
    let (ok, out, err) = cluster.run_cli(&["machine-admin", "--action", "approve", "--machine", &machine]);
    assert!(ok, "{out}{err}");
    agent.wait_for("state: active").await;
    let listed = cluster.machines(3).await;
    let approved = row(&listed, &machine).unwrap();
    assert!(approved["approved_by"].as_str().is_some_and(|a| a.starts_with("api_")), "{approved}");
    assert!(approved["approved_at"].is_string(), "{approved}");
    assert_eq!(approved["tags"], json!(["tag:kiosk"]), "its tags once approved: {approved}");
    // A second machine rejected: deleted, and it stays out.
    let (status, second) = cluster.enrol(2, key["key"].as_str().unwrap(), 2).await;
    assert_eq!((status, second["state"].as_str()), (200, Some("pending")), "{second}");
    let second_id = second["machine_id"].as_str().unwrap();
    assert_eq!(cluster.machine_admin(1, "reject", second_id).await.0, 200);
    let (status, answer) = cluster.enrol(3, key["key"].as_str().unwrap(), 2).await;
    assert_eq!((status, code(&answer)), (403, "machine_deleted"), "{answer}");
}
