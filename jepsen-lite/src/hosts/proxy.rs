//! Loopback hosts with a fault-injecting TCP proxy on every directed link (no root needed).
//!
//! Node `i` dials peer `j` at the proxy for link `i → j` (through the server's test-only
//! `test_only_dial` setting), so every Raft message and forwarded request between nodes passes
//! a proxy. A blocked proxy closes its connections and refuses new ones; with a [`Delay`] set,
//! it is a delay line: every chunk is delivered that long after it was read (in order, without
//! holding up the chunks behind it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
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
    delay: Arc<Delay>,
}

/// The one-way delay of a link, drawn per chunk from `min..=max` ms; 0 is none.
#[derive(Debug, Default)]
pub struct Delay {
    min_ms: AtomicU64,
    max_ms: AtomicU64,
}

impl Delay {
    pub fn set(&self, min_ms: u64, max_ms: u64) {
        self.min_ms.store(min_ms, Ordering::Relaxed);
        self.max_ms.store(max_ms.max(min_ms), Ordering::Relaxed);
    }

    /// The jepsen `netem` fault: 20–60 ms.
    pub fn set_fault(&self, on: bool) {
        if on {
            self.set(20, 60);
        } else {
            self.set(0, 0);
        }
    }

    fn sample(&self) -> Duration {
        let (min, max) = (self.min_ms.load(Ordering::Relaxed), self.max_ms.load(Ordering::Relaxed));
        let ms = if max > min { rand::thread_rng().gen_range(min..=max) } else { min };
        Duration::from_millis(ms)
    }
}

struct ProxyLink {
    port: u16,
    blocked: watch::Sender<bool>,
}

impl Proxies {
    pub async fn create(nodes: u64) -> anyhow::Result<Proxies> {
        let mut addrs = BTreeMap::new();
        for id in 1..=nodes {
            let api_addr = format!("127.0.0.1:{}", ztna_ports::free_port()?);
            let raft_addr = format!("127.0.0.1:{}", ztna_ports::free_port()?);
            addrs.insert(id, NodeAddrs { api_addr, raft_addr });
        }
        let delay = Arc::new(Delay::default());
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

    pub fn delay(&self) -> &Delay {
        &self.delay
    }
}

/// Accepts on `listener` and relays each connection to `target`, cutting every connection
/// while `blocked` and delaying each chunk by `delay`.
pub async fn serve(listener: TcpListener, target: String, blocked: watch::Receiver<bool>, delay: Arc<Delay>) {
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

/// Copies `from` to `to`, delivering each chunk `delay` after it was read: a reader and a
/// writer joined by a queue, so a delay adds latency without cutting throughput.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Arc<Delay>) {
    let (queue, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let at = tokio::time::Instant::now() + delay.sample();
                    if queue.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The writer drains what the reader queued before the connection closes.
    let (_, ()) = tokio::join!(reader, writer);
}
