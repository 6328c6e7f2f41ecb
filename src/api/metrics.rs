//! `GET /metrics` and the layer that counts and times every API request for it.
//!
//! The layer labels a request with its route (only routes the router knows), the `action` of the
//! action-dispatching endpoints (only actions they define) and its outcome (`ok` or the error
//! code the answer carries), so a client cannot mint new series. It reads an action endpoint's
//! body to find the action and hands the same bytes on.
//!
//! This module must not change any answer except to refuse a body over the size limit.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorCode};
use crate::node::Node;

/// The routes that are labelled by name; any other path is `other`.
pub(crate) const ROUTES: &[&str] = &[
    "/api/key-management",
    "/api/enrol",
    "/api/org-admin",
    "/api/machine-admin",
    "/api/machine/heartbeat",
    "/api/machine/set-tags",
    "/api/machine/logout",
    "/api/cluster/init",
    "/api/cluster",
    "/api/cluster/membership",
    "/api/cluster/backup",
    "/api/cluster/hash",
    "/install.sh",
    "/download/ztna-linux-x86_64",
    "/download/ztna-linux-x86_64.sha256",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/openapi.json",
];

/// The actions an endpoint dispatches on, or `None` for endpoints without an `action` field.
fn actions_of(route: &str) -> Option<&'static [&'static str]> {
    match route {
        "/api/key-management" => Some(super::keys::KeyManagementRequest::ACTIONS),
        "/api/org-admin" => Some(super::org::OrgAdminRequest::ACTIONS),
        "/api/machine-admin" => Some(super::machines::MachineAdminRequest::ACTIONS),
        "/api/cluster/membership" => Some(super::membership::MembershipRequest::ACTIONS),
        _ => None,
    }
}

/// Counts and times one request (see the module header).
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| ROUTES.iter().copied().find(|r| *r == m.as_str()))
        .unwrap_or("other");
    let (request, action) = match actions_of(route) {
        Some(actions) => {
            let (parts, body) = request.into_parts();
            let bytes = match axum::body::to_bytes(body, super::MAX_BODY).await {
                Ok(bytes) => bytes,
                Err(_) => {
                    let response = ApiError::too_large().into_response();
                    crate::metrics::global().request(route, "-", "body_too_large", started.elapsed());
                    return response;
                }
            };
            let action = action_in(&bytes, actions);
            (Request::from_parts(parts, Body::from(bytes)), action)
        }
        None => (request, "-"),
    };
    let response = next.run(request).await;
    let outcome = match response.extensions().get::<ErrorCode>() {
        Some(ErrorCode(code)) => code,
        None if response.status().is_success() => "ok",
        None => "error",
    };
    crate::metrics::global().request(route, action, outcome, started.elapsed());
    response
}

/// The body's `action`, if it is one of `actions`; else `unknown`.
fn action_in(body: &[u8], actions: &'static [&'static str]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Action<'a> {
        #[serde(borrow)]
        action: Option<std::borrow::Cow<'a, str>>,
    }
    let named = serde_json::from_slice::<Action>(body).ok().and_then(|a| a.action);
    named.and_then(|name| actions.iter().copied().find(|a| *a == name)).unwrap_or("unknown")
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics", operation_id = "metrics",
    tag = "cluster",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
pub async fn scrape(State(node): State<Arc<Node>>) -> Response {
    let text = crate::metrics::global().render(&node.raft().metrics().borrow(), node.disk_state(), node.rules());
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_actions_become_labels() {
        let actions = super::super::keys::KeyManagementRequest::ACTIONS;
        assert_eq!(action_in(br#"{"action":"create_auth_key","org_id":"o"}"#, actions), "create_auth_key");
        assert_eq!(action_in(br#"{"action":"drop_tables"}"#, actions), "unknown");
        assert_eq!(action_in(b"not json", actions), "unknown");
    }
}
