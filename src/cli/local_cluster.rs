//! `ztna cluster up`: runs every node of a cluster file on this machine, in the foreground.
//!
//! It starts one `ztna server` child per node (data in `<data-dir>/node<id>`, logs in
//! `<data-dir>/node<id>.log`, process id in `<data-dir>/node<id>.pid`), waits until each knows a
//! leader, initialises a new cluster once (writing `<data-dir>/cluster.env` and
//! `<data-dir>/operator.key`, both mode 0600), prints how to use it, and on Ctrl-C or SIGTERM
//! stops every node with SIGTERM. Run again on the same data directory, it brings back the same
//! cluster.
//!
//! The cluster is secure from its first start: `[tls]` in the cluster file names where the
//! certificates go, and `cluster up` makes them there when they are missing (a cluster CA and a
//! certificate per node, `ztna cluster certs`), so the nodes talk mutual TLS; it makes the
//! bootstrap token (`<data-dir>/bootstrap.token`, mode 0600), gives the nodes its SHA-256 and
//! initialises the cluster with it.
//!
//! A node that dies (killed, crashed) is what this product is built to survive, so the others
//! keep running: the supervisor says which node exited and how, and starts it again with its
//! data after a short delay (`--restart-delay`, default 5 s; `--no-restart` leaves it down). A
//! node that refuses to start (exit status 3: wrong data directory, removed from the cluster)
//! or keeps dying within seconds of starting is not restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{wait_for_stop_signal, write_private, CliError};
use crate::client::Client;
use crate::config::ClusterFile;

/// How `ztna cluster up` runs.
pub struct UpOptions {
    pub cluster: PathBuf,
    pub data_dir: PathBuf,
    /// Passed to every node.
    pub ephemeral_timeout: Option<String>,
    /// Start a node that died again after this long; `None`: leave it down.
    pub restart_after: Option<Duration>,
}

fn io(what: &str, e: std::io::Error) -> CliError {
    CliError::Io(format!("{what}: {e}"))
}

/// Starts the nodes, keeps them running, stops them.
pub async fn up(options: UpOptions) -> Result<(), CliError> {
    let UpOptions { cluster: cluster_path, data_dir, ephemeral_timeout, restart_after } = options;
    let data_dir = data_dir.as_path();
    let cluster = ClusterFile::load(&cluster_path)?;
    if let Some(timeout) = &ephemeral_timeout {
        crate::config::parse_duration_ms(timeout)?;
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create the data directory", e))?;
    let exe = std::env::current_exe().map_err(|e| io("cannot find the ztna executable", e))?;
    let ca_cert = make_missing_certs(&cluster)?;
    let env_file = data_dir.join("cluster.env");
    let token_file = data_dir.join("bootstrap.token");
    let initialised = std::fs::metadata(&env_file).is_ok_and(|m| m.len() > 0);
    if !initialised && !token_file.exists() {
        super::make_bootstrap_token(&token_file)?;
    }
    let token = std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string());
    let token_hash = token.as_deref().map(|t| hex::encode(crate::secret::hash(t)));
    let mut nodes = Nodes(Vec::new());
    for node in &cluster.nodes {
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .arg("--cluster")
            .arg(&cluster_path)
            .arg("--id")
            .arg(node.id.to_string())
            .arg("--data-dir")
            .arg(data_dir.join(format!("node{}", node.id)))
            .stdout(Stdio::null());
        if let Some(timeout) = &ephemeral_timeout {
            command.arg("--ephemeral-inactivity-timeout").arg(timeout);
        }
        if let Some(hash) = &token_hash {
            command.arg("--bootstrap-token-sha256").arg(hash);
        }
        let mut supervised = Supervised {
            id: node.id,
            log: data_dir.join(format!("node{}.log", node.id)),
            pid_file: data_dir.join(format!("node{}.pid", node.id)),
            command,
            child: None,
            started: Instant::now(),
            quick_deaths: 0,
            restart_at: None,
        };
        supervised.start()?;
        nodes.0.push(supervised);
    }

    let scheme = if ca_cert.is_some() { "https" } else { "http" };
    if let Some(ca) = &ca_cert {
        // This process's clients (and the printed instructions) trust the cluster CA.
        std::env::set_var(crate::client::CA_CERT_ENV, ca);
    }
    let urls: Vec<String> = cluster.nodes.iter().map(|n| format!("{scheme}://{}", n.api_addr)).collect();
    let servers = urls.join(",");
    let client = Client::new(&servers, None)?.with_waits(Duration::from_secs(3), Duration::from_secs(20));
    nodes.wait_ready(&client).await?;

    let key_file = data_dir.join("operator.key");
    if !initialised {
        let token = token.ok_or_else(|| CliError::Io(format!("cannot read {}", token_file.display())))?;
        let initialiser =
            Client::new(&servers, Some(token))?.with_waits(Duration::from_secs(3), Duration::from_secs(20));
        let body = json!({ "org_name": "default", "request_id": super::request_id() });
        let answer = initialiser.post_sticky("/api/cluster/init", &body).await?;
        let mut text = format!(
            "ZTNA_SERVER={servers}\nQZ_API_KEY={}\nZTNA_ORG={}\n",
            answer["api_key"].as_str().unwrap_or_default(),
            answer["org_id"].as_str().unwrap_or_default()
        );
        if let Some(ca) = &ca_cert {
            text.push_str(&format!("ZTNA_CA_CERT={}\n", ca.display()));
        }
        write_private(&env_file, &text)?;
        write_private(&key_file, &format!("{}\n", answer["operator_key"].as_str().unwrap_or_default()))?;
        // Its work is done: a cluster initialises once.
        let _ = std::fs::remove_file(&token_file);
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
    if let Some(url) = urls.first() {
        println!("  web console    {url}/console   (sign in with the admin API key)");
    }
    println!();
    println!("In another shell:");
    println!("  export PATH=\"{bin_dir}:$PATH\"    # puts ztna on your PATH");
    println!("  set -a; . {}; set +a", env_file.display());
    println!("  ztna auth-key create --reusable --expiry 1h --tags tag:laptop,tag:eng --description \"Q2 laptop fleet rollout\"");
    println!("  ztna cluster status");
    println!();
    match restart_after {
        Some(delay) => println!("A node that dies is started again after {delay:?}, with its data."),
        None => println!("A node that dies stays down (--no-restart); the others keep serving."),
    }
    println!("Press Ctrl-C to stop all {} nodes.", cluster.nodes.len());

    tokio::select! {
        () = wait_for_stop_signal() => {}
        () = nodes.supervise(restart_after) => {}
    }
    println!();
    println!("==> stopping the cluster");
    nodes.stop().await;
    Ok(())
}

/// Makes the certificates the cluster file's `[tls]` names when they are missing, in the layout
/// `ztna cluster certs` writes (`ca.crt`, `node<id>.crt`/`.key`, `api<id>.crt`/`.key` in one
/// directory). Answers the CA clients must trust when the API is HTTPS.
fn make_missing_certs(cluster: &ClusterFile) -> Result<Option<PathBuf>, CliError> {
    let Some(first) = cluster.nodes.first() else { return Ok(None) };
    let paths_of =
        |id| crate::config::NodeConfig::new(id, PathBuf::new(), cluster.clone()).ok().and_then(|c| c.tls_paths());
    let Some(paths) = paths_of(first.id) else { return Ok(None) };
    let dir = paths.ca_cert.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut missing = !paths.ca_cert.exists();
    for node in &cluster.nodes {
        let Some(p) = paths_of(node.id) else { continue };
        let expected = (dir.join(format!("node{}.crt", node.id)), dir.join(format!("node{}.key", node.id)));
        if (p.cert.clone(), p.key.clone()) != expected {
            if !p.cert.exists() {
                return Err(CliError::Io(format!(
                    "{} is missing and not where `ztna cluster certs` would make it: make the certificates yourself",
                    p.cert.display()
                )));
            }
            continue;
        }
        missing |= !p.cert.exists() || p.api.as_ref().is_some_and(|(cert, _)| !cert.exists());
    }
    if missing {
        let max_id = cluster.nodes.iter().map(|n| n.id).max().unwrap_or(1);
        let written = crate::tls::make_certs(&dir, max_id, &[], 825)?;
        println!("==> made {} TLS files in {} (a cluster CA and a certificate per node)", written.len(), dir.display());
    }
    let https = paths.api.is_some();
    Ok(https.then(|| std::fs::canonicalize(&paths.ca_cert).unwrap_or(paths.ca_cert)))
}

/// One node's process and how to start it again.
struct Supervised {
    id: u64,
    log: PathBuf,
    pid_file: PathBuf,
    command: Command,
    child: Option<Child>,
    started: Instant,
    /// Deaths in a row within [`QUICK_DEATH`] of starting.
    quick_deaths: u32,
    /// When to start it again, once it died.
    restart_at: Option<Instant>,
}

/// A node that dies this soon after starting, [`GIVE_UP_AFTER`] times in a row, is left down.
const QUICK_DEATH: Duration = Duration::from_secs(10);
const GIVE_UP_AFTER: u32 = 3;

impl Supervised {
    fn start(&mut self) -> Result<(), CliError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| io(&format!("cannot open {}", self.log.display()), e))?;
        self.command.stderr(log);
        let child = self.command.spawn().map_err(|e| io("cannot start ztna server", e))?;
        std::fs::write(&self.pid_file, format!("{}\n", child.id()))
            .map_err(|e| io(&format!("cannot write {}", self.pid_file.display()), e))?;
        self.child = Some(child);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    /// How the node exited, if it did since the last look.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        let _ = std::fs::remove_file(&self.pid_file);
        Some(status)
    }
}

/// How a process ended, in words.
fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            return format!("was killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited".into(),
    }
}

/// The running nodes. Dropping it kills what is still running.
struct Nodes(Vec<Supervised>);

impl Nodes {
    /// Watches the nodes until stopped: says when one dies and starts it again after
    /// `restart_after` (if given), unless it refused to start or keeps dying at once.
    async fn supervise(&mut self, restart_after: Option<Duration>) {
        loop {
            for node in &mut self.0 {
                if let Some(status) = node.exited() {
                    let quick = node.started.elapsed() < QUICK_DEATH;
                    node.quick_deaths = if quick { node.quick_deaths + 1 } else { 0 };
                    let how = describe_exit(status);
                    let left = "the other nodes keep serving";
                    let log = node.log.display();
                    if status.success() {
                        // Stopped cleanly (SIGTERM, or Ctrl-C reaching every process): on purpose.
                        println!("node {} stopped; not restarting it", node.id);
                    } else if status.code() == Some(i32::from(super::EXIT_REFUSED)) {
                        println!("node {} {how}: it refused to start (see {log}); not restarting it; {left}", node.id);
                    } else if node.quick_deaths >= GIVE_UP_AFTER {
                        println!("node {} {how}, {GIVE_UP_AFTER} times within seconds of starting (see {log}); not restarting it; {left}", node.id);
                    } else if let Some(delay) = restart_after {
                        println!("node {} {how}; {left}; starting it again in {delay:?} (see {log})", node.id);
                        node.restart_at = Some(Instant::now() + delay);
                    } else {
                        println!("node {} {how}; {left} (see {log})", node.id);
                    }
                }
                if node.restart_at.is_some_and(|at| Instant::now() >= at) {
                    match node.start() {
                        Ok(()) => println!("node {} started again with its data", node.id),
                        Err(e) => {
                            println!("node {}: {e}; not restarting it", node.id);
                            node.restart_at = None;
                        }
                    }
                }
            }
            if self.0.iter().all(|n| n.child.is_none() && n.restart_at.is_none()) {
                println!("every node is down and none will be started again");
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

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
            for node in &mut self.0 {
                if let Some(status) = node.exited() {
                    let tail = std::fs::read_to_string(&node.log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                    return Err(CliError::Io(format!(
                        "node {} {}; the end of {}:\n{}",
                        node.id,
                        describe_exit(status),
                        node.log.display(),
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

    /// SIGTERM to every node, then wait up to 10 s each before SIGKILL.
    async fn stop(&mut self) {
        for child in self.0.iter().filter_map(|n| n.child.as_ref()) {
            // Ctrl-C in a terminal has already reached the nodes (same process group); a SIGTERM
            // to this process has not.
            // SAFETY: a plain signal to a child process of ours that has not been reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for node in &mut self.0 {
            if let Some(child) = &mut node.child {
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(&node.pid_file);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.0 {
            if let Some(child) = &mut node.child {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(&node.pid_file);
        }
    }
}

/// The default cluster file and data directory, relative to the working directory.
pub fn defaults() -> (PathBuf, PathBuf) {
    (PathBuf::from("cluster/local.toml"), PathBuf::from("data"))
}
