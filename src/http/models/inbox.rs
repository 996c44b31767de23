//! Wire models of inbound webhooks: the answer to a delivery, the configured sources (never
//! their secrets) and refused deliveries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Timestamp;
use crate::config::{InboxScheme, InboxSourceConfig};
use crate::inbox::{DEFAULT_DELIVERY_ID_HEADERS, RejectionRecord};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// New: a task was enqueued (202).
    Accepted,
    /// Seen before: nothing new was created (200).
    Duplicate,
}

/// `POST /hooks/{source}`: the delivery's task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "accepted", "task_id": "0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f"}))]
pub struct HookReceived {
    /// What became of it.
    pub status: DeliveryState,
    /// The task it created (or created the first time).
    pub task_id: Uuid,
}

/// How a source authenticates its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SourceScheme {
    /// Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    StandardWebhooks,
    /// GitHub's `X-Hub-Signature-256`.
    Github,
    /// A bearer token.
    Bearer,
}

impl From<InboxScheme> for SourceScheme {
    fn from(s: InboxScheme) -> Self {
        match s {
            InboxScheme::StandardWebhooks => SourceScheme::StandardWebhooks,
            InboxScheme::Github => SourceScheme::Github,
            InboxScheme::Bearer => SourceScheme::Bearer,
        }
    }
}

/// A configured source of inbound webhooks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "github", "path": "/hooks/github", "scheme": "github", "task_type": "deploy", "delivery_id_headers": ["x-github-delivery"]}))]
pub struct Source {
    /// Its name.
    pub name: String,
    /// Where deliveries go.
    pub path: String,
    /// How deliveries are authenticated.
    pub scheme: SourceScheme,
    /// The task type a delivery becomes.
    pub task_type: String,
    /// Headers whose value identifies a delivery (for replay refusal).
    pub delivery_id_headers: Vec<String>,
}

impl Source {
    /// The source `name` as shown.
    pub fn of(name: &str, s: &InboxSourceConfig) -> Source {
        let delivery_id_headers = match s.scheme {
            InboxScheme::StandardWebhooks => vec!["webhook-id".to_string()],
            InboxScheme::Github => vec!["x-github-delivery".to_string()],
            InboxScheme::Bearer => match &s.delivery_id_header {
                Some(h) => vec![h.clone()],
                None => DEFAULT_DELIVERY_ID_HEADERS
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
            },
        };
        Source {
            name: name.to_string(),
            path: format!("/hooks/{name}"),
            scheme: s.scheme.into(),
            task_type: s.task_type.clone(),
            delivery_id_headers,
        }
    }
}

/// `GET /api/v1/inbox/sources`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sources {
    /// Every configured source.
    pub sources: Vec<Source>,
    /// How far a signed timestamp may be from keel's clock.
    pub timestamp_tolerance_seconds: u64,
    /// How long a delivery id is remembered.
    pub replay_retention_seconds: u64,
}

/// A refused delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rejection {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: Timestamp,
    /// The source named in the URL.
    pub source: String,
    /// Why, as a code (e.g. `bad_signature`, `replayed`, `payload_too_large`).
    pub reason: String,
    /// What was wrong.
    pub message: String,
    /// The peer's address.
    pub remote_addr: Option<String>,
    /// The delivery id, when the request carried a usable one.
    pub delivery_id: Option<String>,
}

impl Rejection {
    /// The stored rejection `id` as shown.
    pub fn of(id: Uuid, r: &RejectionRecord) -> Rejection {
        Rejection {
            id,
            at: r.at.into(),
            source: r.source.clone(),
            reason: r.reason.clone(),
            message: r.message.clone(),
            remote_addr: r.remote_addr.clone(),
            delivery_id: r.delivery_id.clone(),
        }
    }
}

/// `GET /api/v1/inbox/rejections`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rejections {
    /// The refused deliveries.
    pub rejections: Vec<Rejection>,
}
