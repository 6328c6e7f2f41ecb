//! The promise at its edges: right after a failover, after a crash at first start, while a
//! sweep decides, with a follower's clock far off, with a peer down for good, and an
//! initialisation whose answer was lost.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{proven_enrol_body, Cluster};

/// A credential made the moment before the leader dies is never refused through the survivors:
/// a reusable key created through the leader, which is killed at once, then enrolments with that
/// key through both survivors while they elect; and an operator key rotated out the moment
/// before, which neither takes a backup nor removes a voter there. Answers are successes, 503s
/// or refusals for other reasons (never `invalid_auth_key`), and the rotated-out key only 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_made_just_before_the_leader_dies_is_never_refused_by_the_next_leader() {
    // The rotated-out key's refusals are failed authentications from this address.
    let mut cluster = Cluster::start_with("auth_failures_per_minute = 100000").await;
    for round in 0..20u64 {
        let leader = cluster.wait_ready().await;
        cluster.wait_caught_up().await;
        let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let key = cluster.create_key(leader, json!({"reusable": true})).await;
        // Every third round, the operator key is rotated too: the old one is revoked.
        let rotated_out = if round % 3 == 0 {
            let body = json!({"action": "rotate_operator_key", "request_id": format!("rotate-{round}")});
            let (status, answer) =
                cluster.post(leader, "/api/org-admin", &body, Some(&cluster.operator_key.clone())).await;
            assert_eq!(status, 200, "rotate: {answer}");
            let old = std::mem::replace(&mut cluster.operator_key, answer["key"].as_str().unwrap().to_string());
            Some(old)
        } else {
            None
        };
        cluster.kill(leader);
        let secret = key["key"].as_str().unwrap().to_string();
        // Three enrolment streams per survivor, so requests wait for the new leader when it
        // takes over, which is when its applied state may still lack the key (its predecessor
        // died before telling the followers the entry was committed).
        let streams: Vec<_> = survivors
            .iter()
            .flat_map(|&node| (0..3).map(move |stream| (node, stream)))
            .map(|(node, stream)| {
                let (http, url, secret) = (cluster.http.clone(), cluster.url(node), secret.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    let mut answers = Vec::new();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        n += 1;
                        let device = 100_000 * (round + 1) + 1000 * node + 100 * stream + n;
                        let Ok(body) = proven_enrol_body(&http, &url, &secret, "edge", device).await else { continue };
                        let sent = http
                            .post(format!("{url}/api/enrol"))
                            .json(&body)
                            .timeout(Duration::from_secs(8))
                            .send()
                            .await;
                        let Ok(response) = sent else { continue };
                        let status = response.status().as_u16();
                        answers.push((node, status, response.json::<Value>().await.unwrap_or(Value::Null)));
                    }
                    answers
                })
            })
            .collect();
        let answers: Vec<(u64, u16, Value)> =
            futures::future::join_all(streams).await.into_iter().flat_map(|a| a.unwrap_or_default()).collect();
        for (node, status, body) in &answers {
            assert!(
                *status == 200 || *status == 503,
                "round {round}: enrolling with a key the old leader acknowledged, through n{node}: {status} {body}\n{}",
                cluster.logs()
            );
        }
        if let Some(old) = &rotated_out {
            for &node in &survivors {
                let (status, body) = cluster.post(node, "/api/cluster/backup", &json!({}), Some(old)).await;
                assert!(
                    matches!(status, 401 | 503 | 0),
                    "round {round}: a rotated-out operator key took a backup through n{node}: {status} {body}"
                );
                let remove = json!({"action": "remove_node", "node_id": leader});
                let (status, body) = cluster.post(node, "/api/cluster/membership", &remove, Some(old)).await;
                assert!(
                    matches!(status, 401 | 503 | 0),
                    "round {round}: a rotated-out operator key removed a voter through n{node}: {status} {body}"
                );
            }
        }
        cluster.spawn(leader);
    }
    cluster.wait_ready().await;
}

/// A follower whose own clock is ten minutes behind still enrols machines whose clocks are
/// right: a proof's freshness is judged by cluster time only (the majority's), never by the
/// receiving node's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_clock_is_ten_minutes_behind_still_enrols() {
    let cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let key = cluster.create_key(leader, json!({"reusable": true})).await;
    let secret = key["key"].as_str().unwrap();
    cluster.set_clock_offset(follower, -10 * 60_000).await;
    for device in 1..=3 {
        let (status, body) = cluster.enrol(follower, secret, device).await;
        assert_eq!(status, 200, "enrolment through n{follower}, its clock 10 minutes behind: {body}");
    }
    // A proof really ten minutes old is still refused, by cluster time.
    let stale = ztna_proof::issued_now() - 10 * 60_000;
    let server_key: Value = cluster
        .http
        .get(format!("{}/api/enrol/key", cluster.url(follower)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (private, public) = crate::support::device_keys(99);
    let body = ztna_proof::enrol_body(
        &private,
        &public,
        server_key["server_key"].as_str().unwrap(),
        secret,
        "old",
        "r-old",
        stale,
    );
    let (status, answer) = cluster.post(follower, "/api/enrol", &body, None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("proof_invalid")), "{answer}");
    cluster.set_clock_offset(follower, 0).await;
}

/// A sweep that decided a machine was silent does not delete it once it enrolled again in the
/// meantime (its agent crashed before saving its node key, say): the sweep names the node key
/// it judged, and the machine re-keyed. Every node holds each sweep 1.5 s between its decision
/// and its proposal, which is when the machine comes back; its first heartbeat waits for that
/// sweep and is answered by the state after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_racing_a_reenrolment_keeps_the_machine() {
    let mut cluster = Cluster::unstarted_for_test("ephemeral_inactivity_timeout_ms = 2000");
    for id in 1..=3 {
        cluster.spawn_env(id, &[], &[("ZTNA_TEST_ONLY_DELAY", "sweep:decided=1500")]);
    }
    cluster.init().await;
    let leader = cluster.wait_ready().await;
    let key = cluster.create_key(leader, json!({"reusable": true, "ephemeral": true})).await;
    let secret = key["key"].as_str().unwrap();
    let (status, first) = cluster.enrol(leader, secret, 7).await;
    assert_eq!(status, 200, "{first}");
    let machine = first["machine_id"].as_str().unwrap().to_string();
    // Silent past its timeout: the leader decides to delete it (and holds the decision).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.log(leader).contains(&machine) {
        assert!(Instant::now() < deadline, "no sweep decided about {machine}:\n{}", cluster.log(leader));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It enrols again with the same key pair: the same machine, a new node key.
    let (status, again) = cluster.enrol(leader, secret, 7).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["machine_id"], first["machine_id"], "re-enrolled as the same machine");
    // Its heartbeats (the first waits for the held sweep, which skips the machine it judged:
    // it changed) keep it.
    let node_key = again["node_key"].as_str().unwrap();
    for beat in 0..8 {
        let (status, answer) = cluster.post(leader, "/api/machine/heartbeat", &json!({}), Some(node_key)).await;
        assert_eq!(status, 200, "heartbeat {beat}: the re-keyed machine was deleted by a stale sweep: {answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A first start cut short while it writes the node's enrolment key starts again: the key is
/// written under a temporary name, fsynced, then linked into place, so a crash leaves no key or
/// a whole one, never an empty file. (An empty `enrol.key`, as an older build's crash left, is
/// made anew: no proof was ever made for a key that never reached the disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_cut_short_while_writing_its_key_starts_again() {
    let mut cluster = Cluster::unstarted_for_test("");
    // What an older build's crash left on node 2: an empty key file.
    std::fs::create_dir_all(&cluster.node(2).data_dir).unwrap();
    std::fs::write(cluster.node(2).data_dir.join("enrol.key"), b"").unwrap();
    cluster.spawn(2);
    cluster.spawn(3);
    cluster.spawn_env(1, &[], &[("ZTNA_TEST_ONLY_CRASH_AT", "create-new:written")]);
    let crashed = cluster.wait_exit(1, Duration::from_secs(30)).await;
    assert_eq!(crashed, Some(false), "node 1 did not crash writing its key:\n{}", cluster.log(1));
    assert!(cluster.log(1).contains("aborting at create-new:written"), "{}", cluster.log(1));
    cluster.spawn(1);
    cluster.init().await;
    let leader = cluster.wait_ready().await;
    let key = cluster.create_key(leader, json!({"reusable": true})).await;
    for id in 1..=3 {
        let (status, body) = cluster.enrol(id, key["key"].as_str().unwrap(), id).await;
        assert_eq!(status, 200, "enrolment through n{id}: {body}");
    }
}

/// With one follower down for good, the leader's log grows by a few lines, not by three lines
/// per retry and heartbeat: one when the peer stops answering, a reminder a minute, one when it
/// is back (openraft's own warnings are let through once a minute per call site).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_for_good_costs_the_leader_a_few_log_lines() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_ready().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(victim);
    let before = cluster.log(leader).len();
    // Writes and reads go on meanwhile: the leader replicates to the survivor only.
    let key = cluster.create_key(leader, json!({"reusable": true})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut device = 0;
    while Instant::now() < deadline {
        device += 1;
        let (status, body) = cluster.enrol(leader, key["key"].as_str().unwrap(), device).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown = &cluster.log(leader)[before..];
    let lines = grown.lines().count();
    assert!(
        lines <= 25,
        "the leader logged {lines} lines ({} bytes) in 30 s with one peer down:\n{grown}",
        grown.len()
    );
    assert!(grown.contains("does not answer"), "the outage is said once:\n{grown}");
    cluster.spawn(victim);
    cluster.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log(leader)[before..].contains("answers again") {
        assert!(Instant::now() < deadline, "the peer's return is said:\n{}", &cluster.log(leader)[before..]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An initialisation answered 503 that committed all the same gives its keys to the retry under
/// the same request id at the node that answered: the leader holds its answer to the follower's
/// forwarded call for 6 s, past the follower's 5 s request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_answered_503_gives_its_keys_to_its_retry() {
    let mut cluster = Cluster::unstarted_for_test("");
    let switch = cluster.dir.path().join("slow-answers");
    let delay = format!("propose:answer=6000,while={}", switch.display());
    for id in 1..=3 {
        cluster.spawn_env(id, &[], &[("ZTNA_TEST_ONLY_DELAY", &delay)]);
    }
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let token = cluster.bootstrap_token.clone();
    let body = json!({"org_name": "test", "request_id": "init-once"});
    std::fs::write(&switch, b"").unwrap();
    let (status, first) = cluster.post(follower, "/api/cluster/init", &body, Some(&token)).await;
    assert_eq!(status, 503, "the first answer is lost: {first}");
    std::fs::remove_file(&switch).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, retried) = cluster.post(follower, "/api/cluster/init", &body, Some(&token)).await;
    assert_eq!(status, 200, "the retry gets the keys: {retried}");
    let api_key = retried["api_key"].as_str().unwrap();
    let (status, whoami) = cluster
        .post(
            leader,
            "/api/org-admin",
            &json!({"action": "list_orgs"}),
            Some(retried["operator_key"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, 200, "the operator key it gave works: {whoami}");
    let who =
        cluster.http.get(format!("{}/api/whoami", cluster.url(leader))).bearer_auth(api_key).send().await.unwrap();
    assert_eq!(who.status(), 200, "the admin key it gave works");
    // The same request id through another node: it did not make those keys, and says where they are.
    let other = (1..=3).find(|id| *id != follower).unwrap();
    let (status, elsewhere) = cluster.post(other, "/api/cluster/init", &body, Some(&token)).await;
    assert_eq!((status, elsewhere["error"]["code"].as_str()), (409, Some("already_initialized")), "{elsewhere}");
}
