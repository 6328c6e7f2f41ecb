//! The load generator against a small real cluster for one second: every workload runs, and
//! every count it reports agrees with what the servers say (`ztna-bench selfcheck`). Uses the
//! `ztna` built beside `ztna-bench` in the same workspace.

use std::process::Command;

#[test]
fn the_load_generator_agrees_with_the_servers_it_drives() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_ztna-bench"));
    let ztna = bench.with_file_name("ztna");
    assert!(ztna.exists(), "build ztna first (cargo test --workspace builds it): {}", ztna.display());
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(bench)
        .args(["selfcheck", "--ztna"])
        .arg(&ztna)
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run ztna-bench selfcheck");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "selfcheck failed:\n{text}");
}
