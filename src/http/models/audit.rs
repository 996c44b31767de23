//! Wire models of the audit log: entries, the head, signed checkpoints and verification.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::Timestamp;
use crate::audit::{self, hex};

/// One entry of the hash chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "seq": 12, "time": "2026-01-01T00:00:00.000Z", "actor": "key:0194d3a27b1c7d3e9f005a1b2c3d4e5f",
    "action": "key.create", "target": "0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f",
    "detail": {"role": "viewer"}, "prev_hash": "5e0c2d6f0b5f4be8a3c1d2e3f40516273849a5b6c7d8e9f0a1b2c3d4e5f60718",
    "hash": "9f3b7a1c0d2e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddee"
}))]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was written.
    pub time: Timestamp,
    /// Key or `system`.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// Details: JSON, or the stored text when it is not JSON.
    pub detail: Value,
    /// Hash of the previous entry, hex.
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

impl From<&audit::Entry> for AuditEntry {
    fn from(e: &audit::Entry) -> Self {
        AuditEntry {
            seq: e.seq,
            time: e.time_ms.into(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: serde_json::from_str::<Value>(&e.detail)
                .unwrap_or_else(|_| Value::String(e.detail.clone())),
            prev_hash: hex(&e.prev_hash),
            hash: hex(&e.hash),
        }
    }
}

/// `GET /api/v1/audit`: a page of entries in chain order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The entries after `after`.
    pub entries: Vec<AuditEntry>,
    /// `after` for the next page (null on the last page).
    pub next_after: Option<u64>,
}

/// `GET /api/v1/audit/head`: the newest entry and the key that signs checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditHead {
    /// Its sequence number (0 when the log is empty).
    pub seq: u64,
    /// Its hash, hex (zeros when empty).
    pub hash: String,
    /// When it was written.
    pub time: Option<Timestamp>,
    /// The Ed25519 public key of checkpoint signatures, hex.
    pub public_key: String,
}

/// A signed checkpoint of the chain's head.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditCheckpoint {
    /// The sequence number covered.
    pub seq: u64,
    /// The hash of entry `seq`, hex.
    pub head_hash: String,
    /// When it was signed.
    pub time: Timestamp,
    /// Ed25519 signature, hex.
    pub signature: String,
}

impl From<&audit::Checkpoint> for AuditCheckpoint {
    fn from(c: &audit::Checkpoint) -> Self {
        AuditCheckpoint {
            seq: c.seq,
            head_hash: hex(&c.head_hash),
            time: c.time_ms.into(),
            signature: hex(&c.signature),
        }
    }
}

/// `GET /api/v1/audit/checkpoints`: the newest checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditCheckpoints {
    /// Newest first.
    pub checkpoints: Vec<AuditCheckpoint>,
    /// The Ed25519 public key of the signatures, hex.
    pub public_key: String,
}

/// `POST /api/v1/audit/verify`: what a full verification found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "ok": true, "entries": 42, "checkpoints": 3, "first_bad_seq": null, "reason": null,
    "summary": "OK: 42 entries, 3 signed checkpoints verified"
}))]
pub struct AuditVerification {
    /// Whether the whole chain and every checkpoint checked out.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The first sequence number found wrong.
    pub first_bad_seq: Option<u64>,
    /// Why it is wrong.
    pub reason: Option<String>,
    /// One line for people.
    pub summary: String,
}

impl From<&audit::VerifyReport> for AuditVerification {
    fn from(r: &audit::VerifyReport) -> Self {
        AuditVerification {
            ok: r.ok,
            entries: r.entries,
            checkpoints: r.checkpoints,
            first_bad_seq: r.first_bad_seq,
            reason: r.reason.clone(),
            summary: r.to_string(),
        }
    }
}
