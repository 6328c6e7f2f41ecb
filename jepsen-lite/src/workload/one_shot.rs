//! One-shot race: a fresh one-shot key every ~200 ms, then 5–8 clients each enrolling a
//! different device through different nodes at once. At most one may succeed. Each round runs
//! on its own, so a round stuck behind a fault does not hold back the next, and each request
//! holds its own in-flight slot.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;

use super::Ctx;

pub async fn run(ctx: Arc<Ctx>, limit: Arc<Semaphore>, salt: u64) {
    let mut rng = ctx.rng(salt);
    let mut rounds = tokio::task::JoinSet::new();
    while ctx.sleep(Duration::from_millis(rng.gen_range(150..250))).await {
        let clients = rng.gen_range(5..=8u64);
        let Some(creating) = super::slots(&limit, 1) else {
            ctx.skip("one-shot");
            continue;
        };
        let first = rng.gen_range(0..3u64);
        let (ctx, limit) = (ctx.clone(), limit.clone());
        rounds.spawn(async move {
            let spec = json!({ "reusable": false, "expires_in": 3600, "tags": ["tag:jepsen"] });
            let mut admin = ctx.client();
            let created = admin.create(admin.random_node(), "one-shot", spec).await;
            drop(creating);
            let Some(key) = created else { return };
            let Some(slots) = super::slots(&limit, clients as usize) else {
                ctx.skip("one-shot");
                return;
            };
            let _ = ctx.bursts.send(());
            let nodes = ctx.cluster.ids.len() as u64;
            // Spread the racers over the nodes, starting at a random one.
            let racers = slots.into_iter().zip(0..clients).map(|(slot, i)| {
                let (ctx, key) = (ctx.clone(), key.clone());
                async move {
                    let _slot = slot;
                    ctx.client().enrol((first + i) % nodes + 1, &key).await
                }
            });
            futures::future::join_all(racers).await;
        });
        while rounds.try_join_next().is_some() {}
    }
    while rounds.join_next().await.is_some() {}
}
