//! One operation of each workload, for each system, each the way that system's users write it.
//!
//! | workload      | ztna (HTTP/1.1 + JSON, its API)                        | etcd (gRPC, its native client `etcd-client`)                                  |
//! |---------------|--------------------------------------------------------|-------------------------------------------------------------------------------|
//! | key creation  | `create_auth_key`                                      | `put(key)`                                                                    |
//! | one-shot burn | `POST /api/enrol` with a fresh one-shot key (pre-made) | one txn: if `version(key) == 0` then `put(key, device)`                       |
//! | hot key       | `POST /api/enrol` with one reusable key (`max_uses`)   | one txn: if `version(counter) < N` then `put(counter)`, `put(device)`         |
//!
//! A transaction whose compare failed is an error, never a success. This module must not
//! measure anything.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// An HTTP client sized for a few hundred concurrent keep-alive connections.
fn http_client() -> anyhow::Result<reqwest::Client> {
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
        let error = &body["error"];
        bail!("HTTP {status}: {}: {}", error["code"].as_str().unwrap_or("?"), error["message"].as_str().unwrap_or(""));
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
    /// The API of `cluster`'s org, with the admin key `init` made.
    pub fn connect(cluster: &crate::systems::Cluster) -> anyhow::Result<Ztna> {
        Ok(Ztna {
            http: http_client()?,
            urls: cluster.urls.clone(),
            api_key: cluster.api_key.clone(),
            org_id: cluster.org_id.clone(),
            server_keys: Default::default(),
        })
    }

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

    /// Creates a key (reusable ones with an optional `max_uses`); returns `(key_id, secret)`.
    pub async fn create_key(
        &self,
        node: usize,
        reusable: bool,
        max_uses: Option<u32>,
    ) -> anyhow::Result<(String, String)> {
        let body = json!({
            "action": "create_auth_key",
            "org_id": self.org_id,
            "reusable": reusable,
            "max_uses": max_uses,
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
        let body = enrolment(&server_key, secret, hostname);
        self.enrol_prepared(node, &body).await
    }

    /// Enrolment bodies for node `node`, one per secret, made ahead of a phase: each a fresh
    /// key pair and its proof, as `ztna up` makes them. That is the enrolling machine's own
    /// work, done on its own CPU; made here during the phase, it would take the servers' CPU
    /// on this one machine.
    pub async fn prepare_enrolments(
        &self,
        node: usize,
        secrets: Vec<String>,
        hostname_prefix: String,
    ) -> anyhow::Result<Vec<Value>> {
        let server_key = self.server_key(node).await?;
        let bodies = tokio::task::spawn_blocking(move || {
            secrets
                .iter()
                .enumerate()
                .map(|(i, secret)| enrolment(&server_key, secret, &format!("{hostname_prefix}-{node}-{i}")))
                .collect()
        })
        .await?;
        Ok(bodies)
    }

    /// Sends an enrolment body made by [`Ztna::prepare_enrolments`] to the node it was made for.
    pub async fn enrol_prepared(&self, node: usize, body: &Value) -> anyhow::Result<()> {
        post(&self.http, format!("{}/api/enrol", self.urls[node]), None, body).await.map(drop)
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

/// One enrolment body: a fresh key pair, a unique request id, the proof.
fn enrolment(server_key: &str, secret: &str, hostname: &str) -> Value {
    let (private, public) = ztna_proof::new_key_pair();
    let request_id = format!("b-{:016x}", rand::random::<u64>());
    // Each machine proves once, and a phase's are made 100,000 at a time: the wall clock, not
    // `issued_now`, which would run minutes ahead of it and be refused.
    ztna_proof::enrol_body(&private, &public, server_key, secret, hostname, &request_id, ztna_proof::wall_now())
}

/// etcd through gRPC: per node, a few HTTP/2 connections (one `etcd-client` channel each)
/// that the load's clients share, as etcd's own benchmark tool does (`--conns`, `--clients`).
#[derive(Clone)]
pub struct Etcd {
    /// `kv[node][connection]`.
    kv: std::sync::Arc<Vec<Vec<etcd_client::KvClient>>>,
}

/// Clients per connection: etcd's benchmark documentation runs 1,000 clients over 100.
const CLIENTS_PER_CONNECTION: usize = 10;

impl Etcd {
    /// Connects to every node of `urls` with enough connections for `clients` clients.
    pub async fn connect(urls: &[String], clients: usize) -> anyhow::Result<Etcd> {
        let per_node = clients.div_ceil(urls.len()).div_ceil(CLIENTS_PER_CONNECTION).max(1);
        let mut kv = Vec::new();
        for url in urls {
            let mut node = Vec::new();
            for _ in 0..per_node {
                let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
                let client = etcd_client::Client::connect([url.as_str()], Some(options))
                    .await
                    .with_context(|| format!("connect to etcd at {url}"))?;
                node.push(client.kv_client());
            }
            kv.push(node);
        }
        Ok(Etcd { kv: std::sync::Arc::new(kv) })
    }

    /// The connection client `client` uses to node `node`.
    fn kv(&self, node: usize, client: usize) -> etcd_client::KvClient {
        let connections = &self.kv[node];
        connections[(client / self.kv.len()) % connections.len()].clone()
    }

    pub async fn put(&self, node: usize, client: usize, key: &str, value: &str) -> anyhow::Result<()> {
        self.kv(node, client).put(key, value, None).await?;
        Ok(())
    }

    /// `if version(key) == 0 then put(key, value)`; an error when the key was already there.
    pub async fn put_if_absent(&self, node: usize, client: usize, key: &str, value: &str) -> anyhow::Result<()> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let txn =
            Txn::new().when([Compare::version(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(key, value, None)]);
        self.commit(node, client, txn, || format!("{key} was already used")).await
    }

    /// One use of a counted key, as a control plane on etcd would write it: `if
    /// version(counter) < limit then put(counter), put(device)`; an error when the counter had
    /// reached its limit.
    pub async fn use_counter(
        &self,
        node: usize,
        client: usize,
        counter: &str,
        device: &str,
        limit: i64,
    ) -> anyhow::Result<()> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let txn = Txn::new()
            .when([Compare::version(counter, CompareOp::Less, limit)])
            .and_then([TxnOp::put(counter, "", None), TxnOp::put(device, "device", None)]);
        self.commit(node, client, txn, || format!("{counter} reached its limit")).await
    }

    /// Runs `txn`; a transaction whose compare failed is an error (`failed` says why), never a
    /// success.
    async fn commit(
        &self,
        node: usize,
        client: usize,
        txn: etcd_client::Txn,
        failed: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.kv(node, client).txn(txn).await?.succeeded() {
            Ok(())
        } else {
            bail!(failed())
        }
    }

    /// How many times `counter` was used: its version.
    pub async fn counter_version(&self, node: usize, counter: &str) -> anyhow::Result<i64> {
        let answer = self.kv(node, 0).get(counter, None).await?;
        Ok(answer.kvs().first().map_or(0, etcd_client::KeyValue::version))
    }
}
