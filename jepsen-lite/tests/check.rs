//! `jepsen-lite check` on a stored history: the run that failed on a fresh machine (seed 547784
//! at 4c5a81b) is judged invalid again from its history alone, with the anomaly in its report.

use std::process::Command;

#[test]
fn checking_the_seed_547784_history_answers_invalid_with_its_witness() {
    // Compiled in (and tracked by cargo): a path baked with env!("CARGO_MANIFEST_DIR") points at
    // whichever checkout last built this binary when checkouts share a target directory.
    let fixture = include_str!("fixtures/seed547784-expired-then-used.jsonl");
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    std::fs::write(&history, fixture).expect("write the fixture");
    let out = Command::new(env!("CARGO_BIN_EXE_jepsen-lite")).arg("check").arg(&history).output().expect("run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "invalid is exit status 1:\n{text}");
    let anomalies = std::fs::read_to_string(dir.path().join("anomalies.txt")).expect("anomalies.txt");
    assert!(anomalies.contains("[linearizable/not-linearizable] key ak_j0u0E021Jatn"), "{anomalies}");
}
