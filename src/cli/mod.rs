//! The `ztna` command line: the server, and the admin and enrolment commands of the user guide.
//!
//! Each command turns its flags into one API call through [`crate::client::Client`] and prints
//! the answer as the guide shows it, or as JSON with `--output json`.
//!
//! This module must not talk to RocksDB or Raft; the server subcommand only starts a [`Node`].

mod admin;
pub(crate) mod format;
mod keys;
mod local_cluster;
mod machines;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::config::{ClusterFile, NodeConfig};
use crate::node::Node;

#[derive(Parser)]
#[command(name = "ztna", version, about = "Replicated auth-key store for zero-trust networks")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The cluster CA (PEM) that an HTTPS API is trusted by.
    #[arg(long, global = true, env = "ZTNA_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Conn {
    /// Node URLs, comma-separated; the next is tried when one does not answer.
    #[arg(long, env = "ZTNA_SERVER", global = true, hide_env_values = true)]
    server: Option<String>,
    /// An org's admin API key.
    #[arg(long, env = "QZ_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// The org to act on.
    #[arg(long, env = "ZTNA_ORG", global = true)]
    org: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cluster node in the foreground.
    Server(ServerArgs),
    /// Create, list, show and revoke auth keys (also `auth-keys`).
    #[command(name = "auth-key", alias = "auth-keys")]
    AuthKey {
        #[command(subcommand)]
        command: AuthKeyCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// Enrol one new machine with an auth key (for scripts and tests): a fresh key pair, its
    /// proof of possession, and the node key printed. `ztna up` is the way to run a machine.
    Enrol {
        #[arg(long, env = "ZTNA_AUTH_KEY", hide_env_values = true)]
        auth_key: String,
        #[arg(long)]
        hostname: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Enrol this machine (once) and keep it connected with heartbeats until stopped.
    Up {
        #[arg(long, env = "ZTNA_AUTH_KEY", hide_env_values = true)]
        auth_key: Option<String>,
        /// Accepted for the guide's container example; there is no data plane to run.
        #[arg(long)]
        userspace: bool,
        #[arg(long)]
        hostname: Option<String>,
        #[command(flatten)]
        agent: AgentArgs,
        /// Time between heartbeats.
        #[arg(long, env = "ZTNA_HEARTBEAT_INTERVAL", default_value = "10s")]
        heartbeat_interval: String,
        /// Enrol (if not enrolled yet) and exit, without heartbeating: the installer enrols
        /// this way, then starts the agent with no auth key anywhere.
        #[arg(long)]
        enrol_only: bool,
        /// Enrol again with --auth-key even though an admin revoked this machine's node key
        /// (or deleted it); without it `ztna up` stops and says why.
        #[arg(long)]
        force_reauth: bool,
    },
    /// This machine as the cluster sees it.
    Status {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Replace this machine's tags.
    Set {
        /// Comma-separated tags, e.g. tag:a,tag:b.
        #[arg(long, value_delimiter = ',', required = true)]
        tags: Vec<String>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Delete this machine from the network and forget its node key.
    Logout {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// List the org's machines (API key).
    Machines {
        #[command(subcommand)]
        command: MachinesCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// Quarantine, unquarantine, delete, retag, approve or reject a machine, revoke its node
    /// key, or let a deleted machine enrol again (API key).
    #[command(name = "machine-admin")]
    MachineAdmin {
        #[arg(long, value_enum)]
        action: MachineAdminAction,
        /// The machine (every action but allow-reenrol).
        #[arg(long, required_unless_present = "node_public_key")]
        machine: Option<String>,
        /// With --action allow-reenrol: the deleted machine's public key (`ztna machines list`
        /// showed it; the machine's `ztna status --output json` shows it too).
        #[arg(long)]
        node_public_key: Option<String>,
        /// With --action set-tags: comma-separated tags.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cluster status and first-time initialisation.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// Orgs and their API keys (operator key).
    #[command(name = "org-admin")]
    OrgAdmin {
        #[command(subcommand)]
        command: OrgCommand,
        #[command(flatten)]
        operator: OperatorKey,
        #[command(flatten)]
        conn: Conn,
    },
}

/// A node joining the cluster.
#[derive(Args, Clone)]
struct NewNode {
    /// Its id; ids are never reused.
    #[arg(long)]
    id: u64,
    /// Its internal (Raft) address, host:port.
    #[arg(long)]
    raft_addr: String,
    /// Its public API address, host:port.
    #[arg(long)]
    api_addr: String,
}

/// The operator API key, for org administration and membership changes.
#[derive(Args, Clone)]
struct OperatorKey {
    /// The operator API key.
    #[arg(long, env = "ZTNA_OPERATOR_KEY", hide_env_values = true, global = true)]
    operator_key: Option<String>,
    /// A file holding the operator API key (e.g. data/operator.key).
    #[arg(long, global = true)]
    operator_key_file: Option<PathBuf>,
}

impl OperatorKey {
    fn resolve(self) -> Result<String, CliError> {
        match (self.operator_key, self.operator_key_file) {
            (Some(key), _) => Ok(key),
            (None, Some(path)) => Ok(std::fs::read_to_string(&path)
                .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_string()),
            (None, None) => Err(CliError::Usage(
                "give the operator key: --operator-key-file data/operator.key or ZTNA_OPERATOR_KEY".into(),
            )),
        }
    }
}

#[derive(Args, Clone)]
struct AgentArgs {
    /// Where the machine keeps its key pair and node key.
    #[arg(long, env = "ZTNA_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

impl AgentArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(crate::agent::default_state_dir)
    }

    fn servers(&self) -> Result<String, CliError> {
        self.conn.server.clone().ok_or(CliError::Client(ClientError::NoServer))
    }
}

#[derive(Subcommand)]
enum MachinesCommand {
    /// The org's machines.
    List {
        /// Only machines in this state: active, pending, quarantined, node_key_revoked.
        #[arg(long)]
        state: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MachineAdminAction {
    Quarantine,
    Unquarantine,
    Delete,
    SetTags,
    RevokeNodeKey,
    /// Device approval: a pending machine becomes active.
    Approve,
    /// Device approval refused: the machine is deleted and stays out.
    Reject,
    /// A deleted or rejected machine (by --node-public-key) may enrol again.
    AllowReenrol,
}

#[derive(Args)]
struct ServerArgs {
    /// The cluster file listing every node (see cluster/local.toml).
    #[arg(long)]
    cluster: PathBuf,
    /// This node's id in the cluster file.
    #[arg(long)]
    id: u64,
    /// Where this node keeps its RocksDB database and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Overrides the cluster file's ephemeral_inactivity_timeout_ms, e.g. 20s or 10m.
    #[arg(long)]
    ephemeral_inactivity_timeout: Option<String>,
    /// Overrides the cluster file's min_free_disk_mb for this node (its disk may differ).
    #[arg(long)]
    min_free_disk_mb: Option<u64>,
    /// SHA-256 of the bootstrap token `POST /api/cluster/init` needs (overrides the cluster
    /// file's bootstrap_token_sha256; `ztna cluster bootstrap-token` prints it).
    #[arg(long, env = "ZTNA_BOOTSTRAP_TOKEN_SHA256")]
    bootstrap_token_sha256: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum AuthKeyCommand {
    /// Create an auth key; its secret is shown once.
    Create {
        /// One key enrols many devices (default: one-shot).
        #[arg(long)]
        reusable: bool,
        /// Enrolled machines auto-deregister when they go offline.
        #[arg(long)]
        ephemeral: bool,
        /// How long the key can enrol: 5m … 30d.
        #[arg(long, default_value = "1h")]
        expiry: String,
        /// Comma-separated tags, e.g. tag:laptop,tag:eng.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// At most this many enrolments (reusable keys only).
        #[arg(long)]
        max_uses: Option<u64>,
        /// Machines it enrols wait as `pending` until an admin approves them (device approval);
        /// by default they are pre-approved.
        #[arg(long)]
        approval_required: bool,
    },
    /// List the org's auth keys.
    List,
    /// Show one key and its enrolments.
    Get { key_id: String },
    /// Revoke a key by full key, unique prefix or key_id.
    Revoke { key: String },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Run every node of a cluster file on this machine in the foreground (Ctrl-C stops them).
    Up {
        /// The cluster file (default cluster/local.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Where the nodes keep their data (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Passed to every node, e.g. 20s.
        #[arg(long)]
        ephemeral_inactivity_timeout: Option<String>,
        /// How long after a node dies it is started again, with its data (e.g. 5s).
        #[arg(long, default_value = "5s")]
        restart_delay: String,
        /// Leave a node that died down (the others keep serving).
        #[arg(long)]
        no_restart: bool,
    },
    /// Each node's role, term, last applied index and the leader.
    Status,
    /// Create the first org, its admin API key and the operator key (once per cluster).
    Init {
        #[arg(long, default_value = "default")]
        org_name: String,
        /// The file `ztna cluster bootstrap-token` wrote (`-`: read the token from standard
        /// input); or set ZTNA_BOOTSTRAP_TOKEN.
        #[arg(long, env = "ZTNA_BOOTSTRAP_TOKEN_FILE")]
        bootstrap_token_file: Option<PathBuf>,
        /// Write ZTNA_SERVER, QZ_API_KEY and ZTNA_ORG to this file for `set -a; . FILE`.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Write the operator key to this file, readable only by its owner.
        #[arg(long)]
        operator_key_file: Option<PathBuf>,
    },
    /// Add a node (operator key): it joins as a learner, catches up, then votes. Start the new
    /// node first, with a cluster file that lists it.
    #[command(name = "add-node")]
    AddNode {
        #[command(flatten)]
        node: NewNode,
        #[command(flatten)]
        operator: OperatorKey,
    },
    /// Save a consistent backup of the whole state, taken on the leader (operator key).
    Backup {
        /// Where to write it; FILE.sha256 gets its checksum.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        operator: OperatorKey,
    },
    /// Seed a node of a new cluster from a backup (offline; run it for each node, or for the
    /// lowest id only and start the others empty).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The new node's data directory (must be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new cluster's file.
        #[arg(long)]
        cluster: PathBuf,
        /// This node's id in it.
        #[arg(long)]
        id: u64,
    },
    /// Make the bootstrap token `ztna cluster init` needs: written to --out (mode 0600, never
    /// over an existing file); prints the bootstrap_token_sha256 line for the cluster file.
    #[command(name = "bootstrap-token")]
    BootstrapToken {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a CA and certificates per node for mutual TLS (a test or small deployment); an
    /// existing CA in --out signs the new ones, so nodes added later join the same CA.
    Certs {
        /// Directory for ca.crt, ca.key, node<i>.crt / node<i>.key (peer) and api<i>.crt /
        /// api<i>.key (the HTTPS API); keys mode 0600.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host name or address of each node, comma-separated, added to its certificate
        /// (each already names localhost, 127.0.0.1, ::1 and node<i>).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Remove a node (operator key); its id is retired for good.
    #[command(name = "remove-node")]
    RemoveNode {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        operator: OperatorKey,
    },
    /// Replace a node that is gone for good (operator key): adds the new node (new id), then
    /// removes the old one.
    #[command(name = "replace-node")]
    ReplaceNode {
        /// The id of the node being replaced.
        #[arg(long)]
        old_id: u64,
        /// The replacement.
        #[command(flatten)]
        node: NewNode,
        #[command(flatten)]
        operator: OperatorKey,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an org.
    CreateOrg { name: String },
    /// List orgs.
    ListOrgs,
    /// Create an API key for an org; its secret is shown once.
    CreateApiKey {
        org_id: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 90d (default: no expiry).
        #[arg(long)]
        expiry: Option<String>,
        /// What it may do: auth_keys, auth_keys:read, machines, machines:read (default: all).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// The only tags it may put on the auth keys it creates (default: any tag).
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
    },
    /// List API keys, optionally of one org.
    ListApiKeys { org_id: Option<String> },
    /// Revoke an API key by its id (api_…).
    RevokeApiKey { api_key_id: String },
    /// Replace the operator key: the new one is written to --out (mode 0600, never over an
    /// existing file) and every earlier operator key stops working at once.
    RotateOperatorKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Set an org's limits (leave both out for the defaults).
    SetLimits {
        org_id: String,
        /// Auth keys it may create per day (UTC, cluster time).
        #[arg(long)]
        auth_keys_per_day: Option<u64>,
        /// Machines it may have enrolled at once.
        #[arg(long)]
        machines: Option<u64>,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Start(#[from] crate::node::StartError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("the node stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Backup(#[from] crate::store::backup::BackupError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The command ran, and found something wrong (a node down).
    #[error("{0}")]
    Unhealthy(String),
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    crate::tls::ensure_provider();
    warn_secret_arguments();
    let cli = Cli::parse();
    if let Some(ca) = &cli.ca_cert {
        // Before any thread starts: every client this process makes reads it.
        std::env::set_var(crate::client::CA_CERT_ENV, ca);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Exit status of a node that refuses to run with its data directory or id: restarting it
/// cannot help (systemd's unit does not restart on it).
pub const EXIT_REFUSED: u8 = 3;

impl CliError {
    fn exit_code(&self) -> ExitCode {
        use crate::node::StartError;
        match self {
            CliError::Stopped(_) | CliError::Start(StartError::Refused(_) | StartError::Identity(_)) => {
                ExitCode::from(EXIT_REFUSED)
            }
            _ => ExitCode::FAILURE,
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => server(args).await,
        Command::AuthKey { command, conn } => keys::auth_key(command, &conn).await,
        Command::Enrol { auth_key, hostname, conn } => enrol(&conn, &auth_key, &hostname).await,
        Command::Cluster {
            command: ClusterCommand::Up { cluster, data_dir, ephemeral_inactivity_timeout, restart_delay, no_restart },
            ..
        } => {
            let (default_cluster, default_data) = local_cluster::defaults();
            let restart_after = std::time::Duration::from_millis(crate::config::parse_duration_ms(&restart_delay)?);
            local_cluster::up(local_cluster::UpOptions {
                cluster: cluster.unwrap_or(default_cluster),
                data_dir: data_dir.unwrap_or(default_data),
                ephemeral_timeout: ephemeral_inactivity_timeout,
                restart_after: (!no_restart).then_some(restart_after),
            })
            .await
        }
        Command::Cluster { command: ClusterCommand::BootstrapToken { out }, .. } => {
            let hash = make_bootstrap_token(&out)?;
            println!("✓ Bootstrap token written to {} (mode 0600); keep it for `ztna cluster init`", out.display());
            println!("Add to the cluster file's [settings] (or pass ztna server --bootstrap-token-sha256):");
            println!("bootstrap_token_sha256 = \"{hash}\"");
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::Certs { out, nodes, hosts, days }, .. } => {
            let written = crate::tls::make_certs(&out, nodes, &hosts, days)?;
            for path in written {
                println!("✓ {}", path.display());
            }
            println!(
                "Point [tls] in the cluster file at them (cert/key: node{{id}}, api_cert/api_key: api{{id}}); give clients ZTNA_CA_CERT={}/ca.crt",
                out.display()
            );
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::Restore { from, data_dir, cluster, id }, .. } => {
            admin::restore(&from, &data_dir, &cluster, id).await
        }
        Command::Cluster { command, conn } => admin::cluster(command, &conn).await,
        Command::Up { auth_key, userspace: _, hostname, agent, heartbeat_interval, enrol_only, force_reauth } => {
            let heartbeat_interval =
                std::time::Duration::from_millis(crate::config::parse_duration_ms(&heartbeat_interval)?);
            let options = crate::agent::UpOptions {
                servers: agent.servers()?,
                auth_key,
                hostname,
                state_dir: agent.dir(),
                heartbeat_interval,
                enrol_only,
                force_reauth,
            };
            Ok(crate::agent::up(options, wait_for_stop_signal()).await?)
        }
        Command::Status { agent } => machines::machine_status(&agent).await,
        Command::Set { tags, agent } => {
            let answer = crate::agent::set_tags(&agent.servers()?, &agent.dir(), &tags).await?;
            if agent.conn.output == Output::Json {
                print_json(&answer);
            } else {
                println!("✓ Tags set: {}", tags.join(", "));
            }
            Ok(())
        }
        Command::Logout { agent } => {
            let machine_id = crate::agent::logout(&agent.servers()?, &agent.dir()).await?;
            println!("✓ Logged out: {machine_id} was deleted and its node key forgotten");
            Ok(())
        }
        Command::Machines { command: MachinesCommand::List { state }, conn } => {
            machines::machines_list(&conn, state).await
        }
        Command::MachineAdmin { action, machine, node_public_key, tags, conn } => {
            machines::machine_admin(&conn, action, machine, node_public_key, tags).await
        }
        Command::OrgAdmin { command, operator, conn } => admin::org_admin(command, &conn, operator.resolve()?).await,
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info,openraft=warn`); openraft's repeated
/// warnings are let through once a minute per call site (see `log_every::QuietRepeats`).
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let quiet = crate::log_every::QuietRepeats::new(crate::log_every::OPENRAFT_PERIOD);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    };
    tracing_subscriber::registry().with(layer.with_filter(quiet).with_filter(filter)).init();
}

async fn server(args: ServerArgs) -> Result<(), CliError> {
    init_tracing(args.log_format);
    // SIGHUP is caught from the first moment: one that arrives while the node is still
    // starting (a reload sent too early) is handled once it runs, never the default action,
    // which would end the process.
    let hangups = hangups();
    let mut cluster = ClusterFile::load(&args.cluster)?;
    if let Some(timeout) = &args.ephemeral_inactivity_timeout {
        cluster.settings.ephemeral_inactivity_timeout_ms = crate::config::parse_duration_ms(timeout)?;
        cluster.validate()?;
    }
    if let Some(minimum) = args.min_free_disk_mb {
        cluster.settings.min_free_disk_mb = minimum;
    }
    if let Some(hash) = args.bootstrap_token_sha256 {
        cluster.settings.bootstrap_token_sha256 = Some(hash);
        cluster.validate()?;
    }
    let config = NodeConfig::new(args.id, args.data_dir, cluster)?;
    let running = Node::start(config).await?;
    tokio::spawn(reload_clock_offset_on_sighup(hangups, args.cluster.clone(), running.node.clone()));
    let failed = tokio::select! {
        _ = wait_for_stop_signal() => None,
        reason = running.failed() => Some(reason),
    };
    tracing::info!("stopping");
    running.shutdown().await;
    tracing::info!("stopped");
    match failed {
        Some(reason) => Err(CliError::Stopped(reason)),
        None => Ok(()),
    }
}

/// The process's SIGHUPs, caught from now on (`None` where there are none, or if the handler
/// cannot be installed).
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!("cannot catch SIGHUP: {e}"))
            .ok()
    }
    #[cfg(not(unix))]
    None
}

/// On SIGHUP, re-reads `test_only_clock_offset_ms` from the cluster file: the clock jump of
/// jepsen-lite's clock nemesis. Nothing else is reloaded.
async fn reload_clock_offset_on_sighup(hangups: Hangups, cluster: std::path::PathBuf, node: std::sync::Arc<Node>) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hangups else { return };
        while hup.recv().await.is_some() {
            match ClusterFile::load(&cluster) {
                Ok(file) => {
                    let offset = file.settings.test_only_clock_offset_ms;
                    tracing::warn!("SIGHUP: TEST ONLY clock offset is now {offset} ms");
                    node.clock().wall().set_offset_ms(offset);
                }
                Err(e) => tracing::error!("SIGHUP: cannot reload the clock offset: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, cluster, node);
}

async fn wait_for_stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Makes a bootstrap token in a new file `out` (mode 0600, `O_EXCL|O_NOFOLLOW`) and answers
/// its SHA-256 (hex), which the nodes are given.
fn make_bootstrap_token(out: &std::path::Path) -> Result<String, CliError> {
    use crate::secret::{new_credential, random_base62, CredentialKind, ID_LEN};
    let token = new_credential(CredentialKind::BootstrapToken, random_base62(ID_LEN));
    crate::private_file::create_new(out, format!("{}\n", token.text).as_bytes())
        .map_err(|e| CliError::Io(format!("cannot create {} (it must not exist yet): {e}", out.display())))?;
    Ok(hex::encode(token.hash))
}

/// A secret from a file, or from standard input when the path is `-` (never from the command
/// line, where other users can read it in the process list).
fn read_secret_file(path: &std::path::Path) -> Result<String, CliError> {
    let text = if path == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Io(format!("cannot read standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?
    };
    Ok(text.trim().to_string())
}

/// Warns when a secret was given as a command-line argument (visible to every user in the
/// process list and kept in shell history).
fn warn_secret_arguments() {
    let secret_flags = ["--api-key", "--auth-key", "--operator-key"];
    for arg in std::env::args().skip(1) {
        if let Some(flag) = secret_flags.iter().find(|f| arg == **f || arg.starts_with(&format!("{f}="))) {
            eprintln!(
                "warning: {flag} puts a secret on the command line, where other users of this machine can read it; \
                 prefer the environment variable or a file"
            );
        }
    }
}

fn client(conn: &Conn, bearer: Option<String>) -> Result<Client, CliError> {
    Ok(Client::new(conn.server.as_deref().unwrap_or_default(), bearer)?)
}

fn admin(conn: &Conn) -> Result<(Client, String), CliError> {
    let key = conn
        .api_key
        .clone()
        .ok_or_else(|| CliError::Usage("give an API key: set QZ_API_KEY or pass --api-key".into()))?;
    let org = conn.org.clone().ok_or_else(|| CliError::Usage("give the org: set ZTNA_ORG or pass --org".into()))?;
    Ok((client(conn, Some(key))?, org))
}

fn request_id() -> String {
    format!("cli-{}", crate::secret::random_base62(22))
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn now_ms() -> i64 {
    crate::clock::wall_ms() as i64
}

/// `5m`, `1h`, `30d` → seconds.
fn parse_expiry(text: &str) -> Result<u64, CliError> {
    crate::config::parse_duration_ms(text)
        .map(|ms| ms / 1000)
        .map_err(|_| CliError::Usage(format!("--expiry {text:?}: use a number and a unit, e.g. 5m, 1h, 24h, 30d")))
}

fn yes_no(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

async fn enrol(conn: &Conn, auth_key: &str, hostname: &str) -> Result<(), CliError> {
    let client = client(conn, None)?;
    let mut identity = crate::agent::new_identity(hostname.to_string());
    let machine = crate::agent::enrol_with_proof(&client, &mut identity, auth_key).await?;
    if conn.output == Output::Json {
        print_json(&machine);
        return Ok(());
    }
    println!("✓ Enrolled {hostname} as {}", machine["machine_id"].as_str().unwrap_or_default());
    println!("  Org:        {}", machine["org_id"].as_str().unwrap_or_default());
    println!("  Tags:       {}", format::tags_text(&machine["tags"]));
    println!("  Ephemeral:  {}", yes_no(&machine["ephemeral"]));
    println!("  Node key:   {}", machine["node_key"].as_str().unwrap_or_default());
    Ok(())
}

/// Writes a file readable only by its owner (mode 0600).
fn write_private(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    crate::private_file::write(path, text.as_bytes())
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))
}
