//! Real three-node clusters for integration tests: `ztna server` processes on loopback, each
//! with its own RocksDB in a temporary directory, started, killed and restarted like an operator
//! would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `ztna` under test: this build's, or another one named by `ZTNA_TEST_BIN` (to show that
/// a test fails against a build without the fix it checks).
pub fn ztna() -> String {
    std::env::var("ZTNA_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ztna").to_string())
}

pub struct NodeProc {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    cluster_file: PathBuf,
    pub org_id: String,
    pub api_key: String,
    pub operator_key: String,
    pub http: reqwest::Client,
    /// `http`, or `https` with TLS.
    pub scheme: &'static str,
    /// The cluster CA with TLS (the CLI gets it as ZTNA_CA_CERT).
    pub ca_cert: Option<PathBuf>,
    /// The bootstrap token `/api/cluster/init` needs.
    pub bootstrap_token: String,
}

/// The key pair of test machine `device`: the same device has the same keys every time.
pub fn device_keys(device: u64) -> (String, String) {
    ztna_proof::key_pair_from_seed(&format!("test-device-{device}"))
}

/// The enrolment body of test machine `device` for the node at `url`: its key pair, a fresh
/// request id and a fresh proof made for that node's enrolment key (as `ztna up` does). Every
/// attempt, retries included, makes a new one.
pub async fn proven_enrol_body(
    http: &reqwest::Client,
    url: &str,
    auth_key: &str,
    hostname: &str,
    device: u64,
) -> Result<Value, String> {
    let key: Value = http
        .get(format!("{url}/api/enrol/key"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}/api/enrol/key: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{url}/api/enrol/key: {e}"))?;
    let server_key = key["server_key"].as_str().ok_or_else(|| format!("{url}/api/enrol/key answered {key}"))?;
    let (private, public) = device_keys(device);
    let request_id = format!("t-{}-{}", device, ztna_proof::issued_now());
    Ok(ztna_proof::enrol_body(&private, &public, server_key, auth_key, hostname, &request_id, ztna_proof::issued_now()))
}

/// A loopback port for a node (see `ztna_ports`: never handed out twice in this test process).
pub fn free_port() -> u16 {
    ztna_ports::free_port().expect("a free loopback port")
}

impl Cluster {
    /// Starts three nodes and initialises the cluster.
    pub async fn start() -> Cluster {
        Self::start_with("").await
    }

    /// Starts three nodes with extra `[settings]` lines.
    pub async fn start_with(settings: &str) -> Cluster {
        Self::unstarted(settings).start_and_init().await
    }

    /// Starts every listed node, waits for a leader and initialises the cluster.
    async fn start_and_init(mut self) -> Cluster {
        for id in 1..=3 {
            self.spawn(id);
        }
        self.init().await;
        self
    }

    /// Waits for a leader among the running nodes and initialises the cluster (the first org,
    /// its API key and the operator key), then waits until they apply this build's rules.
    pub async fn init(&mut self) {
        self.wait_ready().await;
        let token = self.bootstrap_token.clone();
        let init = self.post(1, "/api/cluster/init", &json!({"org_name": "test"}), Some(&token)).await;
        assert_eq!(init.0, 200, "init: {}", init.1);
        self.org_id = init.1["org_id"].as_str().unwrap().to_string();
        self.api_key = init.1["api_key"].as_str().unwrap().to_string();
        self.operator_key = init.1["operator_key"].as_str().unwrap().to_string();
        self.wait_rules_adopted(&self.running()).await;
    }

    /// Waits until nodes `ids` apply entries by their build's newest rules (a new cluster
    /// adopts them shortly after it forms): until then a node a step behind proposes the older
    /// form of a command, which the newer rules may refuse.
    pub async fn wait_rules_adopted(&self, ids: &[u64]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let gauge = |text: &str, name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok()))
        };
        for id in ids {
            loop {
                let url = format!("{}/metrics", self.url(*id));
                let text = match self.http.get(url).timeout(Duration::from_secs(2)).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let (applied, built) = (gauge(&text, "ztna_state_machine_rules "), gauge(&text, "ztna_build_rules "));
                if applied.is_some() && applied == built {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not adopt its build's rules: {applied:?} of {built:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A new cluster of `size` nodes seeded from `backup` (made by `old`) with `ztna cluster
    /// restore` into the data directories of `restored` nodes; the others start empty. Keeps
    /// `old`'s credentials, which the backup holds.
    pub async fn restore_from(backup: &std::path::Path, old: &Cluster, size: u64, restored: &[u64]) -> Cluster {
        let mut cluster = Self::unstarted_of(size, "");
        for id in restored {
            let out = Command::new(ztna())
                .args(["cluster", "restore", "--from"])
                .arg(backup)
                .arg("--data-dir")
                .arg(&cluster.node(*id).data_dir)
                .arg("--cluster")
                .arg(&cluster.cluster_file)
                .args(["--id", &id.to_string()])
                .output()
                .expect("ztna cluster restore");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "restore node {id}: {text}");
            assert!(text.contains("Restored the backup at log index"), "{text}");
        }
        for id in 1..=size {
            cluster.spawn(id);
        }
        cluster.wait_ready().await;
        cluster.org_id = old.org_id.clone();
        cluster.api_key = old.api_key.clone();
        cluster.operator_key = old.operator_key.clone();
        cluster
    }

    /// Three nodes with an HTTPS API as well (its own certificates, `api<i>.crt`); the test
    /// client and the CLI trust the cluster CA.
    pub async fn start_tls() -> Cluster {
        let mut cluster = Self::unstarted("");
        let tls = cluster.dir.path().join("tls");
        let text = std::fs::read_to_string(&cluster.cluster_file).expect("cluster file");
        let text = text.replace(
            "key = \"tls/node{id}.key\"\n",
            "key = \"tls/node{id}.key\"\napi_cert = \"tls/api{id}.crt\"\napi_key = \"tls/api{id}.key\"\n",
        );
        std::fs::write(&cluster.cluster_file, text).expect("write cluster file");
        let ca = ztna_keystore::tls::client_trusting(&tls.join("ca.crt")).expect("CA");
        cluster.http = reqwest::Client::builder()
            .use_preconfigured_tls(ca)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        cluster.scheme = "https";
        cluster.ca_cert = Some(tls.join("ca.crt"));
        cluster.start_and_init().await
    }

    /// Three nodes listed (with certificates and a bootstrap token), none started, not
    /// initialised.
    pub fn unstarted_for_test(settings: &str) -> Cluster {
        Self::unstarted(settings)
    }

    /// Node `id`'s process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(|c| c.id())
    }

    /// Node `id`'s internal (Raft) address.
    pub fn raft_addr(&self, id: u64) -> String {
        self.node(id).raft_addr.clone()
    }

    /// Three nodes listed in a new cluster file, none started. Like every cluster, they talk
    /// mutual TLS (certificates from `ztna cluster certs` under `tls/`); the API is plain HTTP
    /// unless [`Cluster::start_tls`] gives it a certificate. The bootstrap token's hash is in
    /// the settings.
    fn unstarted(settings: &str) -> Cluster {
        Self::unstarted_of(3, settings)
    }

    /// [`Cluster::unstarted`] with `size` nodes.
    fn unstarted_of(size: u64, settings: &str) -> Cluster {
        ztna_keystore::tls::ensure_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let made = Command::new(ztna())
            .args(["cluster", "certs", "--nodes", &size.to_string(), "--out"])
            .arg(dir.path().join("tls"))
            .output()
            .expect("ztna cluster certs");
        assert!(made.status.success(), "certs: {}", String::from_utf8_lossy(&made.stderr));
        let token = ztna_keystore::secret::new_credential(
            ztna_keystore::secret::CredentialKind::BootstrapToken,
            ztna_keystore::secret::random_base62(ztna_keystore::secret::ID_LEN),
        );
        let mut text = format!(
            "[settings]\ncluster_name = \"test\"\nbootstrap_token_sha256 = \"{}\"\n{settings}\n",
            hex::encode(token.hash)
        );
        let mut nodes = Vec::new();
        for id in 1..=size {
            let api_addr = format!("127.0.0.1:{}", free_port());
            let raft_addr = format!("127.0.0.1:{}", free_port());
            text.push_str(&format!("[[nodes]]\nid = {id}\napi_addr = \"{api_addr}\"\nraft_addr = \"{raft_addr}\"\n"));
            nodes.push(NodeProc {
                id,
                api_addr,
                raft_addr,
                data_dir: dir.path().join(format!("node{id}")),
                child: None,
            });
        }
        text.push_str("\n[tls]\nca_cert = \"tls/ca.crt\"\ncert = \"tls/node{id}.crt\"\nkey = \"tls/node{id}.key\"\n");
        let cluster_file = dir.path().join("cluster.toml");
        std::fs::write(&cluster_file, text).expect("write cluster file");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
        Cluster {
            dir,
            nodes,
            cluster_file,
            org_id: String::new(),
            api_key: String::new(),
            operator_key: String::new(),
            http,
            scheme: "http",
            ca_cert: None,
            bootstrap_token: token.text,
        }
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// Starts (or restarts, with its data) node `id`.
    pub fn spawn(&mut self, id: u64) {
        self.spawn_with(id, &[]);
    }

    /// [`Cluster::spawn`] with extra `ztna server` arguments.
    pub fn spawn_with(&mut self, id: u64, extra: &[&str]) {
        self.spawn_env(id, extra, &[]);
    }

    /// [`Cluster::spawn`] with extra arguments and environment variables.
    pub fn spawn_env(&mut self, id: u64, extra: &[&str], env: &[(&str, &str)]) {
        let cluster_file = self.cluster_file.clone();
        let log = self.dir.path().join(format!("node{id}.log"));
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = Command::new(ztna())
            .arg("server")
            .arg("--cluster")
            .arg(&cluster_file)
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ztna server");
        node.child = Some(child);
    }

    /// `kill -9` node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes node `id` (SIGSTOP): it keeps its connections and answers nothing.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// Thaws node `id` (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    pub fn signal(&self, id: u64, signal: &str) {
        let child = self.node(id).child.as_ref().expect("node is running");
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill {signal} node {id}");
    }

    /// The cluster file's path.
    /// Sets the TEST ONLY clock offset of node `id` (the cluster file's setting, which a
    /// SIGHUP makes the node re-read) and gives it half a second to take it.
    pub async fn set_clock_offset(&self, id: u64, offset_ms: i64) {
        let path = self.cluster_file();
        let text = std::fs::read_to_string(path).expect("cluster file");
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("test_only_clock_offset_ms"))
            .map(|l| {
                if l == "[settings]" {
                    format!("{l}\ntest_only_clock_offset_ms = {offset_ms}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(path, text).expect("write cluster file");
        self.signal(id, "-HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    pub fn cluster_file(&self) -> &std::path::Path {
        &self.cluster_file
    }

    /// Stops node `id` with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, id: u64) -> String {
        format!("{}://{}", self.scheme, self.node(id).api_addr)
    }

    pub fn servers(&self) -> String {
        self.nodes.iter().map(|n| format!("{}://{}", self.scheme, n.api_addr)).collect::<Vec<_>>().join(",")
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// POSTs JSON to node `id`; answers the status and the JSON body.
    pub async fn post(&self, id: u64, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url(id))).json(body);
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "transport_error": e.to_string() })),
        }
    }

    /// A key-management call with the org's admin key.
    pub async fn keys(&self, id: u64, mut body: Value) -> (u16, Value) {
        body["org_id"] = json!(self.org_id);
        self.post(id, "/api/key-management", &body, Some(&self.api_key.clone())).await
    }

    pub async fn create_key(&self, id: u64, spec: Value) -> Value {
        let mut body = spec;
        body["action"] = json!("create_auth_key");
        let (status, key) = self.keys(id, body).await;
        assert_eq!(status, 200, "create_auth_key: {key}");
        key
    }

    /// The key with its whole history (every page of `enrolments`).
    pub async fn get_key(&self, id: u64, key_id: &str) -> Value {
        let mut body = json!({"action": "get_auth_key", "key_id": key_id, "enrolments_limit": 1000});
        let (status, mut key) = self.keys(id, body.clone()).await;
        assert_eq!(status, 200, "get_auth_key: {key}");
        while let Some(cursor) = key["next_enrolments_cursor"].as_str().map(String::from) {
            body["enrolments_cursor"] = json!(cursor);
            let (status, page) = self.keys(id, body.clone()).await;
            assert_eq!(status, 200, "get_auth_key: {page}");
            let more = page["enrolments"].as_array().cloned().unwrap_or_default();
            key["enrolments"].as_array_mut().expect("enrolments").extend(more);
            key["next_enrolments_cursor"] = page["next_enrolments_cursor"].clone();
        }
        key
    }

    /// Enrols test machine `device` at node `id`, with its proof of possession.
    pub async fn enrol(&self, id: u64, auth_key: &str, device: u64) -> (u16, Value) {
        match proven_enrol_body(&self.http, &self.url(id), auth_key, &format!("device-{device}"), device).await {
            Ok(body) => self.post(id, "/api/enrol", &body, None).await,
            Err(e) => (0, json!({ "transport_error": e })),
        }
    }

    /// Node `id`'s view of the cluster (`GET /api/cluster`, with the operator key, or the
    /// bootstrap token before the cluster is initialised).
    pub async fn cluster_info(&self, id: u64) -> Option<Value> {
        let key = if self.operator_key.is_empty() { &self.bootstrap_token } else { &self.operator_key };
        let request = self.http.get(format!("{}/api/cluster", self.url(id))).bearer_auth(key);
        let r = request.timeout(Duration::from_secs(2)).send().await.ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    }

    /// Waits until every running node is ready and they agree on one leader; returns it.
    pub async fn wait_ready(&self) -> u64 {
        self.wait_leader_among(&self.running()).await
    }

    /// Waits until nodes `ids` agree on a leader among themselves; returns it.
    pub async fn wait_leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for id in ids {
                leaders.push(self.cluster_info(*id).await.and_then(|info| info["leader"].as_u64()));
            }
            if let Some(Some(leader)) = leaders.first().copied() {
                if leaders.iter().all(|l| *l == Some(leader)) && ids.contains(&leader) {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {ids:?}: {leaders:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node has applied the same index.
    pub async fn wait_caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut applied = Vec::new();
            for id in self.running() {
                applied.push(self.cluster_info(id).await.and_then(|i| i["last_applied_index"].as_u64()));
            }
            if applied.iter().all(|a| a.is_some() && *a == applied[0]) {
                return;
            }
            assert!(Instant::now() < deadline, "nodes did not catch up: {applied:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `ztna` command line, set up like `set -a; . data/cluster.env`.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(ztna());
        cmd.env("ZTNA_SERVER", self.servers()).env("QZ_API_KEY", &self.api_key).env("ZTNA_ORG", &self.org_id);
        if let Some(ca) = &self.ca_cert {
            cmd.env("ZTNA_CA_CERT", ca);
        }
        cmd
    }

    /// Runs the CLI; answers (success, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cli().args(args).output().expect("run ztna");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let id = n.id;
                let text = self.log(id);
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- node {id} ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.kill(id);
        }
    }
}

impl Cluster {
    /// Lists a new node `id` in the cluster file (as an operator would on every host), with an
    /// empty data directory; [`Cluster::spawn`] starts it. Answers its raft and API addresses.
    pub fn list_node(&mut self, id: u64) -> (String, String) {
        let api_addr = format!("127.0.0.1:{}", free_port());
        let raft_addr = format!("127.0.0.1:{}", free_port());
        let text = std::fs::read_to_string(&self.cluster_file).expect("cluster file");
        // Nodes before [tls]; its certificate signed by the same CA.
        let (nodes, tls) = text.split_once("\n[tls]").expect("a [tls] table");
        let text = format!(
            "{nodes}[[nodes]]\nid = {id}\napi_addr = \"{api_addr}\"\nraft_addr = \"{raft_addr}\"\n\n[tls]{tls}"
        );
        std::fs::write(&self.cluster_file, text).expect("write cluster file");
        let made = Command::new(ztna())
            .args(["cluster", "certs", "--nodes", &id.to_string(), "--out"])
            .arg(self.dir.path().join("tls"))
            .output()
            .expect("ztna cluster certs");
        assert!(made.status.success(), "certs: {}", String::from_utf8_lossy(&made.stderr));
        let data_dir = self.dir.path().join(format!("node{id}"));
        self.nodes.push(NodeProc {
            id,
            api_addr: api_addr.clone(),
            raft_addr: raft_addr.clone(),
            data_dir,
            child: None,
        });
        (raft_addr, api_addr)
    }

    /// Waits up to `within` for node `id`'s process to exit on its own; answers whether it did
    /// and whether it exited with success.
    pub async fn wait_exit(&mut self, id: u64, within: Duration) -> Option<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let node = self.node_mut(id);
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return Some(status.success());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Node `id`'s whole log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }
}

/// A running `ztna up` agent with its own state directory; its output goes to a file.
pub struct Agent {
    child: Option<Child>,
    pub state_dir: PathBuf,
    out: PathBuf,
}

impl Cluster {
    /// Starts `ztna up` with `auth_key`, heartbeating every 300 ms, in state directory `name`.
    pub fn agent(&self, auth_key: &str, name: &str) -> Agent {
        self.agent_with(auth_key, name, "300ms", &self.servers())
    }

    /// [`Cluster::agent`] heartbeating every `interval` to `servers` (in that order).
    pub fn agent_with(&self, auth_key: &str, name: &str, interval: &str, servers: &str) -> Agent {
        self.agent_args(auth_key, name, interval, servers, &[])
    }

    /// [`Cluster::agent_with`] with more arguments for `ztna up` (such as `--force-reauth`).
    pub fn agent_args(&self, auth_key: &str, name: &str, interval: &str, servers: &str, extra: &[&str]) -> Agent {
        let state_dir = self.dir.path().join(format!("agent-{name}"));
        let out = self.dir.path().join(format!("agent-{name}.log"));
        let child = self.spawn_agent(auth_key, &state_dir, &out, interval, servers, extra);
        Agent { child: Some(child), state_dir, out }
    }

    fn spawn_agent(
        &self,
        auth_key: &str,
        state_dir: &std::path::Path,
        out: &std::path::Path,
        interval: &str,
        servers: &str,
        extra: &[&str],
    ) -> Child {
        // Each run starts its own log, so waiting for a line waits for this run to print it.
        let log = std::fs::File::create(out).expect("agent log");
        let err = log.try_clone().expect("agent log");
        Command::new(ztna())
            .args(["up", "--userspace", "--heartbeat-interval", interval, "--hostname", "agent-host", "--state-dir"])
            .arg(state_dir)
            .args(extra)
            .env("ZTNA_SERVER", servers)
            .envs(self.ca_cert.iter().map(|ca| ("ZTNA_CA_CERT", ca.as_os_str())))
            .env("ZTNA_AUTH_KEY", auth_key)
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn ztna up")
    }

    /// The org's machines, through node `id`.
    pub async fn machines(&self, id: u64) -> Vec<Value> {
        let body = json!({"action": "list_machines", "org_id": self.org_id});
        let (status, answer) = self.post(id, "/api/machine-admin", &body, Some(&self.api_key.clone())).await;
        assert_eq!(status, 200, "list_machines: {answer}");
        answer["machines"].as_array().cloned().unwrap_or_default()
    }

    pub async fn machine_admin(&self, id: u64, action: &str, machine_id: &str) -> (u16, Value) {
        let body = json!({"action": action, "org_id": self.org_id, "machine_id": machine_id});
        self.post(id, "/api/machine-admin", &body, Some(&self.api_key.clone())).await
    }
}

impl Agent {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until the agent's output contains `needle`.
    pub async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.output().contains(needle) {
            assert!(Instant::now() < deadline, "agent never printed {needle:?}:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The machine id from the agent's state file.
    pub fn machine_id(&self) -> String {
        self.state()["machine_id"].as_str().expect("machine id").to_string()
    }

    /// The agent's state file.
    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.state_dir.join("ztna-state.json")).expect("state file");
        serde_json::from_str(&text).expect("state json")
    }

    /// Waits for the agent to exit on its own; answers whether it succeeded.
    pub async fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return status.success();
                }
            }
            assert!(Instant::now() < deadline, "agent did not exit:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait.
    pub async fn terminate(&mut self) -> bool {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        self.wait_exit().await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Machines enrolling continuously with one reusable key, each retried (same device, so the
/// same enrolment) on another node after a 503 or a transport error, as the README documents.
pub struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(targets: Arc<Mutex<Vec<String>>>, auth_key: &str, clients: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let tasks = (0..clients)
            .map(|client| {
                let (stop, acknowledged, failures) = (stop.clone(), acknowledged.clone(), failures.clone());
                let (targets, http, auth_key) = (targets.clone(), http.clone(), auth_key.to_string());
                tokio::spawn(async move {
                    let mut device = client * 1_000_000;
                    let mut turn = client as usize;
                    while !stop.load(Ordering::Relaxed) {
                        device += 1;
                        let deadline = Instant::now() + Duration::from_secs(30);
                        loop {
                            turn += 1;
                            let target = {
                                let targets = targets.lock().unwrap();
                                targets[turn % targets.len()].clone()
                            };
                            let url = format!("{target}/api/enrol");
                            // A retry on another node proves again, for that node.
                            let body =
                                match proven_enrol_body(&http, &target, &auth_key, &format!("load-{device}"), device)
                                    .await
                                {
                                    Ok(body) => body,
                                    Err(e) => {
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        if Instant::now() > deadline {
                                            failures
                                                .lock()
                                                .unwrap()
                                                .push(format!("device {device} never enrolled: {e}"));
                                            break;
                                        }
                                        continue;
                                    }
                                };
                            let answer = http.post(&url).json(&body).send().await;
                            let retry = match answer {
                                Ok(r) if r.status() == 200 => {
                                    acknowledged.lock().unwrap().push(device);
                                    break;
                                }
                                Ok(r) if r.status() == 503 => format!("503 from {url}"),
                                Ok(r) => {
                                    let status = r.status();
                                    let text = r.text().await.unwrap_or_default();
                                    failures.lock().unwrap().push(format!("{status} from {url}: {text}"));
                                    break;
                                }
                                Err(e) => format!("{url}: {e}"),
                            };
                            if Instant::now() > deadline {
                                failures.lock().unwrap().push(format!("device {device} never enrolled: {retry}"));
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, acknowledged, failures, tasks }
    }

    pub async fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (acknowledged, failures)
    }
}
