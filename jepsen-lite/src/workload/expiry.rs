//! Expiry: reusable keys that expire 2–4 s after creation, with enrolments from three clients
//! from creation until 1.5 s past the expiry plus the checkers' clock-skew bound (so the
//! client-side rule can fire even with the clock nemesis). None may succeed after the expiry
//! (within the bound). Needs the server's test-only `test_only_min_expiry_secs`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{Ctx, Key};

const STREAMS: usize = 3;

pub async fn run(ctx: Arc<Ctx>, limit: Arc<Semaphore>, salt: u64) {
    let mut rng = ctx.rng(salt);
    while ctx.sleep(Duration::from_millis(rng.gen_range(100..300))).await {
        let Ok(_permits) = limit.clone().acquire_many_owned(STREAMS as u32 + 1).await else { return };
        let expires_in = rng.gen_range(2..=4u64);
        let spec = json!({ "reusable": true, "expires_in": expires_in, "tags": ["tag:jepsen"] });
        let mut admin = ctx.client();
        let Some(key) = admin.create(admin.random_node(), "expiry", spec).await else { continue };
        let until = tokio::time::Instant::now() + Duration::from_millis(expires_in * 1000 + 1500 + ctx.skew_ms);
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..STREAMS {
            streams.spawn(stream(ctx.clone(), key.clone(), until));
        }
        while streams.join_next().await.is_some() {}
        admin.read(admin.random_node(), &key.key_id, false).await;
    }
}

async fn stream(ctx: Arc<Ctx>, key: Key, until: tokio::time::Instant) {
    let mut client = ctx.client();
    while tokio::time::Instant::now() < until {
        client.enrol(client.random_node(), &key).await;
        let pause = rand::thread_rng().gen_range(50..150);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
