//! `ztna cluster status|init` and `ztna org-admin …` (the operator key).

use serde_json::{json, Value};

use super::format::table;
use super::*;

pub(super) async fn cluster(command: ClusterCommand, conn: &Conn) -> Result<(), CliError> {
    let client = client(conn, None)?;
    match command {
        ClusterCommand::Up { .. } => return Err(CliError::Usage("cluster up runs on its own".into())),
        ClusterCommand::Status => {
            let mut views = Vec::new();
            for server in client.servers() {
                let view = match client.get_from(server, "/api/cluster").await {
                    Ok(info) => info,
                    Err(e) => json!({ "server": server, "error": e.to_string() }),
                };
                views.push((server.clone(), view));
            }
            if conn.output == Output::Json {
                print_json(&Value::Array(views.into_iter().map(|(_, v)| v).collect()));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|(server, v)| {
                    if v.get("error").is_some() {
                        return vec![
                            "?".into(),
                            "unreachable".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            server.clone(),
                        ];
                    }
                    let num = |f: &str| v[f].as_u64().map_or("-".to_string(), |n| n.to_string());
                    vec![
                        num("node_id"),
                        v["role"].as_str().unwrap_or("?").to_string(),
                        num("term"),
                        num("last_log_index"),
                        num("last_applied_index"),
                        num("leader"),
                        server.clone(),
                    ]
                })
                .collect();
            println!("{}", table(&["NODE", "ROLE", "TERM", "LAST-LOG", "APPLIED", "LEADER", "API"], &rows));
        }
        ClusterCommand::AddNode { id, raft_addr, api_addr, operator } => {
            let members = change_membership(conn, operator, add_node(id, &raft_addr, &api_addr)).await?;
            report_members(conn, &format!("node {id} added and voting"), &members);
        }
        ClusterCommand::RemoveNode { id, operator } => {
            let members = change_membership(conn, operator, remove_node(id)).await?;
            report_members(conn, &format!("node {id} removed; its id is retired"), &members);
        }
        ClusterCommand::ReplaceNode { old_id, id, raft_addr, api_addr, operator } => {
            change_membership(conn, operator.clone(), add_node(id, &raft_addr, &api_addr)).await?;
            println!("✓ node {id} added and voting; removing node {old_id}");
            let members = change_membership(conn, operator, remove_node(old_id)).await?;
            report_members(conn, &format!("node {old_id} replaced by node {id}"), &members);
        }
        ClusterCommand::Init { org_name, env_file, operator_key_file } => {
            let answer = client.post("/api/cluster/init", &json!({ "org_name": org_name })).await?;
            let org_id = answer["org_id"].as_str().unwrap_or_default();
            let api_key = answer["api_key"].as_str().unwrap_or_default();
            let operator_key = answer["operator_key"].as_str().unwrap_or_default();
            if let Some(path) = &env_file {
                let servers = client.servers().join(",");
                let text = format!("ZTNA_SERVER={servers}\nQZ_API_KEY={api_key}\nZTNA_ORG={org_id}\n");
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

fn add_node(id: u64, raft_addr: &str, api_addr: &str) -> Value {
    json!({ "action": "add_node", "node_id": id, "raft_addr": raft_addr, "api_addr": api_addr })
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
        OrgCommand::CreateApiKey { org_id, description } => json!({
            "action": "create_api_key", "org_id": org_id, "description": description, "request_id": request_id(),
        }),
        OrgCommand::ListApiKeys { org_id } => json!({ "action": "list_api_keys", "org_id": org_id }),
        OrgCommand::RevokeApiKey { api_key_id } => json!({
            "action": "revoke_api_key", "api_key_id": api_key_id, "request_id": request_id(),
        }),
    };
    let answer = client.post("/api/org-admin", &body).await?;
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
                            vec![
                                k["api_key_id"].as_str().unwrap_or_default().to_string(),
                                k["scope"].as_str().unwrap_or_default().to_string(),
                                k["org_id"].as_str().unwrap_or("-").to_string(),
                                state.to_string(),
                                k["description"].as_str().unwrap_or_default().to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!("{}", table(&["API-KEY", "SCOPE", "ORG", "STATE", "DESCRIPTION"], &rows));
        }
    }
    Ok(())
}
