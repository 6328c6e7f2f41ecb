//! `max_uses` keys (2, 3 or 5) with 2N+3 concurrent enrolments and two reads of the key while
//! they race. At most N may succeed. Rounds run on their own, like the one-shot race, and each
//! request holds its own in-flight slot.

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
        let Some(creating) = super::slots(&limit, 1) else {
            ctx.skip("max-uses");
            continue;
        };
        let read_delays = [rng.gen_range(0..40u64), rng.gen_range(0..40u64)];
        let (ctx, limit) = (ctx.clone(), limit.clone());
        rounds.spawn(async move {
            let spec = json!({ "reusable": true, "max_uses": max_uses, "expires_in": 3600, "tags": ["tag:jepsen"] });
            let mut admin = ctx.client();
            let created = admin.create(admin.random_node(), "max-uses", spec).await;
            drop(creating);
            let Some(key) = created else { return };
            let Some(mut slots) = super::slots(&limit, enrolments as usize + 2) else {
                ctx.skip("max-uses");
                return;
            };
            let read_slots = [slots.pop(), slots.pop()];
            let enrols = slots.into_iter().map(|slot| {
                let (ctx, key) = (ctx.clone(), key.clone());
                async move {
                    let _slot = slot;
                    let mut client = ctx.client();
                    client.enrol(client.random_node(), &key).await;
                }
            });
            let reads = read_delays.into_iter().zip(read_slots).map(|(delay, slot)| {
                let (ctx, key) = (ctx.clone(), key.clone());
                async move {
                    let _slot = slot;
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
