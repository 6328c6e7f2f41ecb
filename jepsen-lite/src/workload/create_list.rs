//! Create and list: unique key creations every ~300 ms and a full paginated listing every ~5 s.
//! Every acknowledged creation must appear in every listing invoked after it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use super::Ctx;

pub async fn run(ctx: Arc<Ctx>, salt: u64) {
    let mut rng = ctx.rng(salt);
    let lister = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut client = ctx.client();
            while ctx.sleep(Duration::from_secs(5)).await {
                client.list(client.random_node(), false).await;
            }
        })
    };
    let mut client = ctx.client();
    let mut n = 0u64;
    while ctx.sleep(Duration::from_millis(rng.gen_range(200..400))).await {
        n += 1;
        let spec = json!({
            "reusable": true,
            "expires_in": 3600,
            "description": format!("jepsen-lite create {n}"),
        });
        client.create(client.random_node(), "create-list", spec).await;
    }
    let _ = lister.await;
}
