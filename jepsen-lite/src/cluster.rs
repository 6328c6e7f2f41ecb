//! The three real `ztna server` processes of a run: start, kill, stop, pause, clock jumps, and
//! finding the leader.
//!
//! Each node has its own cluster file (`n<i>.toml`, the same nodes and settings except for the
//! test-only clock offset and dial overrides), its data directory under the run folder and its
//! log `n<i>.log`. Like every cluster, the nodes talk mutual TLS (certificates made by `ztna
//! cluster certs` under `tls/`) and initialise with a bootstrap token (`ztna cluster
//! bootstrap-token`). This module must not know about workloads or checkers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::api::Api;
use crate::hosts::Hosts;

/// How long a request may take before the client counts it as unknown: longer than the
/// server's own 5 s request timeout, so a node without a leader answers 503 first.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(7);

pub struct Cluster {
    pub hosts: Hosts,
    pub api: Api,
    pub ids: Vec<u64>,
    dir: PathBuf,
    ztna: PathBuf,
    /// Environment for every node (the fault switches of the self-test).
    env: Vec<(String, String)>,
    procs: Mutex<BTreeMap<u64, Proc>>,
    offsets: std::sync::Mutex<BTreeMap<u64, i64>>,
    /// `[settings]` lines replacing the defaults (the WAN test's timing profile).
    timing: String,
    /// The bootstrap token's SHA-256 (in every node's settings) and the token (for init).
    token_sha256: String,
    pub bootstrap_token: String,
    /// `snapshot_every_commands` and the log kept behind a snapshot, of every node
    /// (`set_snapshots`).
    snapshot_every: u64,
    log_kept: u64,
    /// Each node's data directory on lazyfs, when the run uses it (`mount_lazyfs`).
    lazy: std::sync::Mutex<Vec<crate::lazyfs::LazyMount>>,
}

#[derive(Default)]
struct Proc {
    child: Option<Child>,
    paused: bool,
    /// How its last process ended on its own (not killed or stopped by the harness).
    exited: Option<String>,
}

/// What `GET /api/cluster` says, reduced to what the harness needs.
#[derive(Debug, Clone)]
pub struct View {
    pub node: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
}

impl Cluster {
    pub async fn new(hosts: Hosts, dir: &Path, ztna: &Path, env: Vec<(String, String)>) -> anyhow::Result<Cluster> {
        Self::with_timing(hosts, dir, ztna, env, String::new()).await
    }

    /// A cluster whose nodes get `timing` (`key = value` lines of `[settings]`) as well.
    pub async fn with_timing(
        hosts: Hosts,
        dir: &Path,
        ztna: &Path,
        env: Vec<(String, String)>,
        timing: String,
    ) -> anyhow::Result<Cluster> {
        let ids: Vec<u64> = vec![1, 2, 3];
        let urls = ids.iter().map(|&id| format!("http://{}", hosts.addrs(id).api_addr)).collect();
        let api = Api::new(urls, CLIENT_TIMEOUT)?;
        let raft_hosts: Vec<String> = ids
            .iter()
            .map(|&id| {
                let addr = hosts.addrs(id).raft_addr;
                addr.rsplit_once(':').map_or(addr.clone(), |(host, _)| host.to_string())
            })
            .collect();
        let certs = std::process::Command::new(ztna)
            .args(["cluster", "certs", "--nodes", "3", "--hosts", &raft_hosts.join(","), "--out"])
            .arg(dir.join("tls"))
            .output()
            .context("run ztna cluster certs")?;
        anyhow::ensure!(certs.status.success(), "ztna cluster certs: {}", String::from_utf8_lossy(&certs.stderr));
        let token_file = dir.join("bootstrap.token");
        let made = std::process::Command::new(ztna)
            .args(["cluster", "bootstrap-token", "--out"])
            .arg(&token_file)
            .output()
            .context("run ztna cluster bootstrap-token")?;
        let printed = String::from_utf8_lossy(&made.stdout);
        let token_sha256 = printed
            .lines()
            .find_map(|l| l.strip_prefix("bootstrap_token_sha256 = \""))
            .and_then(|l| l.strip_suffix('"'))
            .context("ztna cluster bootstrap-token printed no hash")?
            .to_string();
        let bootstrap_token = std::fs::read_to_string(&token_file)?.trim().to_string();
        let cluster = Cluster {
            hosts,
            api,
            ids: ids.clone(),
            dir: dir.to_path_buf(),
            ztna: ztna.to_path_buf(),
            env,
            procs: Mutex::new(ids.iter().map(|&id| (id, Proc::default())).collect()),
            offsets: std::sync::Mutex::new(BTreeMap::new()),
            timing,
            token_sha256,
            bootstrap_token,
            snapshot_every: 3000,
            log_kept: 1000,
            lazy: std::sync::Mutex::new(Vec::new()),
        };
        for &id in &ids {
            cluster.write_config(id)?;
        }
        Ok(cluster)
    }

    /// Every node builds a snapshot every `commands` commands and keeps `log_kept` entries
    /// behind it (before the nodes first start).
    pub fn set_snapshots(&mut self, commands: u64, log_kept: u64) -> anyhow::Result<()> {
        self.snapshot_every = commands;
        self.log_kept = log_kept;
        for &id in &self.ids {
            self.write_config(id)?;
        }
        Ok(())
    }

    fn config_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("n{id}.toml"))
    }

    /// The `ztna` binary the nodes run (the agents run it too).
    pub fn ztna(&self) -> &Path {
        &self.ztna
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("n{id}.log"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn write_config(&self, id: u64) -> anyhow::Result<()> {
        let offset = self.offsets.lock().unwrap_or_else(|e| e.into_inner()).get(&id).copied().unwrap_or(0);
        let mut text = String::from("# Written by jepsen-lite for one node; TEST ONLY settings below.\n[settings]\n");
        text.push_str("cluster_name = \"jepsen-lite\"\n");
        // Keys that expire during the run; snapshots and log purges happen during the run.
        text.push_str("test_only_min_expiry_secs = 1\n");
        // The agents workload's ephemeral machines go after this much silence.
        let timeout = crate::workload::agents::INACTIVITY_TIMEOUT_MS;
        text.push_str(&format!("ephemeral_inactivity_timeout_ms = {timeout}\n"));
        text.push_str(&format!("snapshot_every_commands = {}\n", self.snapshot_every));
        text.push_str(&format!("test_only_log_kept_after_snapshot = {}\n", self.log_kept));
        // Every client is one address: a run that lost its state (every call refused) must still
        // get definite 401s for its final reads, not 429s.
        text.push_str("auth_failures_per_minute = 1000000\n");
        // …and holds up to 640 requests in flight (the agents come through proxies too).
        text.push_str("max_connections_per_address = 100000\n");
        text.push_str("max_connections = 4096\n");
        text.push_str(&format!("test_only_clock_offset_ms = {offset}\n"));
        text.push_str(&format!("bootstrap_token_sha256 = \"{}\"\n", self.token_sha256));
        text.push_str(&self.timing);
        text.push_str(&self.hosts.settings_for(id));
        for &n in &self.ids {
            let a = self.hosts.addrs(n);
            text.push_str(&format!(
                "\n[[nodes]]\nid = {n}\napi_addr = \"{}\"\nraft_addr = \"{}\"\n",
                a.api_addr, a.raft_addr
            ));
        }
        text.push_str("\n[tls]\nca_cert = \"tls/ca.crt\"\ncert = \"tls/node{id}.crt\"\nkey = \"tls/node{id}.key\"\n");
        std::fs::write(self.config_path(id), text).context("write node config")
    }

    /// Starts node `id` with its data (a no-op when it runs). A process that ended on its own
    /// is noted (`exited`) and started again.
    pub async fn start(&self, id: u64) -> anyhow::Result<()> {
        let mut procs = self.procs.lock().await;
        let proc = procs.entry(id).or_default();
        if let Some(child) = &mut proc.child {
            match child.try_wait() {
                Ok(Some(status)) => {
                    proc.exited = Some(format!("{status}"));
                    proc.child = None;
                }
                _ => return Ok(()),
            }
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id))?;
        let prefix = self.hosts.exec_prefix(id);
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.ztna);
                c
            }
            None => Command::new(&self.ztna),
        };
        command
            .arg("server")
            .arg("--cluster")
            .arg(self.config_path(id))
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir().join(format!("n{id}")))
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        proc.child = Some(command.spawn().with_context(|| format!("start node {id}"))?);
        proc.paused = false;
        Ok(())
    }

    fn signal(child: &Child, signal: i32) {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we own; errors (already exited) are harmless here.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Node `id`'s process, to kill or stop; one that already ended on its own is noted.
    async fn take_child(&self, id: u64) -> Option<Child> {
        let mut procs = self.procs.lock().await;
        let proc = procs.get_mut(&id)?;
        let mut child = proc.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            proc.exited = Some(format!("{status}"));
        }
        Some(child)
    }

    /// `kill -9` node `id` (resuming it first would be pointless: SIGKILL works on a stopped
    /// process).
    pub async fn kill(&self, id: u64) {
        let child = self.take_child(id).await;
        if let Some(mut child) = child {
            Self::signal(&child, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(&self, id: u64) {
        let child = self.take_child(id).await;
        if let Some(mut child) = child {
            Self::signal(&child, libc::SIGCONT);
            Self::signal(&child, libc::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                Self::signal(&child, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
    }

    /// How node `id`'s process ended on its own, if it did (now or before its last start).
    pub async fn exited(&self, id: u64) -> Option<String> {
        let mut procs = self.procs.lock().await;
        let proc = procs.get_mut(&id)?;
        match proc.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(format!("{status}")),
            _ => proc.exited.clone(),
        }
    }

    /// The last line of node `id`'s log that reports an error, shortened.
    pub fn last_error(&self, id: u64) -> Option<String> {
        let log = std::fs::read_to_string(self.log_path(id)).ok()?;
        let line = log.lines().rev().find(|l| l.contains("ERROR") || l.starts_with("error:"))?;
        Some(line.chars().take(400).collect())
    }

    pub async fn pause(&self, id: u64) {
        if let Some(p) = self.procs.lock().await.get_mut(&id) {
            if let Some(child) = &p.child {
                Self::signal(child, libc::SIGSTOP);
                p.paused = true;
            }
        }
    }

    pub async fn resume(&self, id: u64) {
        if let Some(p) = self.procs.lock().await.get_mut(&id) {
            if let Some(child) = &p.child {
                Self::signal(child, libc::SIGCONT);
            }
            p.paused = false;
        }
    }

    /// Resumes paused nodes and starts stopped ones.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        for &id in &self.ids {
            self.resume(id).await;
            self.start(id).await?;
        }
        Ok(())
    }

    /// Makes node `id`'s clock jump by `offset_ms` from the true time: rewrites its file and
    /// sends SIGHUP, on which `ztna server` reloads `test_only_clock_offset_ms`.
    /// An offset it already has sends nothing (the heal resets every clock, and a SIGHUP that
    /// needs no answer is one fewer to race a node's start).
    pub async fn set_clock_offset(&self, id: u64, offset_ms: i64) -> anyhow::Result<()> {
        let before = self.offsets.lock().unwrap_or_else(|e| e.into_inner()).insert(id, offset_ms);
        if before.unwrap_or(0) == offset_ms {
            return Ok(());
        }
        self.write_config(id)?;
        if let Some(child) = self.procs.lock().await.get(&id).and_then(|p| p.child.as_ref()) {
            Self::signal(child, libc::SIGHUP);
        }
        Ok(())
    }

    /// Every node's view, from the nodes that answer (`GET /api/cluster`, with the operator
    /// key, or the bootstrap token before the cluster is initialised).
    pub async fn views(&self) -> Vec<View> {
        let key = if self.api.operator_key.is_empty() { &self.bootstrap_token } else { &self.api.operator_key };
        let asks = self.ids.iter().map(|&id| async move {
            let answer = self.api.get_as(id, "/api/cluster", key).await;
            (id, (answer.kind == crate::history::OpType::Ok).then_some(answer.body))
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(id, v)| v.map(|v| (id, v)))
            .map(|(id, v): (u64, Value)| View {
                node: id,
                role: v["role"].as_str().unwrap_or_default().to_string(),
                term: v["term"].as_u64().unwrap_or(0),
                leader: v["leader"].as_u64(),
                last_log_index: v["last_log_index"].as_u64(),
                last_applied_index: v["last_applied_index"].as_u64(),
            })
            .collect()
    }

    /// The node that says it leads, with the highest term.
    pub async fn leader(&self) -> Option<u64> {
        self.views().await.into_iter().filter(|v| v.role == "leader").max_by_key(|v| v.term).map(|v| v.node)
    }

    /// The term of the node that says it leads (the highest, if several do).
    pub async fn leader_term(&self) -> Option<u64> {
        self.views().await.into_iter().filter(|v| v.role == "leader").map(|v| v.term).max()
    }

    /// Waits until exactly one node leads and every answering node agrees on it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let views = self.views().await;
            let leaders: Vec<&View> = views.iter().filter(|v| v.role == "leader").collect();
            if let [leader] = leaders.as_slice() {
                if views.len() == self.ids.len() && views.iter().all(|v| v.leader == Some(leader.node)) {
                    return Some(leader.node);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Stops every node, resuming paused ones first (end of run).
    pub async fn stop_all(&self) {
        for &id in &self.ids {
            self.resume(id).await;
            self.stop(id).await;
        }
    }

    /// Puts every node's data directory on lazyfs (before the nodes first start), over a
    /// backing directory beside it.
    pub fn mount_lazyfs(&self) -> anyhow::Result<()> {
        let mut mounts = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        for &id in &self.ids {
            let dir = self.data_dir().join(format!("n{id}"));
            let backing = self.data_dir().join(format!("n{id}.backing"));
            mounts.push(
                crate::lazyfs::LazyMount::mount(&dir, &backing)
                    .with_context(|| format!("lazyfs on {}", dir.display()))?,
            );
        }
        Ok(())
    }

    /// Whether the data directories are on lazyfs.
    pub fn on_lazyfs(&self) -> bool {
        !self.lazy.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// The power cut's effect on the disks (every node must be dead): unsynced bytes dropped,
    /// if the data directories are on lazyfs.
    /// `chance` picks how much of each disk's unsynced metadata survives (see
    /// `LazyMount::power_cut`).
    pub fn power_cut(&self, chance: u64) -> Option<u64> {
        let mounts = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        (!mounts.is_empty())
            .then(|| mounts.iter().enumerate().map(|(i, m)| m.power_cut(chance.rotate_left(i as u32 * 8))).sum())
    }

    /// A power cut of node `id`'s host alone (the node must be dead): the unsynced bytes it
    /// dropped, if its data directory is on lazyfs.
    pub fn power_cut_node(&self, id: u64, chance: u64) -> Option<u64> {
        let mounts = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        let at = self.ids.iter().position(|&n| n == id)?;
        mounts.get(at).map(|m| m.power_cut(chance))
    }

    /// Unmounts lazyfs (after the nodes stopped).
    pub fn unmount_lazyfs(&self) {
        self.lazy.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
