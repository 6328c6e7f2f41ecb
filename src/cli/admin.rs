//! `ztna cluster status|init` and `ztna org-admin …` (the operator key).

use serde_json::{json, Value};

use super::format::table;
use super::*;

pub(super) async fn cluster(command: ClusterCommand, conn: &Conn) -> Result<(), CliError> {
    // Status shows the cluster's internals: any API key may see them (QZ_API_KEY).
    let client = client(conn, conn.api_key.clone())?;
    match command {
        ClusterCommand::Up { .. }
        | ClusterCommand::Restore { .. }
        | ClusterCommand::Certs { .. }
        | ClusterCommand::BootstrapToken { .. } => return Err(CliError::Usage("this command runs on its own".into())),
        ClusterCommand::Backup { out, operator } => backup(conn, operator, &out).await?,
        ClusterCommand::Status => cluster_status(conn, &client).await?,
        ClusterCommand::AddNode { node, operator } => {
            let members = change_membership(conn, operator, add_node(&node)).await?;
            report_members(conn, &format!("node {} added and voting", node.id), &members);
        }
        ClusterCommand::RemoveNode { id, operator } => {
            let members = change_membership(conn, operator, remove_node(id)).await?;
            let done = if members["already_removed"] == true {
                format!("node {id} was already removed; its id is retired")
            } else {
                format!("node {id} removed; its id is retired")
            };
            report_members(conn, &done, &members);
        }
        ClusterCommand::ReplaceNode { old_id, node, operator } => {
            change_membership(conn, operator.clone(), add_node(&node)).await?;
            println!("✓ node {} added and voting; removing node {old_id}", node.id);
            let members = change_membership(conn, operator, remove_node(old_id)).await?;
            report_members(conn, &format!("node {old_id} replaced by node {}", node.id), &members);
        }
        ClusterCommand::Init { org_name, bootstrap_token_file, env_file, operator_key_file } => {
            let token = match (bootstrap_token_file, std::env::var("ZTNA_BOOTSTRAP_TOKEN").ok()) {
                (Some(path), _) => super::read_secret_file(&path)?,
                (None, Some(token)) => token.trim().to_string(),
                (None, None) => return Err(CliError::Usage(
                    "give the bootstrap token: --bootstrap-token-file FILE (made by `ztna cluster bootstrap-token`) \
                         or ZTNA_BOOTSTRAP_TOKEN"
                        .into(),
                )),
            };
            let initialiser = super::client(conn, Some(token))?;
            let body = json!({ "org_name": org_name, "request_id": super::request_id() });
            let answer = initialiser.post_sticky("/api/cluster/init", &body).await?;
            let org_id = answer["org_id"].as_str().unwrap_or_default();
            let api_key = answer["api_key"].as_str().unwrap_or_default();
            let operator_key = answer["operator_key"].as_str().unwrap_or_default();
            if let Some(path) = &env_file {
                let servers = client.servers().join(",");
                let mut text = format!("ZTNA_SERVER={servers}\nQZ_API_KEY={api_key}\nZTNA_ORG={org_id}\n");
                if let Some(ca) = std::env::var_os(crate::client::CA_CERT_ENV) {
                    let ca = std::fs::canonicalize(&ca).unwrap_or_else(|_| ca.into());
                    text.push_str(&format!("ZTNA_CA_CERT={}\n", ca.display()));
                }
                write_private(path, &text)?;
            }
            if let Some(path) = &operator_key_file {
                write_private(path, &format!("{operator_key}\n"))?;
            }
            if conn.output == Output::Json {
                print_json(&answer);
            } else if env_file.is_none() {
                println!("✓ Cluster initialised");
                println!("  Org:           {org_id}");
                println!("  API key:       {api_key}");
                println!("  Operator key:  {operator_key}");
                println!();
                println!("COPY THESE KEYS NOW — you cannot retrieve them later.");
            } else {
                println!("✓ Cluster initialised: org {org_id}");
            }
        }
    }
    Ok(())
}

/// Downloads a backup from the leader (following a follower's redirect with the same key),
/// checks its SHA-256 and writes FILE and FILE.sha256.
async fn backup(conn: &Conn, operator: OperatorKey, out: &std::path::Path) -> Result<(), CliError> {
    use crate::api::backup::{HEADER_INDEX, HEADER_ROWS, HEADER_SHA256};
    let key = operator.resolve()?;
    let client = client(conn, None)?;
    let http = crate::client::http_builder()?
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(3600))
        .build()
        .map_err(|e| CliError::Io(e.to_string()))?;
    let mut tried = Vec::new();
    let mut targets: Vec<String> = client.servers().iter().map(|s| format!("{s}/api/cluster/backup")).collect();
    let mut response = None;
    while let Some(url) = (!targets.is_empty()).then(|| targets.remove(0)) {
        match http.post(&url).bearer_auth(&key).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::TEMPORARY_REDIRECT && tried.len() < 6 => {
                let location = r.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
                tried.push(format!("{url} (redirected to the leader)"));
                targets.insert(0, location.to_string());
            }
            Ok(r) if r.status().is_success() => {
                response = Some(r);
                break;
            }
            Ok(r) if r.status().as_u16() != 503 => {
                return Err(crate::client::error_of(r).await.into());
            }
            Ok(r) => tried.push(format!("{url} ({})", r.status())),
            Err(e) => tried.push(format!("{url} ({e})")),
        }
    }
    let response =
        response.ok_or_else(|| CliError::Client(crate::client::ClientError::Unreachable(tried.join(", "))))?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
    let (index, rows, sha256) = (header(HEADER_INDEX), header(HEADER_ROWS), header(HEADER_SHA256));
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let cannot_write =
        |path: &std::path::Path, e: std::io::Error| CliError::Io(format!("cannot write {}: {e}", path.display()));
    // Streamed to disk and hashed on the way: a backup can be larger than memory. It holds org
    // names, hostnames, tags and addresses: readable by its owner only (0600, O_EXCL|O_NOFOLLOW).
    let _ = std::fs::remove_file(&tmp);
    let mut file = crate::private_file::open_new(&tmp).map_err(|e| cannot_write(&tmp, e))?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut bytes = 0usize;
    let mut response = response;
    while let Some(chunk) =
        response.chunk().await.map_err(|e| CliError::Io(format!("the backup was cut short: {e}")))?
    {
        sha2::Digest::update(&mut hasher, &chunk);
        std::io::Write::write_all(&mut file, &chunk).map_err(|e| cannot_write(&tmp, e))?;
        bytes += chunk.len();
    }
    file.sync_all().map_err(|e| cannot_write(&tmp, e))?;
    let got = hex::encode(sha2::Digest::finalize(hasher));
    if got != sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::Io(format!("the backup arrived damaged: SHA-256 {got}, the leader said {sha256}")));
    }
    std::fs::rename(&tmp, out).map_err(|e| cannot_write(out, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut sums = out.as_os_str().to_owned();
    sums.push(".sha256");
    let sums = std::path::PathBuf::from(sums);
    crate::private_file::write(&sums, format!("{sha256}  {name}\n").as_bytes()).map_err(|e| cannot_write(&sums, e))?;
    if conn.output == Output::Json {
        print_json(&json!({ "file": out, "index": index, "rows": rows, "bytes": bytes, "sha256": sha256 }));
    } else {
        println!("✓ Backup at log index {index} ({rows} rows, {bytes} bytes) written to {}", out.display());
        println!("  SHA-256: {sha256}");
    }
    Ok(())
}

/// `ztna cluster restore`: seeds a new node's data directory from a backup.
pub(super) async fn restore(
    from: &std::path::Path,
    data_dir: &std::path::Path,
    cluster: &std::path::Path,
    id: u64,
) -> Result<(), CliError> {
    let file = crate::config::ClusterFile::load(cluster)?;
    // The checksum `ztna cluster backup` wrote beside the file, when it is there, must match
    // (the file's own row count and SHA-256 are checked by the restore itself).
    let mut sums = from.as_os_str().to_owned();
    sums.push(".sha256");
    if let Ok(text) = std::fs::read_to_string(std::path::PathBuf::from(&sums)) {
        let expected = text.split_whitespace().next().unwrap_or_default().to_string();
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut reader =
            std::fs::File::open(from).map_err(|e| CliError::Io(format!("cannot read {}: {e}", from.display())))?;
        std::io::copy(&mut reader, &mut hasher)
            .map_err(|e| CliError::Io(format!("cannot read {}: {e}", from.display())))?;
        let got = hex::encode(sha2::Digest::finalize(hasher));
        if got != expected {
            return Err(CliError::Io(format!(
                "{} does not match its checksum file (SHA-256 {got}, expected {expected}): not restoring",
                from.display()
            )));
        }
    }
    let info = crate::store::backup::restore(from, data_dir, &file.settings.cluster_name, id, file.members()).await?;
    println!(
        "✓ Restored the backup at log index {} ({} rows) into {} as node {id} of cluster {:?}",
        info.index,
        info.rows,
        data_dir.display(),
        file.settings.cluster_name
    );
    println!("  Start it: ztna server --cluster {} --id {id} --data-dir {}", cluster.display(), data_dir.display());
    Ok(())
}

fn add_node(node: &NewNode) -> Value {
    json!({ "action": "add_node", "node_id": node.id, "raft_addr": node.raft_addr, "api_addr": node.api_addr })
}

fn remove_node(id: u64) -> Value {
    json!({ "action": "remove_node", "node_id": id })
}

/// One membership change; a new node may take minutes to catch up, so the wait is long.
async fn change_membership(conn: &Conn, operator: OperatorKey, body: Value) -> Result<Value, CliError> {
    let client = client(conn, Some(operator.resolve()?))?.with_timeout(std::time::Duration::from_secs(1800));
    Ok(client.post("/api/cluster/membership", &body).await?)
}

fn report_members(conn: &Conn, done: &str, answer: &Value) {
    if conn.output == Output::Json {
        print_json(answer);
        return;
    }
    println!("✓ {done}");
    let rows: Vec<Vec<String>> = answer["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    vec![
                        m["id"].as_u64().map_or("?".into(), |id| id.to_string()),
                        if m["voter"] == true { "voter" } else { "learner" }.to_string(),
                        m["raft_addr"].as_str().unwrap_or_default().to_string(),
                        m["api_addr"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!("{}", table(&["NODE", "KIND", "RAFT", "API"], &rows));
}

pub(super) async fn org_admin(command: OrgCommand, conn: &Conn, operator_key: String) -> Result<(), CliError> {
    let client = client(conn, Some(operator_key))?;
    let body = match &command {
        OrgCommand::CreateOrg { name } => json!({ "action": "create_org", "name": name, "request_id": request_id() }),
        OrgCommand::ListOrgs => json!({ "action": "list_orgs" }),
        OrgCommand::CreateApiKey { org_id, description, expiry, scopes, tags } => {
            let expires_in = expiry.as_deref().map(crate::config::parse_duration_ms).transpose()?.map(|ms| ms / 1000);
            json!({
                "action": "create_api_key", "org_id": org_id, "description": description, "request_id": request_id(),
                "expires_in": expires_in, "scopes": scopes, "tags": tags,
            })
        }
        OrgCommand::RotateOperatorKey { out } => {
            if out.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists: give a new file for the new operator key",
                    out.display()
                )));
            }
            json!({ "action": "rotate_operator_key", "request_id": request_id() })
        }
        OrgCommand::SetLimits { org_id, auth_keys_per_day, machines } => json!({
            "action": "set_org_limits", "org_id": org_id, "auth_keys_per_day": auth_keys_per_day,
            "machines": machines, "request_id": request_id(),
        }),
        OrgCommand::ListApiKeys { org_id } => json!({ "action": "list_api_keys", "org_id": org_id }),
        OrgCommand::RevokeApiKey { api_key_id } => json!({
            "action": "revoke_api_key", "api_key_id": api_key_id, "request_id": request_id(),
        }),
    };
    let creates = matches!(body["action"].as_str(), Some("create_api_key" | "rotate_operator_key"));
    let answer = if creates {
        client.post_sticky("/api/org-admin", &body).await?
    } else {
        client.post("/api/org-admin", &body).await?
    };
    if conn.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    match command {
        OrgCommand::CreateOrg { .. } => println!("✓ Org created: {}", answer["org_id"].as_str().unwrap_or_default()),
        OrgCommand::CreateApiKey { .. } => {
            println!("✓ API key created: {}", answer["key"].as_str().unwrap_or_default());
            println!("  Id:   {}", answer["api_key_id"].as_str().unwrap_or_default());
            println!("  Org:  {}", answer["org_id"].as_str().unwrap_or_default());
            println!();
            println!("COPY THIS KEY NOW — you cannot retrieve it later.");
        }
        OrgCommand::RevokeApiKey { .. } => println!("✓ API key revoked"),
        OrgCommand::RotateOperatorKey { out } => {
            let key = answer["key"].as_str().unwrap_or_default();
            crate::private_file::create_new(&out, format!("{key}\n").as_bytes()).map_err(|e| {
                CliError::Io(format!(
                    "the operator key was rotated, but writing {} failed: {e}; its id is {}",
                    out.display(),
                    answer["api_key_id"]
                ))
            })?;
            println!(
                "✓ Operator key rotated: the new key is in {} (mode 0600); the old one no longer works",
                out.display()
            );
        }
        OrgCommand::SetLimits { .. } => println!(
            "✓ Limits of {}: {} auth keys a day, {} machines",
            answer["org_id"].as_str().unwrap_or_default(),
            answer["auth_keys_per_day"],
            answer["machines"]
        ),
        OrgCommand::ListOrgs => {
            let rows: Vec<Vec<String>> = answer["orgs"]
                .as_array()
                .map(|orgs| {
                    orgs.iter()
                        .map(|o| {
                            ["org_id", "name", "created_at"]
                                .iter()
                                .map(|f| o[*f].as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!("{}", table(&["ORG", "NAME", "CREATED"], &rows));
        }
        OrgCommand::ListApiKeys { .. } => {
            let rows: Vec<Vec<String>> = answer["api_keys"]
                .as_array()
                .map(|keys| {
                    keys.iter()
                        .map(|k| {
                            let state = if k["revoked_at"].is_null() { "active" } else { "revoked" };
                            let list = |v: &Value| {
                                v.as_array().map_or("all".to_string(), |items| {
                                    items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
                                })
                            };
                            vec![
                                k["api_key_id"].as_str().unwrap_or_default().to_string(),
                                k["scope"].as_str().unwrap_or_default().to_string(),
                                k["org_id"].as_str().unwrap_or("-").to_string(),
                                state.to_string(),
                                list(&k["scopes"]),
                                list(&k["tags"]),
                                k["expires_at"].as_str().unwrap_or("never").to_string(),
                                k["last_used_at"].as_str().unwrap_or("-").to_string(),
                                k["description"].as_str().unwrap_or_default().to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            let header = ["API-KEY", "KIND", "ORG", "STATE", "SCOPES", "TAGS", "EXPIRES", "LAST-USED", "DESCRIPTION"];
            println!("{}", table(&header, &rows));
        }
    }
    Ok(())
}

/// `ztna cluster status`: every member of the cluster, as the cluster lists them (not only the
/// nodes in `ZTNA_SERVER`), each asked for its own view; unreachable ones marked with the
/// reason. Fails (exit 1) when any member does not answer.
async fn cluster_status(conn: &Conn, client: &crate::client::Client) -> Result<(), CliError> {
    let mut views: Vec<(String, Value)> = Vec::new();
    for server in client.servers() {
        let view = match client.get_from(server, "/api/cluster").await {
            Ok(info) => info,
            Err(e) => json!({ "error": e.to_string() }),
        };
        views.push((server.clone(), view));
    }
    // The members, from the leader's view if one answered, else any member's.
    let members: Vec<Value> = views
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["members"].is_array())
        .max_by_key(|v| (v["role"] == "leader", v["term"].as_u64()))
        .and_then(|v| v["members"].as_array().cloned())
        .unwrap_or_default();
    // Members reached at their API address, with the scheme the given servers use.
    let scheme = client.servers().first().and_then(|s| s.split_once("://")).map_or("http", |(scheme, _)| scheme);
    for member in &members {
        let url = format!("{scheme}://{}", member["api_addr"].as_str().unwrap_or_default());
        let known = views.iter().any(|(_, v)| v["node_id"] == member["id"]) || views.iter().any(|(s, _)| *s == url);
        if !known {
            let view = match client.get_from(&url, "/api/cluster").await {
                Ok(info) => info,
                Err(e) => json!({ "error": e.to_string() }),
            };
            views.push((url, view));
        }
    }
    let member_ids: Vec<u64> = members.iter().filter_map(|m| m["id"].as_u64()).collect();
    let down: Vec<String> = views.iter().filter(|(_, v)| v.get("error").is_some()).map(|(s, _)| s.clone()).collect();
    if conn.output == Output::Json {
        print_json(&json!({
            "members": members,
            "nodes": views.iter().map(|(s, v)| json!({ "server": s, "view": v })).collect::<Vec<_>>(),
        }));
    } else {
        let rows: Vec<Vec<String>> = views
            .iter()
            .map(|(server, v)| {
                if let Some(error) = v["error"].as_str() {
                    let id = members
                        .iter()
                        .find(|m| server.ends_with(m["api_addr"].as_str().unwrap_or("\u{0}")))
                        .and_then(|m| m["id"].as_u64())
                        .map_or("?".to_string(), |id| id.to_string());
                    return vec![
                        id,
                        "unreachable".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        format!("{server}: {error}"),
                    ];
                }
                let num = |f: &str| v[f].as_u64().map_or("-".to_string(), |n| n.to_string());
                let member = match v["node_id"].as_u64() {
                    Some(id) if member_ids.contains(&id) => {
                        let voter = members.iter().any(|m| m["id"] == id && m["voter"] == true);
                        if voter {
                            "voter"
                        } else {
                            "learner"
                        }
                    }
                    _ if members.is_empty() => "?",
                    _ => "not a member",
                };
                vec![
                    num("node_id"),
                    v["role"].as_str().unwrap_or("?").to_string(),
                    member.to_string(),
                    num("term"),
                    num("last_log_index"),
                    num("last_applied_index"),
                    num("leader"),
                    server.clone(),
                ]
            })
            .collect();
        println!("{}", table(&["NODE", "ROLE", "MEMBER", "TERM", "LAST-LOG", "APPLIED", "LEADER", "API"], &rows));
    }
    if down.is_empty() {
        Ok(())
    } else {
        let hint = if down.iter().any(|s| s.starts_with("https://"))
            && std::env::var_os(crate::client::CA_CERT_ENV).is_none()
        {
            " (these nodes serve HTTPS: set ZTNA_CA_CERT to the cluster CA)"
        } else {
            ""
        };
        Err(CliError::Unhealthy(format!("{} node(s) did not answer: {}{hint}", down.len(), down.join(", "))))
    }
}
