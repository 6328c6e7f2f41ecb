//! Nobody takes over the control plane: each attack of issue 13, tried against real processes.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

use crate::support::{ztna, Cluster};

/// A client presenting node `id`'s peer certificate (from the cluster's `tls/`).
pub fn peer_client(cluster: &Cluster, cert_of: u64) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = cluster.dir.path().join("tls");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(tls.join(format!("node{cert_of}.crt")))
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(tls.join(format!("node{cert_of}.key"))).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ztna_keystore::tls::roots(&tls.join("ca.crt")).expect("CA"))
        .with_client_auth_cert(certs, key)
        .expect("identity");
    reqwest::Client::builder().use_preconfigured_tls(config).timeout(Duration::from_secs(5)).build().expect("client")
}

pub async fn last_log_index(cluster: &Cluster, id: u64) -> u64 {
    cluster.cluster_info(id).await.and_then(|i| i["last_log_index"].as_u64()).unwrap_or(0)
}

/// The resident memory of node `id`'s process, in MiB.
fn rss_mib(cluster: &Cluster, id: u64) -> u64 {
    let pid = cluster.pid(id).expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_initialised_only_with_its_bootstrap_token() {
    let mut cluster = Cluster::unstarted_for_test("");
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = cluster.wait_ready().await;
    // Its internals are the bootstrap token's to read; health is anyone's.
    let view = cluster.http.get(format!("{}/api/cluster", cluster.url(leader))).send().await.unwrap();
    assert_eq!(view.status(), 401, "the cluster's view without a credential");
    let health = cluster.http.get(format!("{}/healthz", cluster.url(leader))).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let before = last_log_index(&cluster, leader).await;
    let body = json!({"org_name": "mine now"});
    let (status, answer) = cluster.post(leader, "/api/cluster/init", &body, None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unauthorized")), "{answer}");
    let wrong = ztna_keystore::secret::new_credential(
        ztna_keystore::secret::CredentialKind::BootstrapToken,
        ztna_keystore::secret::random_base62(12),
    );
    let (status, _) = cluster.post(leader, "/api/cluster/init", &body, Some(&wrong.text)).await;
    assert_eq!(status, 401, "a made-up token");
    assert_eq!(last_log_index(&cluster, leader).await, before, "a refused init proposes nothing");
    let token = cluster.bootstrap_token.clone();
    let (status, answer) = cluster.post(leader, "/api/cluster/init", &body, Some(&token)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_listener_lets_in_only_members_speaking_for_themselves() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let raft = cluster.raft_addr(leader);
    let vote = format!("https://{raft}/raft/vote");
    let other = (1..=3).find(|id| *id != leader).unwrap();
    // A member, as itself: its (malformed) message reaches the node.
    let member = peer_client(&cluster, other);
    let r = member.post(&vote).header("x-ztna-node", other.to_string()).body(vec![0u8]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // The same certificate claiming to be another node, or naming none: refused.
    let third = (1..=3).find(|id| *id != leader && *id != other).unwrap();
    let r = member.post(&vote).header("x-ztna-node", third.to_string()).body(vec![0u8]).send().await.unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap_or_default());
    let r = member.post(&vote).body(vec![0u8]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Plain HTTP never reaches Raft.
    let plain = reqwest::Client::new().post(format!("http://{raft}/raft/vote")).body(vec![0u8]).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // A removed node's certificate opens nothing, though the CA signed it.
    let removed = third;
    let body = json!({"action": "remove_node", "node_id": removed});
    let op = cluster.operator_key.clone();
    let (status, answer) = cluster.post(leader, "/api/cluster/membership", &body, Some(&op)).await;
    assert_eq!(status, 200, "{answer}");
    let _ = cluster.wait_exit(removed, Duration::from_secs(30)).await;
    cluster.kill(removed);
    // It holds one connection at most, and reaches no route but the one that tells it it was
    // removed.
    let gone = peer_client(&cluster, removed);
    let propose = format!("https://{raft}/internal/propose");
    for url in [&propose, &vote] {
        let r = gone.post(url).header("x-ztna-node", removed.to_string()).body(vec![0u8]).send().await;
        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 403, "a removed node's certificate reached {url}");
    }
    // Refusals are logged at most once per period per call site (`log_every`), so an earlier
    // refusal may hold this one back for up to a period: ask again until it is logged.
    let deadline = std::time::Instant::now() + ztna_keystore::log_every::PERIOD + Duration::from_secs(3);
    while !cluster.log(leader).contains(&format!("node {removed} is not a member of this cluster")) {
        assert!(std::time::Instant::now() < deadline, "refusals are logged");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = gone.post(&vote).header("x-ztna-node", removed.to_string()).body(vec![0u8]).send().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_writes_with_unknown_credentials_cost_no_log_entries() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let before = last_log_index(&cluster, leader).await;
    let fake = |n: u64| format!("tskey-api-{:0>12}-{:0>32}", n, n);
    let mut refused = 0;
    for n in 0..1000u64 {
        let through = if n % 2 == 0 { leader } else { follower };
        let body = json!({"action": "create_auth_key", "org_id": cluster.org_id, "request_id": format!("r{n}")});
        let (status, _) = cluster.post(through, "/api/key-management", &body, Some(&fake(n))).await;
        if status == 401 || status == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 1000);
    let after = last_log_index(&cluster, leader).await;
    assert!(after.saturating_sub(before) <= 5, "1,000 refused writes moved the log from {before} to {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_their_headers_are_closed_and_health_answers_meanwhile() {
    let cluster = Cluster::start_with("header_read_timeout_ms = 2000").await;
    let addr: std::net::SocketAddr = cluster.node(1).api_addr.parse().expect("address");
    // From an address of their own (the test client's keeps its share).
    let mut idle: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.2:0".parse().expect("address")).expect("bind");
        let s = socket.connect(addr).await.expect("connect").into_std().expect("std");
        s.set_nonblocking(false).expect("blocking");
        let mut s = s;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("half a request");
        idle.push(s);
    }
    let (status, _) = cluster.post(1, "/healthz", &json!({}), None).await;
    assert_ne!(status, 0, "the node answers while 300 slow clients wait");
    let health = cluster.http.get(format!("{}/healthz", cluster.url(1))).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut buf = [0u8; 256];
        // Closed by the node: end of stream (possibly after a 408 answer) or a reset.
        match s.read(&mut buf) {
            Ok(0) | Err(_) => closed += 1,
            Ok(_) => {
                if s.read(&mut buf).map(|n| n == 0).unwrap_or(true) {
                    closed += 1;
                }
            }
        }
    }
    assert_eq!(closed, 300, "every stalled connection is closed after the header timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_cost_no_copy_of_the_binary() {
    let cluster = Cluster::start_with("idle_timeout_ms = 30000").await;
    // One full download first: the binary is read once per process.
    let first = cluster.http.get(format!("{}/download/ztna-linux-x86_64", cluster.url(1))).send().await.unwrap();
    let size = first.bytes().await.unwrap().len() as u64;
    let before = rss_mib(&cluster, 1);
    let addr = cluster.node(1).api_addr.clone();
    let _stalled: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.write_all(b"GET /download/ztna-linux-x86_64 HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_mib(&cluster, 1);
    assert!(
        during < before + 256,
        "40 stalled downloads of a {} MiB binary took the node from {before} to {during} MiB",
        size >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_throttled_and_the_rightful_caller_gets_through() {
    // The default limits (30 failures a minute per address and per credential).
    let cluster = Cluster::start().await;
    // Sixty guesses of the secret of the org's API key id: after 30 its failures answer 429.
    let id = cluster.api_key.split('-').nth(2).unwrap().to_string();
    let guess = format!("tskey-api-{id}-{:0>32}", 7);
    let body = json!({"action": "list_auth_keys", "org_id": cluster.org_id});
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(cluster.post(1, "/api/key-management", &body, Some(&guess)).await.0);
    }
    assert_eq!(&statuses[..30], &[401; 30], "{statuses:?}");
    assert!(statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = cluster
        .http
        .post(format!("{}/api/key-management", cluster.url(2)))
        .bearer_auth(&guess)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("retry-after").is_some() || r.status() == 401);
    // This test client's address is over its limit on node 1 now: a request from it without a
    // valid credential is refused at once, for the rest of the minute…
    let unknown = format!("tskey-api-{:0>12}-{:0>32}", 1, 1);
    let (status, answer) = cluster.post(1, "/api/key-management", &body, Some(&unknown)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (429, Some("too_many_failures")), "{answer}");
    // …but the rightful key from the same address is served, on node 1 as on the others.
    for node in [1, 3] {
        let (status, answer) = cluster.keys(node, json!({"action": "list_auth_keys"})).await;
        assert_eq!(status, 200, "the rightful key through n{node}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_have_a_lifetime_and_request_ids_belong_to_their_caller() {
    let cluster = Cluster::start().await;
    let op = cluster.operator_key.clone();
    // Operator key rotation: the old key is locked out at once, the new one works.
    let out = cluster.dir.path().join("operator-2.key");
    let (ok, stdout, stderr) = cluster.run_cli(&[
        "org-admin",
        "--operator-key-file",
        &write_secret(&cluster, "operator-1.key", &op),
        "rotate-operator-key",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    let new_op = std::fs::read_to_string(&out).unwrap().trim().to_string();
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let list = json!({"action": "list_orgs"});
    assert_eq!(cluster.post(1, "/api/org-admin", &list, Some(&op)).await.0, 401, "the old operator key");
    assert_eq!(cluster.post(2, "/api/org-admin", &list, Some(&new_op)).await.0, 200);

    // An API key with an expiry, listed with its last use.
    let create = json!({"action": "create_api_key", "org_id": cluster.org_id, "expires_in": 60, "description": "ci"});
    let (status, key) = cluster.post(1, "/api/org-admin", &create, Some(&new_op)).await;
    assert_eq!(status, 200, "{key}");
    assert!(key["expires_at"].is_string());
    let short = key["key"].as_str().unwrap().to_string();
    let made = json!({"action": "create_auth_key", "org_id": cluster.org_id});
    assert_eq!(cluster.post(2, "/api/key-management", &made, Some(&short)).await.0, 200);
    let listed = cluster.post(3, "/api/org-admin", &json!({"action": "list_api_keys"}), Some(&new_op)).await.1;
    let record = listed["api_keys"].as_array().unwrap().iter().find(|k| k["api_key_id"] == key["api_key_id"]).unwrap();
    assert!(record["last_used_at"].is_string(), "{record}");

    // Request ids belong to their caller: the same id from another key is another request.
    let with_id = |id: &str| json!({"action": "create_auth_key", "org_id": cluster.org_id, "request_id": id});
    let (first, _) = cluster.post(1, "/api/key-management", &with_id("shared-id"), Some(&short)).await;
    let (second, answer) = cluster.keys(2, with_id("shared-id")).await;
    assert_eq!((first, second), (200, 200), "{answer}");

    // Per-org limits: three keys were made today; a limit of 5 allows two more.
    let limits = json!({"action": "set_org_limits", "org_id": cluster.org_id, "auth_keys_per_day": 5});
    assert_eq!(cluster.post(1, "/api/org-admin", &limits, Some(&new_op)).await.0, 200);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, answer) = cluster.keys(1, json!({"action": "create_auth_key"})).await;
        statuses.push((status, answer["error"]["code"].as_str().map(String::from)));
    }
    assert_eq!(statuses[..2], [(200, None), (200, None)], "{statuses:?}");
    assert_eq!(statuses[2], (403, Some("quota_exceeded".to_string())), "{statuses:?}");
}

fn write_secret(cluster: &Cluster, name: &str, secret: &str) -> String {
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, secret).unwrap();
    path.display().to_string()
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn a_bootstrap_token_and_keys_are_made_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("bootstrap.token");
    let out =
        std::process::Command::new(ztna()).args(["cluster", "bootstrap-token", "--out"]).arg(&token).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("bootstrap_token_sha256 = \""), "{printed}");
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    // Never over an existing file (nor through a link someone planted).
    let again =
        std::process::Command::new(ztna()).args(["cluster", "bootstrap-token", "--out"]).arg(&token).output().unwrap();
    assert!(!again.status.success());
    let link = dir.path().join("planted");
    std::os::unix::fs::symlink("/tmp/somewhere-else", &link).unwrap();
    let via_link =
        std::process::Command::new(ztna()).args(["cluster", "bootstrap-token", "--out"]).arg(&link).output().unwrap();
    assert!(!via_link.status.success());
    assert!(!std::path::Path::new("/tmp/somewhere-else").exists());
}
