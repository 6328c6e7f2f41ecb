//! Loopback hosts with a fault-injecting TCP proxy on every directed link (no root needed).
//!
//! Node `i` dials peer `j` at the proxy for link `i → j` (through the server's test-only
//! `test_only_dial` setting), so every Raft message and forwarded request between nodes passes
//! a proxy. A blocked proxy closes its connections and refuses new ones; with delay on, it holds
//! every chunk 20–60 ms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Link, NodeAddrs};

pub struct Proxies {
    addrs: BTreeMap<u64, NodeAddrs>,
    links: BTreeMap<Link, ProxyLink>,
    delay: Arc<AtomicBool>,
}

struct ProxyLink {
    port: u16,
    blocked: watch::Sender<bool>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Proxies {
    pub async fn create(nodes: u64) -> anyhow::Result<Proxies> {
        let mut addrs = BTreeMap::new();
        for id in 1..=nodes {
            let api_addr = format!("127.0.0.1:{}", free_port()?);
            let raft_addr = format!("127.0.0.1:{}", free_port()?);
            addrs.insert(id, NodeAddrs { api_addr, raft_addr });
        }
        let delay = Arc::new(AtomicBool::new(false));
        let mut links = BTreeMap::new();
        for from in 1..=nodes {
            for to in (1..=nodes).filter(|&to| to != from) {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let port = listener.local_addr()?.port();
                let (blocked, watch) = watch::channel(false);
                tokio::spawn(serve(listener, addrs[&to].raft_addr.clone(), watch, delay.clone()));
                links.insert((from, to), ProxyLink { port, blocked });
            }
        }
        Ok(Proxies { addrs, links, delay })
    }

    pub fn addrs(&self, id: u64) -> NodeAddrs {
        self.addrs[&id].clone()
    }

    pub fn settings_for(&self, id: u64) -> String {
        let mut text = String::from("[settings.test_only_dial]\n");
        for ((from, to), link) in &self.links {
            if *from == id {
                text.push_str(&format!("\"{to}\" = \"127.0.0.1:{}\"\n", link.port));
            }
        }
        text
    }

    pub fn partition(&self, blocked: &BTreeSet<Link>) {
        for (link, proxy) in &self.links {
            proxy.blocked.send_replace(blocked.contains(link));
        }
    }

    pub fn set_delay(&self, on: bool) {
        self.delay.store(on, Ordering::Relaxed);
    }
}

/// Accepts on `listener` and relays each connection to `target`, cutting every connection
/// while `blocked` and holding each chunk 20–60 ms while `delay` is on.
pub async fn serve(listener: TcpListener, target: String, blocked: watch::Receiver<bool>, delay: Arc<AtomicBool>) {
    while let Ok((inbound, _)) = listener.accept().await {
        if *blocked.borrow() {
            drop(inbound);
            continue;
        }
        let (target, mut blocked, delay) = (target.clone(), blocked.clone(), delay.clone());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::select! {
                () = pump(in_read, out_write, delay.clone()) => {}
                () = pump(out_read, in_write, delay) => {}
                _ = blocked.wait_for(|b| *b) => {}
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if delay.load(Ordering::Relaxed) {
            let ms = rand::thread_rng().gen_range(20..60);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
