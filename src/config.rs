//! Node and cluster configuration: the cluster file under `cluster/`, read at start.
//!
//! A cluster file lists every node (id, API address, Raft address) and the settings all nodes
//! share; a node is started with the file and its own id. Unknown keys are refused so that a typo
//! never silently falls back to a default.
//!
//! This module must not start anything; it only reads and checks configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raft_types::{NodeId, NodeInfo};
use crate::sm::model::MIN_EXPIRY_SECS;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// One node of the cluster as the cluster file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: NodeId,
    pub api_addr: String,
    pub raft_addr: String,
    /// The URL machines reach this node's API at (e.g. `https://ztna1.example.com:7100`), for
    /// the installer it serves; default: the API address with this node's scheme.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// Checks a `public_url`: `http://` or `https://`, then a host (name, IPv4 or `[IPv6]`) with an
/// optional port, nothing else. It goes into the installer script verbatim (quoted), so only
/// these characters are allowed.
pub fn check_public_url(url: &str) -> Result<(), ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "public_url {url:?} must be http:// or https:// followed by a host and an optional port, e.g. https://ztna1.example.com:7100"
        ))
    };
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or_else(bad)?;
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && !rest.starts_with(['.', '-', ':']);
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Settings shared by every node. Defaults suit a LAN.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Name shown by `ztna cluster status` and used as the Raft cluster name.
    pub cluster_name: String,
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election (a
    /// voter refuses to vote for another candidate until half of the maximum has passed since it
    /// heard the leader). See [`Settings::raft_election_timers`] for how openraft is told so.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a request may wait for a leader before it answers 503.
    pub request_timeout_ms: u64,
    /// Build a snapshot (and allow purging the log) after this many applied commands (like
    /// etcd's `--snapshot-count`). Counted in commands, not entries, because an entry holds up
    /// to `max_batch` of them: this bounds what a follower replays after installing a snapshot.
    /// An entry without commands (a read barrier, a new leader's first entry) counts as one.
    pub snapshot_every_commands: u64,
    /// Most commands the leader puts in one log entry.
    pub max_batch: usize,
    /// Most log entries the leader has in flight at once (also a follower's forwarded batches):
    /// while they are out, new commands gather into the next, larger batch.
    pub max_in_flight_entries: usize,
    /// An ephemeral machine with no heartbeat for this long is deleted (default 10 minutes).
    pub ephemeral_inactivity_timeout_ms: u64,
    /// How often the leader persists last-seen times (one Raft entry for all machines).
    pub last_seen_persist_interval_ms: u64,
    /// Below this much free space on its data directory's filesystem a node stops taking part
    /// in Raft and refuses requests (507 `disk_full`) instead of failing a write half-way.
    pub min_free_disk_mb: u64,
    /// TEST ONLY: shortest accepted `expires_in`, so fault tests can watch keys expire. Never set
    /// this below 300 in production; the node logs a warning when it is.
    pub test_only_min_expiry_secs: u64,
    /// TEST ONLY: milliseconds added to this node's wall clock (may be negative), to inject a
    /// clock jump.
    pub test_only_clock_offset_ms: i64,
    /// TEST ONLY: log entries kept behind a snapshot (openraft's `max_in_snapshot_log_to_keep`,
    /// 1000 by default): fewer make a follower that fell behind install a snapshot sooner, so
    /// fault tests see installs often.
    pub test_only_log_kept_after_snapshot: u64,
    /// TEST ONLY: node id (as a string) → address this node dials instead of that peer's
    /// `raft_addr`, so jepsen-lite can put a fault-injecting proxy on every link without root.
    pub test_only_dial: std::collections::BTreeMap<String, String>,
    /// SHA-256 (hex) of the bootstrap token `POST /api/cluster/init` requires (see `ztna
    /// cluster bootstrap-token`); `ztna server --bootstrap-token-sha256` overrides it. Without
    /// one, no node initialises a cluster.
    pub bootstrap_token_sha256: Option<String>,
    /// Run the internal listener without TLS: anyone who reaches `raft_addr` can then take the
    /// cluster over. Only for a network where nothing but the nodes can connect; the node logs
    /// an error at every start. Without `[tls]` and without this, a node refuses to start.
    pub insecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster: bool,
    /// Most connections each listener keeps open at once; more are closed at once.
    pub max_connections: usize,
    /// Most connections from one client address (an IPv6 client by its /64) on the API, and
    /// from one member on the internal listener. Small beside `max_connections` (a 32nd by
    /// default), so that filling a listener takes many addresses.
    pub max_connections_per_address: usize,
    /// Most TLS handshakes in progress at once per listener (a 32nd of them from one address).
    pub max_tls_handshakes: usize,
    /// A TLS handshake must finish within this long.
    pub tls_handshake_timeout_ms: u64,
    /// A client must send a request's headers within this long.
    pub header_read_timeout_ms: u64,
    /// A connection with nothing read or written for this long is closed.
    pub idle_timeout_ms: u64,
    /// A request's body must arrive within this long.
    pub body_read_timeout_ms: u64,
    /// Failed authentications allowed per minute from one client address (then its requests
    /// without a valid credential answer 429 for the rest of the minute), and per credential id
    /// (then its failures answer 429).
    pub auth_failures_per_minute: u32,
    /// Proxies (CIDR blocks, e.g. `"10.0.0.0/8"`) whose `X-Forwarded-For` names the client a
    /// request's failed authentications count against. Empty: the connection's peer always.
    pub trusted_proxies: Vec<Cidr>,
}

pub use crate::listener::Cidr;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_name: "ztna".into(),
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            request_timeout_ms: 5000,
            snapshot_every_commands: 250_000,
            max_batch: 1024,
            max_in_flight_entries: 2,
            ephemeral_inactivity_timeout_ms: 10 * 60 * 1000,
            last_seen_persist_interval_ms: 60 * 1000,
            min_free_disk_mb: 256,
            test_only_min_expiry_secs: MIN_EXPIRY_SECS,
            test_only_clock_offset_ms: 0,
            test_only_log_kept_after_snapshot: 1000,
            test_only_dial: Default::default(),
            bootstrap_token_sha256: None,
            insecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster: false,
            max_connections: 8192,
            max_connections_per_address: 256,
            max_tls_handshakes: 256,
            tls_handshake_timeout_ms: 3000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            auth_failures_per_minute: 30,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Settings {
    /// openraft 0.9's election timers `(election_timeout_min, election_timeout_max)` that make a
    /// follower campaign within about `election_timeout_min_ms..election_timeout_max_ms` of
    /// the last word from the leader, as the settings (and etcd's `--election-timeout`) say.
    ///
    /// openraft waits for a *leader lease* of its `election_timeout_max` **plus** a random
    /// timeout drawn once per process from `election_timeout_min..election_timeout_max`, checked
    /// on a tick every 1.5 heartbeat intervals; passed through unchanged, 100–200 ms would mean
    /// 300–400 ms. So the lease is half the configured maximum and the random part is drawn from
    /// half the minimum up to the lease: 100–200 ms becomes a lease of 100 ms and a campaign
    /// 150–200 ms (plus up to one tick) after the leader was last heard. openraft also uses its
    /// `election_timeout_min` as the timeout of a vote request (which the voter answers after an
    /// fsync), so it never goes below half the configured minimum nor to the heartbeat
    /// interval. The lease is how long a voter refuses other candidates after hearing the
    /// leader. `ClusterFile::validate` refuses settings for which openraft's
    /// `heartbeat < min < max` would not hold.
    pub fn raft_election_timers(&self) -> (u64, u64) {
        let lease = self.election_timeout_max_ms / 2;
        let random_from = (self.election_timeout_min_ms / 2).max(self.heartbeat_interval_ms + 1);
        (random_from, lease)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The address to dial for peer `id`, whose membership record says `raft_addr`.
    pub fn dial_addr(&self, id: NodeId, raft_addr: &str) -> String {
        self.test_only_dial.get(&id.to_string()).cloned().unwrap_or_else(|| raft_addr.to_string())
    }

    /// How long a request's body may take to arrive.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// Whether nodes talk to each other without TLS (the loudly named opt-out).
    pub fn plaintext_between_nodes(&self) -> bool {
        self.insecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster
    }

    /// How a listener bounds its connections.
    pub fn listener_limits(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_tls_handshakes: self.max_tls_handshakes,
            handshake: Duration::from_millis(self.tls_handshake_timeout_ms),
            header_read: Duration::from_millis(self.header_read_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
        }
    }

    /// How often the leader looks for inactive ephemeral machines: a quarter of the timeout,
    /// between 250 ms and 10 s.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis((self.ephemeral_inactivity_timeout_ms / 4).clamp(250, 10_000))
    }
}

/// The cluster file's `[tls]` table: PEM files, `{id}` standing for the node's id; relative
/// paths are relative to the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca_cert: String,
    /// The node's peer certificate (it must name `node-<id>.ztna-peer.invalid`) and key.
    pub cert: String,
    pub key: String,
    /// The API's certificate and key: with them the API is HTTPS, without them plain HTTP.
    #[serde(default)]
    pub api_cert: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
}

/// The cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    #[serde(default)]
    pub settings: Settings,
    pub nodes: Vec<NodeEntry>,
    /// Mutual TLS between nodes, and HTTPS for the API when it has `api_cert`.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The directory the file was read from (relative TLS paths start there).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut file: ClusterFile = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })?;
        file.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        file.validate()?;
        Ok(file)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid("the cluster file lists no [[nodes]]".into()));
        }
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.nodes.len() {
            return Err(ConfigError::Invalid("node ids in the cluster file must be unique".into()));
        }
        for node in &self.nodes {
            if let Some(url) = &node.public_url {
                check_public_url(url)?;
            }
        }
        if self.tls.is_none() && !self.settings.plaintext_between_nodes() {
            return Err(ConfigError::Invalid(
                "the cluster file has no [tls] table: without it anyone who can reach a node's raft_addr can take the \
                 cluster over. Make certificates with `ztna cluster certs --out DIR --nodes N` and point [tls] at them \
                 (ca_cert, cert, key; api_cert and api_key for HTTPS), or, on a network only the nodes can reach, set \
                 insecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster = true"
                    .into(),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.api_cert.is_some() != tls.api_key.is_some() {
                return Err(ConfigError::Invalid("[tls]: give both api_cert and api_key, or neither".into()));
            }
        }
        if let Some(hash) = &self.settings.bootstrap_token_sha256 {
            check_token_hash(hash)?;
        }
        if self.settings.max_connections < 16 {
            return Err(ConfigError::Invalid("settings: max_connections must be at least 16".into()));
        }
        let s = &self.settings;
        let (raft_min, raft_max) = s.raft_election_timers();
        if s.election_timeout_min_ms <= s.heartbeat_interval_ms
            || s.election_timeout_max_ms <= s.election_timeout_min_ms
            || raft_max <= raft_min
        {
            return Err(ConfigError::Invalid(
                "settings: need heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms, \
                 and election_timeout_max_ms / 2 above both election_timeout_min_ms / 2 and \
                 heartbeat_interval_ms + 1"
                    .into(),
            ));
        }
        if s.ephemeral_inactivity_timeout_ms < 1000 {
            return Err(ConfigError::Invalid("settings: ephemeral_inactivity_timeout_ms must be at least 1000".into()));
        }
        if s.snapshot_every_commands == 0 {
            return Err(ConfigError::Invalid("settings: snapshot_every_commands must be positive".into()));
        }
        if s.max_batch == 0 || s.max_in_flight_entries == 0 {
            return Err(ConfigError::Invalid("settings: max_batch and max_in_flight_entries must be positive".into()));
        }
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The membership to bootstrap with.
    pub fn members(&self) -> std::collections::BTreeMap<NodeId, NodeInfo> {
        self.nodes
            .iter()
            .map(|n| (n.id, NodeInfo { raft_addr: n.raft_addr.clone(), api_addr: n.api_addr.clone() }))
            .collect()
    }
}

/// Checks a bootstrap token's SHA-256: 64 hexadecimal digits.
pub fn check_token_hash(hash: &str) -> Result<(), ConfigError> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "bootstrap_token_sha256 must be 64 hexadecimal digits (the line `ztna cluster bootstrap-token` prints), got {hash:?}"
        )))
    }
}

/// Parses `500ms`, `20s`, `10m`, `1h` or `7d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::Invalid(format!("{text:?} is not a duration: use e.g. 500ms, 20s, 10m, 1h"));
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// Everything one node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub cluster: ClusterFile,
}

impl NodeConfig {
    pub fn new(id: NodeId, data_dir: PathBuf, cluster: ClusterFile) -> Result<Self, ConfigError> {
        if cluster.node(id).is_none() {
            let known: Vec<String> = cluster.nodes.iter().map(|n| n.id.to_string()).collect();
            return Err(ConfigError::Invalid(format!(
                "node id {id} is not in the cluster file (it lists {})",
                known.join(", ")
            )));
        }
        Ok(NodeConfig { id, data_dir, cluster })
    }

    pub fn me(&self) -> &NodeEntry {
        // `new` checked that the id is listed.
        self.cluster.node(self.id).unwrap_or(&self.cluster.nodes[0])
    }

    pub fn settings(&self) -> &Settings {
        &self.cluster.settings
    }

    /// This node's TLS files, when the cluster file has `[tls]`.
    pub fn tls_paths(&self) -> Option<crate::tls::TlsPaths> {
        let tls = self.cluster.tls.as_ref()?;
        let path = |template: &str| {
            let path = PathBuf::from(template.replace("{id}", &self.id.to_string()));
            if path.is_relative() {
                self.cluster.base_dir.join(path)
            } else {
                path
            }
        };
        let api = match (&tls.api_cert, &tls.api_key) {
            (Some(cert), Some(key)) => Some((path(cert), path(key))),
            _ => None,
        };
        Some(crate::tls::TlsPaths { ca_cert: path(&tls.ca_cert), cert: path(&tls.cert), key: path(&tls.key), api })
    }

    /// The API's scheme: `https` when it has a certificate, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.cluster.tls.as_ref().is_some_and(|t| t.api_cert.is_some()) {
            "https"
        } else {
            "http"
        }
    }

    /// The URL machines reach node `id`'s API at: its `public_url`, else its API address.
    pub fn public_url(&self, id: NodeId) -> String {
        match self.cluster.node(id) {
            Some(node) => self.member_url(id, &node.api_addr),
            None => format!("{}://{}", self.scheme(), self.me().api_addr),
        }
    }

    /// The URL of member `id` whose membership record says `api_addr`.
    pub fn member_url(&self, id: NodeId, api_addr: &str) -> String {
        match self.cluster.node(id).and_then(|n| n.public_url.clone()) {
            Some(url) => url,
            None => format!("{}://{}", self.scheme(), api_addr),
        }
    }

    /// The CA that clients of an HTTPS API must trust, if the API is HTTPS.
    pub fn api_ca_cert(&self) -> Option<PathBuf> {
        self.tls_paths().filter(|paths| paths.api.is_some()).map(|paths| paths.ca_cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_timings_are_refused() {
        let bad: Result<ClusterFile, _> =
            toml::from_str("[[nodes]]\nid = 1\napi_addr = \"a\"\nraft_addr = \"b\"\nport = 3\n");
        assert!(bad.unwrap_err().to_string().contains("port"));
        let file: ClusterFile = toml::from_str(
            "[settings]\nheartbeat_interval_ms = 500\n[[nodes]]\nid = 1\napi_addr = \"a\"\nraft_addr = \"b\"\n",
        )
        .unwrap();
        assert!(file.validate().is_err());
        let plain: ClusterFile = toml::from_str("[[nodes]]\nid = 1\napi_addr = \"a\"\nraft_addr = \"b\"\n").unwrap();
        assert!(plain.validate().unwrap_err().to_string().contains("no [tls] table"), "no TLS, no opt-out: refused");
        let ok: ClusterFile = toml::from_str(
            "[settings]\ninsecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster = true\n[[nodes]]\nid = 1\napi_addr = \"a\"\nraft_addr = \"b\"\n",
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        assert!(NodeConfig::new(2, "x".into(), ok).is_err());
    }

    #[test]
    fn a_follower_campaigns_within_the_configured_range() {
        // openraft campaigns `lease + random` after the last word from the leader, with
        // `random` drawn from `min..lease`.
        let campaign = |heartbeat, min, max| {
            let s = Settings {
                heartbeat_interval_ms: heartbeat,
                election_timeout_min_ms: min,
                election_timeout_max_ms: max,
                ..Settings::default()
            };
            let (random_from, lease) = s.raft_election_timers();
            assert!(heartbeat < random_from && random_from < lease, "openraft's rule for {s:?}");
            (lease + random_from, lease + lease)
        };
        assert_eq!(campaign(20, 100, 200), (150, 200));
        assert_eq!(campaign(50, 100, 200), (151, 200));
        assert_eq!(campaign(300, 3000, 6000), (4500, 6000));
        let refused = |heartbeat: u64, min: u64, max: u64| {
            let file: ClusterFile = toml::from_str(&format!(
                "[settings]\ninsecure_plaintext_between_nodes_anyone_reaching_raft_addr_owns_the_cluster = true\n\
                 heartbeat_interval_ms = {heartbeat}\nelection_timeout_min_ms = {min}\nelection_timeout_max_ms = {max}\n\
                 [[nodes]]\nid = 1\napi_addr = \"a\"\nraft_addr = \"b\"\n"
            ))
            .unwrap();
            file.validate().err().map(|e| e.to_string())
        };
        assert_eq!(refused(50, 100, 200), None);
        // openraft would be given a lease no longer than its random part, or no longer than
        // a heartbeat interval: refused when the file is read, not when the node starts.
        for (heartbeat, min, max) in [(50, 200, 201), (60, 100, 120), (50, 100, 100)] {
            let refusal = refused(heartbeat, min, max);
            assert!(refusal.as_deref().is_some_and(|e| e.contains("election_timeout_max_ms / 2")), "{refusal:?}");
        }
    }

    #[test]
    fn every_cluster_file_the_project_ships_is_valid() {
        // At run time (cargo sets it): the path baked at build time is whichever checkout last
        // built this binary when checkouts share a target directory.
        let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        let dir = Path::new(&root).join("cluster");
        let files =
            ["local.toml", "three-hosts.example.toml", "three-regions.example.toml", "container/compose-cluster.toml"];
        for file in files {
            let loaded = ClusterFile::load(&dir.join(file));
            assert!(loaded.is_ok(), "{file}: {:?}", loaded.err());
        }
    }
}
