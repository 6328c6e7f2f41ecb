//! Serving HTTP with limits: both listeners of a node go through [`serve`].
//!
//! Every connection is bounded: at most `max_connections` at once per listener (one more is
//! closed at once, so a flood of idle sockets cannot take the file descriptors RocksDB and Raft
//! need), a TLS handshake within `handshake`, request headers within `header_read`, and no
//! more than `idle` without a byte read or written (a client that stalls a body, or a download
//! it does not read, is dropped). Whole requests are bounded by the routers' own timeout layers.
//!
//! On the internal listener the TLS layer also says who is calling: the client certificate's
//! node identity ([`PeerCertificate`]), which `network::server` checks against the membership.
//!
//! This module must not decide anything about keys or routes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
}

/// The client certificate a TLS connection presented (the internal listener requires one).
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<CertificateDer<'static>>);

/// Serves `router` on `listener` (TLS first with `tls`) within `limits`, until `stop`.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let mut refused_logged = Instant::now() - Duration::from_secs(60);
        let mut refused = 0u64;
        let refusals = Arc::new(crate::log_every::LogEvery::new(crate::log_every::PERIOD));
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if refused_logged.elapsed() >= Duration::from_secs(10) {
                    tracing::warn!(
                        refused,
                        limit = limits.max_connections,
                        "connection limit reached: closing new connections"
                    );
                    refused_logged = Instant::now();
                    refused = 0;
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (router, acceptor, stop, refusals) = (router.clone(), acceptor.clone(), stop.clone(), refusals.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match acceptor {
                    None => connection(IdleIo::new(stream, limits.idle), peer, None, router, limits, stop).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await;
                        let stream = match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return refusals.warn(format_args!("TLS handshake refused from {peer}: {e}")),
                            Err(_) => return refusals.warn(format_args!("TLS handshake from {peer} timed out")),
                        };
                        let cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|c| PeerCertificate(Arc::new(c.clone().into_owned())));
                        connection(IdleIo::new(stream, limits.idle), peer, cert, router, limits, stop).await
                    }
                }
            });
        }
    })
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
