//! Revoke against enrol: three clients stream enrolments with a reusable key; at a random point
//! a revoke goes through a random node, and the stream goes on for a second after the revoke is
//! answered. No enrolment invoked after an acknowledged revoke may succeed.

use std::sync::atomic::{AtomicBool, Ordering};
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
        let Ok(_permits) = limit.clone().acquire_many_owned(STREAMS as u32 + 2).await else { return };
        let spec = json!({ "reusable": true, "expires_in": 3600, "tags": ["tag:jepsen"] });
        let mut admin = ctx.client();
        let Some(key) = admin.create(admin.random_node(), "revoke", spec).await else { continue };
        let done = Arc::new(AtomicBool::new(false));
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..STREAMS {
            streams.spawn(stream(ctx.clone(), key.clone(), done.clone()));
        }
        let reader = tokio::spawn(reads(ctx.clone(), key.clone(), done.clone()));
        // Revoke somewhere in the stream, then keep enrolling for a second after the answer.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2500))).await;
        admin.revoke(admin.random_node(), &key.key_id).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        done.store(true, Ordering::Relaxed);
        while streams.join_next().await.is_some() {}
        let _ = reader.await;
    }
}

async fn stream(ctx: Arc<Ctx>, key: Key, done: Arc<AtomicBool>) {
    let mut client = ctx.client();
    while !done.load(Ordering::Relaxed) {
        client.enrol(client.random_node(), &key).await;
        let pause = rand::thread_rng().gen_range(20..80);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn reads(ctx: Arc<Ctx>, key: Key, done: Arc<AtomicBool>) {
    let mut client = ctx.client();
    while !done.load(Ordering::Relaxed) {
        client.read(client.random_node(), &key.key_id, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
