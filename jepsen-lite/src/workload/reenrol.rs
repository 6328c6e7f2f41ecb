//! Re-enrolment: the retry path under faults. Every ~1.5 s a reusable key with `max_uses` N
//! (2 or 3) and a pool of N + 2 machines (fixed key pairs); for about a second clients enrol
//! machines drawn from the pool through random nodes, the same machine often several times and
//! at once, as agents do when answers are lost. An enrolled machine enrolling again is a re-key:
//! it keeps its machine and spends no use; at most N machines get in; two reads race them.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{Ctx, Machine};

pub async fn run(ctx: Arc<Ctx>, limit: Arc<Semaphore>, salt: u64) {
    let mut rng = ctx.rng(salt);
    let mut rounds = tokio::task::JoinSet::new();
    while ctx.sleep(Duration::from_millis(rng.gen_range(1200..1800))).await {
        let max_uses = rng.gen_range(2..=3u32);
        let clients = 6u32;
        let Some(creating) = super::slots(&limit, 1) else {
            ctx.skip("reenrol");
            continue;
        };
        let (ctx, limit) = (ctx.clone(), limit.clone());
        let seed = rng.gen::<u64>();
        rounds.spawn(async move {
            let spec = json!({ "reusable": true, "max_uses": max_uses, "expires_in": 3600, "tags": ["tag:jepsen"] });
            let mut admin = ctx.client();
            let created = admin.create(admin.random_node(), "reenrol", spec).await;
            drop(creating);
            let Some(key) = created else { return };
            // One slot per enroller (its enrolments follow one another) and per read.
            let Some(mut slots) = super::slots(&limit, clients as usize + 2) else {
                ctx.skip("reenrol");
                return;
            };
            let read_slots = [slots.pop(), slots.pop()];
            let pool: Arc<Vec<Machine>> = Arc::new((0..max_uses + 2).map(|_| Machine::fresh()).collect());
            let enrollers = slots.into_iter().zip(0..clients).map(|(slot, c)| {
                let (ctx, key, pool) = (ctx.clone(), key.clone(), pool.clone());
                async move {
                    let _slot = slot;
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(c));
                    let mut client = ctx.client();
                    for _ in 0..4 {
                        let machine = &pool[rng.gen_range(0..pool.len())];
                        client.enrol_machine(client.random_node(), &key, machine).await;
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..150))).await;
                    }
                }
            });
            let reads = [50u64, 400].into_iter().zip(read_slots).map(|(delay, slot)| {
                let (ctx, key) = (ctx.clone(), key.clone());
                async move {
                    let _slot = slot;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut client = ctx.client();
                    client.read(client.random_node(), &key.key_id, false).await;
                }
            });
            futures::future::join(futures::future::join_all(enrollers), futures::future::join_all(reads)).await;
        });
        while rounds.try_join_next().is_some() {}
    }
    while rounds.join_next().await.is_some() {}
}

use rand::SeedableRng;
