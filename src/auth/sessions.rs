//! Dashboard sessions in the store: a session is created at sign-in with an API key, keeps only
//! the blake3 hash of its random token (a copy of the database opens no session), ends after an
//! idle timeout or a maximum age, and is audited at sign-in and sign-out.
//!
//! The cookie, CSRF and sign-in pages that use these sessions live in `http::admin::session`.

use std::sync::Arc;

use base64::Engine;

pub use super::model::{IDLE_TIMEOUT_MS, MAX_AGE_MS, SessionRecord};
use super::tables::{AuthRead, AuthWrite};
use super::{Auth, AuthError, Principal};
use crate::audit::Event;
use crate::clock::Millis;
use crate::fsutil;
use crate::store::StoreError;

/// `last_seen_at` is written at most this often.
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// Live sessions one key may have; signing in once more ends the oldest.
pub const MAX_SESSIONS_PER_KEY: usize = 16;

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
    /// Creates a session for `principal` and audits the sign-in; returns the session token for
    /// the cookie. In the same write, the key's ended sessions are deleted (found through the
    /// index by key, never by reading every session), and beyond [`MAX_SESSIONS_PER_KEY`] live
    /// ones the oldest end.
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
                let mut live = Vec::new();
                for (old, session) in tables.key_sessions(record.key_id)? {
                    match session {
                        Some(s) if !s.expired(now) => live.push(old),
                        Some(_) => tables.remove_session(&old)?,
                        None => {
                            tables.remove_session(&old)?;
                            tables.remove_session_index(record.key_id, &old)?;
                        }
                    }
                }
                let excess = (live.len() + 1).saturating_sub(MAX_SESSIONS_PER_KEY);
                for old in &live[..excess] {
                    tables.remove_session(old)?;
                }
                tables.put_session(&hash, &record)?;
                drop(tables);
                audit.append(tx, now, &event)?;
                Ok(())
            })
            .await?;
        Ok(token)
    }

    /// Deletes the sessions that ended (idle timeout or maximum age) by now; returns how many.
    pub async fn purge_ended_sessions(&self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        self.store
            .write(move |tx| -> Result<usize, StoreError> {
                let mut tables = AuthWrite::open(tx)?;
                let ended = tables.ended_sessions(now)?;
                for hash in &ended {
                    tables.remove_session(hash)?;
                }
                Ok(ended.len())
            })
            .await
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
