//! Each key's history must be linearizable against a model of one key: its uses, its limit,
//! whether it is revoked and whether it has expired.
//!
//! The search is Wing & Gong's, with Lowe's memoisation of (linearized set, model state): an
//! operation may be linearized next if it was invoked before every remaining completed
//! operation returned. `info` operations never return; they may take effect at any point after
//! their invocation, or never. An enrolment refused by the state machine (`key_used`,
//! `key_exhausted`, `key_revoked`, `key_expired`) is an operation that returned that refusal;
//! `invalid_auth_key` says the key does not exist, which no order explains for a key whose
//! creation was acknowledged. Failures that say nothing about the key (a refused connection, a
//! proof refused: [`SAYS_NOTHING_OF_THE_KEY`]) are left out; any other refusal makes the
//! verdict `unknown`. The key may expire at any point whose real
//! time is within the clock-skew bound of its `expires_at`. A search over its time limit makes
//! the verdict `unknown`, never `valid`.
//!
//! Machines that enrol more than once with the same key (the `reenrol` workload) are tracked by
//! the model: the first success enrols the machine and spends a use; later ones are re-keys,
//! which need a key still in date and not revoked, and spend nothing, even when the key is used
//! up. A machine seen once is a new enrolment, as before.

use std::collections::HashSet;
use std::time::Instant;

use super::{Analysis, KeyHistory, Kind, Results};
use crate::history::{f, OpType, Pair};

const NAME: &str = "linearizable";

/// What one operation did, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// An enrolment that succeeded (or, when `info`, may have); `machine` numbers a machine
    /// that enrols with this key more than once.
    Enrol {
        machine: Option<u8>,
    },
    /// An enrolment the state machine refused with this code.
    Refused(Refusal),
    Revoke,
    /// A read that returned `uses`, `revoked` and, where its `state` tells (`valid` or
    /// `expired`), whether the key had expired.
    Read {
        uses: u64,
        revoked: bool,
        expired: Option<bool>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Used up; never for a machine already enrolled (it re-keys instead).
    Used {
        machine: Option<u8>,
    },
    Revoked,
    Expired,
    /// `invalid_auth_key`: the key does not exist. Never true of a key whose creation was
    /// acknowledged: no order explains it.
    NoSuchKey,
}

/// The codes of an enrolment's definite failure that say nothing about its key (the request
/// never reached the rules, or failed on its proof or its machine), so the model leaves them
/// out. Any other code (but the refusals the model knows) makes the verdict `unknown`: a
/// refusal the checker cannot judge is never taken as consistent.
pub const SAYS_NOTHING_OF_THE_KEY: &[&str] = &[
    "connection_refused",
    "no_enrol_key",
    "wrong_server_key",
    "proof_required",
    "proof_invalid",
    "proof_replayed",
    "too_many_failures",
    "machine_deleted",
    "node_key_revoked",
    // A re-key of a machine the key enrolled, refused for coming too often (the state
    // machine's bound per machine and per key): no use is spent or given back either way.
    "too_many_rekeys",
];

/// One operation for the search.
#[derive(Debug, Clone)]
pub struct Entry {
    pub call: Call,
    /// Invocation and completion (ns); `u64::MAX` completion for `info`.
    pub invoked: u64,
    pub completed: u64,
    pub invoked_wall_ms: u64,
    pub completed_wall_ms: u64,
    /// History indexes, for the witness.
    pub indexes: Vec<usize>,
}

/// The model of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyModel {
    pub uses: u64,
    pub revoked: bool,
    pub expired: bool,
    /// The numbered machines enrolled so far (bit n: machine n).
    pub enrolled: u64,
}

impl KeyModel {
    fn has(&self, machine: Option<u8>) -> bool {
        machine.is_some_and(|m| self.enrolled & (1 << m) != 0)
    }
}

/// The fixed facts of the key.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub limit: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub skew_ms: u64,
}

impl Rules {
    /// The states the key may be in after `entry` takes effect in `state`.
    fn step(&self, state: KeyModel, entry: &Entry) -> Vec<KeyModel> {
        let mut before = vec![state];
        if let Some(at) = self.expires_at_ms {
            // Not yet expired is possible only if the op began within the bound of expiry;
            // expired is possible once the op's end reaches the bound before it.
            let may_be_live = entry.invoked_wall_ms <= at.saturating_add(self.skew_ms);
            let may_be_expired = entry.completed_wall_ms.saturating_add(self.skew_ms) >= at;
            before.clear();
            if state.expired || may_be_expired {
                before.push(KeyModel { expired: true, ..state });
            }
            if !state.expired && may_be_live {
                before.push(state);
            }
        }
        before.into_iter().filter_map(|s| self.apply(s, &entry.call)).collect()
    }

    fn apply(&self, s: KeyModel, call: &Call) -> Option<KeyModel> {
        let used_up = self.limit.is_some_and(|limit| s.uses >= limit);
        match call {
            // A re-key: the machine is in, the key must still be good.
            Call::Enrol { machine } if s.has(*machine) => (!s.revoked && !s.expired).then_some(s),
            Call::Enrol { machine } => (!s.revoked && !s.expired && !used_up).then_some(KeyModel {
                uses: s.uses + 1,
                enrolled: s.enrolled | machine.map_or(0, |m| 1 << m),
                ..s
            }),
            Call::Refused(Refusal::Revoked) => s.revoked.then_some(s),
            Call::Refused(Refusal::Expired) => (!s.revoked && s.expired).then_some(s),
            Call::Refused(Refusal::Used { machine }) => {
                (!s.revoked && !s.expired && used_up && !s.has(*machine)).then_some(s)
            }
            Call::Refused(Refusal::NoSuchKey) => None,
            Call::Revoke => Some(KeyModel { revoked: true, ..s }),
            Call::Read { uses, revoked, expired } => {
                let same_expiry = expired.is_none_or(|e| e == s.expired);
                (s.uses == *uses && s.revoked == *revoked && same_expiry).then_some(s)
            }
        }
    }
}

/// The result of one key's search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linearizable {
    Yes,
    /// No order explains the history; the entries of the shortest failing prefix.
    No(Vec<usize>),
    Unknown,
}

pub fn check(analysis: &Analysis<'_>, results: &mut Results) {
    let deadline_per_key = analysis.config.search_limit;
    let mut unknown = 0usize;
    let judged = ["key_used", "key_exhausted", "key_revoked", "key_expired", "invalid_auth_key"];
    let mut unjudged: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in analysis.keys.values().flat_map(|k| k.enrolments()).filter(|p| p.kind() == OpType::Fail) {
        let code = p.error().unwrap_or("none");
        if !judged.contains(&code) && !SAYS_NOTHING_OF_THE_KEY.contains(&code) {
            *unjudged.entry(code).or_default() += 1;
        }
    }
    for (code, n) in unjudged {
        results.unknown(NAME, format!("{n} enrolments refused {code:?}, a refusal the model cannot judge"));
    }
    for (key_id, key) in &analysis.keys {
        let entries = entries(key);
        if entries.is_empty() {
            continue;
        }
        results.examined(NAME, 1);
        let rules =
            Rules { limit: key.meta.limit, expires_at_ms: key.meta.expires_at_ms, skew_ms: analysis.config.skew_ms };
        match search_with_witness(&rules, &entries, Instant::now() + deadline_per_key) {
            Linearizable::Yes => {}
            Linearizable::Unknown => unknown += 1,
            Linearizable::No(witness) => {
                let mut ops = key.meta.create.indexes();
                ops.extend(witness);
                let message = format!("no order of this key's {} operations fits the model", entries.len());
                results.anomaly(NAME, Kind::NotLinearizable, Some(key_id), message, ops);
            }
        }
    }
    if unknown > 0 {
        results.unknown(NAME, format!("the search ran out of time on {unknown} keys"));
    }
}

/// The key's operations the model knows, with the final read when it found the key.
fn entries(key: &KeyHistory<'_>) -> Vec<Entry> {
    let final_read = key.final_record.as_ref().filter(|r| !r.missing).map(|r| &r.read);
    // Number the machines that enrol more than once (at most 64 per key).
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for p in key.ops.iter().filter(|p| p.invoke.f == f::ENROL) {
        if let Some(device) = p.device() {
            *seen.entry(device).or_default() += 1;
        }
    }
    let numbered: std::collections::BTreeMap<&str, u8> =
        seen.into_iter().filter(|(_, n)| *n > 1).take(64).enumerate().map(|(i, (d, _))| (d, i as u8)).collect();
    key.ops
        .iter()
        .chain(final_read)
        .filter_map(|p| entry(p, p.device().and_then(|d| numbered.get(d).copied())))
        .collect()
}

fn entry(p: &Pair<'_>, machine: Option<u8>) -> Option<Entry> {
    let call = match (p.invoke.f.as_str(), p.kind()) {
        (f::ENROL, OpType::Ok | OpType::Info) => Call::Enrol { machine },
        (f::ENROL, OpType::Fail) => match p.error()? {
            "key_used" | "key_exhausted" => Call::Refused(Refusal::Used { machine }),
            "key_revoked" => Call::Refused(Refusal::Revoked),
            "key_expired" => Call::Refused(Refusal::Expired),
            "invalid_auth_key" => Call::Refused(Refusal::NoSuchKey),
            _ => return None,
        },
        (f::REVOKE, OpType::Ok | OpType::Info) => Call::Revoke,
        (f::READ, OpType::Ok) => {
            let expired = match p.value()["state"].as_str() {
                Some("expired") => Some(true),
                Some("valid") => Some(false),
                // `used`, `exhausted` and `revoked` say nothing about the clock.
                _ => None,
            };
            Call::Read { uses: p.value()["uses"].as_u64()?, revoked: p.value()["revoked"].as_bool()?, expired }
        }
        _ => return None,
    };
    Some(Entry {
        call,
        invoked: p.invoke.time,
        completed: p.completed_at(),
        invoked_wall_ms: p.invoke.wall_ms,
        completed_wall_ms: p.completed_wall_ms(),
        indexes: p.indexes(),
    })
}

/// Searches the whole history; on failure, finds the shortest failing prefix for the witness.
pub fn search_with_witness(rules: &Rules, entries: &[Entry], deadline: Instant) -> Linearizable {
    match search(rules, entries, deadline) {
        Some(true) => return Linearizable::Yes,
        None => return Linearizable::Unknown,
        Some(false) => {}
    }
    // The prefix up to each completion, with later completions still pending (as info).
    let mut cuts: Vec<u64> = entries.iter().map(|e| e.completed).filter(|&c| c != u64::MAX).collect();
    cuts.sort_unstable();
    for cut in cuts {
        let prefix: Vec<Entry> = entries
            .iter()
            .filter(|e| e.invoked <= cut)
            .map(|e| {
                let mut e = e.clone();
                if e.completed > cut {
                    e.completed = u64::MAX;
                    e.completed_wall_ms = u64::MAX;
                }
                e
            })
            .collect();
        if search(rules, &prefix, deadline) == Some(false) {
            return Linearizable::No(prefix.iter().flat_map(|e| e.indexes.clone()).collect());
        }
    }
    Linearizable::No(entries.iter().flat_map(|e| e.indexes.clone()).collect())
}

/// `Some(true)` if some order of `entries` fits the model, `Some(false)` if none does, `None`
/// past the deadline.
pub fn search(rules: &Rules, entries: &[Entry], deadline: Instant) -> Option<bool> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].invoked);
    let entries: Vec<&Entry> = order.iter().map(|&i| &entries[i]).collect();
    let mut search = Search { rules, entries: &entries, seen: HashSet::new(), steps: 0, deadline, timed_out: false };
    let start = KeyModel { uses: 0, revoked: false, expired: false, enrolled: 0 };
    let done = vec![0u64; entries.len().div_ceil(64)];
    let found = search.explore(&done, start);
    if search.timed_out {
        None
    } else {
        Some(found)
    }
}

struct Search<'a> {
    rules: &'a Rules,
    entries: &'a [&'a Entry],
    seen: HashSet<(Vec<u64>, KeyModel)>,
    steps: u64,
    deadline: Instant,
    timed_out: bool,
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

impl Search<'_> {
    fn explore(&mut self, done: &[u64], state: KeyModel) -> bool {
        self.steps += 1;
        if self.steps % 4096 == 0 && Instant::now() > self.deadline {
            self.timed_out = true;
        }
        if self.timed_out {
            return false;
        }
        // The earliest completion among the completed operations not yet linearized.
        let pending = (0..self.entries.len()).filter(|&i| !is_set(done, i));
        let earliest = pending.clone().map(|i| self.entries[i].completed).min();
        let Some(earliest) = earliest else { return true };
        if earliest == u64::MAX {
            // Only info operations are left; they may never have happened.
            return true;
        }
        for i in pending {
            let entry = self.entries[i];
            if entry.invoked > earliest {
                break;
            }
            for next in self.rules.step(state, entry) {
                let mut bits = done.to_vec();
                bits[i / 64] |= 1 << (i % 64);
                if !self.seen.insert((bits.clone(), next)) {
                    continue;
                }
                if self.explore(&bits, next) {
                    return true;
                }
            }
        }
        false
    }
}
