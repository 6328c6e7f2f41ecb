//! Wrong-org and malformed requests answer the documented errors and change nothing.

use serde_json::{json, Value};

use crate::support::Cluster;

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("<none>")
}

async fn key_count(cluster: &Cluster) -> usize {
    let (status, list) = cluster.keys(1, json!({"action": "list_auth_keys"})).await;
    assert_eq!(status, 200);
    list["keys"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"reusable": true})).await;
    let key_id = key["key_id"].as_str().unwrap();

    // Malformed create requests: 400 naming the field and what it allows.
    let cases = [
        (json!({"action": "create_auth_key", "expires_in": 60}), "expires_in", "300"),
        (json!({"action": "create_auth_key", "expires_in": 2592001}), "expires_in", "2592000"),
        (json!({"action": "create_auth_key", "expires_in": "1h"}), "expires_in", "integer"),
        (json!({"action": "create_auth_key", "reusable": "yes"}), "reusable", "true or false"),
        (json!({"action": "create_auth_key", "tags": ["laptop"]}), "tags", "tag:"),
        (json!({"action": "create_auth_key", "tags": "tag:a"}), "tags", "list"),
        (json!({"action": "create_auth_key", "max_uses": 3}), "max_uses", "reusable"),
        (json!({"action": "create_auth_key", "reusable": true, "max_uses": 0}), "max_uses", "positive"),
        (json!({"action": "create_auth_key", "description": "x".repeat(257)}), "description", "256"),
        (json!({"action": "create_auth_key", "colour": "red"}), "colour", "accepts"),
        (json!({"action": "make_key"}), "action", "create_auth_key"),
        (json!({"action": "list_auth_keys", "limit": 5000}), "limit", "1000"),
        (json!({"action": "list_auth_keys", "cursor": "abc"}), "cursor", "next_cursor"),
        (json!({"action": "list_auth_keys", "state": "active"}), "state", "valid, used, exhausted, expired, revoked"),
        (json!({"action": "list_auth_keys", "type": "oneshot"}), "type", "reusable, one-shot"),
        (json!({"action": "list_auth_keys", "ephemeral": "no"}), "ephemeral", "true or false"),
        (json!({"action": "list_auth_keys", "tag": "laptop"}), "tag", "tag:"),
        (json!({"action": "list_auth_keys", "search": "x".repeat(257)}), "search", "256"),
        (json!({"action": "get_auth_key", "key_id": "nope"}), "key_id", "ak_"),
        (json!({"action": "revoke_auth_key"}), "key_id", "key"),
    ];
    for (body, field, allowed) in cases {
        for node in 1..=3 {
            let (status, answer) = cluster.keys(node, body.clone()).await;
            assert_eq!(status, 400, "{body} → {answer}");
            assert_eq!(code(&answer), "invalid_request");
            assert!(
                message(&answer).contains(field) && message(&answer).contains(allowed),
                "{body} → {}",
                message(&answer)
            );
            // A message about one field names it for a client to put the message beside.
            if message(&answer).starts_with(&format!("{field}:")) {
                assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
            }
        }
    }
    let bad_json = cluster
        .http
        .post(format!("{}/api/key-management", cluster.url(2)))
        .bearer_auth(&cluster.api_key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let not_object = cluster.post(3, "/api/key-management", &json!([1, 2]), Some(&cluster.api_key.clone())).await;
    assert_eq!(not_object.0, 400);
    let missing_org = cluster
        .post(1, "/api/key-management", &json!({"action": "list_auth_keys"}), Some(&cluster.api_key.clone()))
        .await;
    assert!(missing_org.0 == 400 && message(&missing_org.1).contains("org_id"), "{:?}", missing_org);

    // Credentials: 401 without or with an unknown API key.
    let body = json!({"action": "list_auth_keys", "org_id": cluster.org_id});
    let (status, answer) = cluster.post(1, "/api/key-management", &body, None).await;
    assert_eq!((status, code(&answer)), (401, "unauthorized"));
    let forged = format!("tskey-api-{}-{}", "A".repeat(12), "B".repeat(32));
    let (status, _) = cluster.post(2, "/api/key-management", &body, Some(&forged)).await;
    assert_eq!(status, 401);
    let (status, _) = cluster.post(3, "/api/key-management", &body, Some("garbage")).await;
    assert_eq!(status, 401);

    // Wrong org: a second org's key reaches only its own org (403), and nothing changes.
    let op = Some(cluster.operator_key.as_str());
    let (_, org) = cluster.post(1, "/api/org-admin", &json!({"action": "create_org", "name": "other"}), op).await;
    let (_, other) =
        cluster.post(1, "/api/org-admin", &json!({"action": "create_api_key", "org_id": org["org_id"]}), op).await;
    let other_key = other["key"].as_str().unwrap();
    for action in [
        json!({"action": "list_auth_keys", "org_id": cluster.org_id}),
        json!({"action": "create_auth_key", "org_id": cluster.org_id}),
        json!({"action": "get_auth_key", "org_id": cluster.org_id, "key_id": key_id}),
        json!({"action": "revoke_auth_key", "org_id": cluster.org_id, "key_id": key_id}),
    ] {
        let (status, answer) = cluster.post(2, "/api/key-management", &action, Some(other_key)).await;
        assert_eq!((status, code(&answer)), (403, "forbidden"), "{action}");
    }
    // Naming its own org does not reach the other org's key either.
    let sneaky = json!({"action": "revoke_auth_key", "org_id": org["org_id"], "key_id": key_id});
    assert_eq!(cluster.post(3, "/api/key-management", &sneaky, Some(other_key)).await.0, 404);

    // Unknown ids: 404.
    let (status, answer) = cluster.keys(1, json!({"action": "get_auth_key", "key_id": "ak_AAAAAAAAAAAA"})).await;
    assert_eq!((status, code(&answer)), (404, "not_found"));

    // Enrolment input.
    let secret = key["key"].as_str().unwrap();
    let enrol_cases = [
        (json!({"auth_key": secret, "hostname": "h", "node_public_key": "xyz"}), 400, "node_public_key"),
        (json!({"auth_key": secret, "hostname": "bad host!", "node_public_key": "1".repeat(64)}), 400, "hostname"),
        (json!({"auth_key": secret, "node_public_key": "1".repeat(64)}), 400, "hostname"),
        (json!({"auth_key": "tskey-auth-nope", "hostname": "h", "node_public_key": "1".repeat(64)}), 401, "auth key"),
    ];
    for (body, expected, field) in enrol_cases {
        let (status, answer) = cluster.post(2, "/api/enrol", &body, None).await;
        assert_eq!(status, expected, "{body} → {answer}");
        assert!(message(&answer).contains(field), "{answer}");
    }
    let mut wrong_secret = secret.to_string();
    wrong_secret.pop();
    wrong_secret.push(if secret.ends_with('A') { 'B' } else { 'A' });
    let (status, answer) = cluster.enrol(3, &wrong_secret, 5).await;
    assert_eq!((status, code(&answer)), (401, "invalid_auth_key"));

    // Bodies over 64 KiB: 413, as JSON.
    let huge = json!({"action": "create_auth_key", "org_id": cluster.org_id, "description": "x".repeat(70_000)});
    let (status, answer) = cluster.post(1, "/api/key-management", &huge, Some(&cluster.api_key.clone())).await;
    assert_eq!((status, code(&answer)), (413, "body_too_large"));

    // A body sent as a form, text or XML is refused before it is read (415), well-formed or not;
    // curl's default for `-d` is read as JSON (the guide's revoke call sends it).
    let create = json!({"action": "create_auth_key", "org_id": cluster.org_id}).to_string();
    for media_type in ["text/plain", "multipart/form-data", "application/xml", "text/plain; charset=utf-8"] {
        let response = cluster
            .http
            .post(format!("{}/api/key-management", cluster.url(2)))
            .bearer_auth(&cluster.api_key)
            .header("content-type", media_type)
            .body(create.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{media_type}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(code(&answer), "unsupported_media_type", "{answer}");
    }
    let list = json!({"action": "list_auth_keys", "org_id": cluster.org_id}).to_string();
    let form = cluster
        .http
        .post(format!("{}/api/key-management", cluster.url(3)))
        .bearer_auth(&cluster.api_key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);

    // Unknown endpoints and methods answer JSON errors too.
    let (status, answer) = cluster.post(1, "/api/nothing", &json!({}), None).await;
    assert_eq!((status, code(&answer)), (404, "not_found"));

    // None of the above changed anything.
    assert_eq!(key_count(&cluster).await, 1);
    let record = cluster.get_key(1, key_id).await;
    assert_eq!((record["uses"].as_u64(), record["state"].as_str()), (Some(0), Some("valid")));
}
