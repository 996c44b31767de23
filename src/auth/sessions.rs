//! Dashboard sessions in the store: a session is created at sign-in with an API key, keeps only
//! the blake3 hash of its random token (a copy of the database opens no session), ends after an
//! idle timeout or a maximum age, and is audited at sign-in and sign-out.
//!
//! The cookie, CSRF and sign-in pages that use these sessions live in `http::admin::session`.

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tables::{AuthRead, AuthWrite};
use super::{Auth, AuthError, Principal, Role};
use crate::audit::Event;
use crate::clock::Millis;
use crate::fsutil;
use crate::store::StoreError;
use crate::store::codec::Record;

/// A session ends after this long without a request.
pub const IDLE_TIMEOUT_MS: i64 = 60 * 60 * 1000;
/// A session ends this long after sign-in, whatever happens.
pub const MAX_AGE_MS: i64 = 12 * 60 * 60 * 1000;
/// `last_seen_at` is written at most this often.
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// A stored session (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The API key that signed in.
    pub key_id: Uuid,
    /// Its role at sign-in.
    pub role: Role,
    /// Sign-in time (epoch ms).
    pub created_at: Millis,
    /// Last request, as of the last write (epoch ms).
    pub last_seen_at: Millis,
}

impl Record for SessionRecord {
    const VERSION: u8 = 1;
}

impl SessionRecord {
    /// Whether the session has ended by time at `now`.
    pub fn expired(&self, now: Millis) -> bool {
        now >= self.created_at.saturating_add(MAX_AGE_MS)
            || now >= self.last_seen_at.saturating_add(IDLE_TIMEOUT_MS)
    }
}

/// The store key of a session token: its blake3 hash.
pub fn hash_token(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A new random session (or sign-in form) token: 256 bits, base64url.
pub fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fsutil::random_bytes::<32>())
}

/// A well-formed token: 43 base64url characters (guards what reaches the hash and the store).
pub fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Auth {
    /// Creates a session for `principal` (pruning ended ones in the same write) and audits the
    /// sign-in; returns the session token for the cookie.
    pub async fn create_session(&self, principal: &Principal) -> Result<String, AuthError> {
        let token = new_token();
        let hash = hash_token(&token);
        let now = self.clock.now_ms();
        let record = SessionRecord {
            key_id: principal.key_id,
            role: principal.role,
            created_at: now,
            last_seen_at: now,
        };
        let audit = Arc::clone(&self.audit);
        let event = Event::new(
            principal.actor(),
            "admin.sign_in",
            principal.key_id.to_string(),
        )
        .with_detail(serde_json::json!({"role": principal.role, "name": principal.name}));
        self.store
            .write(move |tx| -> Result<(), StoreError> {
                let mut tables = AuthWrite::open(tx)?;
                for ended in tables.ended_sessions(now)? {
                    tables.remove_session(&ended)?;
                }
                tables.put_session(&hash, &record)?;
                drop(tables);
                audit.append(tx, now, &event)?;
                Ok(())
            })
            .await?;
        Ok(token)
    }

    /// The session stored under `hash`, if any.
    pub async fn session(&self, hash: [u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        self.store
            .read(move |tx| AuthRead::open(tx)?.session(&hash))
            .await
    }

    /// Deletes a session; with `audit_as`, audits it as a sign-out by that principal.
    pub async fn delete_session(
        &self,
        hash: [u8; 32],
        audit_as: Option<&Principal>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let event = audit_as.map(|p| {
            Event::new(p.actor(), "admin.sign_out", p.key_id.to_string())
                .with_detail(serde_json::json!({"name": p.name}))
        });
        self.store
            .write(move |tx| -> Result<(), StoreError> {
                AuthWrite::open(tx)?.remove_session(&hash)?;
                if let Some(event) = &event {
                    audit.append(tx, now, event)?;
                }
                Ok(())
            })
            .await
    }

    /// Records a request on the session, at most once a minute.
    pub async fn touch_session(
        &self,
        hash: [u8; 32],
        record: &SessionRecord,
        now: Millis,
    ) -> Result<(), StoreError> {
        if now - record.last_seen_at < TOUCH_EVERY_MS {
            return Ok(());
        }
        self.store
            .write(move |tx| -> Result<(), StoreError> {
                let mut tables = AuthWrite::open(tx)?;
                // Signed out meanwhile: nothing to record.
                if let Some(mut current) = tables.session(&hash)? {
                    current.last_seen_at = current.last_seen_at.max(now);
                    tables.put_session(&hash, &current)?;
                }
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_or_old() {
        let s = SessionRecord {
            key_id: Uuid::nil(),
            role: Role::Viewer,
            created_at: 0,
            last_seen_at: 0,
        };
        assert!(!s.expired(IDLE_TIMEOUT_MS - 1));
        assert!(s.expired(IDLE_TIMEOUT_MS));
        let busy = SessionRecord {
            last_seen_at: MAX_AGE_MS - 1,
            ..s
        };
        assert!(!busy.expired(MAX_AGE_MS - 1));
        assert!(busy.expired(MAX_AGE_MS));
    }
}
