//! Per key: acknowledged enrolments stay within the limit, and the final record holds exactly
//! what the clients can account for.
//!
//! - acknowledged enrolments ≤ the limit (one-shot 1, `max_uses` N);
//! - every acknowledged device is in the final record (no lost acknowledgement);
//! - every device in the final record was sent by some client (no phantom);
//! - no device whose every request completed `fail` is in the final record (honest failures);
//! - no device is in the final record twice: a machine enrolling again is a re-key, not a
//!   second enrolment (no workload removes machines);
//! - `uses` equals the number of enrolments in the final record, which is within the limit.

use super::{devices_sent, devices_with, Analysis, Kind, Results};
use crate::history::OpType;

const NAME: &str = "limits";

pub fn check(analysis: &Analysis<'_>, results: &mut Results) {
    let mut missing_final = 0usize;
    for (key_id, key) in &analysis.keys {
        results.examined(NAME, 1);
        let acked = devices_with(key, OpType::Ok);
        let failed = devices_with(key, OpType::Fail);
        let unknown = devices_with(key, OpType::Info);
        let create = key.meta.create.indexes();
        if let Some(limit) = key.meta.limit {
            if acked.len() as u64 > limit {
                let mut ops = create.clone();
                ops.extend(acked.values().take(limit as usize + 1).flat_map(|p| p.indexes()));
                let message = format!("{} enrolments acknowledged for a key limited to {limit}", acked.len());
                results.anomaly(NAME, Kind::OverLimit, Some(key_id), message, ops);
            }
        }
        let Some(record) = &key.final_record else {
            if !key.ops.is_empty() {
                missing_final += 1;
            }
            continue;
        };
        let final_read = record.read.indexes();
        if record.missing {
            let mut ops = create.clone();
            ops.extend(&final_read);
            let message =
                "lost acknowledgement: the key's creation was acknowledged but the final read finds no such key";
            results.anomaly(NAME, Kind::LostAcknowledgement, Some(key_id), message.to_string(), ops);
            continue;
        }
        let in_record: std::collections::BTreeSet<&str> = record.devices.iter().map(String::as_str).collect();
        for (device, p) in &acked {
            if !in_record.contains(device) {
                let mut ops = p.indexes();
                ops.extend(&final_read);
                results.anomaly(
                    NAME,
                    Kind::LostAcknowledgement,
                    Some(key_id),
                    format!("lost acknowledgement: device {device} enrolled (ok) but is not in the final record"),
                    ops,
                );
            }
        }
        let sent = devices_sent(key);
        for device in &in_record {
            if !sent.contains(device) {
                let message = format!("phantom: device {device} is in the final record but no client sent it");
                results.anomaly(NAME, Kind::Phantom, Some(key_id), message, final_read.clone());
            }
            // A machine that enrols again may have one attempt refused and another succeed.
            if let Some(p) = failed.get(device).filter(|_| !acked.contains_key(device) && !unknown.contains_key(device))
            {
                let mut ops = p.indexes();
                ops.extend(&final_read);
                let error = p.error().unwrap_or("fail");
                let message = format!("device {device} was refused ({error}) yet enrolled");
                results.anomaly(NAME, Kind::RefusedYetEnrolled, Some(key_id), message, ops);
            }
        }
        let mut once = std::collections::BTreeSet::new();
        for device in &record.devices {
            if !once.insert(device) {
                let message = format!("device {device} is in the final record twice: a re-enrolment spent a use");
                results.anomaly(NAME, Kind::DoubleEnrolment, Some(key_id), message, final_read.clone());
            }
        }
        if record.uses != record.devices.len() as u64 {
            let message = format!("uses is {} but the record lists {} enrolments", record.uses, record.devices.len());
            results.anomaly(NAME, Kind::UsesMismatch, Some(key_id), message, final_read.clone());
        }
        if let Some(limit) = key.meta.limit {
            if record.devices.len() as u64 > limit {
                let mut ops = create.clone();
                ops.extend(&final_read);
                let message =
                    format!("the final record lists {} enrolments for a key limited to {limit}", record.devices.len());
                results.anomaly(NAME, Kind::OverLimit, Some(key_id), message, ops);
            }
        }
    }
    if missing_final > 0 {
        results.unknown(NAME, format!("{missing_final} keys have no successful final read"));
    }
}
