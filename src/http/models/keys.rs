//! Wire models of API keys: the key as shown (never its secret), creation and rotation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Timestamp, time_opt};
use crate::auth::{CreatedKey, KeyView, Role};

/// A role, lowest first: viewer < service < operator < admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Read-only access.
    Viewer,
    /// Machine clients: submit work.
    Service,
    /// People running keel: act on work and state.
    Operator,
    /// Everything, including key management.
    Admin,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => RoleName::Viewer,
            Role::Service => RoleName::Service,
            Role::Operator => RoleName::Operator,
            Role::Admin => RoleName::Admin,
        }
    }
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Viewer => Role::Viewer,
            RoleName::Service => Role::Service,
            RoleName::Operator => Role::Operator,
            RoleName::Admin => Role::Admin,
        }
    }
}

/// Whether a key still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// It authenticates.
    Active,
    /// Its expiry passed.
    Expired,
    /// It was revoked.
    Revoked,
}

impl KeyStatus {
    fn of(status: &str) -> KeyStatus {
        match status {
            "expired" => KeyStatus::Expired,
            "revoked" => KeyStatus::Revoked,
            _ => KeyStatus::Active,
        }
    }
}

/// An API key as the API and CLI show it: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f", "name": "deploy-bot", "role": "service",
    "prefix": "keel_0194d3a27b1c…", "status": "active", "created_at": "2026-01-01T00:00:00.000Z",
    "created_by": "system", "expires_at": null, "revoked_at": null, "rotated_from": null,
    "last_used_at": null
}))]
pub struct Key {
    /// Id.
    pub id: Uuid,
    /// Name for people.
    pub name: String,
    /// Role.
    pub role: RoleName,
    /// The recognisable start of the key.
    pub prefix: String,
    /// Whether it still works.
    pub status: KeyStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// Who created it.
    pub created_by: String,
    /// When it expires.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// The key it replaced by rotation.
    pub rotated_from: Option<Uuid>,
    /// When it was last used.
    pub last_used_at: Option<Timestamp>,
}

impl From<&KeyView> for Key {
    fn from(k: &KeyView) -> Self {
        Key {
            id: k.id,
            name: k.name.clone(),
            role: k.role.into(),
            prefix: k.prefix.clone(),
            status: KeyStatus::of(k.status),
            created_at: k.created_at.into(),
            created_by: k.created_by.clone(),
            expires_at: time_opt(k.expires_at),
            revoked_at: time_opt(k.revoked_at),
            rotated_from: k.rotated_from,
            last_used_at: time_opt(k.last_used_at),
        }
    }
}

/// `GET /api/v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Every key.
    pub keys: Vec<Key>,
}

/// One key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyOne {
    /// The key.
    pub key: Key,
}

/// A key just created or rotated, with its full secret (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyCreated {
    /// The key.
    pub key: Key,
    /// The full key, for `Authorization: Bearer …`; never shown again.
    #[schema(example = "keel_0194d3a27b1c7d3e9f005a1b2c3d4e5f_…")]
    pub token: String,
}

impl From<&CreatedKey> for KeyCreated {
    fn from(c: &CreatedKey) -> Self {
        KeyCreated {
            key: (&c.view).into(),
            token: c.token.clone(),
        }
    }
}

/// `POST /api/v1/keys`: a new key. Give at most one of `expires_at` and `expires_in_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "deploy-bot", "role": "service", "expires_in_seconds": 86400}))]
pub struct CreateKey {
    /// Name for people.
    pub name: String,
    /// Role.
    pub role: RoleName,
    /// Expiry as an RFC 3339 time.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Expiry in seconds from now.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// `POST /api/v1/keys/{id}/rotate`: optional body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"overlap_seconds": 3600}))]
pub struct RotateKey {
    /// How long the old key keeps working, at most 2592000 (30 days; default:
    /// `auth.rotation_overlap_seconds`).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub overlap_seconds: Option<u64>,
    /// The successor's expiry as an RFC 3339 time (default: the old key's expiry).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The successor's expiry in seconds from now (default: the old key's expiry).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}
