//! `ztna auth-key create|list|get|revoke` (an org's API key).

use serde_json::{json, Value};

use super::format::{parse_time, relative_expiry, table};
use super::*;

pub(super) async fn auth_key(command: AuthKeyCommand, conn: &Conn) -> Result<(), CliError> {
    let (client, org) = admin(conn)?;
    match command {
        AuthKeyCommand::Create { reusable, ephemeral, expiry, tags, description, max_uses, approval_required } => {
            let mut body = json!({
                "action": "create_auth_key", "org_id": org, "reusable": reusable, "ephemeral": ephemeral,
                "expires_in": parse_expiry(&expiry)?, "tags": tags, "description": description,
                "preauthorized": !approval_required, "request_id": request_id(),
            });
            if let Some(max) = max_uses {
                body["max_uses"] = json!(max);
            }
            let key = client.post_sticky("/api/key-management", &body).await?;
            if conn.output == Output::Json {
                print_json(&key);
                return Ok(());
            }
            let expires = parse_time(&key["expires_at"]).map_or("?".into(), |t| relative_expiry(t, now_ms()));
            println!("✓ Auth key created: {}", key["key"].as_str().unwrap_or_default());
            println!("  Reusable:     {}", yes_no(&key["reusable"]));
            if let Some(max) = key["max_uses"].as_u64() {
                println!("  Max uses:     {max}");
            }
            println!("  Ephemeral:    {}", yes_no(&key["ephemeral"]));
            println!("  Expires:      {expires}");
            println!("  Tags:         {}", super::format::tags_text(&key["tags"]));
            if key["preauthorized"] == json!(false) {
                println!("  Approval:     required (machines wait as pending for an admin)");
            }
            println!("  Description:  {}", key["description"].as_str().unwrap_or_default());
            println!();
            println!("COPY THIS KEY NOW — you cannot retrieve it later.");
        }
        AuthKeyCommand::List => {
            let mut keys = Vec::new();
            let mut cursor = Value::Null;
            loop {
                let body = json!({ "action": "list_auth_keys", "org_id": org, "limit": 1000, "cursor": cursor });
                let page = client.post("/api/key-management", &body).await?;
                keys.extend(page["keys"].as_array().cloned().unwrap_or_default());
                cursor = page["next_cursor"].clone();
                if cursor.is_null() {
                    break;
                }
            }
            if conn.output == Output::Json {
                print_json(&json!({ "keys": keys }));
                return Ok(());
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    let uses = match k["max_uses"].as_u64() {
                        Some(max) => format!("{}/{max}", k["uses"]),
                        None => k["uses"].to_string(),
                    };
                    let expires = match parse_time(&k["expires_at"]) {
                        Some(t) if t > now => relative_expiry(t, now),
                        Some(_) => "expired".into(),
                        None => "?".into(),
                    };
                    vec![
                        k["prefix"].as_str().unwrap_or_default().to_string(),
                        yes_no(&k["reusable"]).to_string(),
                        uses,
                        expires,
                        k["state"].as_str().unwrap_or_default().to_string(),
                        k["description"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect();
            println!("{}", table(&["PREFIX", "REUSABLE", "USES", "EXPIRES", "STATE", "DESCRIPTION"], &rows));
        }
        AuthKeyCommand::Get { key_id } => {
            let body = json!({ "action": "get_auth_key", "org_id": org, "key_id": key_id });
            let key = client.post("/api/key-management", &body).await?;
            if conn.output == Output::Json {
                print_json(&key);
                return Ok(());
            }
            println!(
                "{}  {}  {}",
                key["key_id"].as_str().unwrap_or_default(),
                key["prefix"].as_str().unwrap_or_default(),
                key["state"].as_str().unwrap_or_default()
            );
            let rows: Vec<Vec<String>> = key["enrolments"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|e| {
                            ["machine_id", "node_key_fingerprint", "at"]
                                .iter()
                                .map(|f| e[*f].as_str().unwrap_or_default().to_string())
                                .chain(std::iter::once(e["log_index"].to_string()))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!("{}", table(&["MACHINE", "NODE-KEY", "ENROLLED", "LOG-INDEX"], &rows));
        }
        AuthKeyCommand::Revoke { key } => {
            let mut body = json!({ "action": "revoke_auth_key", "org_id": org, "request_id": request_id() });
            if key.starts_with("ak_") {
                body["key_id"] = json!(key);
            } else {
                body["key"] = json!(key);
            }
            let record = client.post("/api/key-management", &body).await?;
            if conn.output == Output::Json {
                print_json(&record);
                return Ok(());
            }
            println!("✓ Revoked — future enrolments with this key will fail");
        }
    }
    Ok(())
}
