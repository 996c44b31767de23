//! Wire models of the security engine: blocked client addresses.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Timestamp;
use crate::security::BlockView;

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
