//! Inbound webhooks: verifies deliveries (Standard Webhooks, GitHub, a bearer token) over the raw
//! body in constant time, refuses replays, records rejections, and turns accepted deliveries
//! into tasks through [`Queue::enqueue_delivery`].
//!
//! Invariants:
//! - Nothing is created unless the delivery verified: headers first (missing → 401), then the
//!   signature (empty, short or undecodable signatures are refused before any comparison; the
//!   comparison itself is constant time), then the delivery id and the JSON body (400).
//! - A delivery id is refused as a duplicate (200, nothing created) while its mark in
//!   `inbox_seen` lasts (`inbox.replay_retention_seconds`) and, behind it, while the task's
//!   idempotency key `hook:<source>:<delivery id>` lasts (`queue.idempotency_retention_seconds`,
//!   validated to be at least as long). That key lives in the queue's inbox namespace
//!   ([`Queue::enqueue_delivery`]), apart from the keys API callers choose. The task is enqueued before the mark is written, so a
//!   crash between the two still finds the delivery through the idempotency key.
//! - Rejections are recorded (source, time, reason, peer address, delivery id) without the body
//!   or any secret, in a table bounded to `inbox.max_rejections` rows; the retention pass deletes
//!   those older than `inbox.rejection_retention_days`. They are not audited;
//!   accepted deliveries are, by the queue's `task.enqueue` entry (actor `hook:<source>`).
//! - The task payload is the body's JSON as sent; a body that is not JSON is refused (400
//!   `invalid_payload`), since every sender keel verifies sends JSON.
//! - A GitHub signature covers only the body, so a captured delivery resent under a new
//!   `X-GitHub-Delivery` would verify: GitHub deliveries are also marked seen by the blake3 hash
//!   of their body (`body:<hex>`), and a body seen within the replay window is a duplicate.
//! - GitHub signatures are hex: upper- and lower-case digits are both accepted (the decoded
//!   bytes are compared); the `sha256=` prefix must be lower-case, as GitHub sends it.
//!
//! Code map: [`verification`] (schemes, reasons), [`replay`] (seen delivery ids and their pruning),
//! [`rejections`], [`tables`] (the table bundle); receiving is here.

mod model;
mod rejections;
mod replay;
mod tables;
mod verification;

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::config::{Config, InboxScheme, InboxSourceConfig};
use crate::metrics::Metrics;
use crate::queue::{NewTask, Queue, QueueError};
use crate::store::{Store, StoreError};

pub use model::RejectionRecord;
pub use verification::{
    DEFAULT_DELIVERY_ID_HEADERS, Delivery, MAX_DELIVERY_ID, Reason, Rejection, valid_delivery_id,
    verify,
};

/// Errors of the inbox room.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// No such source is configured.
    #[error("no inbox source named `{0}` is configured")]
    UnknownSource(String),
    /// The delivery was refused (and recorded).
    #[error(transparent)]
    Rejected(Rejection),
    /// The queue refused the task.
    #[error(transparent)]
    Queue(QueueError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of a verified delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A new task.
    Accepted {
        /// The task.
        task_id: Uuid,
    },
    /// Seen before: nothing was created.
    Duplicate {
        /// The task the first delivery created.
        task_id: Uuid,
    },
}

/// The inbox room.
pub struct Inbox {
    store: Arc<Store>,
    queue: Arc<Queue>,
    clock: SharedClock,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl Inbox {
    /// The inbox over `store`, creating tasks through `queue`.
    pub fn new(
        store: Arc<Store>,
        queue: Arc<Queue>,
        clock: SharedClock,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inbox = Inbox {
            store,
            queue,
            clock,
            config,
            metrics,
        };
        // Expose every source's counters from the start, at 0.
        for name in inbox.config.inbox.sources.keys() {
            inbox.accepted_counter(name);
            inbox.replay_counter(name);
        }
        inbox
    }

    fn accepted_counter(&self, source: &str) -> crate::metrics::Counter {
        self.metrics.counter(
            "keel_inbox_accepted_total",
            "Inbound webhook deliveries accepted as new tasks.",
            &[("source", source)],
        )
    }

    fn replay_counter(&self, source: &str) -> crate::metrics::Counter {
        self.metrics.counter(
            "keel_inbox_replay_blocked_total",
            "Inbound webhook deliveries refused as replays of a delivery id seen before.",
            &[("source", source)],
        )
    }

    /// A configured source.
    pub fn source(&self, name: &str) -> Option<&InboxSourceConfig> {
        self.config.inbox.sources.get(name)
    }

    /// Every configured source, by name.
    pub fn sources(&self) -> impl Iterator<Item = (&String, &InboxSourceConfig)> {
        self.config.inbox.sources.iter()
    }

    /// Verifies a delivery to `source_name` and enqueues its task, or refuses it as a replay.
    /// A refused delivery is recorded and counted before the error returns.
    pub async fn receive(
        &self,
        source_name: &str,
        delivery: Delivery,
    ) -> Result<Received, InboxError> {
        let source = self
            .source(source_name)
            .ok_or_else(|| InboxError::UnknownSource(source_name.to_string()))?;
        let now = self.clock.now_ms();
        let checked = verify(
            source,
            &delivery,
            now,
            self.config.inbox.timestamp_tolerance_seconds,
        )
        .and_then(|id| {
            let payload = serde_json::from_slice::<Value>(&delivery.body).map_err(|e| {
                Rejection::new(
                    Reason::InvalidPayload,
                    format!(
                        "the body is not JSON (line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                )
                .with_id(&id)
            })?;
            Ok((id, payload))
        });
        let (id, payload) = match checked {
            Ok(x) => x,
            Err(rejection) => {
                self.reject(source_name, &rejection, delivery.remote_addr)
                    .await;
                return Err(InboxError::Rejected(rejection));
            }
        };

        let mut marks = vec![id.clone()];
        if source.scheme == InboxScheme::Github {
            marks.push(format!("body:{}", blake3::hash(&delivery.body).to_hex()));
        }
        for mark in &marks {
            if let Some(task_id) = self.seen(source_name, mark, now).await? {
                self.replay_counter(source_name).inc();
                return Ok(Received::Duplicate { task_id });
            }
        }
        let enqueued = self
            .queue
            .enqueue_delivery(
                &format!("hook:{source_name}"),
                NewTask {
                    task_type: source.task_type.clone(),
                    payload,
                    idempotency_key: Some(format!("hook:{source_name}:{id}")),
                    ..NewTask::default()
                },
            )
            .await;
        let enqueued = match enqueued {
            Ok(e) => e,
            Err(e) => {
                if matches!(e, QueueError::Full { .. }) {
                    let rejection = Rejection::new(Reason::QueueFull, e.to_string()).with_id(&id);
                    self.reject(source_name, &rejection, delivery.remote_addr)
                        .await;
                }
                return Err(InboxError::Queue(e));
            }
        };
        let task_id = enqueued.task.id;
        let expires = now + self.config.inbox.replay_retention_seconds as i64 * 1000;
        if let Err(e) = self.mark_seen(source_name, marks, task_id, expires).await {
            // The task is durable and its idempotency key still refuses a replay.
            tracing::warn!(source = source_name, error = %e, "could not record a delivery id as seen");
        }
        if enqueued.created {
            self.accepted_counter(source_name).inc();
            Ok(Received::Accepted { task_id })
        } else {
            self.replay_counter(source_name).inc();
            Ok(Received::Duplicate { task_id })
        }
    }
}
