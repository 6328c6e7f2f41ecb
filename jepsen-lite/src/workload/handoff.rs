//! Handoff: a credential is used through the other nodes the moment it is made, while the
//! nemesis kills the leader a few milliseconds into the round. Every ~300 ms a round, on its
//! own task, does one of:
//! - creates a reusable auth key through one node, then enrols a new machine with it through the
//!   other two, again and again for about a second (through the leader's death and the
//!   election), and heartbeats each enrolled machine with its new node key through a node other
//!   than the one that enrolled it;
//! - creates an API key with the operator key through one node, then asks `GET /api/whoami`
//!   with it through the other two, again and again for about a second.
//!
//! A definite refusal of any of these (`invalid_auth_key`, `unauthorized`, `unknown_node_key`)
//! is a lie: the credential exists and nothing revokes it. `checker::credentials` says so; the
//! enrolments are in their key's history for the other checkers too.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{Ctx, Request};
use crate::history::{f, OpType};

/// How long a round keeps using its new credential.
const ROUND: Duration = Duration::from_millis(1200);
/// Between two uses within a round.
const EVERY: Duration = Duration::from_millis(60);

pub async fn run(ctx: Arc<Ctx>, limit: Arc<Semaphore>, salt: u64) {
    let mut rng = ctx.rng(salt);
    let mut rounds = tokio::task::JoinSet::new();
    while ctx.sleep(Duration::from_millis(rng.gen_range(200..400))).await {
        // One slot for the creation, one for each use in flight (two at a time).
        let Some(slots) = super::slots(&limit, 3) else {
            ctx.skip("handoff");
            continue;
        };
        let (ctx, maker, api_key) = (ctx.clone(), rng.gen_range(1..=3u64), rng.gen_bool(0.3));
        rounds.spawn(async move {
            let _slots = slots;
            if api_key {
                api_key_round(&ctx, maker).await;
            } else {
                auth_key_round(&ctx, maker).await;
            }
        });
        while rounds.try_join_next().is_some() {}
    }
    while rounds.join_next().await.is_some() {}
}

/// The nodes other than `node`.
fn others(ctx: &Ctx, node: u64) -> Vec<u64> {
    ctx.cluster.ids.iter().copied().filter(|&n| n != node).collect()
}

async fn auth_key_round(ctx: &Arc<Ctx>, maker: u64) {
    let spec = json!({ "reusable": true, "expires_in": 3600, "tags": ["tag:jepsen"] });
    let mut admin = ctx.client();
    let Some(key) = admin.create(maker, "handoff", spec).await else { return };
    let _ = ctx.bursts.send(());
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < ROUND {
        let nodes = others(ctx, maker);
        let uses = nodes.iter().map(|&node| {
            let (ctx, key) = (ctx.clone(), key.clone());
            async move {
                let mut client = ctx.client();
                let enrolled = client.enrol(node, &key).await;
                if enrolled.kind != OpType::Ok {
                    return;
                }
                let (Some(machine), Some(node_key)) =
                    (enrolled.body["machine_id"].as_str(), enrolled.body["node_key"].as_str())
                else {
                    return;
                };
                let elsewhere = others(&ctx, node)[rand::thread_rng().gen_range(0..2)];
                let value = json!({ "machine_id": machine });
                let request = Request::Post("/api/machine/heartbeat", json!({}));
                client.request(f::HEARTBEAT, None, value, elsewhere, request, node_key).await;
            }
        });
        futures::future::join_all(uses).await;
        n += 1;
        if n >= 12 || !ctx.sleep(EVERY).await {
            return;
        }
    }
}

async fn api_key_round(ctx: &Arc<Ctx>, maker: u64) {
    let operator = ctx.cluster.api.operator_key.clone();
    let body = json!({
        "action": "create_api_key", "org_id": ctx.cluster.api.org_id, "description": "jepsen handoff",
        "request_id": ctx.request_id(),
    });
    let mut admin = ctx.client();
    let created = admin
        .request(f::CREATE_API_KEY, None, json!({}), maker, Request::Post("/api/org-admin", body), &operator)
        .await;
    let (Some(id), Some(secret)) = (created.body["api_key_id"].as_str(), created.body["key"].as_str()) else { return };
    let _ = ctx.bursts.send(());
    let started = tokio::time::Instant::now();
    while started.elapsed() < ROUND {
        let uses = others(ctx, maker).into_iter().map(|node| {
            let ctx = ctx.clone();
            async move {
                let value = json!({ "api_key_id": id });
                ctx.client().request(f::WHOAMI, Some(id), value, node, Request::Get("/api/whoami"), secret).await;
            }
        });
        futures::future::join_all(uses).await;
        if !ctx.sleep(EVERY).await {
            return;
        }
    }
}
