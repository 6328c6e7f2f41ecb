//! Three network namespaces on a bridge: the real-network hosts of a run (root only).
//!
//! Node `i` lives in namespace `jl-n<i>` with address `10.231.0.<i>` on its `eth0`, a veth
//! whose other end is on bridge `jl-br` (`10.231.0.254`) in the root namespace. Runs at the same
//! time on one machine take the next free slot `k` (a lock file each): `jl<k>-n<i>`,
//! `jl<k>-br`, `10.231.<k>.<i>`. Partitions are
//! an nftables table `inet jepsen` in each node's namespace; latency, loss and reordering are a
//! netem qdisc on `eth0`.
//!
//! Kernels built without netem (`CONFIG_NET_SCH_NETEM`, e.g. some VM kernels) get the same
//! faults another way: node `i` dials each peer through a relay that lives inside its own
//! namespace (so its packets still leave from its address and meet the partition rules) and
//! holds every chunk 20–60 ms while the fault is on, and an nftables rule drops 3% of packets.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::{Link, NodeAddrs};

/// Runs that may hold namespaces at once on one machine.
const SLOTS: u8 = 4;
/// This process's slot, taken once by [`Netns::create`] (a process runs one cluster at a time).
static SLOT: std::sync::OnceLock<u8> = std::sync::OnceLock::new();

fn slot() -> u8 {
    SLOT.get().copied().unwrap_or(0)
}

/// Names of slot 0 are those of a single run: `jl-…`; other slots add their number.
fn prefix() -> String {
    match slot() {
        0 => "jl".to_string(),
        k => format!("jl{k}"),
    }
}

fn bridge() -> String {
    format!("{}-br", prefix())
}

fn veth(id: u64) -> String {
    format!("{}-v{id}", prefix())
}

fn subnet() -> String {
    format!("10.231.{}", slot())
}
const API_PORT: u16 = 7100;
const RAFT_PORT: u16 = 7200;

pub struct Netns {
    nodes: u64,
    /// Set when the kernel has no netem: the in-namespace relays' delay.
    relays: Option<Arc<super::proxy::Delay>>,
    /// Dropping these stops the relay threads.
    relay_stops: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// An exclusive lock on `/run/jepsen-lite.lock` (slot 0) or `/run/jepsen-lite.<k>.lock`:
    /// a slot's namespaces and addresses are fixed, so only one run at a time may hold them.
    _lock: std::fs::File,
}

/// Port of the relay in node `i`'s namespace that leads to peer `j`.
fn relay_port(to: u64) -> u16 {
    RELAY_PORT_BASE + to as u16
}

const RELAY_PORT_BASE: u16 = 7300;

fn ns(id: u64) -> String {
    format!("{}-n{id}", prefix())
}

fn ip_of(id: u64) -> String {
    format!("{}.{id}", subnet())
}

/// Runs a command; fails with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs a command whose failure does not matter (cleanup of what may not exist).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn found(program: &str) -> bool {
    Command::new(program).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
        || Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

impl Netns {
    /// `Ok` when this process can build namespaces: root, with `ip`, `nft` and `tc`.
    pub fn usable() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, so no network namespaces".into());
        }
        for program in ["ip", "nft", "tc"] {
            if !found(program) {
                return Err(format!("`{program}` is not installed (scripts/jepsen installs it)"));
            }
        }
        Ok(())
    }

    pub fn create(nodes: u64) -> anyhow::Result<Netns> {
        let lock = take_slot()?;
        let mut hosts = Netns { nodes, relays: None, relay_stops: Default::default(), _lock: lock };
        hosts.teardown();
        let bridge = bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}.254/24", subnet()), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for id in 1..=nodes {
            let (name, veth) = (ns(id), veth(id));
            run("ip", &["netns", "add", &name])?;
            run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
            run("ip", &["link", "set", &veth, "master", &bridge])?;
            run("ip", &["link", "set", &veth, "up"])?;
            run("ip", &["-n", &name, "addr", "add", &format!("{}/24", ip_of(id)), "dev", "eth0"])?;
            run("ip", &["-n", &name, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
        }
        if !netem_available() {
            eprintln!("jepsen-lite: this kernel has no tc netem; latency comes from relays inside the namespaces and loss from nftables");
            let delay = Arc::new(super::proxy::Delay::default());
            for id in 1..=nodes {
                let targets: Vec<(u64, String)> =
                    (1..=nodes).filter(|&j| j != id).map(|j| (j, hosts.addrs(j).raft_addr)).collect();
                let stop = start_relays(&ns(id), targets, delay.clone())?;
                hosts.relay_stops.lock().unwrap_or_else(|e| e.into_inner()).push(stop);
            }
            hosts.relays = Some(delay);
        }
        Ok(hosts)
    }

    /// Whether latency comes from tc netem (else from the relays).
    pub fn has_netem(&self) -> bool {
        self.relays.is_none()
    }

    /// Dial overrides through the relays, when they are used.
    pub fn settings_for(&self, id: u64) -> String {
        if self.relays.is_none() {
            return String::new();
        }
        let mut text = String::from("[settings.test_only_dial]\n");
        for to in (1..=self.nodes).filter(|&to| to != id) {
            text.push_str(&format!("\"{to}\" = \"127.0.0.1:{}\"\n", relay_port(to)));
        }
        text
    }

    pub fn addrs(&self, id: u64) -> NodeAddrs {
        NodeAddrs { api_addr: format!("{}:{API_PORT}", ip_of(id)), raft_addr: format!("{}:{RAFT_PORT}", ip_of(id)) }
    }

    pub fn exec_prefix(&self, id: u64) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns(id)]
    }

    pub fn partition(&self, links: &BTreeSet<Link>) -> anyhow::Result<()> {
        for id in 1..=self.nodes {
            let drop_out: Vec<String> = links.iter().filter(|l| l.0 == id).map(|l| ip_of(l.1)).collect();
            let drop_in: Vec<String> = links.iter().filter(|l| l.1 == id).map(|l| ip_of(l.0)).collect();
            let mut rules = String::from("table inet jepsen\ndelete table inet jepsen\n");
            if !drop_out.is_empty() || !drop_in.is_empty() {
                rules.push_str("table inet jepsen {\n");
                rules.push_str("  chain input { type filter hook input priority 0; policy accept;\n");
                if !drop_in.is_empty() {
                    rules.push_str(&format!("    ip saddr {{ {} }} drop\n", drop_in.join(", ")));
                }
                rules.push_str("  }\n  chain output { type filter hook output priority 0; policy accept;\n");
                if !drop_out.is_empty() {
                    rules.push_str(&format!("    ip daddr {{ {} }} drop\n", drop_out.join(", ")));
                }
                rules.push_str("  }\n}\n");
            }
            nft_in(&ns(id), &rules)?;
        }
        Ok(())
    }

    pub fn netem(&self, on: bool) -> anyhow::Result<()> {
        if let Some(delay) = &self.relays {
            delay.set_fault(on);
            let rules = if on {
                "table inet jepsen-loss\ndelete table inet jepsen-loss\ntable inet jepsen-loss {\n  chain output { type filter hook output priority 0; policy accept;\n    oifname \"eth0\" numgen random mod 100 < 3 drop\n  }\n}\n"
            } else {
                "table inet jepsen-loss\ndelete table inet jepsen-loss\n"
            };
            for id in 1..=self.nodes {
                nft_in(&ns(id), rules)?;
            }
            return Ok(());
        }
        for id in 1..=self.nodes {
            let name = ns(id);
            if on {
                run(
                    "ip",
                    &[
                        "netns", "exec", &name, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                        "40ms", "30ms", "reorder", "20%", "50%", "loss", "3%",
                    ],
                )?;
            } else {
                run_quiet("ip", &["netns", "exec", &name, "tc", "qdisc", "del", "dev", "eth0", "root"]);
            }
        }
        Ok(())
    }

    /// A fixed one-way delay of `one_way_ms` on every link between nodes (0: none): netem on
    /// every `eth0` (which also delays answers to clients), or the relays' delay.
    pub fn set_latency(&self, one_way_ms: u64) -> anyhow::Result<()> {
        if let Some(delay) = &self.relays {
            delay.set(one_way_ms, one_way_ms);
            return Ok(());
        }
        for id in 1..=self.nodes {
            let name = ns(id);
            if one_way_ms > 0 {
                let delay = format!("{one_way_ms}ms");
                run(
                    "ip",
                    &[
                        "netns", "exec", &name, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                        &delay,
                    ],
                )?;
            } else {
                run_quiet("ip", &["netns", "exec", &name, "tc", "qdisc", "del", "dev", "eth0", "root"]);
            }
        }
        Ok(())
    }

    pub fn teardown(&self) {
        self.relay_stops.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for id in 1..=self.nodes.max(3) {
            run_quiet("ip", &["netns", "del", &ns(id)]);
            run_quiet("ip", &["link", "del", &veth(id)]);
        }
        run_quiet("ip", &["link", "del", &bridge()]);
    }
}

/// Whether `tc netem` works here (tried on the first namespace's `eth0`).
fn netem_available() -> bool {
    let first = ns(1);
    let probe = ["netns", "exec", &first, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms"];
    let ok = run("ip", &probe).is_ok();
    if ok {
        run_quiet("ip", &["netns", "exec", &first, "tc", "qdisc", "del", "dev", "eth0", "root"]);
    }
    ok
}

/// Starts, on a thread inside namespace `name`, one relay per peer: `127.0.0.1:<7300 + j>` →
/// peer `j`'s Raft address. Sockets made on that thread belong to the namespace.
fn start_relays(
    name: &str,
    targets: Vec<(u64, String)>,
    delay: Arc<super::proxy::Delay>,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let netns = std::fs::File::open(format!("/var/run/netns/{name}")).with_context(|| format!("open netns {name}"))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let thread_name = format!("relay-{name}");
    std::thread::Builder::new().name(thread_name).spawn(move || {
        // SAFETY: setns on this thread only, with an fd we hold open.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) } != 0 {
            let _ = ready_tx.send(Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error())));
            return;
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        runtime.block_on(async move {
            let (_never_blocked, blocked) = tokio::sync::watch::channel(false);
            for (to, target) in targets {
                match tokio::net::TcpListener::bind(("127.0.0.1", relay_port(to))).await {
                    Ok(listener) => {
                        tokio::spawn(super::proxy::serve(listener, target, blocked.clone(), delay.clone()));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                }
            }
            let _ = ready_tx.send(Ok(()));
            let _ = stop_rx.await;
        });
    })?;
    ready_rx.recv().context("relay thread ended")??;
    Ok(stop_tx)
}

/// Takes the first free slot: its lock file, held for the run.
fn take_slot() -> anyhow::Result<std::fs::File> {
    if let Some(&k) = SLOT.get() {
        return lock_slot(k)?.with_context(|| format!("this process's slot {k} is held by another run"));
    }
    for k in 0..SLOTS {
        if let Some(lock) = lock_slot(k)? {
            let _ = SLOT.set(k);
            return Ok(lock);
        }
    }
    bail!("{SLOTS} jepsen-lite runs hold every slot of network namespaces on this machine (/run/jepsen-lite*.lock)")
}

/// Slot `k`'s lock, if no other run holds it.
fn lock_slot(k: u8) -> anyhow::Result<Option<std::fs::File>> {
    let path = if k == 0 { "/run/jepsen-lite.lock".to_string() } else { format!("/run/jepsen-lite.{k}.lock") };
    let lock = std::fs::File::create(&path).with_context(|| format!("create {path}"))?;
    // SAFETY: flock on a file descriptor we own.
    let taken = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(taken.then_some(lock))
}

/// Loads an nftables ruleset inside namespace `name`.
fn nft_in(name: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child.stdin.take().context("nft stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
