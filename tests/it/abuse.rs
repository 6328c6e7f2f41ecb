//! What a holder of *some* credential, or a flood that looks legitimate, can do (issue 28):
//! nothing beyond its grant. Each attack runs against real processes, each attacker from its
//! own loopback address; each test fails on the build before the fix.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::security::{last_log_index, peer_client};
use crate::support::{device_keys, proven_enrol_body, Cluster};

/// A client whose connections come from loopback address `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// One keep-alive connection from `from` asking `GET /healthz` every 5 s until `stop`;
/// it connects again when the node closes it. Counts the answers it got.
async fn healthz_forever(
    from: IpAddr,
    to: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
    answered: Arc<AtomicU64>,
) {
    let request = b"GET /healthz HTTP/1.1\r\nHost: ztna\r\n\r\n";
    while !*stop.borrow() {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else { return };
        if socket.bind(SocketAddr::new(from, 0)).is_err() {
            return;
        }
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await {
            let mut buf = [0u8; 1024];
            while !*stop.borrow() {
                if stream.write_all(request).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_keep_alive_connections_from_one_address_leave_others_served() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let to: SocketAddr = cluster.node(leader).api_addr.parse().expect("api address");
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let answered = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> =
        (0..600).map(|_| tokio::spawn(healthz_forever(attacker, to, stopped.clone(), answered.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(answered.load(Ordering::Relaxed) > 0, "the flood's connections are served up to their share");

    // Twenty rightful calls from another address, while the flood holds what it can.
    let rightful = client_from(3);
    let mut served = 0;
    for _ in 0..20 {
        let r = rightful.get(format!("{}/api/whoami", cluster.url(leader))).bearer_auth(&cluster.api_key).send().await;
        if r.map(|r| r.status() == 200).unwrap_or(false) {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    for task in flood {
        task.abort();
    }
    assert_eq!(served, 20, "rightful whoami calls served while one address holds 600 connections");
}

/// An enrolment body of test machine `device` with `auth_key`, made for the node whose
/// enrolment key is `server_key`, with its own request id.
fn enrol_body(server_key: &str, auth_key: &str, device: u64, attempt: u64) -> Value {
    let (private, public) = device_keys(device);
    let request_id = format!("rekey-{device}-{attempt}");
    ztna_proof::enrol_body(&private, &public, server_key, auth_key, "rekeyer", &request_id, ztna_proof::issued_now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_re_keys_in_a_row_leave_the_history_bounded_and_apply_free() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let key = cluster.create_key(leader, json!({"reusable": false})).await;
    let (auth_key, key_id) = (key["key"].as_str().unwrap().to_string(), key["key_id"].as_str().unwrap().to_string());
    let (status, first) = cluster.enrol(leader, &auth_key, 7).await;
    assert_eq!(status, 200, "{first}");
    let server_key: Value =
        cluster.http.get(format!("{}/api/enrol/key", cluster.url(leader))).send().await.unwrap().json().await.unwrap();
    let server_key = server_key["server_key"].as_str().unwrap().to_string();

    // Writes of an admin go on meanwhile: apply is never held up by the re-keys.
    let admin = {
        let http = cluster.http.clone();
        let (url, api_key, org_id) = (cluster.url(leader), cluster.api_key.clone(), cluster.org_id.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in 0..20 {
                let body = json!({"action": "create_auth_key", "org_id": org_id, "request_id": format!("admin-{n}")});
                let r = http.post(format!("{url}/api/key-management")).bearer_auth(&api_key).json(&body).send().await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            statuses
        })
    };
    let mut accepted = 0;
    let mut refused = std::collections::BTreeMap::<String, u64>::new();
    for attempt in 0..1500 {
        let body = enrol_body(&server_key, &auth_key, 7, attempt);
        let (status, answer) = cluster.post(leader, "/api/enrol", &body, None).await;
        match status {
            200 => accepted += 1,
            429 => *refused.entry(answer["error"]["code"].as_str().unwrap_or("?").to_string()).or_default() += 1,
            other => panic!("re-key {attempt}: {other} {answer}"),
        }
    }
    assert!(accepted <= 10, "{accepted} re-keys accepted in a row (refused: {refused:?})");
    assert!(refused.contains_key("too_many_rekeys"), "{refused:?}");
    let admin = admin.await.unwrap();
    assert!(admin.iter().all(|s| *s == 200), "admin writes during the re-keys: {admin:?}");
    let history = cluster.get_key(leader, &key_id).await;
    let rows = history["enrolments"].as_array().map(Vec::len).unwrap_or(0);
    assert!(rows <= 1 + 16, "the key's history holds {rows} rows after 1,500 re-keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_keys_and_a_spent_key_move_the_log_by_a_handful() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let spent = cluster.create_key(leader, json!({"reusable": false})).await;
    let spent = spent["key"].as_str().unwrap().to_string();
    let (status, answer) = cluster.enrol(leader, &spent, 1).await;
    assert_eq!(status, 200, "{answer}");
    cluster.wait_caught_up().await;
    let before = last_log_index(&cluster, leader).await;

    let fake = |n: u64| format!("tskey-api-{:0>12}-{:0>32}", n, n);
    let list = json!({"action": "list_auth_keys", "org_id": cluster.org_id});
    for n in 0..200u64 {
        let through = if n % 2 == 0 { leader } else { follower };
        let (status, answer) = cluster.post(through, "/api/key-management", &list, Some(&fake(n))).await;
        assert!(status == 401 || status == 429, "a read with a made-up key: {status} {answer}");
    }
    for device in 100..300u64 {
        let through = if device % 2 == 0 { leader } else { follower };
        let body = proven_enrol_body(&cluster.http, &cluster.url(through), &spent, "spent", device).await.unwrap();
        let (status, answer) = cluster.post(through, "/api/enrol", &body, None).await;
        assert!(status == 403 || status == 429, "an enrolment with a spent key: {status} {answer}");
    }
    let after = last_log_index(&cluster, leader).await;
    assert!(after.saturating_sub(before) <= 5, "400 refused requests moved the log from {before} to {after}");
}

/// A machine-admin call with `api_key`.
async fn machine_admin(cluster: &Cluster, api_key: &str, mut body: Value) -> (u16, Value) {
    body["org_id"] = json!(cluster.org_id);
    cluster.post(1, "/api/machine-admin", &body, Some(api_key)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_scoped_key_is_refused_on_everything_outside_its_tags_untagged_included() {
    let cluster = Cluster::start().await;
    let op = cluster.operator_key.clone();
    let body = json!({"action": "create_api_key", "org_id": cluster.org_id, "description": "ci", "tags": ["tag:ci"]});
    let (status, ci) = cluster.post(1, "/api/org-admin", &body, Some(&op)).await;
    assert_eq!(status, 200, "{ci}");
    let ci = ci["key"].as_str().unwrap().to_string();
    let untagged = cluster.create_key(1, json!({"reusable": true, "preauthorized": false})).await;
    let tagged = cluster.create_key(1, json!({"reusable": true, "preauthorized": false, "tags": ["tag:ci"]})).await;
    let (status, laptop) = cluster.enrol(1, untagged["key"].as_str().unwrap(), 21).await;
    assert_eq!(status, 200, "{laptop}");
    let (status, runner) = cluster.enrol(1, tagged["key"].as_str().unwrap(), 22).await;
    assert_eq!(status, 200, "{runner}");
    let laptop = laptop["machine_id"].as_str().unwrap().to_string();
    let runner = runner["machine_id"].as_str().unwrap().to_string();

    // Every action on the untagged, pending laptop: refused, and nothing changes.
    let actions = [
        json!({"action": "approve"}),
        json!({"action": "set_tags", "tags": ["tag:ci"]}),
        json!({"action": "quarantine"}),
        json!({"action": "unquarantine"}),
        json!({"action": "revoke_node_key"}),
        json!({"action": "reject"}),
        json!({"action": "delete"}),
    ];
    for action in &actions {
        let mut body = action.clone();
        body["machine_id"] = json!(laptop);
        let (status, answer) = machine_admin(&cluster, &ci, body).await;
        assert_eq!(status, 403, "tag:ci key, {action} on an untagged machine: {answer}");
    }
    let (status, answer) = machine_admin(&cluster, &ci, json!({"action": "approve", "machine_id": runner})).await;
    assert_eq!(status, 200, "tag:ci key approving a tag:ci machine: {answer}");
    let revoke = json!({"action": "revoke_auth_key", "org_id": cluster.org_id, "key_id": untagged["key_id"]});
    let (status, answer) = cluster.post(1, "/api/key-management", &revoke, Some(&ci)).await;
    assert_eq!(status, 403, "tag:ci key revoking an untagged key: {answer}");

    // Listings show it only what it reaches.
    let list = json!({"action": "list_auth_keys", "org_id": cluster.org_id});
    let (status, keys) = cluster.post(1, "/api/key-management", &list, Some(&ci)).await;
    assert_eq!(status, 200, "{keys}");
    let ids: Vec<&str> = keys["keys"].as_array().unwrap().iter().filter_map(|k| k["key_id"].as_str()).collect();
    assert_eq!(ids, vec![tagged["key_id"].as_str().unwrap()], "the tag:ci key lists only tag:ci keys");
    let (status, machines) = machine_admin(&cluster, &ci, json!({"action": "list_machines"})).await;
    assert_eq!(status, 200, "{machines}");
    let ids: Vec<&str> =
        machines["machines"].as_array().unwrap().iter().filter_map(|m| m["machine_id"].as_str()).collect();
    assert_eq!(ids, vec![runner.as_str()], "the tag:ci key lists only tag:ci machines");

    // The org's admin deletes the laptop; the tag:ci key cannot let it back.
    let (status, answer) = cluster.machine_admin(1, "delete", &laptop).await;
    assert_eq!(status, 200, "{answer}");
    let (_, public) = device_keys(21);
    let allow = json!({"action": "allow_reenrol", "node_public_key": public});
    let (status, answer) = machine_admin(&cluster, &ci, allow).await;
    assert_eq!(status, 403, "tag:ci key letting an untagged machine back: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_certificate_speaks_only_for_its_node_and_never_enrols_unproven() {
    use ztna_keystore::raft_types::TypeConfig;
    use ztna_keystore::sm::model::{Actor, Command, NewCredential, NewEnrolment, MACHINE_ID_PREFIX};
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let member = (1..=3).find(|id| *id != leader).unwrap();
    let third = (1..=3).find(|id| *id != leader && *id != member).unwrap();
    let term = cluster.cluster_info(leader).await.and_then(|i| i["term"].as_u64()).expect("term");
    let client = peer_client(&cluster, member);

    // An append in the leader's name, from another member's certificate: refused.
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let body = ztna_keystore::codec::encode(&append).unwrap();
    let url = format!("https://{}/raft/append", cluster.raft_addr(third));
    let r = client.post(&url).header("x-ztna-node", member.to_string()).body(body).send().await.unwrap();
    assert_eq!(
        r.status(),
        403,
        "an append in the leader's name from node {member}: {}",
        r.text().await.unwrap_or_default()
    );

    // An enrolment of a machine whose private key the member never saw, with a valid auth key:
    // without a proof checked by the node that forwards it, it is never applied.
    let key = cluster.create_key(leader, json!({"reusable": true})).await;
    let auth_key = key["key"].as_str().unwrap();
    let presented = ztna_keystore::secret::parse_credential(ztna_keystore::secret::CredentialKind::AuthKey, auth_key)
        .expect("an auth key");
    let (_, victim) = device_keys(31);
    let machine_id = format!("{MACHINE_ID_PREFIX}{}", ztna_keystore::secret::random_base62(12));
    let proved_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let unproven = |n: u64, checked_by: Option<u64>| {
        let node_key = NewCredential { id: format!("forged{n:0>6}"), hash: ztna_keystore::secret::hash("forged") };
        let (auth_key_id, auth_key_hash) = (presented.id.clone(), presented.hash);
        let (hostname, node_public_key, machine_id) = ("forged".to_string(), victim.clone(), machine_id.clone());
        let enrolment = NewEnrolment { auth_key_id, auth_key_hash, hostname, node_public_key, machine_id, node_key };
        let op = enrolment.into_op(Some(proved_at), checked_by);
        Command { request_id: format!("forged-{n}"), actor: Actor::Anonymous, op }
    };
    let url = format!("https://{}/internal/propose", cluster.raft_addr(leader));
    for command in [unproven(1, None), unproven(2, Some(third))] {
        let body = ztna_keystore::codec::encode(&vec![command]).unwrap();
        let r = client.post(&url).header("x-ztna-node", member.to_string()).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "the batch is answered (each command refused in it)");
    }
    cluster.wait_caught_up().await;
    let forged: Vec<Value> =
        cluster.machines(leader).await.into_iter().filter(|m| m["node_public_key"].as_str() == Some(&victim)).collect();
    assert!(forged.is_empty(), "a member enrolled a machine without its proof: {forged:?}");
}

/// A TLS server at `addr` presenting node `id`'s *API* certificate (signed by the cluster CA,
/// naming the node's hosts). Counts the connections it accepted, the handshakes completed and
/// the requests read.
struct Impostor {
    accepted: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

async fn impostor(cluster: &Cluster, id: u64, addr: &str) -> Impostor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = cluster.dir.path().join("tls");
    let certs = CertificateDer::pem_file_iter(tls.join(format!("api{id}.crt")))
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(tls.join(format!("api{id}.key"))).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("identity");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("the node's raft address is free");
    let counters = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, h, r) = counters.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::Relaxed);
            let (acceptor, h, r) = (acceptor.clone(), h.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                h.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tls.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await;
            });
        }
    });
    Impostor { accepted: counters.0, handshakes: counters.1, requests: counters.2, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_certificate_cannot_answer_as_a_node() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let gone = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(gone);
    let addr = cluster.raft_addr(gone);
    let impostor = impostor(&cluster, gone, &addr).await;
    // The leader keeps dialling the node it lost (its writes give it reasons to), and reaches
    // the impostor's address.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while impostor.accepted.load(Ordering::Relaxed) < 3 && std::time::Instant::now() < deadline {
        let (status, answer) = cluster.keys(leader, json!({"action": "create_auth_key"})).await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    impostor.task.abort();
    let accepted = impostor.accepted.load(Ordering::Relaxed);
    assert!(accepted >= 3, "the leader dialled node {gone}'s address {accepted} times in 30 s");
    let (handshakes, requests) =
        (impostor.handshakes.load(Ordering::Relaxed), impostor.requests.load(Ordering::Relaxed));
    assert_eq!((handshakes, requests), (0, 0), "the leader took an API certificate for node {gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_carries_many_clients_and_each_is_throttled_alone() {
    let cluster = Cluster::start_with("trusted_proxies = [\"127.0.0.5\"]").await;
    let leader = cluster.wait_ready().await;
    let to: SocketAddr = cluster.node(leader).api_addr.parse().expect("api address");
    // The proxy holds more connections than one address may (256): they are its clients'.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let answered = Arc::new(AtomicU64::new(0));
    let proxy = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    let held: Vec<_> =
        (0..300).map(|_| tokio::spawn(healthz_forever(proxy, to, stopped.clone(), answered.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served = answered.load(Ordering::Relaxed);
    let _ = stop.send(true);
    for task in held {
        task.abort();
    }
    assert!(served >= 300, "a trusted proxy's 300 connections got {served} answers");

    // Through the proxy, one client guesses keys: that client is held, the next one is not.
    let via_proxy = client_from(5);
    let url = format!("{}/api/key-management", cluster.url(leader));
    let body = json!({"action": "list_auth_keys", "org_id": cluster.org_id});
    let guess = |n: u64| format!("tskey-api-{:0>12}-{:0>32}", n, n);
    let mut statuses = Vec::new();
    for n in 0..40 {
        let r = via_proxy.post(&url).header("x-forwarded-for", "203.0.113.7").bearer_auth(guess(n)).json(&body).send();
        statuses.push(r.await.map(|r| r.status().as_u16()).unwrap_or(0));
    }
    assert!(statuses[..30].iter().all(|s| *s == 401) && statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = via_proxy.post(&url).header("x-forwarded-for", "203.0.113.8").bearer_auth(guess(99)).json(&body).send();
    assert_eq!(r.await.map(|r| r.status().as_u16()).unwrap_or(0), 401, "another client behind the proxy is not held");
    // A stranger cannot pick its own address with the header.
    let stranger = client_from(6);
    let r = stranger.post(&url).header("x-forwarded-for", "203.0.113.9").bearer_auth(guess(98)).json(&body).send();
    assert_eq!(r.await.map(|r| r.status().as_u16()).unwrap_or(0), 401);
}
