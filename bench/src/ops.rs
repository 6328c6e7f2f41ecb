//! One operation of each workload, for each system.
//!
//! | workload      | ztna                                                | etcd (v3 JSON gateway)                                             |
//! |---------------|-----------------------------------------------------|--------------------------------------------------------------------|
//! | one-shot burn | `POST /api/enrol` with a fresh one-shot key          | `POST /v3/kv/txn`: if `version(key) == 0` then `put(key, device)`   |
//! | hot key       | `POST /api/enrol` with one shared reusable key       | `range(counter)`, then `txn`: if `mod_revision` unchanged then `put(counter, n + 1)`; retry on conflict |
//! | key creation  | `create_auth_key`                                    | `put`                                                              |
//!
//! Every call is one HTTP/1.1 request on a pooled keep-alive connection; anything but a success
//! is an error. This module must not measure anything.

use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// An HTTP client sized for a few hundred concurrent keep-alive connections.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?)
}

async fn post(http: &reqwest::Client, url: String, bearer: Option<&str>, body: &Value) -> anyhow::Result<Value> {
    let mut request = http.post(url).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("HTTP {status}: {}", body["error"]["code"].as_str().unwrap_or("?"));
    }
    Ok(body)
}

/// ztna's public API.
#[derive(Clone)]
pub struct Ztna {
    pub http: reqwest::Client,
    pub urls: Vec<String>,
    pub api_key: String,
    pub org_id: String,
    /// Each node's enrolment key (`GET /api/enrol/key`), fetched once.
    pub server_keys: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<usize, String>>>,
}

impl Ztna {
    /// Node `node`'s enrolment key, fetched the first time.
    async fn server_key(&self, node: usize) -> anyhow::Result<String> {
        if let Some(key) = self.server_keys.lock().unwrap_or_else(|e| e.into_inner()).get(&node) {
            return Ok(key.clone());
        }
        let answer: Value = self.http.get(format!("{}/api/enrol/key", self.urls[node])).send().await?.json().await?;
        let key = answer["server_key"].as_str().context("no server_key")?.to_string();
        self.server_keys.lock().unwrap_or_else(|e| e.into_inner()).insert(node, key.clone());
        Ok(key)
    }

    /// Creates a key; returns `(key_id, secret)`.
    pub async fn create_key(&self, node: usize, reusable: bool) -> anyhow::Result<(String, String)> {
        let body = json!({
            "action": "create_auth_key",
            "org_id": self.org_id,
            "reusable": reusable,
            "expires_in": 86_400,
            "tags": ["tag:bench"],
        });
        let v = post(&self.http, format!("{}/api/key-management", self.urls[node]), Some(&self.api_key), &body).await?;
        let id = v["key_id"].as_str().context("no key_id")?.to_string();
        let secret = v["key"].as_str().context("no key")?.to_string();
        Ok((id, secret))
    }

    /// Enrols a new device (a fresh key pair, with its proof of possession, as `ztna up` does)
    /// with `secret`.
    pub async fn enrol(&self, node: usize, secret: &str, hostname: &str) -> anyhow::Result<()> {
        let server_key = self.server_key(node).await?;
        let (private, public) = ztna_proof::new_key_pair();
        let request_id = format!("b-{}", ztna_proof::issued_now());
        let body = ztna_proof::enrol_body(
            &private,
            &public,
            &server_key,
            secret,
            hostname,
            &request_id,
            ztna_proof::issued_now(),
        );
        post(&self.http, format!("{}/api/enrol", self.urls[node]), None, &body).await.map(drop)
    }

    /// The key's `uses`, read linearizably.
    pub async fn uses(&self, node: usize, key_id: &str) -> anyhow::Result<u64> {
        let body = json!({ "action": "get_auth_key", "org_id": self.org_id, "key_id": key_id });
        let v = post(&self.http, format!("{}/api/key-management", self.urls[node]), Some(&self.api_key), &body).await?;
        v["uses"].as_u64().context("no uses")
    }

    /// One page of `list_auth_keys`; returns the next cursor.
    pub async fn list_page(&self, node: usize, cursor: Option<&str>, limit: u64) -> anyhow::Result<Option<String>> {
        let mut body = json!({ "action": "list_auth_keys", "org_id": self.org_id, "limit": limit });
        if let Some(c) = cursor {
            body["cursor"] = json!(c);
        }
        let v = post(&self.http, format!("{}/api/key-management", self.urls[node]), Some(&self.api_key), &body).await?;
        Ok(v["next_cursor"].as_str().map(str::to_string))
    }
}

/// etcd's v3 JSON gateway.
#[derive(Clone)]
pub struct Etcd {
    pub http: reqwest::Client,
    pub urls: Vec<String>,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

impl Etcd {
    /// `if version(key) == 0 then put(key, value)`; `Ok(true)` when it put.
    pub async fn put_if_absent(&self, node: usize, key: &str, value: &str) -> anyhow::Result<bool> {
        let body = json!({
            "compare": [{ "key": b64(key), "result": "EQUAL", "target": "VERSION", "version": "0" }],
            "success": [{ "requestPut": { "key": b64(key), "value": b64(value) } }],
        });
        let v = post(&self.http, format!("{}/v3/kv/txn", self.urls[node]), None, &body).await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    pub async fn put(&self, node: usize, key: &str, value: &str) -> anyhow::Result<()> {
        let body = json!({ "key": b64(key), "value": b64(value) });
        post(&self.http, format!("{}/v3/kv/put", self.urls[node]), None, &body).await.map(drop)
    }

    /// Reads the counter and compare-and-swaps it up by one, retrying on conflict, as a
    /// control plane on etcd counts uses of a key. Returns the retries it took.
    pub async fn increment(&self, node: usize, counter: &str) -> anyhow::Result<u32> {
        let url = format!("{}/v3/kv", self.urls[node]);
        for retry in 0..10_000u32 {
            let read = post(&self.http, format!("{url}/range"), None, &json!({ "key": b64(counter) })).await?;
            let kv = &read["kvs"][0];
            let (uses, compare) = match kv["mod_revision"].as_str() {
                Some(rev) => {
                    let value = kv["value"].as_str().and_then(|v| B64.decode(v).ok()).unwrap_or_default();
                    let uses: u64 = String::from_utf8_lossy(&value).parse().unwrap_or(0);
                    (uses, json!({ "key": b64(counter), "result": "EQUAL", "target": "MOD", "mod_revision": rev }))
                }
                None => (0, json!({ "key": b64(counter), "result": "EQUAL", "target": "VERSION", "version": "0" })),
            };
            let body = json!({
                "compare": [compare],
                "success": [{ "requestPut": { "key": b64(counter), "value": b64(&(uses + 1).to_string()) } }],
            });
            let v = post(&self.http, format!("{url}/txn"), None, &body).await?;
            if v["succeeded"].as_bool() == Some(true) {
                return Ok(retry);
            }
        }
        bail!("the counter kept changing")
    }

    /// The counter's value.
    pub async fn counter(&self, node: usize, counter: &str) -> anyhow::Result<u64> {
        let read =
            post(&self.http, format!("{}/v3/kv/range", self.urls[node]), None, &json!({ "key": b64(counter) })).await?;
        let value = read["kvs"][0]["value"].as_str().and_then(|v| B64.decode(v).ok()).unwrap_or_default();
        Ok(String::from_utf8_lossy(&value).parse().unwrap_or(0))
    }
}
