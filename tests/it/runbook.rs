//! The runbook (`docs/operations.md`) run as written, so it and the binary cannot drift apart.
//!
//! Every `sh` block of the runbook carries a `<!-- runbook: NAME -->` label; this test runs
//! each one, line by line and in the runbook's order, as an operator would: deploy three nodes
//! from `cluster/three-hosts.example.toml`, initialise, add a node, remove one, replace a lost
//! host, take a backup, restore it into a new cluster and upgrade a node. What it changes is
//! only where things are: the addresses `10.0.0.1N:7100`/`:7200` become loopback ports, the
//! paths under `/etc/ztna`, `/var/lib/ztna` and `/usr/local/bin` a temporary directory per
//! "site" (the old cluster's hosts, then the new one's), and `systemctl` starts and stops the
//! command in the unit file's `ExecStart` (this machine runs no systemd). The service-account
//! lines (`useradd`, `chown`) are skipped: the nodes run as the test's user. A block that is
//! not labelled, a label this test does not run, or a line that fails makes the test fail.
//!
//! It must not run any command the runbook does not show, except to seed and check data (an
//! auth key and an enrolment before the backup, the same after the restore).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{free_port, ztna};

const RUNBOOK: &str = include_str!("../../docs/operations.md");
const EXAMPLE_CLUSTER: &str = include_str!("../../cluster/three-hosts.example.toml");
const UNIT: &str = include_str!("../../cluster/systemd/ztna-server@.service");

/// Lines about the `ztna` service account, which the test's nodes do not use.
const SERVICE_ACCOUNT: [&str; 2] = ["useradd", "chown"];

/// The runbook's labelled code blocks: label → (language, text).
fn blocks() -> BTreeMap<String, (String, String)> {
    let mut blocks = BTreeMap::new();
    let mut label: Option<String> = None;
    let mut lines = RUNBOOK.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("<!-- runbook: ") {
            label = Some(rest.trim_end_matches("-->").trim().to_string());
            continue;
        }
        let Some(lang) = line.strip_prefix("```").filter(|l| !l.is_empty()) else {
            if !line.trim().is_empty() {
                label = None;
            }
            continue;
        };
        let text: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        match label.take() {
            Some(name) => {
                let previous = blocks.insert(name.clone(), (lang.to_string(), text.join("\n")));
                assert!(previous.is_none(), "two runbook blocks are labelled {name}");
            }
            None => {
                assert!(lang != "sh", "an sh block of docs/operations.md has no runbook label:\n{}", text.join("\n"))
            }
        }
    }
    blocks
}

/// One set of hosts: where its files live and the loopback addresses standing for its own.
struct Site {
    root: PathBuf,
    /// Node id → (API address, Raft address).
    addrs: BTreeMap<u64, (String, String)>,
    nodes: BTreeMap<u64, Child>,
}

impl Site {
    fn new(root: PathBuf) -> Site {
        // What the unit's `StateDirectory=ztna` makes.
        std::fs::create_dir_all(root.join("var/lib/ztna")).expect("state directory");
        std::fs::create_dir_all(root.join("etc/ztna")).expect("configuration directory");
        std::fs::create_dir_all(root.join("usr/local/bin")).expect("binary directory");
        let addrs = (1..=5u64)
            .map(|id| (id, (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))))
            .collect();
        Site { root, addrs, nodes: BTreeMap::new() }
    }

    /// The runbook's addresses and paths, as they are at this site.
    fn place(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (id, (api, raft)) in &self.addrs {
            text = text.replace(&format!("10.0.0.1{id}:7100"), api).replace(&format!("10.0.0.1{id}:7200"), raft);
        }
        for dir in ["/etc/ztna/", "/var/lib/ztna/", "/usr/local/bin/"] {
            text = text.replace(dir, &format!("{}{dir}", self.root.display()));
        }
        text
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.root.join(format!("node{id}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.addrs.keys().map(|id| format!("--- node {id}\n{}", self.log(*id))).collect()
    }

    /// Waits for node `id`'s process to end; its exit code.
    fn wait_exit(&mut self, id: u64, within: Duration) -> Option<i32> {
        let child = self.nodes.get_mut(&id)?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes.remove(&id);
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn kill_all(&mut self) {
        for child in self.nodes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes.clear();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The operator's shell: a working directory, exported variables and the current site.
struct Operator {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    site: Site,
    blocks: BTreeMap<String, (String, String)>,
    ran: BTreeSet<String>,
}

impl Operator {
    fn new() -> Operator {
        let dir = tempfile::tempdir().expect("temp dir");
        // The new build the runbook installs is `./ztna` in the operator's directory.
        std::fs::copy(ztna(), dir.path().join("ztna")).expect("copy the ztna binary");
        let site = Site::new(dir.path().join("site-a"));
        Operator { dir, env: BTreeMap::new(), site, blocks: blocks(), ran: BTreeSet::new() }
    }

    fn block(&mut self, label: &str, lang: &str) -> String {
        let (found, text) =
            self.blocks.get(label).unwrap_or_else(|| panic!("the runbook has no block {label}")).clone();
        assert_eq!(found, lang, "runbook block {label}");
        self.ran.insert(label.to_string());
        text
    }

    /// Runs every line of the block `label`; answers what they printed.
    fn run(&mut self, label: &str) -> String {
        self.run_lines(label, |_| true)
    }

    /// Runs the lines of block `label` that `keep` selects.
    fn run_lines(&mut self, label: &str, keep: impl Fn(&str) -> bool) -> String {
        let text = self.block(label, "sh");
        let mut printed = String::new();
        for line in text.lines() {
            // Comments are the runbook's notes to the reader ("on 10.0.0.11").
            let line = line.split(" #").next().unwrap_or_default().trim();
            if line.is_empty() || !keep(line) {
                continue;
            }
            printed.push_str(&self.line(label, line));
        }
        printed
    }

    fn line(&mut self, label: &str, line: &str) -> String {
        if line == "set -a; . ./cluster.env; set +a" {
            let text = std::fs::read_to_string(self.dir.path().join("cluster.env")).expect("cluster.env");
            for assignment in text.lines().filter(|l| !l.is_empty()) {
                let (name, value) = assignment.split_once('=').expect("NAME=value");
                self.env.insert(name.to_string(), value.to_string());
            }
            return String::new();
        }
        let words = shlex::split(line).unwrap_or_else(|| panic!("{label}: cannot parse {line:?}"));
        match words[0].as_str() {
            "export" => {
                for assignment in &words[1..] {
                    let (name, value) = assignment.split_once('=').expect("NAME=value");
                    self.env.insert(name.to_string(), self.site.place(value));
                }
                String::new()
            }
            "systemctl" => {
                self.systemctl(label, &words[1..]);
                String::new()
            }
            command if SERVICE_ACCOUNT.contains(&command) => String::new(),
            _ if line.starts_with("ztna cluster status") => self.status_until_settled(label, line),
            _ => {
                let (ok, stdout, stderr) = self.sh(line);
                assert!(ok, "{label}: `{line}` failed:\n{stdout}{stderr}\n{}", self.site.logs());
                stdout
            }
        }
    }

    /// Runs one line with `sh` in the operator's directory, with the exported variables and
    /// this build's `ztna` first on the PATH.
    fn sh(&self, line: &str) -> (bool, String, String) {
        self.sh_with(line, &[])
    }

    fn sh_with(&self, line: &str, extra: &[(&str, &str)]) -> (bool, String, String) {
        let bin_dir = Path::new(&ztna()).parent().expect("the binary's directory").to_path_buf();
        let out = Command::new("sh")
            .arg("-c")
            .arg(self.site.place(line))
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display()))
            .envs(&self.env)
            .envs(extra.iter().copied())
            .output()
            .expect("run sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ztna cluster status` is run until it succeeds and shows every node at one applied
    /// index, as the runbook says to (nodes just started take a moment to answer).
    fn status_until_settled(&self, label: &str, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, stdout, stderr) = self.sh(line);
            let applied: BTreeSet<&str> = status_rows(&stdout).iter().filter_map(|row| row.get(5).copied()).collect();
            if ok && applied.len() == 1 {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: `{line}` never showed every node at one applied index:\n{stdout}{stderr}\n{}",
                self.site.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn systemctl(&mut self, label: &str, words: &[String]) {
        let (verb, unit) = match words {
            [enable, now, unit] if enable == "enable" && now == "--now" => ("start", unit),
            [verb, unit] => (verb.as_str(), unit),
            _ => panic!("{label}: unsupported systemctl {words:?}"),
        };
        let id: u64 = unit
            .strip_prefix("ztna-server@")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("{label}: unit {unit}"));
        match verb {
            "start" => self.start(id),
            "stop" => {
                let pid = self.site.nodes.get(&id).unwrap_or_else(|| panic!("{label}: node {id} is not running")).id();
                Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
                // The unit's TimeoutStopSec.
                let code = self.site.wait_exit(id, Duration::from_secs(30));
                assert_eq!(code, Some(0), "{label}: node {id} did not stop cleanly:\n{}", self.site.log(id));
            }
            other => panic!("{label}: unsupported systemctl {other}"),
        }
    }

    /// Starts node `id` with the unit's `ExecStart`.
    fn start(&mut self, id: u64) {
        let exec = UNIT
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit's ExecStart")
            .replace("%i", &id.to_string());
        let words = shlex::split(&self.site.place(&exec)).expect("ExecStart words");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.site.root.join(format!("node{id}.log")))
            .expect("log file");
        let child = Command::new(&words[0])
            .args(&words[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start node {id} ({}): {e}", words[0]));
        assert!(self.site.nodes.insert(id, child).is_none(), "node {id} was running");
    }

    /// The cluster file on every host of the site: the example with the printed token line.
    fn write_cluster_file(&self, secrets_output: &str) {
        let token_line = secrets_output
            .lines()
            .find(|l| l.starts_with("bootstrap_token_sha256 = \""))
            .unwrap_or_else(|| panic!("bootstrap-token printed no bootstrap_token_sha256 line:\n{secrets_output}"));
        let text: Vec<&str> = EXAMPLE_CLUSTER
            .lines()
            .map(|l| if l.starts_with("bootstrap_token_sha256") { token_line } else { l })
            .collect();
        std::fs::write(self.site.root.join("etc/ztna/cluster.toml"), self.site.place(&text.join("\n")))
            .expect("write the cluster file");
    }

    /// Adds a `[[nodes]]` entry (the runbook's, for node 4, or the same for another id).
    fn list_node(&mut self, id: u64) {
        let entry = self
            .block("node-4", "toml")
            .replace("id = 4", &format!("id = {id}"))
            .replace("10.0.0.14", &format!("10.0.0.1{id}"));
        let path = self.site.root.join("etc/ztna/cluster.toml");
        let mut text = std::fs::read_to_string(&path).expect("cluster file");
        text.push_str(&format!("\n{}\n", self.site.place(&entry)));
        std::fs::write(&path, text).expect("write the cluster file");
    }

    /// Runs a `ztna` command that is not the runbook's (seeding and checking data); its JSON.
    fn ztna_json(&self, args: &str, extra: &[(&str, &str)]) -> Value {
        let (ok, stdout, stderr) = self.sh_with(&format!("ztna {args} --output json"), extra);
        assert!(ok, "ztna {args}: {stdout}{stderr}\n{}", self.site.logs());
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ztna {args}: {e}: {stdout}"))
    }
}

/// The rows of `ztna cluster status`'s table, split into columns.
fn status_rows(stdout: &str) -> Vec<Vec<&str>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|row| row.first().is_some_and(|id| id.parse::<u64>().is_ok()))
        .collect()
}

fn voters(status: &str) -> BTreeSet<u64> {
    status_rows(status)
        .iter()
        .filter(|row| row.get(2) == Some(&"voter"))
        .filter_map(|row| row[0].parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbook_runs_as_written() {
    tokio::task::spawn_blocking(run_the_runbook).await.expect("the runbook");
}

fn run_the_runbook() {
    let mut op = Operator::new();

    // Deploying.
    let secrets = op.run("deploy-secrets");
    op.write_cluster_file(&secrets);
    op.run("deploy-start");
    let status = op.run("deploy-init");
    assert_eq!(voters(&status), BTreeSet::from([1, 2, 3]), "{status}");
    assert!(!op.dir.path().join("bootstrap.token").exists());

    // Data to find again after the restore: a used one-shot key and its machine.
    let key = op.ztna_json("auth-key create --expiry 1d", &[]);
    let secret = key["key"].as_str().expect("the key's secret").to_string();
    let key_id = key["key_id"].as_str().expect("key id").to_string();
    op.ztna_json("enrol --hostname runbook-1", &[("ZTNA_AUTH_KEY", &secret)]);

    // Membership: add node 4, remove node 2, replace node 3 (its host lost) by node 5.
    op.list_node(4);
    let status = op.run("add-node");
    assert_eq!(voters(&status), BTreeSet::from([1, 2, 3, 4]), "{status}");
    op.run("remove-node");
    let exit = op.site.wait_exit(2, Duration::from_secs(30));
    assert_eq!(exit, Some(3), "the removed node should stop with status 3:\n{}", op.site.log(2));
    let lost = op.site.nodes.get_mut(&3).expect("node 3 runs");
    lost.kill().expect("kill node 3");
    lost.wait().expect("node 3 gone");
    op.site.nodes.remove(&3);
    op.list_node(5);
    let status = op.run("replace-node");
    assert_eq!(voters(&status), BTreeSet::from([1, 4, 5]), "{status}");

    // Backup, then a new cluster on new hosts restored from it.
    op.run("backup");
    op.site.kill_all();
    let backup_of = std::mem::replace(&mut op.site, Site::new(op.dir.path().join("site-b")));
    drop(backup_of);
    let secrets = op.run("deploy-secrets");
    op.write_cluster_file(&secrets);
    op.run_lines("deploy-start", |line| !line.starts_with("systemctl"));
    let status = op.run("restore");
    assert_eq!(voters(&status), BTreeSet::from([1, 2, 3]), "{status}");
    // The org's API key (from cluster.env) and everything it made are there, and it takes writes.
    let restored = op.ztna_json(&format!("auth-key get {key_id}"), &[]);
    assert_eq!(restored["uses"], 1, "{restored}");
    let machines = op.ztna_json("machines list", &[]);
    assert!(machines.to_string().contains("runbook-1"), "{machines}");
    let (ok, stdout, stderr) = op.sh_with("ztna enrol --hostname runbook-2", &[("ZTNA_AUTH_KEY", &secret)]);
    assert!(!ok && format!("{stdout}{stderr}").contains("key_used"), "{stdout}{stderr}");
    op.ztna_json("auth-key create --expiry 1d", &[]);

    // A rolling upgrade's step on the restored cluster.
    op.run("upgrade-one-node");
    op.ztna_json("auth-key create --expiry 1d", &[]);

    let sh_blocks: BTreeSet<String> =
        op.blocks.iter().filter(|(_, (lang, _))| lang == "sh").map(|(label, _)| label.clone()).collect();
    let missed: Vec<&String> = sh_blocks.difference(&op.ran).collect();
    assert!(missed.is_empty(), "runbook blocks this test does not run: {missed:?}");
}
