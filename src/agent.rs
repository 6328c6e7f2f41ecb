//! The machine side: `ztna up` (enrol once, then heartbeat until stopped), `ztna status`,
//! `ztna set --tags` and `ztna logout`.
//!
//! The machine's identity is an X25519 key pair made on first start and kept, with the node key
//! the cluster issued, in a state file readable only by its owner. A restarted agent reuses its
//! node key and never spends another use of an auth key.
//!
//! This module must not talk to Raft or RocksDB; it is a client of the public API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::{Client, ClientError};

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "ztna-state.json";

/// What the agent keeps between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    /// X25519 private key, hex. Never leaves this file.
    pub private_key: String,
    /// X25519 public key, hex: the machine's `node_public_key`.
    pub public_key: String,
    pub hostname: String,
    pub machine_id: Option<String>,
    /// The `nodekey-…` the cluster issued.
    pub node_key: Option<String>,
    pub org_id: Option<String>,
    /// When the last enrolment proof was issued (ms): the next one is issued later, even if
    /// this machine's clock stepped back (the cluster refuses a proof older than the last).
    #[serde(default)]
    pub last_proof_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("not enrolled: set ZTNA_AUTH_KEY (or pass --auth-key) to enrol this machine")]
    NoAuthKey,
    #[error("not enrolled: no node key in {0}; run `ztna up` first")]
    NotEnrolled(String),
    #[error("{0}")]
    Refused(String),
}

/// The default state directory: `/var/lib/ztna` as root, `~/.local/state/ztna` otherwise.
pub fn default_state_dir() -> PathBuf {
    #[cfg(unix)]
    {
        // /proc/self belongs to the process's effective user: root gets the system path.
        if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false) {
            return PathBuf::from("/var/lib/ztna");
        }
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ztna")
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Loads the state file, if there is one.
pub fn load_state(dir: &Path) -> Result<Option<AgentState>, AgentError> {
    let path = state_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::State(format!("{} is not a ztna state file: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::State(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Saves the state file, readable only by its owner.
pub fn save_state(dir: &Path, state: &AgentState) -> Result<(), AgentError> {
    let err = |e: std::io::Error| AgentError::State(format!("cannot write the state file in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    let text = serde_json::to_vec_pretty(state).map_err(|e| AgentError::State(e.to_string()))?;
    crate::private_file::write(&state_path(dir), &text).map_err(err)
}

/// A new identity: an X25519 key pair from the OS CSPRNG.
pub fn new_identity(hostname: String) -> AgentState {
    let (private_key, public_key) = crate::proof::new_key_pair();
    AgentState { private_key, public_key, hostname, machine_id: None, node_key: None, org_id: None, last_proof_at: 0 }
}

/// This host's name, for enrolment when `--hostname` is not given.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// How `ztna up` runs.
pub struct UpOptions {
    pub servers: String,
    pub auth_key: Option<String>,
    pub hostname: Option<String>,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// Enrol if needed, then return instead of heartbeating.
    pub enrol_only: bool,
    /// Enrol again (with `auth_key`) even though an admin revoked this machine's node key or
    /// deleted it; without it the agent stops and says why.
    pub force_reauth: bool,
}

/// Enrols with `auth_key`, proving possession of this machine's private key, and saves the
/// node key. The proof is made for one node's enrolment key, so each attempt fetches a node's
/// key and sends to that node, with a new request id and a new proof; a node that does not
/// answer (or has no leader) is followed by the next. A retry after a lost answer is the same
/// machine again: it gets a fresh node key and spends no further use.
pub async fn enrol_with_proof(client: &Client, state: &mut AgentState, auth_key: &str) -> Result<Value, ClientError> {
    let deadline = tokio::time::Instant::now() + client.total_wait();
    let servers = client.servers().to_vec();
    let mut tried = Vec::new();
    for n in 0.. {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let server = &servers[n % servers.len()];
        let attempt = async {
            let key = client.get_from(server, "/api/enrol/key").await?;
            let server_key = key["server_key"].as_str().unwrap_or_default().to_string();
            let issued_at = crate::clock::wall_ms().max(state.last_proof_at + 1);
            state.last_proof_at = issued_at;
            let request_id = format!("up-{}", crate::secret::random_base62(22));
            let body = crate::proof::enrol_body(
                &state.private_key,
                &state.public_key,
                &server_key,
                auth_key,
                &state.hostname,
                &request_id,
                issued_at,
            );
            client.post_to(server, "/api/enrol", &body).await
        };
        match attempt.await {
            Err(ClientError::Unreachable(why)) => tried.push(why),
            // Behind a load balancer the key and the enrolment reached different nodes: again.
            Err(ClientError::Api { code, message, .. }) if code == "wrong_server_key" => {
                tried.push(format!("{server} ({message})"))
            }
            Err(ClientError::Api { status: 503 | 507, message, .. }) => tried.push(format!("{server} ({message})")),
            // A node of an older build judges freshness by its own clock, which may be wrong:
            // another node may take the same (fresh) proof.
            Err(ClientError::Api { code, message, .. })
                if code == "proof_invalid" && message.contains("from this node's clock") =>
            {
                tried.push(format!("{server} ({message})"))
            }
            other => return other,
        }
        if (n + 1) % servers.len() == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tried.truncate(servers.len() * 2);
    Err(ClientError::Unreachable(tried.join(", ")))
}

/// Enrols with `auth_key` and saves the node key.
async fn enrol(client: &Client, state: &mut AgentState, dir: &Path, auth_key: &str) -> Result<(), AgentError> {
    let answer = enrol_with_proof(client, state, auth_key).await;
    // The proof's time is kept even when the enrolment failed: the next proof is later.
    save_state(dir, state)?;
    let answer = answer.map_err(|e| match e.code() {
        Some("machine_deleted") => AgentError::Refused(format!(
            "an admin deleted this machine; it may enrol again once an admin allows it: \
             ztna machine-admin --action allow-reenrol --node-public-key {}",
            state.public_key
        )),
        Some("node_key_revoked") => AgentError::Refused(
            "an admin revoked this machine's node key; this auth key will not enrol it again: \
             ask for a fresh auth key and run `ztna up --force-reauth --auth-key …`"
                .into(),
        ),
        _ => AgentError::Client(e),
    })?;
    state.machine_id = answer["machine_id"].as_str().map(String::from);
    state.node_key = answer["node_key"].as_str().map(String::from);
    state.org_id = answer["org_id"].as_str().map(String::from);
    save_state(dir, state)?;
    println!(
        "✓ Enrolled {} as {} (tags: {})",
        state.hostname,
        state.machine_id.as_deref().unwrap_or("?"),
        join_tags(&answer["tags"])
    );
    Ok(())
}

fn join_tags(tags: &Value) -> String {
    let tags = crate::cli::format::tag_names(tags);
    if tags.is_empty() {
        "none".into()
    } else {
        tags.join(", ")
    }
}

/// Why the cluster refused this machine's node key, in words for the operator.
fn refusal(error: &ClientError) -> Option<String> {
    match error.code() {
        Some("unknown_node_key") => {
            Some("this machine was deleted from the network (or logged out); enrol it again with a new auth key".into())
        }
        Some("node_key_revoked") => Some(
            "an admin revoked this machine's node key; the agent stops here. To enrol it again, get a fresh auth \
             key and run `ztna up --force-reauth --auth-key …`"
                .into(),
        ),
        _ => None,
    }
}

/// `ztna up`: enrol if needed, then heartbeat until SIGTERM or Ctrl-C.
pub async fn up(options: UpOptions, stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let dir = &options.state_dir;
    let mut state = match load_state(dir)? {
        Some(state) => state,
        None => {
            let state = new_identity(options.hostname.clone().unwrap_or_else(system_hostname));
            save_state(dir, &state)?;
            state
        }
    };
    if let Some(hostname) = &options.hostname {
        state.hostname = hostname.clone();
    }
    let client = Client::new(&options.servers, None)?;
    match &state.node_key {
        Some(node_key) => {
            let check = machine_client(&options.servers, node_key)?.post("/api/machine/heartbeat", &json!({})).await;
            match check {
                Ok(_) => println!(
                    "✓ Already enrolled as {}; reusing its node key",
                    state.machine_id.as_deref().unwrap_or("?")
                ),
                Err(e) if refusal(&e).is_some() && options.force_reauth && options.auth_key.is_some() => {
                    println!("--force-reauth: this machine's node key is no longer valid ({e}); enrolling again");
                    enrol(&client, &mut state, dir, options.auth_key.as_deref().unwrap_or_default()).await?;
                }
                Err(e) => match refusal(&e) {
                    Some(why) => return Err(AgentError::Refused(why)),
                    // The cluster is unreachable for now: keep the node key and keep trying.
                    None => eprintln!("warning: heartbeat failed: {e}"),
                },
            }
        }
        None => {
            let auth_key = options.auth_key.as_deref().ok_or(AgentError::NoAuthKey)?;
            enrol(&client, &mut state, dir, auth_key).await?;
        }
    }
    let node_key = state.node_key.clone().ok_or_else(|| AgentError::NotEnrolled(dir.display().to_string()))?;
    if options.enrol_only {
        return Ok(());
    }
    // A heartbeat takes about its interval at most: a node that does not answer (frozen,
    // overloaded, half cut off) gets its share of it (at least 250 ms), then the next node is
    // tried, so every node is tried within one heartbeat.
    let nodes = options.servers.split(',').filter(|s| !s.trim().is_empty()).count().max(1) as u32;
    let interval = options.heartbeat_interval.max(Duration::from_millis(500));
    let per_node = (interval / nodes).clamp(Duration::from_millis(250), crate::client::PER_NODE_WAIT);
    let machine = machine_client(&options.servers, &node_key)?.with_waits(per_node, interval.max(per_node * nodes));
    println!("ztna up: heartbeat every {:?}; stop with Ctrl-C or SIGTERM", options.heartbeat_interval);
    tokio::pin!(stop);
    let mut last_state = String::new();
    loop {
        match machine.post("/api/machine/heartbeat", &json!({})).await {
            Ok(answer) => {
                let now = format!("{} (tags: {})", answer["state"].as_str().unwrap_or("?"), join_tags(&answer["tags"]));
                if now != last_state {
                    println!("state: {now}");
                    last_state = now;
                }
            }
            Err(e) => match refusal(&e) {
                Some(why) => return Err(AgentError::Refused(why)),
                None => eprintln!("warning: heartbeat failed, will retry: {e}"),
            },
        }
        tokio::select! {
            () = &mut stop => {
                println!("ztna up: stopped");
                return Ok(());
            }
            () = tokio::time::sleep(options.heartbeat_interval) => {}
        }
    }
}

fn machine_client(servers: &str, node_key: &str) -> Result<Client, AgentError> {
    Ok(Client::new(servers, Some(node_key.to_string()))?)
}

fn enrolled(dir: &Path) -> Result<(AgentState, String), AgentError> {
    let state = load_state(dir)?.ok_or_else(|| AgentError::NotEnrolled(dir.display().to_string()))?;
    let node_key = state.node_key.clone().ok_or_else(|| AgentError::NotEnrolled(dir.display().to_string()))?;
    Ok((state, node_key))
}

/// `ztna status`: this machine as the cluster sees it (`None` when not enrolled).
pub async fn status(servers: &str, dir: &Path) -> Result<Option<Value>, AgentError> {
    let Ok((_, node_key)) = enrolled(dir) else { return Ok(None) };
    match machine_client(servers, &node_key)?.post("/api/machine/heartbeat", &json!({})).await {
        Ok(answer) => Ok(Some(answer)),
        Err(e) => Err(refusal(&e).map_or(AgentError::Client(e), AgentError::Refused)),
    }
}

/// `ztna set --tags`: replaces this machine's tags.
pub async fn set_tags(servers: &str, dir: &Path, tags: &[String]) -> Result<Value, AgentError> {
    let (_, node_key) = enrolled(dir)?;
    let body = json!({ "tags": tags, "request_id": format!("set-{}", crate::secret::random_base62(22)) });
    Ok(machine_client(servers, &node_key)?.post("/api/machine/set-tags", &body).await?)
}

/// `ztna logout`: the machine deletes itself and forgets its node key and identity.
pub async fn logout(servers: &str, dir: &Path) -> Result<String, AgentError> {
    let (state, node_key) = enrolled(dir)?;
    let body = json!({ "request_id": format!("logout-{}", crate::secret::random_base62(22)) });
    match machine_client(servers, &node_key)?.post("/api/machine/logout", &body).await {
        Ok(_) => {}
        // Already gone from the cluster: forgetting the key locally is all that is left.
        Err(e) if e.code() == Some("unknown_node_key") || e.code() == Some("node_key_revoked") => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_file(state_path(dir))
        .map_err(|e| AgentError::State(format!("cannot remove the state file: {e}")))?;
    Ok(state.machine_id.unwrap_or_default())
}
