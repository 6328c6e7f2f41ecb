//! The web console: one page and its script and style, compiled into the binary and served by
//! every node at `/console`. The page calls this node's own API (which reaches the leader
//! wherever it is), so it works against any node and through a leader failover.
//!
//! Nothing is fetched from anywhere else: the Content-Security-Policy allows only this origin's
//! script, style and API, no inline script or style, no framing. The page keeps the API key in
//! the browser session's storage and sends it as a bearer header, never in a URL.
//!
//! This module serves bytes; it must not read or change the store.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// What the page may load and where it may connect: this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /console`: the web console.
#[utoipa::path(
    get,
    path = "/console", operation_id = "console",
    tag = "console",
    responses((status = 200, description = "The web console's page", body = String, content_type = "text/html; charset=utf-8")),
)]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/app.js`: the console's script.
#[utoipa::path(
    get,
    path = "/console/app.js", operation_id = "console_script",
    tag = "console",
    responses((status = 200, description = "The console's script", body = String, content_type = "text/javascript; charset=utf-8")),
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/app.css`: the console's style sheet.
#[utoipa::path(
    get,
    path = "/console/app.css", operation_id = "console_style",
    tag = "console",
    responses((status = 200, description = "The console's style sheet", body = String, content_type = "text/css; charset=utf-8")),
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `/console/` → `/console`.
#[utoipa::path(
    get,
    path = "/console/", operation_id = "console_slash",
    tag = "console",
    responses((status = 308, description = "To `/console`", headers(("location" = String, description = "/console")))),
)]
pub async fn slash() -> Redirect {
    Redirect::permanent("/console")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 7] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // A new binary serves new assets: the browser asks again rather than run an old script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ];
    (StatusCode::OK, headers, body).into_response()
}
