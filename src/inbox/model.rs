//! Records the inbox room stores: refused deliveries.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::store::codec::Record;

/// A rejected delivery as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionRecord {
    /// When (epoch ms, keel's clock).
    pub at: Millis,
    /// The source named in the URL.
    pub source: String,
    /// [`Reason::code`](super::Reason::code).
    pub reason: String,
    /// What was wrong.
    pub message: String,
    /// The peer's address.
    pub remote_addr: Option<String>,
    /// The delivery id, when the request carried a usable one.
    pub delivery_id: Option<String>,
}

impl Record for RejectionRecord {
    const VERSION: u8 = 1;
}
