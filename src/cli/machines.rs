//! `ztna status` on a machine, and `ztna machines list` / `ztna machine-admin` (an org's API key).

use serde_json::json;

use super::format::{parse_time, table};
use super::*;

pub(super) async fn machine_status(agent: &AgentArgs) -> Result<(), CliError> {
    let dir = agent.dir();
    let status = crate::agent::status(&agent.servers()?, &dir).await?;
    if agent.conn.output == Output::Json {
        print_json(&status.clone().unwrap_or_else(|| json!({ "enrolled": false })));
        return Ok(());
    }
    match status {
        None => println!("Enrolled:   no (state directory {})", dir.display()),
        Some(m) => {
            println!("Enrolled:   yes");
            println!("Machine:    {}", m["machine_id"].as_str().unwrap_or_default());
            println!("Hostname:   {}", m["hostname"].as_str().unwrap_or_default());
            println!("Org:        {}", m["org_id"].as_str().unwrap_or_default());
            println!("Tags:       {}", super::format::tags_text(&m["tags"]));
            println!("Ephemeral:  {}", yes_no(&m["ephemeral"]));
            println!("State:      {}", m["state"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

pub(super) async fn machines_list(conn: &Conn, state: Option<String>) -> Result<(), CliError> {
    let (client, org) = admin(conn)?;
    let mut body = json!({ "action": "list_machines", "org_id": org });
    if let Some(state) = state {
        body["state"] = json!(state);
    }
    let answer = client.post("/api/machine-admin", &body).await?;
    if conn.output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = answer["machines"]
        .as_array()
        .map(|machines| {
            machines
                .iter()
                .map(|m| {
                    let tags = super::format::tag_names(&m["tags"]);
                    let last_seen = match parse_time(&m["last_seen"]) {
                        Some(t) => format!("{} ago", format::duration_words((now - t).max(0))),
                        None => "never".into(),
                    };
                    vec![
                        m["machine_id"].as_str().unwrap_or_default().to_string(),
                        m["hostname"].as_str().unwrap_or_default().to_string(),
                        if tags.is_empty() { "-".into() } else { tags.join(",") },
                        yes_no(&m["ephemeral"]).to_string(),
                        m["state"].as_str().unwrap_or_default().to_string(),
                        last_seen,
                        m["auth_key_prefix"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!("{}", table(&["MACHINE", "HOSTNAME", "TAGS", "EPHEMERAL", "STATE", "LAST-SEEN", "AUTH-KEY"], &rows));
    Ok(())
}

pub(super) async fn machine_admin(
    conn: &Conn,
    action: MachineAdminAction,
    machine: Option<String>,
    node_public_key: Option<String>,
    tags: Vec<String>,
) -> Result<(), CliError> {
    let (client, org) = admin(conn)?;
    if let MachineAdminAction::AllowReenrol = action {
        let key =
            node_public_key.ok_or_else(|| CliError::Usage("--action allow-reenrol needs --node-public-key".into()))?;
        let body =
            json!({ "action": "allow_reenrol", "org_id": org, "node_public_key": key, "request_id": request_id() });
        let answer = client.post("/api/machine-admin", &body).await?;
        if conn.output == Output::Json {
            print_json(&answer);
        } else {
            println!("✓ the machine with public key {key} may enrol again");
        }
        return Ok(());
    }
    let machine = machine.ok_or_else(|| CliError::Usage("--machine is needed with this action".into()))?;
    let (name, done) = match action {
        MachineAdminAction::Quarantine => ("quarantine", "quarantined"),
        MachineAdminAction::Unquarantine => ("unquarantine", "unquarantined"),
        MachineAdminAction::Delete => ("delete", "deleted"),
        MachineAdminAction::SetTags => ("set_tags", "retagged"),
        MachineAdminAction::RevokeNodeKey => ("revoke_node_key", "node key revoked"),
        MachineAdminAction::Approve => ("approve", "approved"),
        MachineAdminAction::Reject => ("reject", "rejected and deleted"),
        MachineAdminAction::AllowReenrol => ("allow_reenrol", "allowed to enrol again"),
    };
    let mut body = json!({ "action": name, "org_id": org, "machine_id": machine, "request_id": request_id() });
    if matches!(action, MachineAdminAction::SetTags) {
        body["tags"] = json!(tags);
    } else if !tags.is_empty() {
        return Err(CliError::Usage("--tags goes only with --action set-tags".into()));
    }
    let answer = client.post("/api/machine-admin", &body).await?;
    if conn.output == Output::Json {
        print_json(&answer);
    } else {
        println!("✓ {machine}: {done}");
    }
    Ok(())
}
