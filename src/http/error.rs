//! One error shape for the API: `{"error": {"code", "message"}}` with the right status.
//!
//! Each room's error enum maps to a status and a stable code here. Internal errors answer 500
//! with only the request id; their detail goes to the log (see `middleware`).

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::models::{ConfigIssue, ErrorBody, ErrorObject};

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::budget::BudgetError;
use crate::cycles::CyclesError;
use crate::exec::circuit::CircuitError;
use crate::inbox::InboxError;
use crate::queue::QueueError;
use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
    /// Every problem of a refused configuration.
    errors: Option<Vec<ConfigIssue>>,
}

/// Detail of an internal error, carried from the handler to the request middleware, which logs
/// it with the request id and answers only the id.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl ApiError {
    /// An error with a status, a stable code and a message for the client.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            errors: None,
        }
    }

    /// Adds every problem of a refused configuration (`{"error": {…, "errors": [...]}}`).
    pub fn with_config_errors(mut self, errors: Vec<ConfigIssue>) -> Self {
        self.errors = Some(errors);
        self
    }

    /// The body answered for this error (internal errors get theirs from the middleware).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code.to_string(),
                message: self.message.clone(),
                request_id: None,
                errors: self.errors.clone(),
            },
        }
    }

    /// 400 with a message saying what was wrong and where.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500; `detail` is logged, never sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            detail.to_string(),
        )
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code (the dashboard renders it on its error page).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message for the client (for internal errors: the detail that only the log sees).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            let mut response = self.status.into_response();
            response
                .extensions_mut()
                .insert(InternalDetail(self.message));
            return response;
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let message = e.to_string();
        match e {
            QueueError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
            QueueError::NotFound(_) | QueueError::UnknownType(_) => Self::not_found(message),
            QueueError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            QueueError::IdempotencyConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_conflict", message)
            }
            QueueError::Full { .. } => ApiError {
                retry_after_secs: Some(5),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
            },
            QueueError::Store(s) => s.into(),
        }
    }
}

impl From<CyclesError> for ApiError {
    fn from(e: CyclesError) -> Self {
        let message = e.to_string();
        match e {
            CyclesError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
            CyclesError::NotFound(_) => Self::not_found(message),
            CyclesError::Conflict { code, .. } => Self::new(StatusCode::CONFLICT, code, message),
            CyclesError::Config(issues) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
                    .with_config_errors(issues.0.iter().map(ConfigIssue::from).collect())
            }
            CyclesError::Queue(q) => q.into(),
            CyclesError::Io(_) => Self::internal(message),
            CyclesError::Store(s) => s.into(),
        }
    }
}

impl From<InboxError> for ApiError {
    fn from(e: InboxError) -> Self {
        match e {
            InboxError::UnknownSource(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_source", e.to_string())
            }
            InboxError::Rejected(r) => {
                let status = match r.reason {
                    reason if reason.is_authentication() => StatusCode::UNAUTHORIZED,
                    crate::inbox::Reason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    crate::inbox::Reason::QueueFull => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::BAD_REQUEST,
                };
                Self::new(status, r.reason.code(), r.message)
            }
            InboxError::Queue(q) => q.into(),
            InboxError::Store(s) => s.into(),
        }
    }
}

impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> Self {
        let message = e.to_string();
        match e {
            BudgetError::NotFound(_) => Self::not_found(message),
            BudgetError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
            BudgetError::Store(s) => s.into(),
        }
    }
}

impl From<CircuitError> for ApiError {
    fn from(e: CircuitError) -> Self {
        match e {
            CircuitError::NotFound(_) => Self::not_found(e.to_string()),
            CircuitError::Store(s) => s.into(),
            CircuitError::Queue(q) => q.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WriterGone => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "keel is shutting down; try again shortly",
            ),
            other => Self::internal(other),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Store(s) => s.into(),
            other => Self::internal(other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::MissingKey => Self::new(StatusCode::UNAUTHORIZED, "missing_key", message),
            AuthError::InvalidKey => Self::new(StatusCode::UNAUTHORIZED, "invalid_key", message),
            AuthError::Expired => Self::new(StatusCode::UNAUTHORIZED, "key_expired", message),
            AuthError::Revoked => Self::new(StatusCode::UNAUTHORIZED, "key_revoked", message),
            AuthError::Forbidden { .. } => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            AuthError::NotFound(_) => Self::not_found(message),
            AuthError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
            AuthError::LastAdmin(_) => Self::new(StatusCode::CONFLICT, "last_admin", message),
            AuthError::Store(s) => s.into(),
            AuthError::SecretFile(_) => Self::internal(message),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_field",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "bad_request",
        };
        Self::new(rejection.status(), code, rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        Self::new(rejection.status(), code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), "invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), "invalid_path", rejection.body_text())
    }
}
