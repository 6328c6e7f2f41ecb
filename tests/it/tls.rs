//! TLS: mutual TLS between nodes, HTTPS for the API, and certificates from `ztna cluster certs`.

use std::time::Duration;

use serde_json::json;

use crate::support::{ztna, Cluster};

/// A client trusting `ca`, presenting the certificate `identity` (cert, key) if given.
fn client(ca: &std::path::Path, identity: Option<(&std::path::Path, &std::path::Path)>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = ztna_keystore::tls::roots(ca).expect("CA");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let certs =
                CertificateDer::pem_file_iter(cert).expect("cert").collect::<Result<Vec<_>, _>>().expect("cert");
            builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(key).expect("key")).expect("identity")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder().use_preconfigured_tls(config).timeout(Duration::from_secs(5)).build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_only_nodes_with_a_cluster_certificate_reach_the_internal_listener() {
    let cluster = Cluster::start_tls().await;
    let tls = cluster.dir.path().join("tls");
    let leader = cluster.wait_ready().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    // The API is HTTPS; writes through a follower are forwarded over mutual TLS.
    assert!(cluster.url(follower).starts_with("https://"));
    let key = cluster.create_key(follower, json!({"expires_in": 3600})).await;
    assert_eq!(cluster.enrol(follower, key["key"].as_str().unwrap(), 1).await.0, 200);
    assert_eq!(cluster.enrol(leader, key["key"].as_str().unwrap(), 2).await.0, 403);

    // The CA a machine must pin is served for the console's install command (the console
    // writes it to a file and passes --cacert, never -k).
    let served = cluster.http.get(format!("{}/ca.crt", cluster.url(follower))).send().await.expect("ca.crt");
    assert_eq!(served.status(), 200);
    let served = served.text().await.expect("text");
    assert_eq!(served.trim(), std::fs::read_to_string(tls.join("ca.crt")).expect("CA").trim());

    // The CLI trusts the cluster CA given by ZTNA_CA_CERT; without it, it refuses the server.
    let (ok, stdout, stderr) = cluster.run_cli(&["auth-keys", "list"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("tskey-auth-") && stdout.contains("used"), "{stdout}");
    let out = cluster.cli().env_remove("ZTNA_CA_CERT").args(["auth-keys", "list"]).output().expect("ztna");
    assert!(!out.status.success(), "an HTTPS server must not be trusted without the CA");

    // The internal listener: a node certificate gets an answer; none, or one from another CA,
    // is refused in the handshake, before any Raft message.
    let raft = cluster.raft_addr(leader);
    let vote = format!("https://{raft}/raft/vote");
    let member = client(&tls.join("ca.crt"), Some((&tls.join("node2.crt"), &tls.join("node2.key"))));
    let answered = member.post(&vote).header("x-ztna-node", "2").body(vec![0u8]).send().await.expect("answered");
    assert_eq!(answered.status(), 400, "a member's malformed vote is refused by the node, not by TLS");

    let rogue_dir = cluster.dir.path().join("rogue");
    let made = std::process::Command::new(ztna())
        .args(["cluster", "certs", "--nodes", "4", "--out"])
        .arg(&rogue_dir)
        .output()
        .expect("ztna cluster certs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let rogue = client(&tls.join("ca.crt"), Some((&rogue_dir.join("node1.crt"), &rogue_dir.join("node1.key"))));
    let refused = rogue.post(&vote).body(vec![0u8]).send().await;
    assert!(refused.is_err(), "a certificate from another CA must be refused: {refused:?}");
    let anonymous = client(&tls.join("ca.crt"), None);
    let refused = anonymous.post(format!("https://{raft}/raft/append")).body(vec![0u8]).send().await;
    assert!(refused.is_err(), "a client without a certificate must be refused: {refused:?}");
    let plain = reqwest::Client::new().post(format!("http://{raft}/raft/vote")).body(vec![0u8]).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP must not reach Raft");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cluster.log(leader).contains("TLS handshake refused"), "refusals are logged");
    assert!(cluster.log(leader).contains("mutual TLS"), "the startup log says TLS is on");

    // A whole node configured with another CA's certificate gets nowhere: the members refuse
    // its connections, so it cannot even learn whether its id is free, let alone vote.
    let rogue_file = rogue_dir.join("cluster.toml");
    let mut text = std::fs::read_to_string(cluster.dir.path().join("cluster.toml")).expect("cluster file");
    text = text.replace("[tls]", "[[nodes]]\nid = 4\napi_addr = \"127.0.0.1:0\"\nraft_addr = \"127.0.0.1:0\"\n\n[tls]");
    text = text.replace("tls/ca.crt", "ca.crt").replace("tls/node{id}", "node4").replace("tls/api{id}", "api4");
    std::fs::write(&rogue_file, text).expect("rogue cluster file");
    let rogue_log = rogue_dir.join("node4.log");
    let mut rogue_node = std::process::Command::new(ztna())
        .args(["server", "--id", "4", "--cluster"])
        .arg(&rogue_file)
        .arg("--data-dir")
        .arg(rogue_dir.join("data"))
        .stderr(std::fs::File::create(&rogue_log).expect("log"))
        .spawn()
        .expect("rogue node");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still_waiting = matches!(rogue_node.try_wait(), Ok(None));
    let _ = rogue_node.kill();
    let _ = rogue_node.wait();
    let log = std::fs::read_to_string(&rogue_log).unwrap_or_default();
    assert!(still_waiting && log.contains("waiting for 2 more of the other nodes"), "{log}");
    let info = cluster.cluster_info(leader).await.expect("cluster info");
    assert_eq!(info["members"].as_array().map(Vec::len), Some(3), "{info}");
    assert_eq!(cluster.get_key(follower, key["key_id"].as_str().unwrap()).await["uses"], 1);
}
