//! Throttling of failed authentications on the public API.
//!
//! A client address with more than `auth_failures_per_minute` answers of 401 in a minute gets
//! 429 `too_many_failures` (with `Retry-After`) for every request until its minute is over: a
//! script guessing credentials stops costing the cluster anything. A credential id (the id part
//! of an API key, node key or bootstrap token in `Authorization`) with as many failures has its
//! *failures* answered 429 instead of 401 for the rest of its minute, so its rightful holder —
//! who presents the right secret, from another address — still gets through. Counts are kept
//! per node, in memory, for a sliding minute; the tables are pruned so that no number of
//! addresses or ids can grow them without bound.
//!
//! This module must not decide anything about keys; it only counts refusals.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::node::Node;

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many tracked addresses or ids, windows that have ended are dropped; past twice
/// as many, the oldest windows are.
const TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failure counts per client address and per credential id.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    by_addr: Mutex<HashMap<IpAddr, Window>>,
    by_credential: Mutex<HashMap<String, Window>>,
}

impl Throttle {
    pub fn new(failures_per_minute: u32) -> Self {
        Throttle { limit: failures_per_minute.max(1), by_addr: Mutex::default(), by_credential: Mutex::default() }
    }

    /// How long `key` stays over the limit, if it is.
    fn over<K: std::hash::Hash + Eq>(&self, table: &Mutex<HashMap<K, Window>>, key: &K) -> Option<Duration> {
        let table = table.lock().unwrap_or_else(|p| p.into_inner());
        let window = table.get(key)?;
        let left = WINDOW.checked_sub(window.started.elapsed())?;
        (window.failures >= self.limit).then_some(left)
    }

    /// Counts one failure of `key`; answers how long it is over the limit, if it now is.
    fn fail<K: std::hash::Hash + Eq>(&self, table: &Mutex<HashMap<K, Window>>, key: K) -> Option<Duration> {
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= TRACKED {
            table.retain(|_, w| w.started.elapsed() < WINDOW);
            if table.len() >= 2 * TRACKED {
                let mut starts: Vec<Instant> = table.values().map(|w| w.started).collect();
                starts.sort_unstable();
                let cutoff = starts[starts.len() / 2];
                table.retain(|_, w| w.started > cutoff);
            }
        }
        let window = table.entry(key).or_insert(Window { started: Instant::now(), failures: 0 });
        if window.started.elapsed() >= WINDOW {
            *window = Window { started: Instant::now(), failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
        let left = WINDOW.saturating_sub(window.started.elapsed());
        (window.failures > self.limit).then_some(left)
    }
}

/// The credential id in `Authorization: Bearer …`, by kind, if it has a credential's shape.
fn credential_id(headers: &HeaderMap) -> Option<String> {
    use crate::secret::{parse_credential, CredentialKind};
    let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    [CredentialKind::ApiKey, CredentialKind::NodeKey, CredentialKind::BootstrapToken]
        .into_iter()
        .find_map(|kind| parse_credential(kind, token).map(|c| format!("{}{}", kind.prefix(), c.id)))
}

fn too_many(wait: Duration, what: &str, path: &str) -> Response {
    crate::metrics::global().throttled();
    let seconds = wait.as_secs().max(1);
    let error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        format!("too many failed authentications from {what}; try again in {seconds} s"),
    );
    let mut response = error.response_for(path);
    if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The middleware (see the module header).
pub async fn layer(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let throttle = node.throttle();
    let addr = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let path = request.uri().path().to_string();
    if let Some(wait) = addr.and_then(|ip| throttle.over(&throttle.by_addr, &ip)) {
        return too_many(wait, "this address", &path);
    }
    let credential = credential_id(request.headers());
    let response = next.run(request).await;
    if response.status() != StatusCode::UNAUTHORIZED {
        return response;
    }
    if let Some(ip) = addr {
        throttle.fail(&throttle.by_addr, ip);
    }
    match credential.and_then(|id| throttle.fail(&throttle.by_credential, id)) {
        Some(wait) => too_many(wait, "this credential", &path),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_the_limit_is_held_and_others_are_not() {
        let throttle = Throttle::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(throttle.fail(&throttle.by_addr, a).is_none());
        }
        assert!(throttle.over(&throttle.by_addr, &a).is_some());
        assert!(throttle.over(&throttle.by_addr, &b).is_none());
    }

    #[test]
    fn the_tables_stay_bounded() {
        let throttle = Throttle::new(3);
        for n in 0..(5 * TRACKED) {
            throttle.fail(&throttle.by_credential, format!("id{n}"));
        }
        assert!(throttle.by_credential.lock().unwrap().len() <= 2 * TRACKED);
    }
}
