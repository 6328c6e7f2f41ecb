//! The public HTTP API, served by every node: key management, enrolment, org administration,
//! cluster status and health, the web console's page, and a Tailscale-compatible keys API.
//!
//! A handler parses and validates the request, makes the ids and secrets a new record needs,
//! and hands one command (or query) to [`Node::write`] / [`Node::read`], which reach the leader
//! wherever it is. Handlers never decide anything about a key themselves.
//!
//! Only this module knows HTTP status codes and JSON shapes.

pub mod backup;
mod cluster;
mod console;
mod enrol;
pub mod error;
mod fields;
pub mod held;
mod install;
mod keys;
mod machines;
mod membership;
mod metrics;
mod openapi;
mod org;
mod tailscale;
pub mod throttle;
mod views;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;
use crate::secret::{parse_credential, random_base62, CredentialKind};
use crate::sm::model::{Actor, Command, Op, OpError, Outcome};
use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// The public router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/key-management", post(keys::handle))
        .route("/api/enrol", post(enrol::handle))
        .route("/api/enrol/key", get(enrol::key))
        .route("/api/org-admin", post(org::handle))
        .route("/api/machine-admin", post(machines::admin))
        .route("/api/machine/heartbeat", post(machines::heartbeat))
        .route("/api/machine/set-tags", post(machines::set_tags))
        .route("/api/machine/logout", post(machines::logout))
        .route("/api/cluster/init", post(org::init))
        .route("/api/cluster", get(cluster::info))
        .route("/api/cluster/nodes", get(cluster::nodes))
        .route("/api/cluster/hash", get(cluster::hash))
        .route("/api/whoami", get(org::whoami))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/cluster/membership", post(membership::handle))
        .route("/api/cluster/backup", post(backup::handle))
        .route("/api/v2/tailnet/{tailnet}/keys", get(tailscale::list).post(tailscale::create))
        .route("/api/v2/tailnet/{tailnet}/keys/{key_id}", get(tailscale::get).delete(tailscale::delete))
        .route("/console", get(console::index))
        .route("/console/", get(console::slash))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route("/install.sh", get(install::script))
        .route("/ca.crt", get(install::ca))
        .route("/download/ztna-linux-x86_64", get(install::binary))
        .route("/download/ztna-linux-x86_64.sha256", get(install::checksum))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_other_media_types))
        .layer(axum::middleware::from_fn_with_state(node.clone(), refuse_when_disk_full))
        .layer(axum::middleware::from_fn_with_state(node.clone(), throttle::layer))
        .layer(axum::middleware::from_fn(metrics::record))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(node.config().settings().body_read_timeout()))
        .with_state(node)
}

/// A node whose disk is full answers every `POST /api/…` (reads and writes alike, well-formed
/// or not) with 507 `disk_full` before looking at it: the caller should ask another node.
async fn refuse_when_disk_full(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if node.disk_full() && request.method() == axum::http::Method::POST && request.uri().path().starts_with("/api/") {
        let refused = ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", node.disk_full_message());
        return refused.response_for(request.uri().path());
    }
    next.run(request).await
}

/// A request body is JSON: one declared as anything else (text, multipart, XML) is answered 415
/// before it is read. No `Content-Type`, and curl's default for `-d`
/// (`application/x-www-form-urlencoded`, which the user guide's `curl -d '{…}'` sends), are
/// read as JSON. (Every credential is a bearer header, which no cross-site form can send.)
async fn refuse_other_media_types(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let json = |t: &str| t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"));
    match media_type {
        Some(t) if !json(&t) && t != "application/x-www-form-urlencoded" => {
            let refused = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("the body must be JSON (Content-Type: application/json), not {:?}", fields::short(&t)),
            );
            refused.response_for(request.uri().path())
        }
        _ => next.run(request).await,
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see the README's API reference")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

/// The body, or 413 when it is over [`MAX_BODY`].
pub(crate) fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::bad_request(format!("cannot read the body: {rejection}"))
        }
    })
}

/// The API key from `Authorization: Bearer …`.
pub(crate) fn api_key_actor(headers: &HeaderMap) -> Result<Actor, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing header Authorization: Bearer <API key>"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be \"Bearer <API key>\""))?;
    let presented = parse_credential(CredentialKind::ApiKey, token).ok_or(OpError::Unauthorized)?;
    Ok(Actor::api_key(presented))
}

/// A fresh request id, for a request whose client gave none.
pub fn new_request_id() -> String {
    format!("req-{}", random_base62(22))
}

/// Writes a create whose answer carries a secret, like [`write_with_fresh_ids`]; when its
/// outcome stays unknown (503), the command and secret are held (see [`held`]) and a retry with
/// the same request id sends that identical command again and gets the same secret back.
pub(crate) async fn write_create<S: held::Secrets>(
    node: &Node,
    request_id: String,
    actor: Actor,
    mut make: impl FnMut() -> (Op, S),
) -> Result<(Outcome, S), ApiError> {
    let held = node.held_creates();
    let (fresh, fresh_secret) = make();
    let first = held.take(&actor, &request_id, &fresh).unwrap_or((fresh, fresh_secret));
    write_until_fresh(node, request_id, actor, first, make, |actor, request_id, op, secret| {
        held.hold(actor, request_id, op, secret)
    })
    .await
}

/// Writes the command `make` builds. When a generated id collides with an existing one (about
/// one chance in 2^70), a new command with fresh ids is made and proposed instead.
pub(crate) async fn write_with_fresh_ids<T>(
    node: &Node,
    request_id: String,
    actor: Actor,
    mut make: impl FnMut() -> (Op, T),
) -> Result<(Outcome, T), ApiError> {
    let first = make();
    write_until_fresh(node, request_id, actor, first, make, |_, _, _, _| {}).await
}

/// Writes `first`, then a command `make` builds anew for as long as generated ids collide (three
/// tries). A command whose outcome stays unknown (503, not a full disk) goes to `unknown`.
async fn write_until_fresh<T>(
    node: &Node,
    request_id: String,
    actor: Actor,
    first: (Op, T),
    mut make: impl FnMut() -> (Op, T),
    unknown: impl FnOnce(Actor, String, Op, T),
) -> Result<(Outcome, T), ApiError> {
    let (mut op, mut extra) = first;
    for _ in 0..3 {
        let command = Command { request_id: request_id.clone(), actor: actor.clone(), op: op.clone() };
        match node.write(command).await {
            Err(unavailable) if !unavailable.disk_full => {
                unknown(actor, request_id, op, extra);
                return Err(unavailable.into());
            }
            Err(refused) => return Err(refused.into()),
            Ok(Err(OpError::IdCollision)) => (op, extra) = make(),
            Ok(outcome) => return Ok((outcome, extra)),
        }
    }
    Err(ApiError::internal("three generated ids in a row collided"))
}
