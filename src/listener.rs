//! Serving HTTP with limits: both listeners of a node go through [`serve`].
//!
//! Every connection is bounded, and no one client takes every slot:
//! - at most `max_connections` served at once per listener (one more is closed at once, so a
//!   flood of idle sockets cannot take the file descriptors RocksDB and Raft need), and on the
//!   public listener at most `max_connections_per_address` from one client address (an IPv6
//!   client by its /64), handshakes included — but not from a reverse proxy listed in
//!   `trusted_proxies`, whose connections carry many clients ([`Clients::Public`]);
//! - a TLS handshake holds no connection slot: it takes one of `max_tls_handshakes` slots (an
//!   32nd of them at most per address), and must finish within `tls_handshake_timeout`;
//! - request headers within `header_read`, and no more than `idle` without a byte read or
//!   written (a client that stalls a body, or a download it does not read, is dropped);
//! - on the internal listener the client certificate is checked right after the handshake
//!   ([`Admit`]: a current member's, naming its node id), before the connection takes a slot; a
//!   refused one is closed, and each member holds at most `max_connections_per_address`
//!   connections, so members' slots are theirs. A removed node's certificate holds one
//!   connection at most, enough to ask whether it was removed.
//!
//! Whole requests are bounded by the routers' own timeout layers; large answers (the binary
//! download, a backup) by a minimum transfer rate ([`min_rate`]).
//!
//! On the internal listener the TLS layer also says who is calling: the client certificate's
//! node identity ([`PeerCertificate`]), which `network::server` checks against the membership.
//!
//! This module must not decide anything about keys or routes.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How a listener bounds its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// From one client address (public listener) or one member (internal listener).
    pub max_connections_per_address: usize,
    /// TLS handshakes in progress at once (a 32nd of them per address).
    pub max_tls_handshakes: usize,
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
}

/// The client certificate a TLS connection presented (the internal listener requires one).
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<CertificateDer<'static>>);

/// Checks a client certificate right after the handshake: the node id it may call as, or why
/// it may not (the connection is then closed).
pub type Admit = Arc<dyn Fn(&PeerCertificate) -> Result<Admitted, String> + Send + Sync>;

/// Who a listener serves, and how it counts them.
#[derive(Clone)]
pub enum Clients {
    /// The public listener: counted per client address, except the reverse proxies listed here
    /// (`trusted_proxies`), whose connections carry many clients (the throttle counts those by
    /// their forwarded address); they are bounded by `max_connections` only.
    Public { trusted_proxies: Arc<[Cidr]> },
    /// The internal listener: every client certificate checked right after its handshake,
    /// connections counted per member.
    Members(Admit),
}

/// Who a client certificate let in on the internal listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A member (or a node joining, or one of a cluster not formed yet): its share of slots.
    Member(u64),
    /// A node whose id is retired: one connection at a time, to learn that it was removed
    /// (the routes refuse it everything else).
    Retired(u64),
}

/// The client address a limit counts by: an IPv4 address, or an IPv6 address's /64 (one
/// subscriber usually holds a whole /64); IPv4-mapped IPv6 addresses as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Counts per key (an address, a member) with a cap; a [`Held`] gives its count back.
struct PerKey<K: Hash + Eq + Clone + Send + 'static> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    cap: usize,
}

struct Held<K: Hash + Eq + Clone + Send + 'static> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone + Send + 'static> PerKey<K> {
    fn new(cap: usize) -> Self {
        PerKey { counts: Arc::default(), cap: cap.max(1) }
    }

    /// One more for `key`, unless it is at its cap.
    fn take(&self, key: K) -> Option<Held<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key.clone()).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Held { counts: self.counts.clone(), key })
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for Held<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What a listener shares between its connections.
struct Shared {
    limits: Limits,
    slots: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_address: PerKey<IpAddr>,
    handshakes_per_address: PerKey<IpAddr>,
    per_member: PerKey<u64>,
    per_retired: PerKey<u64>,
    refusals: crate::log_every::LogEvery,
}

/// Serves `router` on `listener` (TLS first with `tls`) within `limits`, until `stop`. With
/// `Clients::Members` (the internal listener), every client certificate is checked right after its
/// handshake and connections are counted per member instead of per address.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    limits: Limits,
    clients: Clients,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let shared = Arc::new(Shared {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(limits.max_tls_handshakes.max(1))),
            per_address: PerKey::new(limits.max_connections_per_address),
            handshakes_per_address: PerKey::new((limits.max_tls_handshakes / 32).max(2)),
            per_member: PerKey::new(limits.max_connections_per_address),
            per_retired: PerKey::new(1),
            refusals: crate::log_every::LogEvery::new(crate::log_every::PERIOD),
        });
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, typically: wait a little rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = stopped(&mut stop) => return,
            };
            let (router, acceptor, clients, stop, shared) =
                (router.clone(), acceptor.clone(), clients.clone(), stop.clone(), shared.clone());
            tokio::spawn(async move {
                if let Err(why) = accept(stream, peer, acceptor, clients, router, &shared, stop).await {
                    crate::metrics::global().connection_refused();
                    shared.refusals.warn(format_args!("connection from {peer} closed: {why}"));
                }
            });
        }
    })
}

/// Takes one accepted connection through its limits and serves it; why it was closed if not.
async fn accept(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    clients: Clients,
    router: axum::Router,
    shared: &Shared,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let limits = shared.limits;
    let address = client_key(peer.ip());
    // The public listener counts per address, from the first byte; the internal one per member,
    // once the certificate says which.
    // A trusted proxy carries many clients: it is counted in the totals only.
    let proxy = matches!(&clients, Clients::Public { trusted_proxies } if trusted_proxies.iter().any(|c| c.contains(peer.ip())));
    let _per_address = match &clients {
        Clients::Public { .. } if !proxy => {
            Some(shared.per_address.take(address).ok_or("too many connections from this address")?)
        }
        Clients::Public { .. } | Clients::Members(_) => None,
    };
    let slot = || shared.slots.clone().try_acquire_owned().map_err(|_| "the connection limit is reached");
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        let _slot = slot()?;
        connection(IdleIo::new(stream, limits.idle), peer, None, router, limits, stop).await;
        return Ok(());
    };
    let stream = {
        let _handshake =
            shared.handshakes.clone().try_acquire_owned().map_err(|_| "too many TLS handshakes at once")?;
        let _from_here = match proxy {
            true => None,
            false => {
                Some(shared.handshakes_per_address.take(address).ok_or("too many TLS handshakes from this address")?)
            }
        };
        match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("TLS handshake refused: {e}")),
            Err(_) => return Err("the TLS handshake did not finish in time".into()),
        }
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| PeerCertificate(Arc::new(c.clone().into_owned())));
    let _per_member = match (&clients, &cert) {
        (Clients::Public { .. }, _) => None,
        (Clients::Members(admit), Some(cert)) => match admit(cert)? {
            Admitted::Member(member) => Some(
                shared.per_member.take(member).ok_or_else(|| format!("node {member} holds too many connections"))?,
            ),
            Admitted::Retired(id) => Some(
                shared
                    .per_retired
                    .take(id)
                    .ok_or_else(|| format!("node {id} was removed; it holds its one connection"))?,
            ),
        },
        (Clients::Members(_), None) => return Err("no client certificate".into()),
    };
    let _slot = slot()?;
    connection(IdleIo::new(stream, limits.idle), peer, cert, router, limits, stop).await;
    Ok(())
}

/// Serves one connection's requests (HTTP/1.1, keep-alive) until it ends or the node stops.
async fn connection<S>(
    io: IdleIo<S>,
    peer: SocketAddr,
    cert: Option<PeerCertificate>,
    router: axum::Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(cert) = &cert {
            request.extensions_mut().insert(cert.clone());
        }
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// A stream that fails once nothing was read or written for `idle`.
struct IdleIo<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleIo<S> {
    fn new(inner: S, idle: Duration) -> Self {
        IdleIo { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// `Pending` from the stream: an error instead once the deadline passed.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(|n| *n > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wraps a large answer's body so that it must keep a minimum transfer rate: after `grace`, a
/// client that has taken less than `bytes_per_second` on average since the start (a slow
/// reader holding the connection and the data) is cut off, as it is past `deadline` in all.
pub fn min_rate(
    body: axum::body::Body,
    bytes_per_second: u64,
    grace: Duration,
    deadline: Duration,
) -> axum::body::Body {
    use futures::StreamExt;
    let started = Instant::now();
    let mut sent = 0u64;
    let stream = body.into_data_stream().map(move |chunk| {
        let elapsed = started.elapsed();
        let slow = elapsed > grace && sent < bytes_per_second.saturating_mul(elapsed.as_secs());
        if slow || elapsed > deadline {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client reads too slowly"));
        }
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len() as u64;
        Ok(chunk)
    });
    axum::body::Body::from_stream(stream)
}

/// An IP network, `address/prefix` (an address alone is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let bits = |prefix: u8, width: u32| if prefix == 0 { 0 } else { u128::MAX << (width - u32::from(prefix)) };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = bits(self.prefix, 32) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = bits(self.prefix, 128);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_some_and(|v4| self.contains(v4.into())),
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a CIDR block (e.g. \"10.0.0.0/8\" or \"fd00::/8\")");
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() { width } else { prefix.parse::<u8>().map_err(|_| bad())? };
        if prefix > width {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_counts_by_its_slash_64_and_a_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_key_at_its_cap_gets_no_more_until_one_is_given_back() {
        let per = PerKey::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = per.take(ip).unwrap();
        let _second = per.take(ip).unwrap();
        assert!(per.take(ip).is_none());
        assert!(per.take("10.0.0.2".parse().unwrap()).is_some(), "another address is not held back");
        drop(first);
        assert!(per.take(ip).is_some());
    }
}
