//! `max_uses` keys (2, 3 or 5) with 2N+3 concurrent enrolments and two reads of the key while
//! they race. At most N may succeed. Rounds run on their own, like the one-shot race.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;

use super::Ctx;

pub async fn run(ctx: Arc<Ctx>, limit: Arc<Semaphore>, salt: u64) {
    let mut rng = ctx.rng(salt);
    let mut rounds = tokio::task::JoinSet::new();
    while ctx.sleep(Duration::from_millis(rng.gen_range(300..500))).await {
        let max_uses = [2u32, 3, 5][rng.gen_range(0..3)];
        let enrolments = 2 * max_uses + 3;
        let Ok(permits) = limit.clone().try_acquire_many_owned(enrolments + 3) else {
            ctx.skip("max-uses");
            continue;
        };
        let read_delays = [rng.gen_range(0..40u64), rng.gen_range(0..40u64)];
        let ctx = ctx.clone();
        rounds.spawn(async move {
            let _held = permits;
            let spec = json!({ "reusable": true, "max_uses": max_uses, "expires_in": 3600, "tags": ["tag:jepsen"] });
            let mut admin = ctx.client();
            let Some(key) = admin.create(admin.random_node(), "max-uses", spec).await else { return };
            let enrols = (0..enrolments).map(|_| {
                let (ctx, key) = (ctx.clone(), key.clone());
                async move {
                    let mut client = ctx.client();
                    client.enrol(client.random_node(), &key).await;
                }
            });
            let reads = read_delays.map(|delay| {
                let (ctx, key) = (ctx.clone(), key.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut client = ctx.client();
                    client.read(client.random_node(), &key.key_id, false).await;
                }
            });
            futures::future::join(futures::future::join_all(enrols), futures::future::join_all(reads)).await;
        });
        while rounds.try_join_next().is_some() {}
    }
    while rounds.join_next().await.is_some() {}
}
