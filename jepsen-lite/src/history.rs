//! The history: every operation as an invoke and one completion, with Jepsen's field names.
//!
//! Clients call [`History::invoke`] before sending a request and [`History::complete`] with
//! what they learnt. The history is append-only and in memory during a run; `write_jsonl`
//! saves it. This module must not interpret operations; the checkers do.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Operation names (`f`).
pub mod f {
    pub const CREATE: &str = "create";
    pub const ENROL: &str = "enrol";
    pub const REVOKE: &str = "revoke";
    pub const READ: &str = "read";
    pub const LIST: &str = "list";
    /// An API key created with the operator key (`handoff`).
    pub const CREATE_API_KEY: &str = "create-api-key";
    /// `GET /api/whoami` with a freshly created API key.
    pub const WHOAMI: &str = "whoami";
    /// A machine's heartbeat with the node key its enrolment just returned.
    pub const HEARTBEAT: &str = "heartbeat";
}

/// Jepsen's operation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    /// It happened, and this is what it returned.
    Ok,
    /// It certainly did not happen (or, for an enrolment refused by the state machine, it
    /// happened as a refusal that changed nothing).
    Fail,
    /// Unknown: it may or may not have happened. Nemesis events are `info` too.
    Info,
}

/// A client process id, or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Nemesis(NemesisTag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisTag {
    Nemesis,
}

impl Process {
    pub const NEMESIS: Process = Process::Nemesis(NemesisTag::Nemesis);
}

/// One history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub index: usize,
    /// Nanoseconds since the run started (one monotonic clock for every client).
    pub time: u64,
    /// Wall-clock milliseconds since the Unix epoch, for comparison with server timestamps.
    pub wall_ms: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// The error code or reason of a `fail` or `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The shared, append-only history of a run.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Vec<Op>>>,
    started: Instant,
    started_wall_ms: u64,
    next_process: Arc<AtomicU64>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History {
            inner: Arc::new(Mutex::new(Vec::new())),
            started: Instant::now(),
            started_wall_ms: wall_ms(),
            next_process: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A new client process id. A process whose mutation ended `info` is never used again.
    pub fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    pub fn started_wall_ms(&self) -> u64 {
        self.started_wall_ms
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn push(&self, mut op: Op) -> usize {
        let mut ops = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        op.index = ops.len();
        op.time = self.now();
        op.wall_ms = self.started_wall_ms + op.time / 1_000_000;
        ops.push(op);
        ops.len() - 1
    }

    /// Records an invocation; returns its index for [`History::complete`].
    pub fn invoke(&self, process: u64, f: &str, key: Option<&str>, value: Value, node: Option<u64>) -> usize {
        self.push(Op {
            index: 0,
            time: 0,
            wall_ms: 0,
            process: Process::Client(process),
            kind: OpType::Invoke,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            node,
            error: None,
        })
    }

    /// Records the completion of invocation `invoke`. `key` replaces the invocation's key when
    /// the completion learnt it (a creation learns its key id).
    pub fn complete(&self, invoke: usize, kind: OpType, key: Option<&str>, value: Value, error: Option<String>) {
        let template = {
            let ops = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            ops[invoke].clone()
        };
        self.push(Op { kind, key: key.map(str::to_string).or(template.key), value, error, ..template });
    }

    /// Records a nemesis event (`info`, process `nemesis`).
    pub fn nemesis(&self, f: &str, value: Value) {
        self.push(Op {
            index: 0,
            time: 0,
            wall_ms: 0,
            process: Process::NEMESIS,
            kind: OpType::Info,
            f: f.to_string(),
            key: None,
            value,
            node: None,
            error: None,
        });
    }

    /// A copy of every entry so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Writes `header` then one line per op.
pub fn write_jsonl(path: &Path, header: &Value, ops: &[Op]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(&mut out, header)?;
    out.write_all(b"\n")?;
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`]: the header and the ops.
pub fn read_jsonl(path: &Path) -> anyhow::Result<(Value, Vec<Op>)> {
    parse_jsonl(&std::fs::read_to_string(path)?)
}

/// [`read_jsonl`] of text already read.
pub fn parse_jsonl(text: &str) -> anyhow::Result<(Value, Vec<Op>)> {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap_or("{}"))?;
    let ops = lines.map(serde_json::from_str).collect::<Result<Vec<Op>, _>>()?;
    Ok((header, ops))
}

/// An invocation with its completion (`None`: the run ended first, which counts as `info`).
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub complete: Option<&'a Op>,
}

impl<'a> Pair<'a> {
    /// The outcome type; a missing completion is `info`.
    pub fn kind(&self) -> OpType {
        self.complete.map_or(OpType::Info, |c| c.kind)
    }

    pub fn key(&self) -> Option<&'a str> {
        self.complete.and_then(|c| c.key.as_deref()).or(self.invoke.key.as_deref())
    }

    /// The completion's value (or the invocation's, when there is no completion).
    pub fn value(&self) -> &'a Value {
        self.complete.map_or(&self.invoke.value, |c| &c.value)
    }

    pub fn error(&self) -> Option<&'a str> {
        self.complete.and_then(|c| c.error.as_deref())
    }

    /// The completion time, or `u64::MAX` for an op that never completed.
    pub fn completed_at(&self) -> u64 {
        match self.complete {
            Some(c) if c.kind != OpType::Info => c.time,
            _ => u64::MAX,
        }
    }

    pub fn completed_wall_ms(&self) -> u64 {
        match self.complete {
            Some(c) if c.kind != OpType::Info => c.wall_ms,
            _ => u64::MAX,
        }
    }

    /// The device an enrolment sent (its node key fingerprint).
    pub fn device(&self) -> Option<&'a str> {
        self.invoke.value.get("device").and_then(Value::as_str)
    }

    /// The indexes of the invocation and completion, for witnesses.
    pub fn indexes(&self) -> Vec<usize> {
        std::iter::once(self.invoke.index).chain(self.complete.map(|c| c.index)).collect()
    }
}

/// Pairs every client invocation with its completion, in invocation order.
pub fn pairs(ops: &[Op]) -> Vec<Pair<'_>> {
    let mut open: HashMap<Process, usize> = HashMap::new();
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    for op in ops {
        if op.process == Process::NEMESIS {
            continue;
        }
        match op.kind {
            OpType::Invoke => {
                open.insert(op.process, pairs.len());
                pairs.push(Pair { invoke: op, complete: None });
            }
            _ => {
                if let Some(i) = open.remove(&op.process) {
                    pairs[i].complete = Some(op);
                }
            }
        }
    }
    pairs
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
