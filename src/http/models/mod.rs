//! The JSON wire models of the HTTP surface: every request and response body the API reads or
//! answers, as serde types that also describe themselves to the OpenAPI document. Each model is
//! built from a room's own type here, so rooms never know their wire shape.

pub mod admin;
pub mod advice;
pub mod audit;
pub mod budgets;
pub mod cycles;
pub mod inbox;
pub mod keys;
pub mod operations;
pub mod security;
pub mod system;
pub mod tasks;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};

/// A moment as an RFC 3339 UTC time with milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = DateTime, example = "2026-01-01T00:00:00.000Z")]
pub struct Timestamp(pub String);

impl From<Millis> for Timestamp {
    fn from(ms: Millis) -> Self {
        Timestamp(rfc3339(ms))
    }
}

/// An optional epoch-ms moment as an optional [`Timestamp`].
pub fn time_opt(ms: Option<Millis>) -> Option<Timestamp> {
    ms.map(Timestamp::from)
}

/// Parses a JSON text stored by a room; `null` when it is not JSON.
pub fn json_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "no task 0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f"}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorObject,
}

/// The error object: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    /// A stable code, e.g. `bad_request`, `invalid_field`, `malformed_json`,
    /// `unsupported_media_type`, `payload_too_large`, `invalid_query`, `invalid_path`,
    /// `missing_key`, `invalid_key`, `key_expired`, `key_revoked`, `forbidden`, `not_found`,
    /// `conflict`, `queue_full`, `invalid_config`, `timeout`, `shutting_down`, `internal`.
    pub code: String,
    /// What was wrong and where (field, JSON pointer, line).
    pub message: String,
    /// The request id to quote when reporting an internal error (500 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Every problem of a refused configuration (`invalid_config` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ConfigIssue>>,
}

/// One problem of a profile file, with its file and JSON pointer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigIssue {
    /// The file.
    pub file: String,
    /// JSON pointer inside it (empty: the whole document).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl From<&crate::cycles::profiles::ConfigIssue> for ConfigIssue {
    fn from(i: &crate::cycles::profiles::ConfigIssue) -> Self {
        ConfigIssue {
            file: i.file.clone(),
            pointer: i.pointer.clone(),
            message: i.message.clone(),
        }
    }
}
