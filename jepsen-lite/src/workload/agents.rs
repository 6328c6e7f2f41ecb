//! Machines under faults: real `ztna up` agents, ephemeral and persistent, heartbeating through
//! every node while the nemeses run. Every ~15–25 s an ephemeral agent is killed for good and a
//! new one starts; every ~20–30 s a persistent agent is killed and started again from its state
//! (it reuses its node key, spending no use), and once a run one is killed for good. Besides:
//! - every ~12–20 s an ephemeral agent crashes before it could save its node key (killed, and
//!   its state file left with its key pair only) and starts again about one inactivity timeout
//!   later: it enrols again with its key pair, which re-keys its machine if the cluster still
//!   has it (a sign of life a sweep deciding at the same moment must respect) or enrols a new
//!   one if it was swept;
//! - every ~10–15 s an agent is paused (SIGSTOP) for 2–5 s, within its machine's timeout;
//! - every ~10–15 s an agent is cut off from one of the three nodes for 5–15 s: each agent
//!   reaches the nodes through proxies of its own, and a cut proxy refuses and drops every
//!   connection.
//!
//! After the run ([`Fleet::settle`]) the harness lists the org's machines until every killed
//! ephemeral machine is gone or the inactivity timeout plus two sweeps (and a margin) have
//! passed since the heal, then records what it did to each agent (`agents`) and the listing
//! (`machines`). `checker::machines` judges them. This module must not judge results.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{Ctx, Key};
use crate::history::OpType;

/// The nodes' `ephemeral_inactivity_timeout_ms` in a run (sweeps every quarter of it).
pub const INACTIVITY_TIMEOUT_MS: u64 = 10_000;
/// The agents' heartbeat interval.
const HEARTBEAT: &str = "2s";
/// Agents running at once.
const EPHEMERAL: usize = 4;
const PERSISTENT: usize = 2;
/// What the harness records: what it did to each agent, and the final listing.
pub const AGENTS_EVENT: &str = "agents";
pub const MACHINES_EVENT: &str = "machines";

/// One `ztna up` process and what the harness did to it.
struct Agent {
    name: String,
    ephemeral: bool,
    dir: PathBuf,
    child: Option<Child>,
    machine_id: Option<String>,
    /// History times (ns) of its first start and of the kill that ended it for good.
    started: u64,
    killed: Option<u64>,
    /// How it ended on its own (a refused node key), with its log's last line.
    exit: Option<String>,
    /// Its own proxies to the nodes (`http://127.0.0.1:port`) and the switch that cuts each.
    servers: String,
    links: Vec<watch::Sender<bool>>,
    /// Crashed before saving its node key, waiting to start again.
    crashed: bool,
}

/// Every agent of the run.
pub struct Fleet {
    dir: PathBuf,
    agents: tokio::sync::Mutex<Vec<Agent>>,
    keys: std::sync::Mutex<Option<(Key, Key)>>,
    /// Turns true once the fleet is settled: the agents' proxies stop.
    done: watch::Sender<bool>,
}

impl Fleet {
    /// Agents keep their state and logs under `dir/agents`.
    pub fn new(run_dir: &Path) -> Fleet {
        Fleet {
            dir: run_dir.join("agents"),
            agents: Default::default(),
            keys: Default::default(),
            done: watch::channel(false).0,
        }
    }

    /// Proxies from an agent to each node, and the switches that cut them; they stop when the
    /// fleet is done ([`Fleet::settle`]).
    async fn proxies(&self, ctx: &Ctx) -> std::io::Result<(String, Vec<watch::Sender<bool>>)> {
        let mut urls = Vec::new();
        let mut links = Vec::new();
        for node in &ctx.cluster.api.nodes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("http://{}", listener.local_addr()?));
            let (cut, watch) = watch::channel(false);
            let target = node.trim_start_matches("http://").to_string();
            let no_delay = Arc::new(crate::hosts::proxy::Delay::default());
            let mut done = self.done.subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    () = crate::hosts::proxy::serve(listener, target, watch, no_delay) => {}
                    _ = done.wait_for(|done| *done) => {}
                }
            });
            links.push(cut);
        }
        Ok((urls.join(","), links))
    }

    /// Starts an agent (`name`) with `key`, in `dir` (a new state, or one kept from before),
    /// reaching the nodes at `servers`.
    fn spawn(&self, ctx: &Ctx, name: &str, dir: &Path, key: &Key, servers: &str) -> std::io::Result<Child> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log"))?;
        Command::new(ctx.cluster.ztna())
            .args(["up", "--heartbeat-interval", HEARTBEAT, "--hostname", name, "--server", servers, "--state-dir"])
            .arg(dir)
            // The secret goes through the environment, never the command line.
            .env("ZTNA_AUTH_KEY", &key.secret)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
    }

    async fn start_new(&self, ctx: &Ctx, ephemeral: bool) {
        let Some(key) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(e, p)| {
            if ephemeral {
                e.clone()
            } else {
                p.clone()
            }
        }) else {
            return;
        };
        let (servers, links) = match self.proxies(ctx).await {
            Ok(proxies) => proxies,
            Err(e) => return eprintln!("jepsen-lite: cannot start an agent's proxies: {e}"),
        };
        let mut agents = self.agents.lock().await;
        let name = format!("jl-agent-{}{}", if ephemeral { "e" } else { "p" }, agents.len());
        let dir = self.dir.join(&name);
        match self.spawn(ctx, &name, &dir, &key, &servers) {
            Ok(child) => agents.push(Agent {
                name,
                ephemeral,
                dir,
                child: Some(child),
                machine_id: None,
                started: ctx.history.now(),
                killed: None,
                exit: None,
                servers,
                links,
                crashed: false,
            }),
            Err(e) => eprintln!("jepsen-lite: cannot start agent {name}: {e}"),
        }
    }

    /// A running agent of the kind (`None`: any) that has enrolled, chosen at random.
    fn pick(agents: &[Agent], ephemeral: Option<bool>, rng: &mut impl Rng) -> Option<usize> {
        let running: Vec<usize> = (0..agents.len())
            .filter(|&i| {
                ephemeral.is_none_or(|e| agents[i].ephemeral == e)
                    && agents[i].child.is_some()
                    && agents[i].machine_id.is_some()
            })
            .collect();
        (!running.is_empty()).then(|| running[rng.gen_range(0..running.len())])
    }

    /// An ephemeral agent crashes after enrolling but before saving its node key: killed, and
    /// its state file keeps only its key pair. It starts again `after`, and enrols again.
    async fn crash_before_saving(self: &Arc<Self>, ctx: &Arc<Ctx>, after: Duration, rng: &mut impl Rng) {
        let (index, child, name) = {
            let mut agents = self.agents.lock().await;
            let Some(index) = Self::pick(&agents, Some(true), rng) else { return };
            agents[index].crashed = true;
            (index, agents[index].child.take(), agents[index].name.clone())
        };
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
        let dir = self.agents.lock().await[index].dir.clone();
        if let Err(e) = forget_node_key(&dir) {
            eprintln!("jepsen-lite: cannot rewrite {name}'s state: {e}");
        }
        let crashed_at = ctx.history.now();
        ctx.history.nemesis(
            "agent",
            json!({ "phase": "event", "detail": format!("{name} crashed before saving its node key; back in {} ms", after.as_millis()) }),
        );
        let (fleet, ctx) = (self.clone(), ctx.clone());
        tokio::spawn(async move {
            let back = ctx.sleep(after).await;
            let key = fleet.keys.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(e, _)| e.clone());
            let mut agents = fleet.agents.lock().await;
            let agent = &mut agents[index];
            agent.crashed = false;
            match key {
                Some(key) if back => match fleet.spawn(&ctx, &agent.name, &agent.dir, &key, &agent.servers) {
                    Ok(child) => {
                        agent.child = Some(child);
                        // Its machine is the one it enrols (again) as now.
                        agent.machine_id = None;
                        ctx.history.nemesis(
                            "agent",
                            json!({ "phase": "event", "detail": format!("{} started again", agent.name) }),
                        );
                    }
                    Err(e) => eprintln!("jepsen-lite: cannot restart agent {}: {e}", agent.name),
                },
                // The run ended first: it stays dead, like an agent killed for good.
                _ => agent.killed = Some(crashed_at),
            }
        });
    }

    /// Pauses a random agent (SIGSTOP) for `hold`, well within its machine's timeout.
    async fn pause_one(&self, ctx: &Ctx, hold: Duration, rng: &mut impl Rng) {
        let (pid, name) = {
            let agents = self.agents.lock().await;
            let Some(index) = Self::pick(&agents, None, rng) else { return };
            (agents[index].child.as_ref().and_then(Child::id), agents[index].name.clone())
        };
        let Some(pid) = pid else { return };
        // SAFETY: kill(2) on a child we own; an agent that already ended makes it a no-op.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        ctx.history.nemesis(
            "agent",
            json!({ "phase": "event", "detail": format!("SIGSTOP {name} for {} ms", hold.as_millis()) }),
        );
        ctx.sleep(hold).await;
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        ctx.history.nemesis("agent", json!({ "phase": "event", "detail": format!("SIGCONT {name}") }));
    }

    /// Cuts a random agent off from one node for `hold`: it must go on through the others.
    async fn cut_one(&self, ctx: &Ctx, hold: Duration, rng: &mut impl Rng) {
        let (link, name, node) = {
            let agents = self.agents.lock().await;
            let Some(index) = Self::pick(&agents, None, rng) else { return };
            let node = rng.gen_range(0..agents[index].links.len());
            (agents[index].links[node].clone(), agents[index].name.clone(), node + 1)
        };
        link.send_replace(true);
        ctx.history.nemesis(
            "agent",
            json!({ "phase": "event", "detail": format!("{name} cut off from n{node} for {} ms", hold.as_millis()) }),
        );
        ctx.sleep(hold).await;
        link.send_replace(false);
        ctx.history.nemesis("agent", json!({ "phase": "event", "detail": format!("{name} reaches n{node} again") }));
    }

    /// Notes agents that ended on their own and, when `learn_ids`, machine ids from the
    /// agents' state files.
    async fn poll(&self, learn_ids: bool) {
        for agent in self.agents.lock().await.iter_mut() {
            if learn_ids && agent.machine_id.is_none() {
                agent.machine_id = machine_id(&agent.dir);
            }
            let Some(child) = agent.child.as_mut() else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                agent.child = None;
                // One that never enrolled (the cluster was down) is not a machine; it is dropped.
                if agent.machine_id.is_some() {
                    agent.exit = Some(format!("{status}: {}", last_line(&agent.dir.join("agent.log"))));
                }
            }
        }
    }

    /// Kills a random running agent of the kind; persistent ones are started again from their
    /// state after a moment unless `for_good`.
    async fn kill_one(&self, ctx: &Ctx, ephemeral: bool, for_good: bool, rng: &mut impl Rng) {
        let (index, child) = {
            let mut agents = self.agents.lock().await;
            let Some(index) = Self::pick(&agents, Some(ephemeral), rng) else { return };
            (index, agents[index].child.take())
        };
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
        let mut agents = self.agents.lock().await;
        if ephemeral || for_good {
            agents[index].killed = Some(ctx.history.now());
            return;
        }
        drop(agents);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3000))).await;
        let Some((_, key)) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let mut agents = self.agents.lock().await;
        let (name, dir, servers) =
            (agents[index].name.clone(), agents[index].dir.clone(), agents[index].servers.clone());
        match self.spawn(ctx, &name, &dir, &key, &servers) {
            Ok(child) => agents[index].child = Some(child),
            Err(e) => eprintln!("jepsen-lite: cannot restart agent {name}: {e}"),
        }
    }

    /// After the heal: waits for the killed ephemeral machines to go (at most the inactivity
    /// timeout plus two sweeps and a margin), records the agents and the final listing, and
    /// stops every agent.
    pub async fn settle(&self, ctx: &Ctx) {
        if self.agents.lock().await.is_empty() {
            return;
        }
        // The machines judged are those known now: one that enrols during the wait below may
        // miss a listing it came too late for.
        self.poll(true).await;
        let healed = ctx.history.now();
        let healed_term = ctx.cluster.leader_term().await;
        let wait = Duration::from_millis(INACTIVITY_TIMEOUT_MS + INACTIVITY_TIMEOUT_MS / 2 + 3000);
        let deadline = tokio::time::Instant::now() + wait;
        let gone_for_good: Vec<String> = {
            let agents = self.agents.lock().await;
            agents.iter().filter(|a| a.ephemeral && a.killed.is_some()).filter_map(|a| a.machine_id.clone()).collect()
        };
        let mut listed: Option<(u64, Option<u64>, Vec<String>)> = None;
        loop {
            let node = ctx.cluster.ids[rand::thread_rng().gen_range(0..ctx.cluster.ids.len())];
            let body = json!({ "action": "list_machines", "org_id": ctx.cluster.api.org_id });
            let answer = ctx.cluster.api.post(node, "/api/machine-admin", &body, false).await;
            if answer.kind == OpType::Ok {
                let ids: Vec<String> = answer.body["machines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["hostname"].as_str().is_some_and(|h| h.starts_with("jl-agent-")))
                    .filter_map(|m| m["machine_id"].as_str().map(str::to_string))
                    .collect();
                let done = !gone_for_good.iter().any(|id| ids.contains(id));
                listed = Some((ctx.history.now(), ctx.cluster.leader_term().await, ids));
                if done {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.poll(false).await;
        let mut agents = self.agents.lock().await;
        let records: Vec<Value> = agents
            .iter()
            .filter(|a| a.machine_id.is_some())
            .map(|a| {
                json!({
                    "name": a.name,
                    "ephemeral": a.ephemeral,
                    "machine_id": a.machine_id,
                    "started_ns": a.started,
                    "killed_ns": a.killed,
                    "exit": a.exit,
                })
            })
            .collect();
        ctx.history.nemesis(
            AGENTS_EVENT,
            json!({
                "phase": "final",
                "timeout_ms": INACTIVITY_TIMEOUT_MS,
                "healed_ns": healed,
                "healed_term": healed_term,
                "agents": records,
            }),
        );
        let listing = match listed {
            Some((at, term, ids)) => json!({ "phase": "final", "listed_ns": at, "term": term, "machine_ids": ids }),
            None => json!({ "phase": "final", "listed_ns": null, "term": null, "machine_ids": null }),
        };
        ctx.history.nemesis(MACHINES_EVENT, listing);
        for agent in agents.iter_mut() {
            if let Some(mut child) = agent.child.take() {
                let _ = child.kill().await;
            }
        }
        self.done.send_replace(true);
    }
}

/// Rewrites an agent's state file as a crash between its enrolment and the saving of its node
/// key leaves it: the key pair (and the time of its last proof) only.
fn forget_node_key(dir: &Path) -> std::io::Result<()> {
    let path = dir.join("ztna-state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    for field in ["machine_id", "node_key", "org_id"] {
        state[field] = Value::Null;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&state)?)
}

/// The machine id in an agent's state file, once it enrolled.
fn machine_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("ztna-state.json")).ok()?;
    let state: Value = serde_json::from_str(&text).ok()?;
    state["machine_id"].as_str().map(str::to_string)
}

fn last_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().chars().take(300).collect()
}

pub async fn run(ctx: Arc<Ctx>, salt: u64) {
    let mut rng = ctx.rng(salt);
    let fleet = &ctx.fleet;
    // The two keys, retried through the faults.
    let spec = |ephemeral: bool| json!({ "reusable": true, "ephemeral": ephemeral, "expires_in": 3600, "tags": ["tag:jepsen"] });
    let mut keys: [Option<Key>; 2] = [None, None];
    while keys.iter().any(Option::is_none) {
        for (slot, ephemeral) in keys.iter_mut().zip([true, false]) {
            if slot.is_none() {
                let mut admin = ctx.client();
                *slot = admin.create(admin.random_node(), "agents", spec(ephemeral)).await;
            }
        }
        if keys.iter().any(Option::is_none) && !ctx.sleep(Duration::from_millis(500)).await {
            return;
        }
    }
    let [Some(ephemeral_key), Some(persistent_key)] = keys else { return };
    *fleet.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some((ephemeral_key, persistent_key));
    for n in 0..EPHEMERAL + PERSISTENT {
        fleet.start_new(&ctx, n < EPHEMERAL).await;
    }
    let s = 1_000_000_000u64;
    let mut next_ephemeral_kill = ctx.history.now() + rng.gen_range(15..25) * s;
    let mut next_persistent_kill = ctx.history.now() + rng.gen_range(20..30) * s;
    let mut next_crash = ctx.history.now() + rng.gen_range(8..14) * s;
    let mut next_pause = ctx.history.now() + rng.gen_range(5..10) * s;
    let mut next_cut = ctx.history.now() + rng.gen_range(5..10) * s;
    let mut persistent_kills = 0;
    while ctx.sleep(Duration::from_secs(1)).await {
        fleet.poll(true).await;
        let now = ctx.history.now();
        if now >= next_crash {
            // Back around the time a sweep judges its machine silent.
            let after = Duration::from_millis(INACTIVITY_TIMEOUT_MS + rng.gen_range(0..3000));
            fleet.clone().crash_before_saving(&ctx, after, &mut rng).await;
            next_crash = now + rng.gen_range(12..20) * s;
        }
        if now >= next_pause {
            let (fleet, ctx, hold) = (fleet.clone(), ctx.clone(), Duration::from_millis(rng.gen_range(2000..5000)));
            let mut pick = ctx.rng(salt ^ now);
            tokio::spawn(async move { fleet.pause_one(&ctx, hold, &mut pick).await });
            next_pause = now + rng.gen_range(10..15) * s;
        }
        if now >= next_cut {
            let (fleet, ctx, hold) = (fleet.clone(), ctx.clone(), Duration::from_millis(rng.gen_range(5000..15_000)));
            let mut pick = ctx.rng(salt ^ now ^ 1);
            tokio::spawn(async move { fleet.cut_one(&ctx, hold, &mut pick).await });
            next_cut = now + rng.gen_range(10..15) * s;
        }
        if now >= next_ephemeral_kill {
            fleet.kill_one(&ctx, true, true, &mut rng).await;
            next_ephemeral_kill = now + rng.gen_range(15..25) * s;
        }
        if now >= next_persistent_kill {
            // The second kill of a run is for good: a persistent machine stays when its agent is gone.
            persistent_kills += 1;
            let for_good = persistent_kills == 2;
            fleet.kill_one(&ctx, false, for_good, &mut rng).await;
            next_persistent_kill = now + rng.gen_range(20..30) * s;
        }
        // Agents killed for good, that never enrolled (the cluster was down) or that ended on
        // their own are replaced.
        let running = |ephemeral: bool, agents: &[Agent]| {
            agents.iter().filter(|a| a.ephemeral == ephemeral && (a.child.is_some() || a.crashed)).count()
        };
        let (e, p) = {
            let agents = fleet.agents.lock().await;
            (running(true, &agents), running(false, &agents))
        };
        for _ in e..EPHEMERAL {
            fleet.start_new(&ctx, true).await;
        }
        for _ in p..PERSISTENT {
            fleet.start_new(&ctx, false).await;
        }
    }
}
