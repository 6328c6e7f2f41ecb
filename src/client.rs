//! The HTTP client the `ztna` command line uses: JSON to any node of `ZTNA_SERVER`.
//!
//! Nodes are tried in turn, starting with the one that answered last; when one does not answer
//! (refused, no answer within the per-node wait, 503 without a leader, 507 with a full disk) the
//! next one is tried at once with the same body, round after round, until the total budget is
//! spent. A node that accepts connections but never answers (frozen, overloaded) therefore
//! costs one per-node wait, not the whole request. Every mutating body carries a request id, so
//! a write that reached a node before its answer was lost applies once.
//!
//! This module must not print; the CLI decides what the user sees.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// How long one node gets to answer: a little more than the server's own request timeout
/// (5 s by default, after which it answers 503), so a healthy node's answer is never cut off.
pub const PER_NODE_WAIT: Duration = Duration::from_secs(6);
/// How long a request may take in all, over every node and round.
pub const TOTAL_BUDGET: Duration = Duration::from_secs(20);

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no server given: set ZTNA_SERVER (comma-separated node URLs) or pass --server")]
    NoServer,
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String },
    #[error("no node answered; tried {0}")]
    Unreachable(String),
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl ClientError {
    /// The API error code, if the server answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    servers: Vec<String>,
    bearer: Option<String>,
    http: reqwest::Client,
    /// The wait for one node, and for the whole request.
    per_node: Duration,
    total: Duration,
    /// The index of the node that answered last: tried first next time.
    preferred: Arc<AtomicUsize>,
}

/// The environment variable naming the PEM file of the cluster CA an HTTPS API is trusted by
/// (`--ca-cert` sets it for the command).
pub const CA_CERT_ENV: &str = "ZTNA_CA_CERT";

/// `127.0.0.1:7101` → `http://127.0.0.1:7101` (`https://` when a CA is given); trailing
/// slashes dropped.
pub fn normalize_url(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") {
        server.to_string()
    } else if std::env::var_os(CA_CERT_ENV).is_some() {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    }
}

/// An HTTP client builder that trusts the CA named by `ZTNA_CA_CERT`, if set (and, with no CA,
/// trusts no HTTPS server at all).
pub fn http_builder() -> Result<reqwest::ClientBuilder, ClientError> {
    crate::tls::ensure_provider();
    // Kept-alive connections are dropped before a node's header timeout (10 s) would close
    // them under a request.
    let builder =
        reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).pool_idle_timeout(Duration::from_secs(8));
    match std::env::var_os(CA_CERT_ENV) {
        Some(path) => {
            let config = crate::tls::client_trusting(std::path::Path::new(&path))
                .map_err(|e| ClientError::Setup(format!("{CA_CERT_ENV}: {e}")))?;
            Ok(builder.use_preconfigured_tls(config))
        }
        None => Ok(builder),
    }
}

impl Client {
    /// A client for the comma-separated node URLs in `servers`.
    pub fn new(servers: &str, bearer: Option<String>) -> Result<Self, ClientError> {
        let servers: Vec<String> = servers.split(',').filter(|s| !s.trim().is_empty()).map(normalize_url).collect();
        if servers.is_empty() {
            return Err(ClientError::NoServer);
        }
        let http = http_builder()?.build().map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Client {
            servers,
            bearer,
            http,
            per_node: PER_NODE_WAIT,
            total: TOTAL_BUDGET,
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The same client with other waits: `per_node` for one node, `total` for the request.
    pub fn with_waits(self, per_node: Duration, total: Duration) -> Self {
        Client { per_node, total: total.max(per_node), ..self }
    }

    /// The same client for long operations (a backup): one node, `timeout` to answer.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_waits(timeout, timeout)
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// POSTs `body` to `path` on the first node that answers, starting with the one that
    /// answered last, each node bounded by the per-node wait and all by the total budget.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.total;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut tried = Vec::new();
        for n in 0.. {
            let index = (first + n) % self.servers.len();
            let server = &self.servers[index];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut request = self.http.post(format!("{server}{path}")).json(body).timeout(self.per_node.min(left));
            if let Some(bearer) = &self.bearer {
                request = request.bearer_auth(bearer);
            }
            let failed = match request.send().await {
                Ok(response) => match answer(response).await {
                    // No leader there, or its disk is full: another node may do better.
                    Err(ClientError::Api { status: 503 | 507, message, .. }) => format!("{server} ({message})"),
                    other => {
                        self.preferred.store(index, Ordering::Relaxed);
                        return other;
                    }
                },
                Err(e) => format!("{server} ({})", describe(&e)),
            };
            // The next request starts past a node that did not answer.
            let _ = self.preferred.compare_exchange(
                index,
                (index + 1) % self.servers.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if tried.len() < self.servers.len() * 2 {
                tried.push(failed);
            }
            // After a full round of quick refusals, pause before the next round.
            if (n + 1) % self.servers.len() == 0 {
                tokio::time::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
        Err(ClientError::Unreachable(tried.join(", ")))
    }

    /// POSTs a create whose secret only the node that made it can show (`api::held`): nodes are
    /// tried in turn until one takes the request (a refused connection or a full disk took
    /// nothing); from then on only that node is asked again, as long as its answer stays
    /// unknown (503, or none after sending), so that its retry is answered with what it made.
    /// `body` must carry a `request_id`.
    pub async fn post_sticky(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.total;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut index = first;
        let mut tried = Vec::new();
        while !deadline.saturating_duration_since(Instant::now()).is_zero() {
            let server = &self.servers[index % self.servers.len()];
            let left = deadline.saturating_duration_since(Instant::now());
            let mut request = self.http.post(format!("{server}{path}")).json(body).timeout(self.per_node.min(left));
            if let Some(bearer) = &self.bearer {
                request = request.bearer_auth(bearer);
            }
            let moved_on = match request.send().await {
                Ok(response) => match answer(response).await {
                    Err(ClientError::Api { status: 507, message, .. }) => {
                        index += 1;
                        format!("{server} ({message})")
                    }
                    Err(ClientError::Api { status: 503, message, .. }) => {
                        format!("{server} ({message}); asking it again")
                    }
                    other => {
                        self.preferred.store(index % self.servers.len(), Ordering::Relaxed);
                        return other;
                    }
                },
                Err(e) if e.is_connect() => {
                    index += 1;
                    format!("{server} ({})", describe(&e))
                }
                Err(e) => format!("{server} ({}); asking it again", describe(&e)),
            };
            if tried.len() < self.servers.len() * 2 {
                tried.push(moved_on);
            }
            tokio::time::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        Err(ClientError::Unreachable(tried.join(", ")))
    }

    /// POSTs `body` to `path` on `server` only, within the per-node wait (an enrolment's proof
    /// is made for one node's key, so it goes to that node).
    pub async fn post_to(&self, server: &str, path: &str, body: &Value) -> Result<Value, ClientError> {
        let mut request = self.http.post(format!("{server}{path}")).json(body).timeout(self.per_node);
        if let Some(bearer) = &self.bearer {
            request = request.bearer_auth(bearer);
        }
        match request.send().await {
            Ok(response) => answer(response).await,
            Err(e) => Err(ClientError::Unreachable(format!("{server} ({})", describe(&e)))),
        }
    }

    /// The total budget of one request.
    pub fn total_wait(&self) -> Duration {
        self.total
    }

    /// GETs `path` from one node (with the client's credential, if it has one).
    pub async fn get_from(&self, server: &str, path: &str) -> Result<Value, ClientError> {
        let mut request = self.http.get(format!("{server}{path}")).timeout(Duration::from_secs(3));
        if let Some(bearer) = &self.bearer {
            request = request.bearer_auth(bearer);
        }
        match request.send().await {
            Ok(response) => answer(response).await,
            Err(e) => Err(ClientError::Unreachable(format!("{server} ({})", describe(&e)))),
        }
    }
}

fn describe(e: &reqwest::Error) -> &'static str {
    // A TLS failure is a connect error too: say which, it is the usual misconfiguration.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if text.contains("certificate") || text.contains("Certificate") || text.contains("tls") || text.contains("TLS")
        {
            return "TLS failed: is ZTNA_CA_CERT the cluster CA, and does the URL's scheme (https) match the node?";
        }
        source = cause.source();
    }
    if e.is_connect() {
        "connection refused or unreachable"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "connection failed"
    }
}

/// The API error in a non-success answer.
pub async fn error_of(response: reqwest::Response) -> ClientError {
    match answer(response).await {
        Err(e) => e,
        Ok(_) => ClientError::Unreachable("the answer was a success, not an error".into()),
    }
}

async fn answer(response: reqwest::Response) -> Result<Value, ClientError> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let error = &body["error"];
    Err(ClientError::Api {
        status: status.as_u16(),
        code: error["code"].as_str().unwrap_or("unknown").to_string(),
        message: error["message"].as_str().unwrap_or("no error message").to_string(),
    })
}
