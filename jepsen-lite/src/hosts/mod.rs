//! Where the three nodes live and how the nemesis cuts their links.
//!
//! With root, each node gets its own network namespace and address, joined by veth pairs to a
//! bridge in the root namespace where the clients run ([`netns`]); partitions are nftables rules
//! inside the namespaces and latency is `tc netem`. Without root, nodes listen on loopback and
//! every directed link between two nodes goes through a fault-injecting TCP proxy ([`proxy`]),
//! which the nodes dial through the server's test-only `test_only_dial` setting.
//!
//! Only node-to-node traffic is cut by partitions; clients always reach every live node, which
//! is what makes an isolated leader interesting. This module must not know about keys.

pub mod netns;
pub mod proxy;

use std::collections::BTreeSet;

/// A directed link `from → to` whose packets are dropped.
pub type Link = (u64, u64);

/// The hosts of a run.
pub enum Hosts {
    Netns(netns::Netns),
    Proxy(proxy::Proxies),
}

/// Addresses of one node.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub api_addr: String,
    pub raft_addr: String,
}

impl Hosts {
    /// Network namespaces when running as root with `ip` and `nft`; loopback with proxies
    /// otherwise (saying why).
    pub async fn create(nodes: u64) -> anyhow::Result<Hosts> {
        match netns::Netns::usable() {
            Ok(()) => Ok(Hosts::Netns(netns::Netns::create(nodes)?)),
            Err(why) => {
                eprintln!(
                    "jepsen-lite: {why}; falling back to loopback with a fault-injecting TCP proxy on every link"
                );
                Ok(Hosts::Proxy(proxy::Proxies::create(nodes).await?))
            }
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Hosts::Netns(_) => "netns",
            Hosts::Proxy(_) => "loopback-proxy",
        }
    }

    pub fn addrs(&self, id: u64) -> NodeAddrs {
        match self {
            Hosts::Netns(n) => n.addrs(id),
            Hosts::Proxy(p) => p.addrs(id),
        }
    }

    /// Extra `[settings]` TOML lines for node `id`'s cluster file.
    pub fn settings_for(&self, id: u64) -> String {
        match self {
            Hosts::Netns(n) => n.settings_for(id),
            Hosts::Proxy(p) => p.settings_for(id),
        }
    }

    /// The command prefix that runs a program on node `id`'s host.
    pub fn exec_prefix(&self, id: u64) -> Vec<String> {
        match self {
            Hosts::Netns(n) => n.exec_prefix(id),
            Hosts::Proxy(_) => Vec::new(),
        }
    }

    /// Drops exactly these directed links (replacing any earlier partition).
    pub fn partition(&self, links: &BTreeSet<Link>) -> anyhow::Result<()> {
        match self {
            Hosts::Netns(n) => n.partition(links),
            Hosts::Proxy(p) => {
                p.partition(links);
                Ok(())
            }
        }
    }

    /// Adds latency, jitter, loss and reordering to every node's link (or removes them).
    pub fn netem(&self, on: bool) -> anyhow::Result<()> {
        match self {
            Hosts::Netns(n) => n.netem(on),
            Hosts::Proxy(p) => {
                p.delay().set_fault(on);
                Ok(())
            }
        }
    }

    /// A fixed one-way delay on every link between nodes (0: none), for the WAN test. Answers
    /// whether answers to clients are delayed too (netem on the nodes' interfaces).
    pub fn set_latency(&self, one_way_ms: u64) -> anyhow::Result<bool> {
        match self {
            Hosts::Netns(n) => n.set_latency(one_way_ms).map(|()| n.has_netem()),
            Hosts::Proxy(p) => {
                p.delay().set(one_way_ms, one_way_ms);
                Ok(false)
            }
        }
    }

    /// What the netem fault does on these hosts.
    pub fn netem_description(&self) -> &'static str {
        match self {
            Hosts::Netns(n) if n.has_netem() => "tc netem on every node: 40±30 ms delay, 20% reordering, 3% loss",
            Hosts::Netns(_) => "relays hold every chunk 20–60 ms between nodes; nftables drops 3% of packets",
            Hosts::Proxy(_) => "proxies hold every chunk 20–60 ms between nodes",
        }
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        self.partition(&BTreeSet::new())?;
        self.netem(false)
    }

    /// Removes namespaces, links and rules.
    pub fn teardown(&self) {
        if let Hosts::Netns(n) = self {
            n.teardown();
        }
    }
}

/// Every directed link between `a` and `b`, both ways.
pub fn both_ways(a: u64, b: u64) -> [Link; 2] {
    [(a, b), (b, a)]
}
