//! Every acknowledged creation appears in every listing invoked after the creation was
//! acknowledged, and in the final listing.

use std::collections::BTreeSet;

use super::{Analysis, Kind, Results};
use crate::history::{f, OpType};

const NAME: &str = "listing";

pub fn check(analysis: &Analysis<'_>, results: &mut Results) {
    let listings: Vec<_> = analysis.pairs.iter().filter(|p| p.invoke.f == f::LIST && p.kind() == OpType::Ok).collect();
    let final_listed = listings.iter().any(|p| p.invoke.value["final"] == true);
    if !final_listed {
        results.unknown(NAME, "no final listing succeeded".into());
    }
    for listing in listings {
        results.examined(NAME, 1);
        let listed: BTreeSet<&str> = Analysis::strings(&listing.value()["key_ids"])
            .into_iter()
            .filter_map(|k| analysis.keys.get_key_value(k.as_str()).map(|(k, _)| k.as_str()))
            .collect();
        for (key_id, key) in &analysis.keys {
            if key.meta.create.completed_at() < listing.invoke.time && !listed.contains(key_id.as_str()) {
                let mut ops = key.meta.create.indexes();
                ops.extend(listing.indexes());
                let which = if listing.invoke.value["final"] == true { "the final listing" } else { "a later listing" };
                let message = format!("acknowledged creation missing from {which}");
                results.anomaly(NAME, Kind::MissingFromListing, Some(key_id), message, ops);
            }
        }
    }
}
