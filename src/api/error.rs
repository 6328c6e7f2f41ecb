//! The one error type of the HTTP API and how each error becomes a status and a JSON body:
//! `{"error": {"code": "…", "message": "…"}}`, with `"field"` naming the request field when one
//! field was at fault (the console puts the message beside that field).
//!
//! A user's mistake is always a 4xx with a message that names the field and what it allows.
//! Only a fault of the node itself is a 500, and its detail goes to the log, not the response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::Unavailable;
use crate::sm::model::{OpError, SpecError};

/// The error code of an answer, left on the response for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// Seconds for `Retry-After` (a 503 says 1 without it).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after: None }
    }

    /// 429 `too_many_failures`: too many failed authentications from `what` (an address, a
    /// credential), for `wait` more.
    pub fn too_many_failures(wait: std::time::Duration, what: &str) -> Self {
        let seconds = wait.as_secs().max(1);
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("too many failed authentications from {what}; try again in {seconds} s"),
        );
        error.retry_after = Some(seconds);
        error
    }

    /// 400 for a malformed field.
    pub fn bad_field(field: &str, message: impl std::fmt::Display) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{field}: {message}"));
        error.field = Some(field.to_string());
        error
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: a create sent again under its request id, after the first answer (the only one that
    /// carried the secret) was lost. `what` names the record, e.g. "auth key ak_…".
    pub fn already_created(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "already_created",
            format!(
                "this request_id already created {what}; its secret was shown only in the answer to that \
                 request and cannot be shown again. If that answer was lost, revoke {id} and create a new one \
                 with a new request_id"
            ),
        )
    }

    pub fn too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is over 64 KiB")
    }

    /// 500: the detail is logged here and not shown to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the node's log")
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::bad_field(e.field, e.message)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            OpError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            OpError::InvalidAuthKey => (StatusCode::UNAUTHORIZED, "invalid_auth_key"),
            OpError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            OpError::KeyUsed => (StatusCode::FORBIDDEN, "key_used"),
            OpError::KeyExhausted => (StatusCode::FORBIDDEN, "key_exhausted"),
            OpError::KeyRevoked => (StatusCode::FORBIDDEN, "key_revoked"),
            OpError::KeyExpired => (StatusCode::FORBIDDEN, "key_expired"),
            OpError::UnknownNodeKey => (StatusCode::UNAUTHORIZED, "unknown_node_key"),
            OpError::NodeKeyRevoked => (StatusCode::UNAUTHORIZED, "node_key_revoked"),
            OpError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            OpError::Ambiguous(_) => (StatusCode::BAD_REQUEST, "ambiguous_prefix"),
            OpError::AlreadyInitialized => (StatusCode::CONFLICT, "already_initialized"),
            OpError::RequestIdReused(_) => (StatusCode::CONFLICT, "request_id_reused"),
            OpError::NodeIdUsed(_) => (StatusCode::CONFLICT, "node_id_used"),
            OpError::NodeRemoved(_) => (StatusCode::CONFLICT, "node_removed"),
            OpError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            OpError::ScopeDenied(_) => (StatusCode::FORBIDDEN, "scope_denied"),
            OpError::TagNotGranted(_) => (StatusCode::FORBIDDEN, "tag_not_granted"),
            OpError::MachineDeleted => (StatusCode::FORBIDDEN, "machine_deleted"),
            OpError::ProofInvalid(_) => (StatusCode::UNAUTHORIZED, "proof_invalid"),
            OpError::ProofReplayed => (StatusCode::UNAUTHORIZED, "proof_replayed"),
            OpError::PendingApproval => (StatusCode::FORBIDDEN, "pending_approval"),
            OpError::MachineQuarantined(_) => (StatusCode::FORBIDDEN, "machine_quarantined"),
            OpError::AnswerForgotten => (StatusCode::CONFLICT, "answer_forgotten"),
            OpError::TooManyRekeys(_, wait_s) => {
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_rekeys", message);
                error.retry_after = Some(wait_s.max(1));
                return error;
            }
            OpError::IdCollision => return ApiError::internal("id collision persisted after retries"),
            OpError::Storage(_) => return ApiError::internal(message),
        };
        ApiError::new(status, code, message)
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        if e.disk_full {
            return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", e.last_error);
        }
        static UNAVAILABLE: crate::log_every::LogEvery = crate::log_every::LogEvery::new(crate::log_every::PERIOD);
        UNAVAILABLE.warn(format_args!("request unavailable: {e}"));
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e}; a write's outcome is unknown, so retry it with the same request_id"),
        )
    }
}

impl ApiError {
    /// `{"code": …, "message": …}`, with `"field"` when one field was at fault.
    pub(crate) fn details(&self) -> serde_json::Value {
        let mut details = json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            details["field"] = serde_json::Value::String(field.clone());
        }
        details
    }

    /// The response carrying `body` (this error in some API's shape) with this error's status,
    /// its code for the metrics layer and `Retry-After` (a 503's, a throttle's).
    pub(crate) fn respond(self, body: serde_json::Value) -> Response {
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        let retry_after = self.retry_after.or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(value) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.details() });
        self.respond(body)
    }
}

impl ApiError {
    /// This error in the shape of the API `path` belongs to: Tailscale's (`{"message": …}` at
    /// the top level) under `/api/v2/`, this API's elsewhere. For the layers that answer before
    /// any handler (throttling, a full disk, a body that is not JSON).
    pub fn response_for(self, path: &str) -> Response {
        if path.starts_with("/api/v2/") {
            self.tailscale_response()
        } else {
            self.into_response()
        }
    }

    /// This error as Tailscale's API answers one: its clients read `message` at the top level,
    /// and ours is the same object.
    pub fn tailscale_response(self) -> Response {
        let body = self.details();
        self.respond(body)
    }
}
