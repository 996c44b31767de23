//! Wire models of the security engine: blocked client addresses.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Timestamp;
use crate::security::{BlockView, EventRow};

/// One blocked client address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Block {
    /// The address (for a configured block, the address or range as configured).
    pub ip: String,
    /// `auto` (after repeated failed authentications) or `config` (`security.blocked_ips`,
    /// which only the configuration can lift).
    pub source: String,
    /// When the block began (automatic blocks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_at: Option<Timestamp>,
    /// When it ends (automatic blocks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// How many times in a row the address was blocked; each repeat lasts twice as long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strikes: Option<u32>,
    /// Failed authentications that led to the block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
}

impl From<&BlockView> for Block {
    fn from(view: &BlockView) -> Self {
        let record = view.record.as_ref();
        Block {
            ip: view.ip.clone(),
            source: view.source.to_string(),
            blocked_at: record.map(|r| r.blocked_at.into()),
            until: record.map(|r| r.until.into()),
            strikes: record.map(|r| r.strikes),
            failures: record.map(|r| r.failures),
        }
    }
}

/// The blocks in force.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BlockList {
    /// Configured blocks first, then automatic ones by address.
    pub blocks: Vec<Block>,
}

/// Security events of one kind about one subject within one minute.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecurityEvent {
    /// The start of the minute.
    pub minute: Timestamp,
    /// `auth_failure`, `block`, `rate_limited`, `signature_rejected` or `key_expiring`.
    pub kind: String,
    /// The client address, or for `key_expiring` the key's id.
    pub subject: String,
    /// How many happened in that minute.
    pub count: u64,
    /// The first of them.
    pub first_at: Timestamp,
    /// The last of them.
    pub last_at: Timestamp,
    /// What the last one was about: the reason of a failure, the route of a refusal, the
    /// webhook source, the block's length, or the key's name and expiry.
    pub detail: String,
}

impl From<&EventRow> for SecurityEvent {
    fn from(row: &EventRow) -> Self {
        SecurityEvent {
            minute: row.minute.into(),
            kind: row.kind.clone(),
            subject: row.subject.clone(),
            count: row.record.count,
            first_at: row.record.first_at.into(),
            last_at: row.record.last_at.into(),
            detail: row.record.detail.clone(),
        }
    }
}

/// Security events, newest minute first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecurityEvents {
    /// The events.
    pub events: Vec<SecurityEvent>,
}
