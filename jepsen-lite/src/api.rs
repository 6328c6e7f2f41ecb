//! The HTTP client the workloads use, and the outcome table every client follows.
//!
//! | answer                                                  | reads   | mutations |
//! |---------------------------------------------------------|---------|-----------|
//! | 2xx                                                     | `ok`    | `ok`      |
//! | 4xx with a JSON error code (`key_used`, 400, 401, …)    | `fail`  | `fail`    |
//! | connection refused (nothing was sent)                   | `fail`  | `fail`    |
//! | 503, 500, timeout, reset or closed after sending         | `fail`  | `info`    |
//!
//! A 4xx is an answer from the state machine or from validation: the request changed nothing.
//! A 503 is not: a forwarded write may already be in the leader's log and commit later.
//! This module must not decide anything about keys; it only reports what the server said.

use std::time::Duration;

use serde_json::{json, Value};

use crate::history::OpType;

/// What one request ended with.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: OpType,
    /// The JSON body of a 2xx answer, `null` otherwise.
    pub body: Value,
    /// The error code (`key_used`, `http_503`, `timeout`, `connection_refused`, …).
    pub error: Option<String>,
}

/// Talks to the nodes' public APIs.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// `http://host:port` of node `i + 1`.
    pub nodes: Vec<String>,
    pub api_key: String,
    pub org_id: String,
    /// The operator key the cluster's initialisation made (API keys are made with it).
    pub operator_key: String,
}

impl Api {
    pub fn new(nodes: Vec<String>, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Api { http, nodes, api_key: String::new(), org_id: String::new(), operator_key: String::new() })
    }

    fn url(&self, node: u64, path: &str) -> String {
        format!("{}{path}", self.nodes[(node - 1) as usize])
    }

    /// POSTs `body` to `path` on `node` and classifies the answer.
    pub async fn post(&self, node: u64, path: &str, body: &Value, mutation: bool) -> Outcome {
        self.post_as(node, path, body, &self.api_key, mutation).await
    }

    /// [`Api::post`] with `bearer` as the credential (none when empty).
    pub async fn post_as(&self, node: u64, path: &str, body: &Value, bearer: &str, mutation: bool) -> Outcome {
        let mut request = self.http.post(self.url(node, path)).json(body);
        if !bearer.is_empty() {
            request = request.bearer_auth(bearer);
        }
        classify(request.send().await, mutation).await
    }

    /// `GET path` on `node` with `bearer`, classified as a read.
    pub async fn get_as(&self, node: u64, path: &str, bearer: &str) -> Outcome {
        classify(self.http.get(self.url(node, path)).bearer_auth(bearer).send().await, false).await
    }

    /// `GET path` on `node`; `None` unless it answers 2xx with JSON.
    pub async fn get(&self, node: u64, path: &str) -> Option<Value> {
        let response = self.http.get(self.url(node, path)).timeout(Duration::from_secs(2)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    pub async fn key_management(&self, node: u64, action: &str, mut fields: Value, mutation: bool) -> Outcome {
        fields["action"] = json!(action);
        fields["org_id"] = json!(self.org_id);
        self.post(node, "/api/key-management", &fields, mutation).await
    }
}

async fn classify(sent: reqwest::Result<reqwest::Response>, mutation: bool) -> Outcome {
    let unknown = if mutation { OpType::Info } else { OpType::Fail };
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => return failure(OpType::Fail, "connection_refused"),
        Err(e) if e.is_timeout() => return failure(unknown, "timeout"),
        Err(_) => return failure(unknown, "connection_lost"),
    };
    let status = response.status();
    let body: Option<Value> = response.json().await.ok();
    if status.is_success() {
        return match body {
            Some(body) => Outcome { kind: OpType::Ok, body, error: None },
            // The answer was cut off: the server acted, but we do not know the result.
            None => failure(unknown, "truncated_answer"),
        };
    }
    if status.is_client_error() {
        let code = body.as_ref().and_then(|b| b["error"]["code"].as_str().or(b["code"].as_str())).map(str::to_string);
        return failure(OpType::Fail, &code.unwrap_or_else(|| format!("http_{}", status.as_u16())));
    }
    failure(unknown, &format!("http_{}", status.as_u16()))
}

fn failure(kind: OpType, code: &str) -> Outcome {
    Outcome { kind, body: Value::Null, error: Some(code.to_string()) }
}
