//! No definite refusal of a credential that exists: a request refused `invalid_auth_key` with an
//! auth key whose creation was acknowledged, `unauthorized` with an API key whose creation was
//! acknowledged (or the run's own org key, which the acknowledged initialisation made), or
//! `unknown_node_key` with the node key an acknowledged enrolment returned, is a lie by the
//! outcome table (a 401 is a definite answer that nothing changed because the credential is
//! unknown). The harness never revokes an API key or deletes a `handoff` machine, and keys are
//! never deleted; a revoked auth key is refused `key_revoked`, never `invalid_auth_key`.
//!
//! Such a refusal comes from a node deciding on a state that lacks the credential: a new
//! leader before it applied its predecessor's last entries, a deposed leader, a follower.

use std::collections::{BTreeMap, BTreeSet};

use super::{Analysis, Kind, Results};
use crate::history::{f, OpType};

const NAME: &str = "credentials";

pub fn check(analysis: &Analysis<'_>, results: &mut Results) {
    let ok = |name: &'static str| analysis.pairs.iter().filter(move |p| p.invoke.f == name && p.kind() == OpType::Ok);
    let api_keys: BTreeMap<&str, _> = ok(f::CREATE_API_KEY).filter_map(|p| Some((p.key()?, *p))).collect();
    let machines: BTreeMap<&str, _> = ok(f::ENROL)
        .filter(|p| p.value()["ephemeral"] != true)
        .filter_map(|p| Some((p.value()["machine_id"].as_str()?, *p)))
        .collect();
    let mut examined = BTreeSet::new();
    for p in analysis.pairs.iter().filter(|p| p.kind() == OpType::Fail) {
        // Where the credential was made: an acknowledged creation, or the initialisation.
        let (made, what): (Option<Option<_>>, String) = match (p.invoke.f.as_str(), p.error()) {
            (f::ENROL, Some("invalid_auth_key")) => {
                let key = p.key();
                (key.and_then(|k| analysis.keys.get(k)).map(|k| Some(k.meta.create)), format!("auth key {key:?}"))
            }
            (f::WHOAMI, Some("unauthorized")) => {
                let id = p.key();
                (id.and_then(|id| api_keys.get(id)).map(|p| Some(*p)), format!("API key {id:?}"))
            }
            (f::HEARTBEAT, Some("unknown_node_key" | "node_key_revoked")) => {
                let machine = p.invoke.value["machine_id"].as_str();
                (
                    machine.and_then(|m| machines.get(m)).map(|p| Some(*p)),
                    format!("the node key of machine {machine:?}"),
                )
            }
            // Every other call with an API key uses the org's (or the operator) key that the
            // acknowledged initialisation made.
            (_, Some("unauthorized")) => (Some(None), "the key the cluster's initialisation made".to_string()),
            _ => continue,
        };
        examined.insert(p.invoke.index);
        // Not acknowledged as made: a refusal says nothing.
        let Some(made) = made else { continue };
        let mut ops: Vec<usize> = made.map(|m| m.indexes()).unwrap_or_default();
        ops.extend(p.indexes());
        let message = format!(
            "{} through n{} was refused {} although {what} was made (and never revoked)",
            p.invoke.f,
            p.invoke.node.unwrap_or(0),
            p.error().unwrap_or("?")
        );
        results.anomaly(NAME, Kind::RefusedValidCredential, p.key(), message, ops);
    }
    let uses = analysis.pairs.iter().filter(|p| matches!(p.invoke.f.as_str(), f::WHOAMI | f::HEARTBEAT | f::ENROL));
    results.examined(NAME, uses.count().max(examined.len()));
}
