//! Security events — failed authentications, blocks, rate-limit refusals, refused webhook
//! signatures and API keys about to expire — counted in memory per minute, kind and subject,
//! and written together by [`SecurityEvents`] (or before a listing), so that a flood of refused
//! requests costs one row a minute per address instead of one write each. Old rows are pruned
//! after `security.event_retention_days`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::Security;
use super::model::EventRecord;
use super::tables::{EventRow, SecurityRead, SecurityWrite};
use crate::auth::Auth;
use crate::clock::Millis;
use crate::store::StoreError;
use crate::supervisor::{StepFuture, Worker};

/// How far ahead a key's expiry is announced.
pub const KEY_EXPIRY_NOTICE_MS: Millis = 14 * 24 * 3600 * 1000;

/// Distinct (minute, kind, subject) counts held before new ones are dropped until the next
/// write (a flood from countless addresses is still counted in the metrics).
const PENDING_CAP: usize = 10_000;

/// A kind of security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A wrong, expired or revoked key, or a refused sign-in.
    AuthFailure,
    /// An address was blocked.
    Block,
    /// A rate limit refused a request.
    RateLimited,
    /// A webhook delivery's signature or token was refused.
    SignatureRejected,
    /// An API key expires within 14 days.
    KeyExpiring,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 5] = [
        EventKind::AuthFailure,
        EventKind::Block,
        EventKind::RateLimited,
        EventKind::SignatureRejected,
        EventKind::KeyExpiring,
    ];

    /// Its stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AuthFailure => "auth_failure",
            EventKind::Block => "block",
            EventKind::RateLimited => "rate_limited",
            EventKind::SignatureRejected => "signature_rejected",
            EventKind::KeyExpiring => "key_expiring",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The counts waiting to be written, and the keys whose expiry was already announced.
#[derive(Default)]
pub(super) struct Pending {
    counts: std::collections::HashMap<(Millis, EventKind, String), EventRecord>,
    announced_keys: HashSet<uuid::Uuid>,
}

impl Security {
    /// Counts one event of `kind` about `subject` (an address or a key id).
    pub fn record_event(&self, kind: EventKind, subject: &str, detail: &str) {
        let now = self.clock.now_ms();
        let minute = now - now.rem_euclid(60_000);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (minute, kind, subject.to_string());
        if !pending.counts.contains_key(&key) && pending.counts.len() >= PENDING_CAP {
            return;
        }
        let entry = pending.counts.entry(key).or_insert_with(|| EventRecord {
            count: 0,
            first_at: now,
            last_at: now,
            detail: String::new(),
        });
        entry.count += 1;
        entry.last_at = now;
        detail.clone_into(&mut entry.detail);
    }

    /// Counts one event about a client address.
    pub fn record_ip_event(&self, kind: EventKind, ip: IpAddr, detail: &str) {
        self.record_event(kind, &ip.to_string(), detail);
    }

    /// Writes the counted events (added to rows already stored) and prunes expired rows.
    pub async fn flush_events(&self) -> Result<(), StoreError> {
        let counts = std::mem::take(
            &mut self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .counts,
        );
        let cutoff = self.clock.now_ms() - self.config.event_retention_days as i64 * 86_400_000;
        let rows: Vec<_> = counts.into_iter().collect();
        self.store
            .write(move |tx| -> Result<(), StoreError> {
                let mut tables = SecurityWrite::open(tx)?;
                for ((minute, kind, subject), record) in &rows {
                    tables.add_event(*minute, kind.as_str(), subject, record)?;
                }
                tables.prune_events(cutoff)
            })
            .await
    }

    /// Up to `limit` stored event rows, newest first, of `kind` when given (after writing the
    /// counted ones).
    pub async fn events(
        &self,
        kind: Option<EventKind>,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.flush_events().await?;
        self.store
            .read(move |tx| SecurityRead::open(tx)?.events(kind.map(EventKind::as_str), limit))
            .await
    }

    /// Counts a `key_expiring` event for each active key that expires within 14 days and was
    /// not announced yet by this process.
    pub fn announce_expiring_keys(&self, auth: &Auth) {
        let now = self.clock.now_ms();
        for key in auth.list() {
            let Some(expires_at) = key.expires_at else {
                continue;
            };
            if key.status != "active" || expires_at - now > KEY_EXPIRY_NOTICE_MS {
                continue;
            }
            let fresh = self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .announced_keys
                .insert(key.id);
            if fresh {
                let detail = format!(
                    "key {:?} expires at {}",
                    key.name,
                    crate::clock::rfc3339(expires_at)
                );
                self.record_event(EventKind::KeyExpiring, &key.id.to_string(), &detail);
            }
        }
    }
}

/// Writes the counted security events every few seconds (and once more on shutdown), announces
/// API keys about to expire, and keeps `keel_security_blocks_active` current as blocks end.
pub struct SecurityEvents {
    /// The engine.
    pub security: Arc<Security>,
    /// The keys whose expiry is announced.
    pub auth: Arc<Auth>,
}

impl Worker for SecurityEvents {
    fn name(&self) -> &'static str {
        "security-events"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            self.security.announce_expiring_keys(&self.auth);
            self.security.publish_active_blocks();
            self.security
                .flush_events()
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn runs_on_shutdown(&self) -> bool {
        true
    }
}
