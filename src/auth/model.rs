//! Records the auth room stores besides keys: dashboard sessions and how long they last.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Role;
use crate::clock::Millis;
use crate::store::codec::Record;

/// A session ends after this long without a request.
pub const IDLE_TIMEOUT_MS: i64 = 60 * 60 * 1000;

/// A session ends this long after sign-in, whatever happens.
pub const MAX_AGE_MS: i64 = 12 * 60 * 60 * 1000;

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
