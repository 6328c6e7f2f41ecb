//! No enrolment invoked after a revoke was acknowledged, or after a read showed the key
//! revoked, succeeds or appears in the final record.

use super::{Analysis, Kind, Results};
use crate::history::{f, OpType, Pair};

const NAME: &str = "revoke";

pub fn check(analysis: &Analysis<'_>, results: &mut Results) {
    for (key_id, key) in &analysis.keys {
        // The earliest moment the key is known to be revoked, and the operation that shows it.
        let shown: Option<&Pair<'_>> = key
            .ops
            .iter()
            .filter(|p| p.kind() == OpType::Ok)
            .filter(|p| p.invoke.f == f::REVOKE || (p.invoke.f == f::READ && p.value()["revoked"] == true))
            .min_by_key(|p| p.completed_at());
        let Some(revoked) = shown else { continue };
        results.examined(NAME, 1);
        let since = revoked.completed_at();
        let in_record: Vec<&str> =
            key.final_record.as_ref().map(|r| r.devices.iter().map(String::as_str).collect()).unwrap_or_default();
        for p in key.enrolments().filter(|p| p.invoke.time > since) {
            let mut ops = revoked.indexes();
            ops.extend(p.indexes());
            if p.kind() == OpType::Ok {
                let message = format!(
                    "enrolment invoked {} ms after the key was known revoked succeeded",
                    (p.invoke.time - since) / 1_000_000
                );
                results.anomaly(NAME, Kind::EnrolledAfterRevoke, Some(key_id), message, ops);
            } else if p.device().is_some_and(|d| in_record.contains(&d)) {
                let message = format!(
                    "enrolment invoked {} ms after the key was known revoked is in the final record",
                    (p.invoke.time - since) / 1_000_000
                );
                if let Some(r) = &key.final_record {
                    ops.extend(r.read.indexes());
                }
                results.anomaly(NAME, Kind::EnrolledAfterRevoke, Some(key_id), message, ops);
            }
        }
    }
}
