//! The workloads: concurrent clients that create keys, enrol devices through random nodes,
//! revoke, read and list, recording every operation in the history.
//!
//! | workload      | what it races                                                          |
//! |---------------|------------------------------------------------------------------------|
//! | `one-shot`    | a fresh one-shot key every ~200 ms, 5–8 devices enrolling at once        |
//! | `max-uses`    | keys with `max_uses` 2, 3 or 5, 2N+3 concurrent enrolments and reads     |
//! | `revoke`      | a revoke at a random point in a stream of enrolments that goes on after it |
//! | `expiry`      | keys that expire during the run, enrolments straddling the boundary      |
//! | `create-list` | unique creations and periodic paginated listings                        |
//! | `reenrol`     | the same few machines enrolling again and again with one `max_uses` key  |
//! | `agents`      | real `ztna up` agents (ephemeral, persistent) heartbeating, killed, restarted, crashed before saving, paused, cut off from a node |
//! | `handoff`     | credentials used through other nodes the moment they are made (an auth key, an API key, a node key), bursts the nemesis kills the leader into |
//!
//! Every enrolment proves possession of its machine's private key, made for the node it is
//! sent to (`ztna_proof`), as `ztna up` does.
//!
//! Clients follow the outcome table in `api.rs`. This module must not judge results; the
//! checkers do.

pub mod agents;
mod create_list;
mod expiry;
mod handoff;
mod max_uses;
mod one_shot;
mod reenrol;
mod revoke;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use crate::api::Outcome;
use crate::cluster::Cluster;
use crate::history::{f, History, OpType};

/// Workload names accepted by `--workload`.
pub const ALL: &[&str] = &["one-shot", "max-uses", "revoke", "expiry", "create-list", "reenrol", "agents", "handoff"];

/// Most operations in flight at once, all workloads together; a round that would exceed it is
/// skipped (and counted: `skipped_rounds` in the report). Each operation holds its own slot and
/// gives it back when it ends, so the requests stuck on a paused or cut-off node (up to the
/// client's 7 s patience) hold only their own slots, and rounds to the other nodes go on.
const MAX_IN_FLIGHT: usize = 640;

/// What every client shares.
pub struct Ctx {
    pub cluster: Arc<Cluster>,
    pub history: History,
    /// Turns true when the workloads must stop starting operations.
    pub stop: watch::Receiver<bool>,
    /// A one-shot burst is starting (the nemesis may kill the leader a few ms into it).
    pub bursts: broadcast::Sender<()>,
    run_tag: String,
    seed: u64,
    free_processes: Mutex<Vec<u64>>,
    /// Each node's enrolment key (`GET /api/enrol/key`), fetched once.
    server_keys: Mutex<std::collections::BTreeMap<u64, String>>,
    /// Rounds not started because too many operations were in flight, per workload.
    skipped: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The checkers' clock-skew bound: the expiry workload enrols past it.
    pub skew_ms: u64,
    /// The `ztna up` agents of the `agents` workload.
    pub fleet: Arc<agents::Fleet>,
}

/// A machine's key pair (hex): what it enrols and proves with.
#[derive(Debug, Clone)]
pub struct Machine {
    pub private_key: String,
    pub public_key: String,
}

impl Machine {
    pub fn fresh() -> Machine {
        let (private_key, public_key) = ztna_proof::new_key_pair();
        Machine { private_key, public_key }
    }
}

/// A created key, as the workloads need it.
#[derive(Debug, Clone)]
pub struct Key {
    pub key_id: String,
    pub secret: String,
}

impl Ctx {
    pub fn new(
        cluster: Arc<Cluster>,
        history: History,
        stop: watch::Receiver<bool>,
        seed: u64,
        skew_ms: u64,
        run_dir: &std::path::Path,
    ) -> Arc<Ctx> {
        let (bursts, _) = broadcast::channel(16);
        Arc::new(Ctx {
            cluster,
            history,
            stop,
            bursts,
            run_tag: format!("{seed:x}"),
            seed,
            free_processes: Mutex::new(Vec::new()),
            server_keys: Mutex::new(Default::default()),
            skipped: Mutex::new(Default::default()),
            skew_ms,
            fleet: Arc::new(agents::Fleet::new(run_dir)),
        })
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A seeded generator for one workload's choices.
    pub fn rng(&self, salt: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A client with a process id from the pool.
    pub fn client(self: &Arc<Self>) -> Client {
        let process = self.free_processes.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Client { ctx: self.clone(), process: process.unwrap_or_else(|| self.history.new_process()) }
    }

    /// Sleeps up to `d`, returning early (false) when the run stops.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => !self.stopped(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Counts a round of `workload` not started for want of in-flight slots.
    pub fn skip(&self, workload: &'static str) {
        *self.skipped.lock().unwrap_or_else(|e| e.into_inner()).entry(workload).or_default() += 1;
    }

    /// Rounds skipped so far, per workload.
    pub fn skipped(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.skipped.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Node `node`'s enrolment key, fetched the first time it is needed.
    async fn server_key(&self, node: u64) -> Option<String> {
        if let Some(key) = self.server_keys.lock().unwrap_or_else(|e| e.into_inner()).get(&node) {
            return Some(key.clone());
        }
        let answer = self.cluster.api.get(node, "/api/enrol/key").await?;
        let key = answer["server_key"].as_str()?.to_string();
        self.server_keys.lock().unwrap_or_else(|e| e.into_inner()).insert(node, key.clone());
        Some(key)
    }

    fn request_id(&self) -> String {
        format!("jl-{}-{:016x}", self.run_tag, rand::thread_rng().next_u64())
    }
}

/// In-flight slots for `n` operations, one each (see [`MAX_IN_FLIGHT`]); `None` (and nothing
/// held) when fewer are free.
pub fn slots(limit: &Arc<Semaphore>, n: usize) -> Option<Vec<OwnedSemaphorePermit>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(limit.clone().try_acquire_owned().ok()?);
    }
    Some(held)
}

/// What a client sends.
pub enum Request<'a> {
    Post(&'a str, Value),
    Get(&'a str),
}

/// One client process. Dropping it returns its id to the pool unless it was retired.
pub struct Client {
    ctx: Arc<Ctx>,
    process: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.ctx.free_processes.lock().unwrap_or_else(|e| e.into_inner()).push(self.process);
    }
}

/// The fingerprint the server shows for a node public key (first 8 bytes of its SHA-256).
pub fn fingerprint(node_public_key_hex: &str) -> String {
    hex::encode(&Sha256::digest(node_public_key_hex.as_bytes())[..8])
}

impl Client {
    /// A random node to send the next request to.
    pub fn random_node(&self) -> u64 {
        let ids = &self.ctx.cluster.ids;
        ids[rand::thread_rng().gen_range(0..ids.len())]
    }

    /// Invokes, sends, completes; a mutation that ends `info` retires this process.
    async fn call(&mut self, f: &str, key: Option<&str>, value: Value, node: u64, body: Value) -> Outcome {
        let path = if f == f::ENROL { "/api/enrol" } else { "/api/key-management" };
        let mut body = body;
        if path == "/api/key-management" {
            body["org_id"] = json!(self.ctx.cluster.api.org_id);
        }
        let bearer = if f == f::ENROL { String::new() } else { self.ctx.cluster.api.api_key.clone() };
        self.request(f, key, value, node, Request::Post(path, body), &bearer).await
    }

    /// Invokes `f`, sends `request` to `node` with `bearer`, completes with what it learnt.
    pub async fn request(
        &mut self,
        f: &str,
        key: Option<&str>,
        value: Value,
        node: u64,
        request: Request<'_>,
        bearer: &str,
    ) -> Outcome {
        let mutation = matches!(f, f::CREATE | f::ENROL | f::REVOKE | f::CREATE_API_KEY);
        let invoke = self.ctx.history.invoke(self.process, f, key, value, Some(node));
        let api = &self.ctx.cluster.api;
        let outcome = match request {
            Request::Post(path, body) => api.post_as(node, path, &body, bearer, mutation).await,
            Request::Get(path) => api.get_as(node, path, bearer).await,
        };
        let completion = completion_value(f, &outcome);
        let learnt_key = match f {
            f::CREATE => outcome.body["key_id"].as_str(),
            f::CREATE_API_KEY => outcome.body["api_key_id"].as_str(),
            _ => None,
        };
        self.ctx.history.complete(invoke, outcome.kind, learnt_key, completion, outcome.error.clone());
        if outcome.kind == OpType::Info {
            self.process = self.ctx.history.new_process();
        }
        outcome
    }

    /// Creates a key; `Some` when the creation was acknowledged.
    pub async fn create(&mut self, node: u64, workload: &str, spec: Value) -> Option<Key> {
        let mut body = spec.clone();
        body["action"] = json!("create_auth_key");
        body["request_id"] = json!(self.ctx.request_id());
        let value = json!({ "workload": workload, "spec": spec });
        let outcome = self.call(f::CREATE, None, value, node, body).await;
        (outcome.kind == OpType::Ok).then(|| Key {
            key_id: outcome.body["key_id"].as_str().unwrap_or_default().to_string(),
            secret: outcome.body["key"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Enrols a new device (a fresh key pair) with `key`.
    pub async fn enrol(&mut self, node: u64, key: &Key) -> Outcome {
        self.enrol_machine(node, key, &Machine::fresh()).await
    }

    /// Enrols `machine` with `key`: a new request id and a new proof for `node` every time. A
    /// node whose enrolment key cannot be fetched (down, cut off) is not sent anything.
    pub async fn enrol_machine(&mut self, node: u64, key: &Key, machine: &Machine) -> Outcome {
        let Some(server_key) = self.ctx.server_key(node).await else {
            return Outcome { kind: OpType::Fail, body: Value::Null, error: Some("no_enrol_key".into()) };
        };
        let device = fingerprint(&machine.public_key);
        let body = ztna_proof::enrol_body(
            &machine.private_key,
            &machine.public_key,
            &server_key,
            &key.secret,
            &format!("jl-{device}"),
            &self.ctx.request_id(),
            ztna_proof::issued_now(),
        );
        self.call(f::ENROL, Some(&key.key_id), json!({ "device": device }), node, body).await
    }

    pub async fn revoke(&mut self, node: u64, key_id: &str) -> Outcome {
        let body = json!({ "action": "revoke_auth_key", "key_id": key_id, "request_id": self.ctx.request_id() });
        self.call(f::REVOKE, Some(key_id), Value::Null, node, body).await
    }

    /// A linearizable read of one key; `final_read` marks the reads after the run. A key's
    /// history comes in pages of at most 1,000 enrolments: a final read (the run is over,
    /// nothing changes any more) follows them all, as one operation.
    pub async fn read(&mut self, node: u64, key_id: &str, final_read: bool) -> Outcome {
        let body = json!({ "action": "get_auth_key", "key_id": key_id, "enrolments_limit": 1000 });
        if !final_read {
            return self.call(f::READ, Some(key_id), Value::Null, node, body).await;
        }
        let invoke = self.ctx.history.invoke(self.process, f::READ, Some(key_id), json!({ "final": true }), Some(node));
        let api = &self.ctx.cluster.api;
        let mut outcome = api.key_management(node, "get_auth_key", body.clone(), false).await;
        let mut cursor = outcome.body["next_enrolments_cursor"].as_str().map(str::to_string);
        while let (OpType::Ok, Some(at)) = (outcome.kind, cursor.take()) {
            let mut next = body.clone();
            next["enrolments_cursor"] = json!(at);
            let page = api.key_management(node, "get_auth_key", next, false).await;
            if page.kind != OpType::Ok {
                outcome = page;
                break;
            }
            let more = page.body["enrolments"].as_array().cloned().unwrap_or_default();
            if let Some(all) = outcome.body["enrolments"].as_array_mut() {
                all.extend(more);
            }
            cursor = page.body["next_enrolments_cursor"].as_str().map(str::to_string);
        }
        let completion = completion_value(f::READ, &outcome);
        self.ctx.history.complete(invoke, outcome.kind, None, completion, outcome.error.clone());
        outcome
    }

    /// Lists every key of the org, page by page, as one operation. `final_list` marks the
    /// listing after the run.
    pub async fn list(&mut self, node: u64, final_list: bool) -> Outcome {
        let value = json!({ "final": final_list });
        let invoke = self.ctx.history.invoke(self.process, f::LIST, None, value, Some(node));
        let mut ids: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        let outcome = loop {
            let mut body = json!({ "action": "list_auth_keys", "limit": 1000 });
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let page = self.ctx.cluster.api.key_management(node, "list_auth_keys", body, false).await;
            if page.kind != OpType::Ok {
                break page;
            }
            let keys = page.body["keys"].as_array().cloned().unwrap_or_default();
            ids.extend(keys.iter().map(|k| k["key_id"].clone()));
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break Outcome { kind: OpType::Ok, body: Value::Null, error: None },
            }
        };
        let value =
            if outcome.kind == OpType::Ok { json!({ "final": final_list, "key_ids": ids }) } else { Value::Null };
        self.ctx.history.complete(invoke, outcome.kind, None, value, outcome.error.clone());
        outcome
    }
}

/// What a completion records: the facts the checkers need, never a secret.
fn completion_value(f: &str, outcome: &Outcome) -> Value {
    if outcome.kind != OpType::Ok {
        return Value::Null;
    }
    let b = &outcome.body;
    match f {
        f::CREATE => json!({
            "key_id": b["key_id"],
            "reusable": b["reusable"],
            "max_uses": b["max_uses"],
            "expires_at_ms": parse_ms(b["expires_at"].as_str()),
        }),
        f::ENROL => json!({ "machine_id": b["machine_id"], "ephemeral": b["ephemeral"] }),
        f::CREATE_API_KEY => json!({ "api_key_id": b["api_key_id"] }),
        f::WHOAMI => json!({ "api_key_id": b["api_key_id"] }),
        f::HEARTBEAT => json!({ "machine_id": b["machine_id"], "state": b["state"] }),
        f::REVOKE => json!({ "revoked": true }),
        f::READ => {
            // Enrolments only: a re-key (the same machine again) is in the history too but
            // spends no use; it is counted apart.
            let enrolments: Vec<&Value> = b["enrolments"]
                .as_array()
                .map(|e| e.iter().filter(|e| e["kind"] != "rekey").collect())
                .unwrap_or_default();
            let devices: Vec<&Value> = enrolments.iter().map(|e| &e["node_key_fingerprint"]).collect();
            let ats: Vec<Value> = enrolments.iter().map(|e| json!(parse_ms(e["at"].as_str()))).collect();
            let rekeys = b["enrolments"].as_array().map_or(0, |e| e.iter().filter(|e| e["kind"] == "rekey").count());
            json!({
                "uses": b["uses"],
                "rekeys": rekeys,
                "revoked": !b["revoked_at"].is_null(),
                "state": b["state"],
                "devices": devices,
                "enrolled_at_ms": ats,
            })
        }
        _ => Value::Null,
    }
}

/// RFC 3339 → milliseconds since the epoch.
pub fn parse_ms(text: Option<&str>) -> Option<u64> {
    let t = time::OffsetDateTime::parse(text?, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Runs the named workloads until `ctx.stop`, then waits for their operations to finish.
pub async fn run(ctx: Arc<Ctx>, names: Vec<String>) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (salt, name) in names.iter().enumerate() {
        let (ctx, limit) = (ctx.clone(), limit.clone());
        let name = name.clone();
        tasks.spawn(async move {
            match name.as_str() {
                "one-shot" => one_shot::run(ctx, limit, salt as u64).await,
                "max-uses" => max_uses::run(ctx, limit, salt as u64).await,
                // Two pipelines each, so one stuck behind a fault does not stop the workload.
                "revoke" => {
                    futures::future::join(
                        revoke::run(ctx.clone(), limit.clone(), salt as u64),
                        revoke::run(ctx, limit, salt as u64 + 100),
                    )
                    .await;
                }
                "expiry" => {
                    futures::future::join(
                        expiry::run(ctx.clone(), limit.clone(), salt as u64),
                        expiry::run(ctx, limit, salt as u64 + 100),
                    )
                    .await;
                }
                "create-list" => create_list::run(ctx, salt as u64).await,
                "reenrol" => reenrol::run(ctx, limit, salt as u64).await,
                "agents" => agents::run(ctx, salt as u64).await,
                "handoff" => handoff::run(ctx, limit, salt as u64).await,
                _ => {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
