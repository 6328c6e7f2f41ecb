//! Throttling of failed authentications on the public API: failures are slowed, people are not.
//!
//! - **Per client address** (an IPv6 client by its /64; behind a proxy listed in
//!   `trusted_proxies`, the address it forwards in `X-Forwarded-For`): past
//!   `auth_failures_per_minute` failed authentications (401) in a minute, the address is held
//!   for the rest of its minute — but only requests presenting a credential that does not
//!   verify are refused (429 `too_many_failures`, `Retry-After`). A request carrying a
//!   credential that is currently valid (an API key, a node key; an enrolment's auth key,
//!   checked by its handler) is served as usual, so a script guessing keys from an office's NAT
//!   does not lock out the people and machines behind it. A request with no credential at all
//!   guesses nothing: it goes on (the public routes — health, the enrolment key, the installer,
//!   the console — answer it; the others answer 401) and its 401 weighs a quarter of a failure
//!   (a web page can make a browser send those).
//! - **Per credential id** (the id part of an API key, node key, bootstrap token or auth key, in
//!   `Authorization`, as Basic authentication's user name, or in an enrolment's body): past the
//!   same number of 401s and 403s (a spent or revoked key, a call outside its scopes) in a
//!   minute, its *failures* are answered 429 instead, so its rightful holder — who presents the
//!   right secret and acts within its grant — still gets through.
//!
//! Counts are kept per node, in memory, for a sliding minute. The tables are bounded: past
//! [`TRACKED`] keys, new ones share one overflow window (so a flood from many addresses is
//! throttled together), and ended windows are dropped on a timer ([`Throttle::prune`]), never
//! on the request path.
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
use crate::config::Cidr;
use crate::node::Node;
use crate::secret::{parse_credential, CredentialKind};

const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses (and credential ids) tracked one by one.
pub const TRACKED: usize = 10_000;
/// What a failed authentication weighs; one without any credential weighs [`WEIGHT_BARE`].
const WEIGHT_FAILED: u32 = 4;
const WEIGHT_BARE: u32 = 1;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    weight: u32,
}

impl Window {
    fn new() -> Self {
        Window { started: Instant::now(), weight: 0 }
    }
}

/// Windows per key, bounded.
#[derive(Debug)]
struct Windows<K> {
    by_key: HashMap<K, Window>,
    /// Where keys go once [`TRACKED`] are.
    overflow: Window,
}

impl<K: std::hash::Hash + Eq> Default for Windows<K> {
    fn default() -> Self {
        Windows { by_key: HashMap::new(), overflow: Window::new() }
    }
}

impl<K: std::hash::Hash + Eq> Windows<K> {
    fn window(&self, key: &K) -> Option<&Window> {
        self.by_key.get(key).or((self.by_key.len() >= TRACKED).then_some(&self.overflow))
    }

    fn window_mut(&mut self, key: K) -> &mut Window {
        if self.by_key.len() >= TRACKED && !self.by_key.contains_key(&key) {
            return &mut self.overflow;
        }
        self.by_key.entry(key).or_insert_with(Window::new)
    }

    fn prune(&mut self) {
        self.by_key.retain(|_, w| w.started.elapsed() < WINDOW);
        if self.overflow.started.elapsed() >= WINDOW {
            self.overflow = Window::new();
        }
    }
}

/// Failure counts per client address and per credential id.
#[derive(Debug)]
pub struct Throttle {
    /// The weight past which a window is over the limit.
    limit: u32,
    by_addr: Mutex<Windows<IpAddr>>,
    by_credential: Mutex<Windows<String>>,
    trusted_proxies: Vec<Cidr>,
}

impl Throttle {
    pub fn new(failures_per_minute: u32, trusted_proxies: Vec<Cidr>) -> Self {
        Throttle {
            limit: failures_per_minute.max(1).saturating_mul(WEIGHT_FAILED),
            by_addr: Mutex::default(),
            by_credential: Mutex::default(),
            trusted_proxies,
        }
    }

    /// How long `key` stays over the limit, if it is.
    fn over<K: std::hash::Hash + Eq>(&self, table: &Mutex<Windows<K>>, key: &K) -> Option<Duration> {
        let table = table.lock().unwrap_or_else(|p| p.into_inner());
        let window = table.window(key)?;
        let left = WINDOW.checked_sub(window.started.elapsed())?;
        (window.weight >= self.limit).then_some(left)
    }

    /// Counts one failure of `key` weighing `weight`; answers how long it is over the limit,
    /// if it now is.
    fn fail<K: std::hash::Hash + Eq>(&self, table: &Mutex<Windows<K>>, key: K, weight: u32) -> Option<Duration> {
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        let window = table.window_mut(key);
        if window.started.elapsed() >= WINDOW {
            *window = Window::new();
        }
        window.weight = window.weight.saturating_add(weight);
        let left = WINDOW.saturating_sub(window.started.elapsed());
        (window.weight > self.limit).then_some(left)
    }

    /// Drops the windows that have ended (run every few seconds, off the request path).
    pub fn prune(&self) {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner()).prune();
        self.by_credential.lock().unwrap_or_else(|p| p.into_inner()).prune();
    }

    /// Whether credential `id` (kind prefix and id) is over its limit: its failures are 429.
    pub fn credential_over(&self, id: &str) -> Option<Duration> {
        self.over(&self.by_credential, &id.to_string())
    }

    /// Counts a refusal (401 or 403) of credential `id`; answers how long it is over the limit.
    pub fn credential_failed(&self, id: String) -> Option<Duration> {
        self.fail(&self.by_credential, id, WEIGHT_FAILED)
    }

    /// Whether the client at `address` is held (only its requests without a valid credential
    /// are then refused).
    pub fn address_over(&self, address: IpAddr) -> Option<Duration> {
        self.over(&self.by_addr, &crate::listener::client_key(address))
    }

    /// The address a request counts against: the connection's peer, or, when that peer is a
    /// trusted proxy, the rightmost address of `X-Forwarded-For` that is not one.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|c| c.contains(*ip));
        if !trusted(&peer) {
            return peer;
        }
        let forwarded =
            headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
        forwarded
            .split(',')
            .rev()
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .find(|ip| !trusted(ip))
            .unwrap_or(peer)
    }
}

/// The credential a request authenticates with, from `Authorization` (Bearer, or Basic with the
/// key as user name): its kind-prefixed id, and the text presented.
pub(crate) fn presented(headers: &HeaderMap) -> Option<(String, CredentialKind, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let token = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_string()
    } else {
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        decoded.split_once(':').map_or(decoded.clone(), |(user, _)| user.to_string())
    };
    [CredentialKind::ApiKey, CredentialKind::NodeKey, CredentialKind::BootstrapToken].into_iter().find_map(|kind| {
        parse_credential(kind, &token).map(|c| (format!("{}{}", kind.prefix(), c.id), kind, token.clone()))
    })
}

/// 429 `too_many_failures` with `Retry-After`, in the shape of `path`'s API.
fn too_many(wait: Duration, what: &str, path: &str) -> Response {
    crate::metrics::global().throttled();
    ApiError::too_many_failures(wait, what).response_for(path)
}

/// The middleware (see the module header).
pub async fn layer(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let throttle = node.throttle();
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let address = peer.map(|ip| throttle.client_address(ip, request.headers()));
    let path = request.uri().path().to_string();
    let credential = presented(request.headers());
    // A held address: a request presenting a credential goes on only if it is currently valid
    // (an enrolment's auth key is in its body: its handler checks it); one presenting none
    // guesses nothing and goes on.
    if let (Some(wait), Some((_, kind, text))) = (address.and_then(|ip| throttle.address_over(ip)), &credential) {
        if !node.credential_valid_here(*kind, text) {
            return too_many(wait, "this address", &path);
        }
    }
    let response = next.run(request).await;
    let status = response.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return response;
    }
    if let (Some(ip), StatusCode::UNAUTHORIZED) = (address, status) {
        // An enrolment's credential is its auth key, in the body.
        let weight = if credential.is_some() || path == "/api/enrol" { WEIGHT_FAILED } else { WEIGHT_BARE };
        throttle.fail(&throttle.by_addr, crate::listener::client_key(ip), weight);
    }
    match credential.and_then(|(id, _, _)| throttle.credential_failed(id)) {
        Some(wait) => too_many(wait, "this credential", &path),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_the_limit_is_held_and_others_are_not() {
        let throttle = Throttle::new(3, Vec::new());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(throttle.fail(&throttle.by_addr, a, WEIGHT_FAILED).is_none());
        }
        assert!(throttle.address_over(a).is_some());
        assert!(throttle.address_over(b).is_none());
    }

    #[test]
    fn requests_without_a_credential_weigh_a_quarter() {
        let throttle = Throttle::new(3, Vec::new());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..11 {
            throttle.fail(&throttle.by_addr, a, WEIGHT_BARE);
        }
        assert!(throttle.address_over(a).is_none(), "11 bare requests are under 3 failures");
        throttle.fail(&throttle.by_addr, a, WEIGHT_BARE);
        assert!(throttle.address_over(a).is_some());
    }

    #[test]
    fn the_tables_stay_bounded_and_the_rest_share_one_window() {
        let throttle = Throttle::new(3, Vec::new());
        for n in 0..(2 * TRACKED) {
            throttle.credential_failed(format!("id{n}"));
        }
        let table = throttle.by_credential.lock().unwrap();
        assert_eq!(table.by_key.len(), TRACKED);
        assert!(table.overflow.weight >= (TRACKED as u32) * WEIGHT_FAILED);
        drop(table);
        assert!(throttle.credential_over("id-never-seen").is_some(), "untracked ids share the overflow");
    }

    #[test]
    fn a_trusted_proxy_forwards_the_client_address_and_nobody_else_can() {
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let throttle = Throttle::new(3, vec!["10.0.0.0/8".parse().unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.9.9.9".parse().unwrap());
        assert_eq!(throttle.client_address(proxy, &headers), "203.0.113.9".parse::<IpAddr>().unwrap());
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(throttle.client_address(stranger, &headers), stranger, "an untrusted peer's header is ignored");
    }
}
