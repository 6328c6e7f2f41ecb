//! The load generator against small real clusters for one second each: every count it reports
//! agrees with what the servers say, for ztna and for etcd's client, whose counted-use
//! transaction is driven past its limit on purpose (`ztna-bench selfcheck`). Uses the `ztna`
//! built beside `ztna-bench` in the same workspace and Debian's etcd (`scripts/test` installs
//! `etcd-server`).

use std::process::Command;

#[test]
fn the_load_generator_agrees_with_the_servers_it_drives() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_ztna-bench"));
    let ztna = bench.with_file_name("ztna");
    assert!(ztna.exists(), "build ztna first (cargo test --workspace builds it): {}", ztna.display());
    let etcd = std::path::Path::new("/usr/bin/etcd");
    assert!(etcd.exists(), "install etcd-server (scripts/test does): {}", etcd.display());
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(bench)
        .args(["selfcheck", "--ztna"])
        .arg(&ztna)
        .arg("--etcd")
        .arg(etcd)
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run ztna-bench selfcheck");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "selfcheck failed:\n{text}");
}
