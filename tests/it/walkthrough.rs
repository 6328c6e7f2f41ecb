//! The user guide's CLI and curl walkthrough, through each node.

use serde_json::json;

use crate::support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_cli_walkthrough() {
    let cluster = Cluster::start().await;

    // ztna auth-key create --reusable --expiry 1h --tags tag:laptop,tag:eng --description "…"
    let (ok, out, err) = cluster.run_cli(&[
        "auth-key",
        "create",
        "--reusable",
        "--expiry",
        "1h",
        "--tags",
        "tag:laptop,tag:eng",
        "--description",
        "Q2 laptop fleet rollout",
    ]);
    assert!(ok, "create failed: {err}");
    let key = out.lines().next().unwrap().strip_prefix("✓ Auth key created: ").expect("first line").to_string();
    assert!(key.starts_with("tskey-auth-"), "{out}");
    for line in [
        "  Reusable:     yes",
        "  Ephemeral:    no",
        "  Expires:      in 1 hour",
        "  Tags:         tag:laptop, tag:eng",
        "  Description:  Q2 laptop fleet rollout",
        "COPY THIS KEY NOW — you cannot retrieve it later.",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }

    // Enrol two machines with it through different nodes.
    for (n, node) in [(1u64, 2u64), (2, 3)] {
        let (status, machine) = cluster.enrol(node, &key, n).await;
        assert_eq!(status, 200, "{machine}");
        assert_eq!(machine["tags"], json!(["tag:laptop", "tag:eng"]));
        assert!(machine["machine_id"].as_str().unwrap().starts_with("m_"));
        assert!(machine["node_key"].as_str().unwrap().starts_with("nodekey-"));
    }
    let (ok, out, err) = cluster.run_cli(&["enrol", "--auth-key", &key, "--hostname", "laptop-3"]);
    assert!(ok && out.starts_with("✓ Enrolled laptop-3 as m_"), "{out}{err}");

    // ztna auth-keys list
    let (ok, out, err) = cluster.run_cli(&["auth-keys", "list"]);
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("PREFIX"), "{out}");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["PREFIX", "REUSABLE", "USES", "EXPIRES", "STATE", "DESCRIPTION"]);
    let row = lines.next().expect("one key");
    let prefix = format!("{}…", &key[..16]);
    assert!(row.starts_with(&prefix), "{row}");
    assert!(
        row.contains(" yes ") && row.contains(" 3 ") && row.contains("in 1 hour") && row.contains("valid"),
        "{row}"
    );

    // --output json on a read command.
    let (ok, out, _) = cluster.run_cli(&["auth-keys", "list", "--output", "json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["keys"][0]["uses"], 3);
    let key_id = listed["keys"][0]["key_id"].as_str().unwrap().to_string();

    // ztna auth-keys revoke tskey-auth-abc123 (a unique prefix)
    let (ok, out, err) = cluster.run_cli(&["auth-keys", "revoke", &key[..18]]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "✓ Revoked — future enrolments with this key will fail");
    let (status, refused) = cluster.enrol(1, &key, 9).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("key_revoked")));
    // Already-enrolled machines are untouched and still listed in the key's history.
    let record = cluster.get_key(3, &key_id).await;
    assert_eq!(record["state"], "revoked");
    assert_eq!(record["enrolments"].as_array().unwrap().len(), 3);

    // One-shot is the default; --max-uses only with --reusable.
    let (ok, _, err) = cluster.run_cli(&["auth-key", "create", "--max-uses", "3"]);
    assert!(!ok && err.contains("max_uses"), "{err}");

    // ztna cluster status shows each node, its role, term, applied index and the leader.
    let (ok, out, err) = cluster.run_cli(&["cluster", "status"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(out.matches(" leader ").count(), 1, "one leader: {out}");
    assert_eq!(out.matches(" follower ").count(), 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_curl_calls_work_on_every_node() {
    let cluster = Cluster::start().await;
    for node in 1..=3u64 {
        // The guide's create call, with only the host changed.
        let create = json!({
            "action": "create_auth_key", "org_id": cluster.org_id, "reusable": true, "expires_in": 3600,
            "tags": ["tag:laptop", "tag:eng"], "description": "Q2 laptop fleet rollout"
        });
        let (status, key) = cluster.post(node, "/api/key-management", &create, Some(&cluster.api_key)).await;
        assert_eq!(status, 200, "{key}");
        assert!(key["key"].as_str().unwrap().starts_with("tskey-auth-"));
        assert!(key["key_id"].as_str().unwrap().starts_with("ak_"));
        assert_eq!(key["state"], "valid");
        assert_eq!(key["uses"], 0);
        assert!(key["revoked_at"].is_null() && key["last_used_at"].is_null());

        // The guide's revoke call sends no Content-Type; it must still work.
        let key_id = key["key_id"].as_str().unwrap();
        let revoke = format!(r#"{{"action":"revoke_auth_key","org_id":"{}","key_id":"{key_id}"}}"#, cluster.org_id);
        let next = node % 3 + 1;
        let response = cluster
            .http
            .post(format!("{}/api/key-management", cluster.url(next)))
            .bearer_auth(&cluster.api_key)
            .body(revoke.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let revoked: serde_json::Value = response.json().await.unwrap();
        assert_eq!(revoked["state"], "revoked");
        // Revoking twice answers the same record.
        let again: serde_json::Value = cluster
            .http
            .post(format!("{}/api/key-management", cluster.url(node)))
            .bearer_auth(&cluster.api_key)
            .body(revoke)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again["revoked_at"], revoked["revoked_at"]);
        // The secret is never returned again.
        assert!(again.get("key").is_none());
        let got = cluster.get_key(node, key_id).await;
        assert!(got.get("key").is_none() && got.get("secret_hash").is_none());
    }
    // Health and readiness on every node.
    for node in 1..=3u64 {
        let health = cluster.http.get(format!("{}/healthz", cluster.url(node))).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = cluster.http.get(format!("{}/readyz", cluster.url(node))).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_manages_orgs_and_api_keys() {
    let cluster = Cluster::start().await;
    let op = Some(cluster.operator_key.as_str());
    let (status, org) = cluster.post(2, "/api/org-admin", &json!({"action": "create_org", "name": "second"}), op).await;
    assert_eq!(status, 200, "{org}");
    let org_b = org["org_id"].as_str().unwrap();
    let (status, key) =
        cluster.post(3, "/api/org-admin", &json!({"action": "create_api_key", "org_id": org_b}), op).await;
    assert_eq!(status, 200, "{key}");
    let key_b = key["key"].as_str().unwrap();
    // The new key manages its own org…
    let body = json!({"action": "create_auth_key", "org_id": org_b});
    let (status, _) = cluster.post(1, "/api/key-management", &body, Some(key_b)).await;
    assert_eq!(status, 200);
    // …until it is revoked.
    let revoke = json!({"action": "revoke_api_key", "api_key_id": key["api_key_id"]});
    assert_eq!(cluster.post(1, "/api/org-admin", &revoke, op).await.0, 200);
    assert_eq!(cluster.post(2, "/api/key-management", &body, Some(key_b)).await.0, 401);
    // An org admin key cannot use the operator's actions.
    let (status, err) =
        cluster.post(1, "/api/org-admin", &json!({"action": "list_orgs"}), Some(&cluster.api_key)).await;
    assert_eq!(status, 403, "{err}");
    // Initialisation happens once, and only with the bootstrap token.
    let (status, err) = cluster.post(2, "/api/cluster/init", &json!({}), Some(&cluster.bootstrap_token.clone())).await;
    assert_eq!((status, err["error"]["code"].as_str()), (409, Some("already_initialized")));
    let (status, err) = cluster.post(2, "/api/cluster/init", &json!({}), None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (401, Some("unauthorized")));
}
