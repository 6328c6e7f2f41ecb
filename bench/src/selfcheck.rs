//! The load generator's own test (run by `scripts/test`): one second of enrolments against a
//! small cluster, then the cluster's count must match the generator's. Every request sent is
//! answered or counted as an error, and no enrolment is counted that the cluster does not hold.
//! With `--etcd`, the same for etcd's counted-use transaction with a limit the load passes on
//! purpose: every transaction whose compare failed must be counted as an error, none as a
//! success, and the successes must be exactly the counter's uses.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::load;
use crate::ops::{Etcd, Ztna};
use crate::systems::{Cluster, Timing};

pub async fn run(ztna: &Path, etcd: Option<&Path>, dir: &Path) -> anyhow::Result<()> {
    let cluster = Cluster::start_ztna(ztna, &dir.join("ztna")).await?;
    let result = check(&cluster).await;
    cluster.stop().await;
    result?;
    if let Some(etcd) = etcd {
        let cluster = Cluster::start_etcd(etcd, ztna, &dir.join("etcd"), Timing::Defaults).await?;
        let result = check_etcd(&cluster).await;
        cluster.stop().await;
        result?;
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The limit of the etcd check's counter: well below what one second of load spends.
const ETCD_LIMIT: i64 = 200;

async fn check_etcd(cluster: &Cluster) -> anyhow::Result<()> {
    let api = Etcd::connect(&cluster.urls, 8).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let (a, s) = (api.clone(), sent.clone());
    let run = load::run(8, 3, Duration::from_secs(1), false, move |client, node, seq| {
        let (api, sent) = (a.clone(), s.clone());
        async move {
            sent.fetch_add(1, Ordering::Relaxed);
            let device = format!("check/{client}/{seq}");
            api.use_counter(node, client, "check", &device, ETCD_LIMIT).await.map(|()| true)
        }
    })
    .await;
    let stats = run.stats;
    let sent = sent.load(Ordering::Relaxed);
    let uses = api.counter_version(0, "check").await.context("read the counter")?;
    println!(
        "selfcheck: etcd: sent {sent}, ok {}, errors {}, the counter holds {uses} uses (limit {ETCD_LIMIT})",
        stats.ok, stats.errors
    );
    if sent != stats.ok + stats.errors {
        bail!("etcd: sent {sent} transactions but counted {} successes and {} errors", stats.ok, stats.errors);
    }
    if uses != ETCD_LIMIT || stats.ok != ETCD_LIMIT as u64 {
        bail!("etcd: {} successes counted, the counter holds {uses}; both must be the limit {ETCD_LIMIT}", stats.ok);
    }
    if stats.errors == 0 {
        bail!("etcd: no transaction past the limit was counted as an error");
    }
    Ok(())
}

async fn check(cluster: &Cluster) -> anyhow::Result<()> {
    let api = Ztna::connect(cluster)?;
    let (key_id, secret) = api.create_key(0, true, None).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let (a, s) = (api.clone(), sent.clone());
    let run = load::run(8, 3, Duration::from_secs(1), false, move |client, node, seq| {
        let (api, secret, sent) = (a.clone(), secret.clone(), s.clone());
        async move {
            sent.fetch_add(1, Ordering::Relaxed);
            api.enrol(node, &secret, &format!("check-{client}-{seq}")).await.map(|()| true)
        }
    })
    .await;
    let stats = run.stats;
    let sent = sent.load(Ordering::Relaxed);
    let uses = api.uses(0, &key_id).await.context("read the key's uses")?;
    println!("selfcheck: sent {sent}, ok {}, errors {}, the cluster holds {uses} enrolments", stats.ok, stats.errors);
    if stats.ok == 0 {
        bail!("no enrolment succeeded in one second");
    }
    if sent != stats.ok + stats.errors {
        bail!("sent {sent} requests but counted {} answers and {} errors", stats.ok, stats.errors);
    }
    if uses < stats.ok {
        bail!("the generator counted {} enrolments but the cluster holds {uses}", stats.ok);
    }
    if uses > sent {
        bail!("the cluster holds {uses} enrolments but only {sent} were sent");
    }
    if stats.errors == 0 && uses != stats.ok {
        bail!("no errors, yet the cluster holds {uses} enrolments and the generator counted {}", stats.ok);
    }
    Ok(())
}
