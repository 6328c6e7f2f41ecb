//! `ztna cluster up`: runs every node of a cluster file on this machine, in the foreground.
//!
//! It starts one `ztna server` child per node (data in `<data-dir>/node<id>`, logs in
//! `<data-dir>/node<id>.log`), waits until each knows a leader, initialises a new cluster once
//! (writing `<data-dir>/cluster.env` and `<data-dir>/operator.key`, both mode 0600), prints how to
//! use it, and on Ctrl-C or SIGTERM stops every node with SIGTERM. Run again on the same data
//! directory, it brings back the same cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{wait_for_stop_signal, write_private, CliError};
use crate::client::Client;
use crate::config::ClusterFile;

/// Starts the nodes, waits, stops them.
pub async fn up(cluster_path: &Path, data_dir: &Path, ephemeral_timeout: Option<String>) -> Result<(), CliError> {
    let cluster = ClusterFile::load(cluster_path)?;
    if let Some(timeout) = &ephemeral_timeout {
        crate::config::parse_duration_ms(timeout)?;
    }
    let io = |what: &str, e: std::io::Error| CliError::Io(format!("{what}: {e}"));
    std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create the data directory", e))?;
    let exe = std::env::current_exe().map_err(|e| io("cannot find the ztna executable", e))?;
    let mut nodes = Nodes(Vec::new());
    for node in &cluster.nodes {
        let log_path = data_dir.join(format!("node{}.log", node.id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io(&format!("cannot open {}", log_path.display()), e))?;
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .arg("--cluster")
            .arg(cluster_path)
            .arg("--id")
            .arg(node.id.to_string())
            .arg("--data-dir")
            .arg(data_dir.join(format!("node{}", node.id)))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(timeout) = &ephemeral_timeout {
            command.arg("--ephemeral-inactivity-timeout").arg(timeout);
        }
        let child = command.spawn().map_err(|e| io("cannot start ztna server", e))?;
        nodes.0.push((node.id, log_path, child));
    }

    let urls: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api_addr)).collect();
    let servers = urls.join(",");
    let client = Client::new(&servers, None)?;
    nodes.wait_ready(&client).await?;

    let env_file = data_dir.join("cluster.env");
    let key_file = data_dir.join("operator.key");
    if std::fs::metadata(&env_file).map_or(true, |m| m.len() == 0) {
        let answer = client.post("/api/cluster/init", &json!({ "org_name": "default" })).await?;
        let text = format!(
            "ZTNA_SERVER={servers}\nQZ_API_KEY={}\nZTNA_ORG={}\n",
            answer["api_key"].as_str().unwrap_or_default(),
            answer["org_id"].as_str().unwrap_or_default()
        );
        write_private(&env_file, &text)?;
        write_private(&key_file, &format!("{}\n", answer["operator_key"].as_str().unwrap_or_default()))?;
    }
    let env = std::fs::read_to_string(&env_file).map_err(|e| io("cannot read cluster.env", e))?;
    let value =
        |name: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or_default().to_string();
    let bin_dir = exe.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default();
    println!();
    println!("ztna cluster is up (data in {0}, logs in {0}/node*.log):", data_dir.display());
    for (node, url) in cluster.nodes.iter().zip(&urls) {
        println!("  node {}  {url}", node.id);
    }
    println!("  org id         {}", value("ZTNA_ORG"));
    println!("  admin API key  {}", value("QZ_API_KEY"));
    println!("  operator key   in {} (readable only by you)", key_file.display());
    println!();
    println!("In another shell:");
    println!("  export PATH=\"{bin_dir}:$PATH\"    # puts ztna on your PATH");
    println!("  set -a; . {}; set +a", env_file.display());
    println!("  ztna auth-key create --reusable --expiry 1h --tags tag:laptop,tag:eng --description \"Q2 laptop fleet rollout\"");
    println!("  ztna cluster status");
    println!();
    println!("Press Ctrl-C to stop all {} nodes.", cluster.nodes.len());

    tokio::select! {
        () = wait_for_stop_signal() => {}
        exited = nodes.any_exit() => println!("node {exited} exited; see its log. Stopping the others."),
    }
    println!();
    println!("==> stopping the cluster");
    nodes.stop().await;
    Ok(())
}

/// The running nodes: (id, log, process). Dropping it kills what is still running.
struct Nodes(Vec<(u64, PathBuf, Child)>);

impl Nodes {
    async fn wait_ready(&mut self, client: &Client) -> Result<(), CliError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ready = 0;
            for server in client.servers() {
                if client.get_from(server, "/readyz").await.is_ok() {
                    ready += 1;
                }
            }
            if ready == self.0.len() {
                return Ok(());
            }
            for (id, log, child) in &mut self.0 {
                if let Ok(Some(status)) = child.try_wait() {
                    let tail = std::fs::read_to_string(&*log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                    return Err(CliError::Io(format!(
                        "node {id} exited ({status}); the end of {}:\n{}",
                        log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(CliError::Io("the nodes did not elect a leader within 60 s; see their logs".into()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Resolves with the id of the first node that exits on its own.
    async fn any_exit(&mut self) -> u64 {
        loop {
            for (id, _, child) in &mut self.0 {
                if let Ok(Some(_)) = child.try_wait() {
                    return *id;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGTERM to every node, then wait up to 10 s each before SIGKILL.
    async fn stop(&mut self) {
        for (_, _, child) in &self.0 {
            // Ctrl-C in a terminal has already reached the nodes (same process group); a SIGTERM
            // to this process has not.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for (_, _, child) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The default cluster file and data directory, relative to the working directory.
pub fn defaults() -> (PathBuf, PathBuf) {
    (PathBuf::from("cluster/local.toml"), PathBuf::from("data"))
}
