//! Enrolled machines with real `ztna up` agents: ephemeral deregistration across leader kills
//! and restarts, admin actions on running agents, the machine's own commands.

use std::time::Duration;

use serde_json::json;

use crate::support::Cluster;

/// Inactivity timeout 3 s (sweep every 750 ms); last-seen persisted every 2 s.
const FAST: &str = "ephemeral_inactivity_timeout_ms = 3000\nlast_seen_persist_interval_ms = 2000";

fn ids(machines: &[serde_json::Value]) -> Vec<String> {
    machines.iter().map(|m| m["machine_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ephemeral_machines_survive_failover_and_restarts_while_dead_ones_vanish() {
    let mut cluster = Cluster::start_with(FAST).await;
    let key = cluster.create_key(1, json!({"reusable": true, "ephemeral": true, "tags": ["tag:ci"]})).await;
    let secret = key["key"].as_str().unwrap();
    let persistent = cluster.create_key(2, json!({})).await;

    let alive = cluster.agent(secret, "alive");
    let mut dead = cluster.agent(secret, "dead");
    alive.wait_for("Enrolled").await;
    dead.wait_for("Enrolled").await;
    let (alive_id, dead_id) = (alive.machine_id(), dead.machine_id());
    assert_eq!(cluster.enrol(3, persistent["key"].as_str().unwrap(), 77).await.0, 200);

    // The killed agent disappears within timeout plus one sweep; the live one stays.
    dead.kill();
    tokio::time::sleep(Duration::from_millis(3000 + 750 + 1500)).await;
    let now = ids(&cluster.machines(2).await);
    assert!(now.contains(&alive_id) && !now.contains(&dead_id), "{now:?}");
    assert_eq!(now.len(), 2, "the persistent machine stays: {now:?}");
    let history = cluster.get_key(1, key["key_id"].as_str().unwrap()).await;
    let gone =
        history["enrolments"].as_array().unwrap().iter().find(|e| e["machine_id"] == dead_id.as_str()).unwrap().clone();
    assert_eq!(gone["deregistered_reason"], "inactive", "{gone}");

    // Kill the leader: the live machine's heartbeats go elsewhere, and the new leader restarts
    // every timer instead of trusting last-seen times it did not observe.
    let leader = cluster.wait_ready().await;
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.spawn(leader);
    cluster.wait_ready().await;
    assert!(ids(&cluster.machines(leader).await).contains(&alive_id), "the live machine survived the leader kill");

    // Stop the whole cluster for longer than the timeout and bring it back.
    for id in 1..=3 {
        cluster.kill(id);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = ids(&cluster.machines(1).await);
    assert!(now.contains(&alive_id), "the live machine survived a full restart: {now:?}");
    assert_eq!(now.len(), 2, "{now:?}");
    let listed = cluster.machines(3).await;
    let alive_row = listed.iter().find(|m| m["machine_id"] == alive_id.as_str()).unwrap();
    assert!(!alive_row["last_seen"].is_null(), "{alive_row}");
    assert_eq!(alive_row["tags"], json!(["tag:ci"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_reach_the_running_agent() {
    let cluster = Cluster::start_with(FAST).await;
    let key = cluster
        .create_key(1, json!({"reusable": true, "max_uses": 2, "tags": ["tag:server", "tag:db", "tag:eu"]}))
        .await;
    let secret = key["key"].as_str().unwrap();
    let mut agent = cluster.agent(secret, "a");
    agent.wait_for("state: active").await;
    let machine = agent.machine_id();

    // Quarantine and unquarantine: the heartbeat says so.
    assert_eq!(cluster.machine_admin(2, "quarantine", &machine).await.0, 200);
    agent.wait_for("state: quarantined").await;
    assert_eq!(cluster.machine_admin(3, "unquarantine", &machine).await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(agent.output().matches("state: active").count() >= 2, "{}", agent.output());

    // The machine narrows its tags within its grant; the listing shows it at once.
    let (ok, out, err) = agent_cli(&cluster, &agent.state_dir, &["set", "--tags", "tag:db,tag:eu"]);
    assert!(ok, "{out}{err}");
    let row = cluster.machines(1).await.into_iter().find(|m| m["machine_id"] == machine.as_str()).unwrap();
    assert_eq!(row["tags"], json!(["tag:db", "tag:eu"]));
    let (ok, out, _) = cluster.run_cli(&["machines", "list"]);
    assert!(ok);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["MACHINE", "HOSTNAME", "TAGS", "EPHEMERAL", "STATE", "LAST-SEEN", "AUTH-KEY"]);
    assert!(
        out.contains(&machine) && out.contains("tag:db,tag:eu") && out.contains(&format!("{}…", &secret[..16])),
        "{out}"
    );

    // A second `ztna up` on the same machine reuses its node key and spends no use.
    assert!(agent.terminate().await, "SIGTERM ends the agent cleanly");
    let mut again = cluster.agent(secret, "a");
    again.wait_for("reusing its node key").await;
    assert_eq!(again.machine_id(), machine);
    assert_eq!(cluster.get_key(2, key["key_id"].as_str().unwrap()).await["uses"], 1);

    // ztna status on the machine.
    let (ok, out, err) = agent_cli(&cluster, &again.state_dir, &["status"]);
    assert!(ok && out.contains("Enrolled:   yes") && out.contains(&machine), "{out}{err}");

    // Revoking the node key keeps the record and stops the agent with a reason.
    assert_eq!(cluster.machine_admin(1, "revoke_node_key", &machine).await.0, 200);
    assert!(!again.wait_exit().await);
    assert!(again.output().contains("revoked"), "{}", again.output());
    let row = cluster.machines(2).await.into_iter().find(|m| m["machine_id"] == machine.as_str()).unwrap();
    assert_eq!(row["state"], "node_key_revoked");

    // Delete stops another agent and refuses its node key from then on.
    let mut other = cluster.agent(secret, "b");
    other.wait_for("state: active").await;
    let other_id = other.machine_id();
    let (status, _) = cluster.machine_admin(3, "delete", &other_id).await;
    assert_eq!(status, 200);
    assert!(!other.wait_exit().await);
    assert!(other.output().contains("deleted"), "{}", other.output());
    assert!(!ids(&cluster.machines(1).await).contains(&other_id));

    // Revoking the auth key never touches enrolled machines.
    let persistent = cluster.create_key(2, json!({})).await;
    let mut p = cluster.agent(persistent["key"].as_str().unwrap(), "p");
    p.wait_for("state: active").await;
    let (status, _) = cluster.keys(1, json!({"action": "revoke_auth_key", "key_id": persistent["key_id"]})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(p.is_running(), "{}", p.output());

    // ztna logout: the machine deletes itself and forgets its node key.
    let p_id = p.machine_id();
    p.kill();
    let (ok, out, err) = agent_cli(&cluster, &p.state_dir, &["logout"]);
    assert!(ok, "{out}{err}");
    assert!(!ids(&cluster.machines(3).await).contains(&p_id));
    let (ok, out, _) = agent_cli(&cluster, &p.state_dir, &["status"]);
    assert!(ok && out.contains("Enrolled:   no"), "{out}");
}

fn agent_cli(cluster: &Cluster, state_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(crate::support::ztna())
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env("ZTNA_SERVER", cluster.servers())
        .output()
        .expect("ztna");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_of_one_org_are_out_of_reach_of_another_and_bad_input_is_refused() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({})).await;
    let (_, enrolled) = cluster.enrol(2, key["key"].as_str().unwrap(), 1).await;
    let machine = enrolled["machine_id"].as_str().unwrap();
    let node_key = enrolled["node_key"].as_str().unwrap();

    let op = Some(cluster.operator_key.as_str());
    let (_, org) = cluster.post(1, "/api/org-admin", &json!({"action": "create_org", "name": "other"}), op).await;
    let (_, other) =
        cluster.post(1, "/api/org-admin", &json!({"action": "create_api_key", "org_id": org["org_id"]}), op).await;
    let other_key = other["key"].as_str().unwrap();
    for body in [
        json!({"action": "list_machines", "org_id": cluster.org_id}),
        json!({"action": "delete", "org_id": cluster.org_id, "machine_id": machine}),
        json!({"action": "set_tags", "org_id": cluster.org_id, "machine_id": machine, "tags": ["tag:x"]}),
    ] {
        let (status, answer) = cluster.post(3, "/api/machine-admin", &body, Some(other_key)).await;
        assert_eq!(status, 403, "{body} → {answer}");
    }
    // Naming its own org does not reach the machine either.
    let sneaky = json!({"action": "quarantine", "org_id": org["org_id"], "machine_id": machine});
    assert_eq!(cluster.post(2, "/api/machine-admin", &sneaky, Some(other_key)).await.0, 404);

    for (body, field) in [
        (json!({"action": "reboot", "machine_id": machine}), "action"),
        (json!({"action": "quarantine", "machine_id": "bad"}), "machine_id"),
        (json!({"action": "set_tags", "machine_id": machine, "tags": ["x"]}), "tags"),
        (json!({"action": "quarantine"}), "machine_id"),
    ] {
        let mut body = body;
        body["org_id"] = json!(cluster.org_id);
        let (status, answer) = cluster.post(1, "/api/machine-admin", &body, Some(&cluster.api_key.clone())).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field), "{answer}");
    }
    let (status, _) = cluster.post(1, "/api/machine/set-tags", &json!({"tags": "tag:a"}), Some(node_key)).await;
    assert_eq!(status, 400);
    let (status, answer) = cluster.post(1, "/api/machine/heartbeat", &json!({}), Some("nodekey-bad")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unknown_node_key")));

    // Nothing changed.
    let row = cluster.machines(1).await.into_iter().find(|m| m["machine_id"] == machine).unwrap();
    assert_eq!((row["state"].as_str(), row["tags"].clone()), (Some("active"), json!([])));
    let (status, beat) = cluster.post(3, "/api/machine/heartbeat", &json!({}), Some(node_key)).await;
    assert_eq!((status, beat["state"].as_str()), (200, Some("active")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_enrols_a_machine_with_curl_pipe_sh() {
    let cluster = Cluster::start().await;
    let key = cluster.create_key(1, json!({"tags": ["tag:laptop"]})).await;
    let prefix = cluster.dir.path().join("prefix");
    let state = cluster.dir.path().join("installed-state");
    let script = format!(
        "curl -fsSL {}/install.sh | ZTNA_AUTH_KEY={} ZTNA_PREFIX={} ZTNA_STATE_DIR={} ZTNA_SERVICE=background sh",
        cluster.url(2),
        key["key"].as_str().unwrap(),
        prefix.display(),
        state.display()
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(prefix.join("bin/ztna").exists());
    let pid = std::fs::read_to_string(state.join("ztna.pid")).expect("pid file").trim().to_string();
    let machines = cluster.machines(3).await;
    let _ = std::process::Command::new("kill").arg(&pid).status();
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0]["tags"], json!(["tag:laptop"]));
    // The downloaded binary is the node's own, checked against the published SHA-256.
    let sum: String = cluster
        .http
        .get(format!("{}/download/ztna-linux-x86_64.sha256", cluster.url(1)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let installed = std::fs::read(prefix.join("bin/ztna")).unwrap();
    assert_eq!(sum.split_whitespace().next().unwrap(), hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&installed)));

    // An unreachable node fails with a clear message.
    let bad = format!(
        "curl -fsSL {}/install.sh | ZTNA_INSTALL_SERVER=http://127.0.0.1:1 ZTNA_PREFIX={} sh",
        cluster.url(1),
        prefix.display()
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&bad).output().expect("sh");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot download ztna"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Defect: the installer pasted the raw `Host` header into the script; `Host: x$(cmd)` ran `cmd`
/// as root on every machine piping it to `sh`. No header reaches the script now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_host_header_does_not_change_the_installer() {
    let cluster = Cluster::start().await;
    let plain = cluster.http.get(format!("{}/install.sh", cluster.url(1))).send().await.unwrap().text().await.unwrap();
    let marker = cluster.dir.path().join("pwned");
    let hostile = format!("x$(touch {})`touch {}`';touch {};'", marker.display(), marker.display(), marker.display());
    let text = cluster
        .http
        .get(format!("{}/install.sh", cluster.url(1)))
        .header("Host", hostile.as_str())
        .header("X-Forwarded-Host", hostile.as_str())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, plain, "a request header changed the installer");
    assert!(text.contains(&format!("SOURCE='{}'", cluster.url(1))), "{text}");
    // Run as a machine would (no auth key: it installs and stops there): nothing else runs.
    let prefix = cluster.dir.path().join("prefix");
    let script = cluster.dir.path().join("install.sh");
    std::fs::write(&script, &text).unwrap();
    let out = std::process::Command::new("sh")
        .arg(&script)
        .env("ZTNA_PREFIX", &prefix)
        .env("ZTNA_STATE_DIR", cluster.dir.path().join("state"))
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!marker.exists(), "the hostile header ran a command");
}
