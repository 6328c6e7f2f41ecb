//! Three-node clusters of ztna or etcd on loopback, each node a real process with its data on
//! the same disk: start, kill -9, restart, leader, resident memory.
//!
//! This module must not generate load.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// Which system a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ztna,
    Etcd,
}

impl Kind {
    /// The system a `--system` option names.
    pub fn parse(name: &str) -> anyhow::Result<Kind> {
        match name {
            "ztna" => Ok(Kind::Ztna),
            "etcd" => Ok(Kind::Etcd),
            other => anyhow::bail!("unknown --system {other:?}; must be ztna or etcd"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ztna => "ztna",
            Kind::Etcd => "etcd",
        }
    }
}

/// A running three-node cluster.
pub struct Cluster {
    pub kind: Kind,
    pub dir: PathBuf,
    /// Client URL of each node (`http://127.0.0.1:port`).
    pub urls: Vec<String>,
    /// ztna only: the admin API key and org of the initialised cluster.
    pub api_key: String,
    pub org_id: String,
    /// ztna only: what `GET /api/cluster` is asked with (the bootstrap token, then the API key).
    status_key: String,
    commands: Vec<(PathBuf, Vec<String>)>,
    children: Mutex<Vec<Option<Child>>>,
    http: reqwest::Client,
}

/// The Raft timing a cluster runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Each system's own defaults (ztna: heartbeat 50 ms, election 100–200 ms; etcd: 100 ms,
    /// 1,000–2,000 ms): what a throughput phase runs with.
    Defaults,
    /// The same for both, for failover: heartbeat 20 ms, election timeout 100 ms randomised up
    /// to 200 ms (etcd's `--election-timeout` is the low end of its random range and must be at
    /// least five heartbeats).
    Same,
}

/// Runs `ztna ARGS OUT` (certificates, the bootstrap token); what it printed.
fn ztna_cli(ztna: &Path, args: &[&str], out: &Path) -> anyhow::Result<String> {
    let made = std::process::Command::new(ztna).args(args).arg(out).output()?;
    anyhow::ensure!(made.status.success(), "ztna {args:?}: {}", String::from_utf8_lossy(&made.stderr));
    Ok(String::from_utf8_lossy(&made.stdout).into_owned())
}

impl Cluster {
    /// A fresh ztna cluster with default settings, initialised (org and API key).
    pub async fn start_ztna(ztna: &Path, dir: &Path) -> anyhow::Result<Cluster> {
        Self::start_ztna_timed(ztna, dir, Timing::Defaults).await
    }

    /// [`Cluster::start_ztna`] with the given Raft timing.
    pub async fn start_ztna_timed(ztna: &Path, dir: &Path, timing: Timing) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        // As every ztna cluster: mutual TLS between nodes, a bootstrap token for init.
        let run = |args: &[&str], out: &Path| ztna_cli(ztna, args, out);
        run(&["cluster", "certs", "--nodes", "3", "--out"], &dir.join("tls"))?;
        let token_file = dir.join("bootstrap.token");
        let _ = std::fs::remove_file(&token_file);
        let printed = run(&["cluster", "bootstrap-token", "--out"], &token_file)?;
        let token_line = printed.lines().find(|l| l.starts_with("bootstrap_token_sha256")).context("no token hash")?;
        let token = std::fs::read_to_string(&token_file)?.trim().to_string();
        let mut file = format!("[settings]\ncluster_name = \"bench\"\n{token_line}\n");
        // The load generator is one address standing for up to 256 clients.
        file.push_str("max_connections_per_address = 1024\nmax_connections = 2048\n");
        if timing == Timing::Same {
            file.push_str("heartbeat_interval_ms = 20\nelection_timeout_min_ms = 100\nelection_timeout_max_ms = 200\n");
        }
        let mut urls = Vec::new();
        for id in 1..=3 {
            let (api, raft) = (ztna_ports::free_port()?, ztna_ports::free_port()?);
            file.push_str(&format!(
                "\n[[nodes]]\nid = {id}\napi_addr = \"127.0.0.1:{api}\"\nraft_addr = \"127.0.0.1:{raft}\"\n"
            ));
            urls.push(format!("http://127.0.0.1:{api}"));
        }
        file.push_str("\n[tls]\nca_cert = \"tls/ca.crt\"\ncert = \"tls/node{id}.crt\"\nkey = \"tls/node{id}.key\"\n");
        let cluster_file = dir.join("cluster.toml");
        std::fs::write(&cluster_file, file)?;
        let commands = (1..=3)
            .map(|id| {
                let args = vec![
                    "server".to_string(),
                    "--cluster".into(),
                    cluster_file.display().to_string(),
                    "--id".into(),
                    id.to_string(),
                    "--data-dir".into(),
                    dir.join(format!("n{id}")).display().to_string(),
                ];
                (ztna.to_path_buf(), args)
            })
            .collect();
        let mut cluster = Cluster::new(Kind::Ztna, dir, urls, commands)?;
        cluster.status_key = token.clone();
        cluster.start_all().await?;
        cluster.wait_leader(Duration::from_secs(30)).await.context("ztna elected no leader")?;
        let leader = cluster.leader().await.unwrap_or(0);
        let init: Value = cluster
            .http
            .post(format!("{}/api/cluster/init", cluster.urls[leader]))
            .bearer_auth(&token)
            .json(&json!({ "org_name": "bench" }))
            .send()
            .await?
            .json()
            .await?;
        cluster.api_key = init["api_key"].as_str().context("init gave no api_key")?.to_string();
        cluster.status_key = cluster.api_key.clone();
        cluster.org_id = init["org_id"].as_str().context("init gave no org_id")?.to_string();
        // An org may create 100,000 keys a day and hold 100,000 machines by default; a benchmark
        // creates and enrols millions. The operator raises them, as an operator would.
        let operator = init["operator_key"].as_str().context("init gave no operator_key")?;
        let limits = json!({
            "action": "set_org_limits", "org_id": cluster.org_id,
            "auth_keys_per_day": 1_000_000_000u64, "machines": 1_000_000_000u64,
        });
        let answer = cluster
            .http
            .post(format!("{}/api/org-admin", cluster.urls[leader]))
            .bearer_auth(operator)
            .json(&limits)
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "set_org_limits: {}", answer.text().await.unwrap_or_default());
        cluster.wait_rules_adopted().await?;
        Ok(cluster)
    }

    /// ztna only: waits until every node applies entries by its build's rules, which a new
    /// cluster adopts shortly after it forms (`ztna_state_machine_rules` reaches
    /// `ztna_build_rules` on `/metrics`): measured from then on, as a cluster in service is.
    async fn wait_rules_adopted(&self) -> anyhow::Result<()> {
        let gauge = |text: &str, name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok()))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for url in &self.urls {
            loop {
                let text = match self.http.get(format!("{url}/metrics")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let (applied, built) = (gauge(&text, "ztna_state_machine_rules "), gauge(&text, "ztna_build_rules "));
                if applied.is_some() && applied == built {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{url} did not adopt its build's rules: {applied:?} of {built:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// A fresh etcd cluster with default settings (fsync on) but for `timing`. Like every ztna
    /// cluster, its nodes talk mutual TLS to each other (certificates from `ztna cluster certs`,
    /// hence `ztna`); clients talk plain HTTP/2 to both systems.
    pub async fn start_etcd(etcd: &Path, ztna: &Path, dir: &Path, timing: Timing) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let tls = dir.join("tls");
        ztna_cli(ztna, &["cluster", "certs", "--nodes", "3", "--out"], &tls)?;
        let ports: Vec<(u16, u16)> =
            (0..3).map(|_| Ok((ztna_ports::free_port()?, ztna_ports::free_port()?))).collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{}=https://127.0.0.1:{peer}", i + 1)).collect();
        let mut urls = Vec::new();
        let mut commands = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let mut args = vec![
                format!("--name=e{}", i + 1),
                format!("--data-dir={}", dir.join(format!("e{}", i + 1)).display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-token=bench".into(),
                "--initial-cluster-state=new".into(),
                format!("--peer-trusted-ca-file={}", tls.join("ca.crt").display()),
                format!("--peer-cert-file={}", tls.join(format!("node{}.crt", i + 1)).display()),
                format!("--peer-key-file={}", tls.join(format!("node{}.key", i + 1)).display()),
                "--peer-client-cert-auth".into(),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ];
            if timing == Timing::Same {
                args.extend(["--heartbeat-interval=20".to_string(), "--election-timeout=100".to_string()]);
            }
            urls.push(url);
            commands.push((etcd.to_path_buf(), args));
        }
        let cluster = Cluster::new(Kind::Etcd, dir, urls, commands)?;
        cluster.start_all().await?;
        cluster.wait_leader(Duration::from_secs(30)).await.context("etcd elected no leader")?;
        Ok(cluster)
    }

    fn new(kind: Kind, dir: &Path, urls: Vec<String>, commands: Vec<(PathBuf, Vec<String>)>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
        Ok(Cluster {
            kind,
            dir: dir.to_path_buf(),
            urls,
            api_key: String::new(),
            org_id: String::new(),
            status_key: String::new(),
            children: Mutex::new((0..commands.len()).map(|_| None).collect()),
            commands,
            http,
        })
    }

    pub fn log_path(&self, node: usize) -> PathBuf {
        self.dir.join(format!("{}{}.log", self.kind.name(), node + 1))
    }

    pub fn data_dir(&self, node: usize) -> PathBuf {
        match self.kind {
            Kind::Ztna => self.dir.join(format!("n{}", node + 1)),
            Kind::Etcd => self.dir.join(format!("e{}", node + 1)),
        }
    }

    async fn start_all(&self) -> anyhow::Result<()> {
        for node in 0..self.urls.len() {
            self.start(node).await?;
        }
        Ok(())
    }

    /// Starts node `node` (0-based) with its data.
    pub async fn start(&self, node: usize) -> anyhow::Result<()> {
        let mut children = self.children.lock().await;
        if children[node].is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(node))?;
        let (program, args) = &self.commands[node];
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        children[node] = Some(child);
        Ok(())
    }

    /// `kill -9`; returns when the process is gone.
    pub async fn kill(&self, node: usize) {
        let child = self.children.lock().await[node].take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub async fn pid(&self, node: usize) -> Option<u32> {
        self.children.lock().await[node].as_ref().and_then(Child::id)
    }

    /// CPU seconds (user + system) node `node`'s process has used so far.
    pub async fn cpu_seconds(&self, node: usize) -> Option<f64> {
        let pid = self.pid(node).await?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks / per_second.max(1.0))
    }

    /// Resident memory of node `node` in bytes.
    pub async fn rss_bytes(&self, node: usize) -> Option<u64> {
        let pid = self.pid(node).await?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// SIGTERM every node and wait.
    pub async fn stop(&self) {
        let mut children = self.children.lock().await;
        for child in children.iter_mut().filter_map(Option::take) {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            let mut child = child;
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    /// The leader's index, from the nodes that answer.
    pub async fn leader(&self) -> Option<usize> {
        for (i, url) in self.urls.iter().enumerate() {
            match self.kind {
                Kind::Ztna => {
                    let asked = self.http.get(format!("{url}/api/cluster")).bearer_auth(&self.status_key).send().await;
                    let Ok(r) = asked else { continue };
                    let Ok(v) = r.json::<Value>().await else { continue };
                    if v["role"] == "leader" {
                        return Some(i);
                    }
                }
                Kind::Etcd => {
                    let Ok(r) = self.http.post(format!("{url}/v3/maintenance/status")).json(&json!({})).send().await
                    else {
                        continue;
                    };
                    let Ok(v) = r.json::<Value>().await else { continue };
                    if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// ztna only: this node's last applied log index.
    pub async fn applied_index(&self, node: usize) -> Option<u64> {
        let r = self
            .http
            .get(format!("{}/api/cluster", self.urls[node]))
            .bearer_auth(&self.status_key)
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()?["last_applied_index"].as_u64()
    }

    /// ztna only: `/readyz` answers 200.
    pub async fn ready(&self, node: usize) -> bool {
        match self.http.get(format!("{}/readyz", self.urls[node])).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}

/// Bytes under `path` (what `du -sb` says).
pub fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += disk_usage(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Fails unless `program` runs.
pub fn require(program: &Path, hint: &str) -> anyhow::Result<()> {
    if !program.exists() {
        bail!("{} not found; {hint}", program.display());
    }
    Ok(())
}
