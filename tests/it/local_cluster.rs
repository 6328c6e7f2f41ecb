//! `ztna cluster up` (what `scripts/cluster-up` runs), as a new user meets it: the demo this
//! product exists for is killing the leader mid-rollout, so the other two keep serving and the
//! dead node comes back with its data.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{free_port, proven_enrol_body, ztna};

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).timeout(Duration::from_secs(2)).send().await.ok()?.json().await.ok()
}

/// The process id of the `ztna server` whose data directory is `data_dir` (from /proc).
fn server_pid(data_dir: &std::path::Path) -> Option<u32> {
    let wanted = data_dir.to_str()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serving = args.contains(&b"server".as_slice()) && args.contains(&wanted.as_bytes());
        serving.then_some(pid)
    })
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, within: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_keeps_serving_when_its_leader_is_killed_and_brings_it_back() {
    ztna_keystore::tls::ensure_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = String::from("[settings]\ncluster_name = \"demo\"\n");
    let mut apis = Vec::new();
    for id in 1..=3 {
        let api = format!("127.0.0.1:{}", free_port());
        file.push_str(&format!(
            "[[nodes]]\nid = {id}\napi_addr = \"{api}\"\nraft_addr = \"127.0.0.1:{}\"\n",
            free_port()
        ));
        apis.push(api);
    }
    // Where `cluster up` makes the certificates on its first start.
    file.push_str("\n[tls]\nca_cert = \"tls/ca.crt\"\ncert = \"tls/node{id}.crt\"\nkey = \"tls/node{id}.key\"\n");
    let cluster_file = dir.path().join("cluster.toml");
    std::fs::write(&cluster_file, file).expect("cluster file");
    let data = dir.path().join("data");
    let out_path = dir.path().join("up.out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut up = Command::new(ztna())
        .args(["cluster", "up", "--cluster"])
        .arg(&cluster_file)
        .arg("--data-dir")
        .arg(&data)
        .stdout(out.try_clone().expect("output"))
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("ztna cluster up");
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let http = reqwest::Client::new();

    wait_until("the cluster to come up", Duration::from_secs(60), || async { output().contains("Press Ctrl-C") }).await;
    let env = std::fs::read_to_string(data.join("cluster.env")).expect("cluster.env");
    let value = |name: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap().to_string();
    let (api_key, org) = (value("QZ_API_KEY"), value("ZTNA_ORG"));
    // The dashboard the guide starts from is announced, and there.
    let console = format!("http://{}/console", apis[0]);
    assert!(output().contains(&console), "no console URL in:\n{}", output());
    let page = http.get(&console).send().await.expect("GET /console");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap_or_default().contains("/console/app.js"));

    let asked = http.get(format!("http://{}/api/cluster", apis[0])).bearer_auth(&api_key).send().await;
    let info: Value = asked.expect("cluster info").json().await.expect("cluster info");
    let leader = info["leader"].as_u64().expect("a leader");
    let pid = server_pid(&data.join(format!("node{leader}"))).expect("the leader's process");
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());

    // Mid-rollout: a key made and machines enrolled through the two that are left.
    let survivors: Vec<&String> = (1..=3).filter(|id| *id != leader).map(|id| &apis[id as usize - 1]).collect();
    let url = format!("http://{}/api/key-management", survivors[0]);
    let body = json!({"action": "create_auth_key", "org_id": org, "reusable": true});
    let deadline = Instant::now() + Duration::from_secs(20);
    let key: Value = loop {
        if let Ok(r) = http.post(&url).bearer_auth(&api_key).json(&body).send().await {
            if r.status() == 200 {
                break r.json().await.expect("the key");
            }
        }
        assert!(Instant::now() < deadline, "no key from a survivor:\n{}", output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secret = key["key"].as_str().expect("the secret").to_string();
    for (n, api) in survivors.iter().enumerate() {
        let body = proven_enrol_body(&http, &format!("http://{api}"), &secret, &format!("laptop-{n}"), n as u64)
            .await
            .expect("the node's enrolment key");
        let r = http.post(format!("http://{api}/api/enrol")).json(&body).send().await.expect("enrol");
        assert_eq!(r.status(), 200, "enrol through {api}");
    }
    assert!(matches!(up.try_wait(), Ok(None)), "cluster up stopped:\n{}", output());
    wait_until("the supervisor to say which node died", Duration::from_secs(10), || async {
        output().contains(&format!("node {leader} was killed by signal 9"))
    })
    .await;

    // Back with its data, and serving.
    let back = format!("http://{}/readyz", apis[leader as usize - 1]);
    wait_until("the killed node to come back", Duration::from_secs(30), || async {
        http.get(&back).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(output().contains(&format!("node {leader} started again with its data")), "{}", output());

    // Ctrl-C (SIGINT) still stops everything cleanly.
    let _ = Command::new("kill").args(["-INT", &up.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = up.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "cluster up did not stop:\n{}", output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{}", output());
    for api in &apis {
        assert!(get(&http, &format!("http://{api}/healthz")).await.is_none(), "{api} still answers");
    }
}
