//! The HTTP client the `ztna` command line uses: JSON to any node of `ZTNA_SERVER`.
//!
//! Nodes are tried in order; when one does not answer (refused, timed out, or 503 without a
//! leader) the next one is tried with the same body. Every mutating body carries a request id,
//! so a write that reached a node before its answer was lost applies once.
//!
//! This module must not print; the CLI decides what the user sees.

use std::time::Duration;

use serde_json::Value;

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
    let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(2));
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
        let http =
            http_builder()?.timeout(Duration::from_secs(15)).build().map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Client { servers, bearer, http })
    }

    /// The same client with a longer (or shorter) limit on each request.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let http =
            http_builder().and_then(|b| b.timeout(timeout).build().map_err(|e| ClientError::Setup(e.to_string())));
        let http = http.unwrap_or(self.http);
        Client { http, ..self }
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// POSTs `body` to `path` on the first node that answers.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let mut tried = Vec::new();
        for server in &self.servers {
            let mut request = self.http.post(format!("{server}{path}")).json(body);
            if let Some(bearer) = &self.bearer {
                request = request.bearer_auth(bearer);
            }
            match request.send().await {
                Ok(response) => match answer(response).await {
                    Err(ClientError::Api { status: 503, message, .. }) => tried.push(format!("{server} ({message})")),
                    other => return other,
                },
                Err(e) => tried.push(format!("{server} ({})", describe(&e))),
            }
        }
        Err(ClientError::Unreachable(tried.join(", ")))
    }

    /// GETs `path` from one node.
    pub async fn get_from(&self, server: &str, path: &str) -> Result<Value, ClientError> {
        match self.http.get(format!("{server}{path}")).timeout(Duration::from_secs(3)).send().await {
            Ok(response) => answer(response).await,
            Err(e) => Err(ClientError::Unreachable(format!("{server} ({})", describe(&e)))),
        }
    }
}

fn describe(e: &reqwest::Error) -> &'static str {
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
