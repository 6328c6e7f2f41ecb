//! Loopback ports for the clusters that the tests, jepsen-lite and the benchmark start.
//!
//! Asking the kernel for port 0 and closing the listener races twice: the kernel may hand the
//! same port to the next caller (two nodes of one cluster on one port), and every outgoing
//! connection on the machine takes its local port from the same ephemeral range, so a port
//! chosen there can be taken before the node binds it. Ports here come from below the ephemeral
//! range, are never handed out twice by one process, and are checked free when handed out.
//!
//! This crate must not be used by the server: nodes bind the addresses their configuration names.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the registered services most machines run.
const LOWEST: u32 = 10_000;
/// Used when the ephemeral range cannot be read (Linux's default start).
const DEFAULT_EPHEMERAL_START: u32 = 32_768;

static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port that is free now, that this process has not handed out before, and that
/// outgoing connections will not take (it lies below the kernel's ephemeral range).
pub fn free_port() -> io::Result<u16> {
    let top = ephemeral_start().clamp(LOWEST + 1_000, u32::from(u16::MAX));
    let span = top - LOWEST;
    // Processes started side by side (a test run and a benchmark) begin at different places.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + (start + n) % span;
        let port = u16::try_from(port).map_err(|_| io::Error::other("port out of range"))?;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "no free loopback port below the ephemeral range"))
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_never_handed_out_twice_and_lie_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..2_000).map(|_| free_port().expect("a port")).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| u32::from(*p) >= LOWEST && u32::from(*p) < ephemeral_start()));
    }

    #[test]
    fn a_port_someone_else_holds_is_never_handed_out() {
        let first = free_port().expect("a port");
        let held: Vec<TcpListener> =
            (1..=50).filter_map(|k| TcpListener::bind((Ipv4Addr::LOCALHOST, first.wrapping_add(k))).ok()).collect();
        let held_ports: HashSet<u16> = held.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()).collect();
        assert!(!held_ports.is_empty());
        for _ in 0..100 {
            let port = free_port().expect("a port");
            assert!(!held_ports.contains(&port), "handed out {port}, which another listener holds");
        }
    }
}
