//! No enrolment succeeds after its key expired: none invoked later than the expiry plus the
//! clock-skew bound is acknowledged, and none in the final record was stamped at or after it.
//! The second rule needs no bound: the stamp is the state machine's own time.

use super::{Analysis, Kind, Results};
use crate::history::OpType;

const NAME: &str = "expiry";

pub fn check(analysis: &Analysis<'_>, results: &mut Results) {
    let skew = analysis.config.skew_ms;
    for (key_id, key) in &analysis.keys {
        let Some(expires_at) = key.meta.expires_at_ms else { continue };
        if key.meta.workload != "expiry" && key.enrolments().all(|p| p.invoke.wall_ms < expires_at) {
            continue;
        }
        results.examined(NAME, 1);
        for p in key.enrolments().filter(|p| p.kind() == OpType::Ok && p.invoke.wall_ms > expires_at + skew) {
            let message = format!(
                "enrolment invoked {} ms after the key expired (skew bound {skew} ms) succeeded",
                p.invoke.wall_ms - expires_at
            );
            let mut ops = key.meta.create.indexes();
            ops.extend(p.indexes());
            results.anomaly(NAME, Kind::EnrolledAfterExpiry, Some(key_id), message, ops);
        }
        if let Some(record) = &key.final_record {
            for (device, at) in record.devices.iter().zip(&record.enrolled_at_ms).filter(|(_, &at)| at >= expires_at) {
                let message = format!(
                    "device {device} enrolled at {at}, {} ms after the key's expiry {expires_at}",
                    at - expires_at
                );
                let mut ops = key.meta.create.indexes();
                ops.extend(record.read.indexes());
                results.anomaly(NAME, Kind::EnrolledAfterExpiry, Some(key_id), message, ops);
            }
        }
    }
}
