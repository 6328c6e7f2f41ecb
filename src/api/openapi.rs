//! The OpenAPI 3.1 document of the public API, generated from the handlers' own request and
//! answer types (`utoipa`): served by every node at `GET /api/openapi.json`, with a copy in
//! `docs/openapi.json` that a test keeps equal to what the code generates.
//!
//! This module only describes; it must not hold a request or answer shape of its own beside the
//! handlers' (the error shapes live here because every handler shares them).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// Every refusal of the API: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetails,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetails {
    /// A stable code for programs (the responses list each status's codes).
    pub code: String,
    /// For people: what was wrong and what is allowed.
    pub message: String,
    /// The request field at fault, when one was (`capabilities.devices.create.tags[2]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The refusals every endpoint of the seed's API may answer, by status, with their codes.
#[allow(dead_code)] // Only described: answers are `ApiError`s.
#[derive(IntoResponses)]
pub enum Errors {
    /// `invalid_request` (a malformed body or field: `field` names it), `ambiguous_prefix`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized` (no, a malformed, wrong, expired or revoked API key or bootstrap token),
    /// `invalid_auth_key`, `unknown_node_key`, `node_key_revoked`, `proof_required`,
    /// `proof_invalid`, `proof_replayed`, `wrong_server_key`.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`, `scope_denied`, `tag_not_granted`, `quota_exceeded`, `key_used`,
    /// `key_exhausted`, `key_revoked`, `key_expired`, `machine_deleted`, `pending_approval`,
    /// `machine_quarantined`.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `not_found` (no such org, key or machine, or route), `not_a_member`.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `method_not_allowed`.
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// `already_initialized`, `request_id_reused` (another request under this request_id),
    /// `already_created` (a create retried after its answer, the only one with the secret, was
    /// lost), `answer_forgotten`, `upgrade_in_progress`, `node_id_used`, `node_removed`,
    /// `membership_change_in_progress`, `membership_conflict`.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// `body_too_large`: over 64 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `unsupported_media_type`: a body sent as something other than JSON (`Content-Type`
    /// left out, or curl's default `application/x-www-form-urlencoded`, is read as JSON).
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// `too_many_failures`: too many failed authentications from this address; see
    /// `Retry-After`.
    #[response(status = 429)]
    Throttled(ErrorBody),
    /// `internal`: a fault of the node (its log has the detail).
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: no leader or quorum in time. A write's outcome is unknown: retry it with
    /// the same request_id (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// `catch_up_timeout`: a node added did not catch up in time.
    #[response(status = 504)]
    Timeout(ErrorBody),
    /// `disk_full`: this node's disk is full; ask another node.
    #[response(status = 507)]
    DiskFull(ErrorBody),
}

/// The refusals of the Tailscale-compatible API, in its shape (`{"message"}`), by status.
#[allow(dead_code)] // Only described: answers are `TsError`s.
#[derive(IntoResponses)]
pub enum TsErrors {
    /// `invalid_request`: `field` names the field.
    #[response(status = 400)]
    BadRequest(super::tailscale::TsErrorBody),
    /// `unauthorized`.
    #[response(status = 401)]
    Unauthorized(super::tailscale::TsErrorBody),
    /// `forbidden` (the operator key has no tailnet), `scope_denied`, `tag_not_granted`,
    /// `quota_exceeded`.
    #[response(status = 403)]
    Forbidden(super::tailscale::TsErrorBody),
    /// `not_found`: no such tailnet or key.
    #[response(status = 404)]
    NotFound(super::tailscale::TsErrorBody),
    /// `method_not_allowed`.
    #[response(status = 405)]
    MethodNotAllowed(super::tailscale::TsErrorBody),
    /// `already_created`, `request_id_reused`, `upgrade_in_progress`.
    #[response(status = 409)]
    Conflict(super::tailscale::TsErrorBody),
    /// `body_too_large`.
    #[response(status = 413)]
    TooLarge(super::tailscale::TsErrorBody),
    /// `unsupported_media_type`.
    #[response(status = 415)]
    UnsupportedMediaType(super::tailscale::TsErrorBody),
    /// `too_many_failures`.
    #[response(status = 429)]
    Throttled(super::tailscale::TsErrorBody),
    /// `internal`.
    #[response(status = 500)]
    Internal(super::tailscale::TsErrorBody),
    /// `unavailable`.
    #[response(status = 503)]
    Unavailable(super::tailscale::TsErrorBody),
    /// `disk_full`.
    #[response(status = 507)]
    DiskFull(super::tailscale::TsErrorBody),
}

/// The security schemes: which credential each endpoint takes.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, description: &str| {
            let mut scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format(format).build();
            scheme.description = Some(description.to_string());
            SecurityScheme::Http(scheme)
        };
        components.add_security_scheme(
            "api_key",
            bearer("tskey-api-…", "An org's API key: its auth keys and machines, within its scopes and tags."),
        );
        components.add_security_scheme(
            "operator_key",
            bearer("tskey-api-…", "The operator key: orgs, their API keys, membership and backups."),
        );
        components.add_security_scheme(
            "node_key",
            bearer("nodekey-…", "An enrolled machine's node key, from its enrolment's answer."),
        );
        components.add_security_scheme(
            "bootstrap_token",
            bearer(
                "ztna-bootstrap-…",
                "The bootstrap token whose SHA-256 the nodes were started with (`ztna cluster bootstrap-token`).",
            ),
        );
        let mut basic = HttpBuilder::new().scheme(HttpAuthScheme::Basic).build();
        basic.description =
            Some("An org's API key as the user name, empty password (as Tailscale's clients send it).".into());
        components.add_security_scheme("api_key_basic", SecurityScheme::Http(basic));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ztna-keystore",
        description = "A replicated auth-key store for zero-trust network control planes: every node \
            answers this API. Writes carry a `request_id`: a retry with the same one applies once; a 503 \
            leaves a write's outcome unknown, so retry it with the same `request_id`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::keys::handle,
        super::enrol::handle,
        super::enrol::key,
        super::org::handle,
        super::org::init,
        super::org::whoami,
        super::machines::admin,
        super::machines::heartbeat,
        super::machines::set_tags,
        super::machines::logout,
        super::cluster::info,
        super::cluster::nodes,
        super::cluster::hash,
        super::cluster::healthz,
        super::cluster::readyz,
        super::membership::handle,
        super::backup::handle,
        super::tailscale::list,
        super::tailscale::create,
        super::tailscale::get,
        super::tailscale::delete,
        super::install::script,
        super::install::ca,
        super::install::binary,
        super::install::checksum,
        super::metrics::scrape,
        super::console::index,
        super::console::script,
        super::console::style,
        super::console::slash,
        document,
    ),
    components(schemas(ErrorBody, ErrorDetails, super::tailscale::TsErrorBody)),
    modifiers(&Credentials),
    tags(
        (name = "auth keys", description = "An org's auth keys (`tskey-auth-…`)."),
        (name = "machines", description = "An org's enrolled machines."),
        (name = "machine", description = "What a machine calls: enrolment, heartbeats, its tags, logout."),
        (name = "orgs", description = "Orgs and their API keys (operator key)."),
        (name = "cluster", description = "The cluster: status, health, membership, backups, initialisation."),
        (name = "tailscale-compatible", description = "Tailscale's keys API, for its clients and Terraform provider."),
        (name = "installation", description = "The install script and the binary it fetches."),
        (name = "console", description = "The web console's page and its script and style sheet."),
    )
)]
pub struct ApiDoc;

/// The document as served and as in `docs/openapi.json`.
pub fn json() -> String {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    camel_case_links(&mut document);
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// utoipa 5.5 writes a Link Object's fields in snake case (`operation_id`); OpenAPI names them
/// `operationId`, `operationRef` and `requestBody`.
fn camel_case_links(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut().filter_map(serde_json::Value::as_object_mut) {
                    for (from, to) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(v) = link.remove(from) {
                            link.insert(to.to_string(), v);
                        }
                    }
                }
            }
            map.values_mut().for_each(camel_case_links);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(camel_case_links),
        _ => {}
    }
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json", operation_id = "openapi_document",
    tag = "cluster",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json")),
)]
pub async fn document() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(json).clone();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is what the code generates: regenerate it with
    /// `ZTNA_WRITE_OPENAPI=1 cargo test --release --lib openapi`.
    #[test]
    fn the_document_in_docs_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let generated = json();
        if std::env::var_os("ZTNA_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).expect("write docs/openapi.json");
        }
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept == generated,
            "docs/openapi.json differs from the document the code generates; regenerate it with \
             ZTNA_WRITE_OPENAPI=1 cargo test --release --lib openapi (and review the difference)"
        );
    }

    #[test]
    fn every_public_route_is_documented() {
        let document: serde_json::Value = serde_json::from_str(&json()).expect("the document is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().expect("paths");
        // Every route the router serves (read from its source), path parameters by position.
        let shape = |path: &str| {
            let mut out = String::new();
            let mut depth = 0;
            for c in path.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        out.push_str("{}");
                    }
                    '}' => depth -= 1,
                    c if depth == 0 => out.push(c),
                    _ => {}
                }
            }
            out
        };
        let documented: Vec<String> = paths.keys().map(|p| shape(p)).collect();
        let router = include_str!("mod.rs");
        let routes: Vec<&str> = router.split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(routes.len() > 20, "{routes:?}");
        for route in routes {
            assert!(documented.contains(&shape(route)), "{route} is served but not in the document");
        }
        let body = &paths["/api/key-management"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/KeyManagementRequest");
        let actions: Vec<&str> = document["components"]["schemas"]["KeyManagementRequest"]["oneOf"]
            .as_array()
            .expect("one schema per action")
            .iter()
            .map(|a| a["properties"]["action"]["enum"][0].as_str().unwrap_or(""))
            .collect();
        assert_eq!(actions, super::super::keys::KeyManagementRequest::ACTIONS);
    }
}
