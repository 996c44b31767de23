//! Sealing the secrets of handler snapshots (bearer tokens, signing secrets, LLM API keys) so
//! that task records and backups never hold them in clear: XChaCha20-Poly1305 with a random
//! nonce per value, under a key kept outside the database in `<data_dir>/snapshot-key`.
//!
//! A sealed value keeps the snapshot's `String` field: `sealed:v1:<base64(nonce ‖ ciphertext)>`.
//! A value without that prefix is a plaintext one from a record written before sealing, used as
//! it is (and sealed in place at start, see [`super::snapshot::reseal_stored_snapshots`]).

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::fsutil;

/// The sealing key's file in the data dir.
pub const SNAPSHOT_KEY_FILE: &str = "snapshot-key";
/// The prefix of a sealed value.
const SEALED_PREFIX: &str = "sealed:v1:";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// The sealing key file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("snapshot sealing key {}: {reason}", path.display())]
pub struct SealKeyError {
    /// The key file.
    pub path: PathBuf,
    /// Why it is unusable (never its contents).
    pub reason: String,
}

/// Seals and unseals snapshot secrets with the data dir's key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    /// Loads the key from `<data_dir>/snapshot-key`, creating it (32 random bytes, mode 0600)
    /// on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Sealer, SealKeyError> {
        let path = data_dir.join(SNAPSHOT_KEY_FILE);
        let error = |reason: String| SealKeyError {
            path: path.clone(),
            reason,
        };
        if !path.exists() {
            fsutil::create_secret_file(&path, &fsutil::random_bytes::<KEY_LEN>())
                .map_err(|e| error(e.to_string()))?;
            tracing::info!(path = %path.display(), "created snapshot sealing key");
        }
        let bytes = std::fs::read(&path).map_err(|e| error(e.to_string()))?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            error(format!(
                "holds {} bytes, a key is exactly {KEY_LEN}",
                bytes.len()
            ))
        })?;
        Ok(Sealer::from_key(key))
    }

    /// A sealer over `key`.
    pub fn from_key(key: [u8; KEY_LEN]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// `secret` sealed; a value already sealed is returned as it is.
    pub fn seal(&self, secret: &str) -> String {
        if is_sealed(secret) {
            return secret.to_string();
        }
        let nonce_bytes = fsutil::random_bytes::<NONCE_LEN>();
        let nonce = XNonce::from(nonce_bytes);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, secret.as_bytes())
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}", BASE64.encode(sealed))
    }

    /// The secret in `value`: unsealed, or as it is when it is a plaintext value. Fails when a
    /// sealed value does not open with this key (another key, or altered); the error names no
    /// secret.
    pub fn unseal(&self, value: &str) -> Result<String, UnsealError> {
        let Some(encoded) = value.strip_prefix(SEALED_PREFIX) else {
            return Ok(value.to_string());
        };
        let bytes = BASE64.decode(encoded).map_err(|_| UnsealError)?;
        if bytes.len() < NONCE_LEN {
            return Err(UnsealError);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| UnsealError)?;
        let plain = self
            .cipher
            .decrypt(&XNonce::from(nonce), ciphertext)
            .map_err(|_| UnsealError)?;
        String::from_utf8(plain).map_err(|_| UnsealError)
    }
}

/// Whether `value` is a sealed value.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// A sealed secret that does not open with this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sealed secret does not open with this snapshot key")]
pub struct UnsealError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_carry_no_plaintext_and_unseal_to_it() {
        let sealer = Sealer::from_key([1; 32]);
        let sealed = sealer.seal("tok-SECRET-1234567");
        assert!(sealed.starts_with("sealed:v1:"), "{sealed}");
        assert!(!sealed.contains("SECRET"));
        assert_ne!(
            sealer.seal("tok-SECRET-1234567"),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(sealer.unseal(&sealed).unwrap(), "tok-SECRET-1234567");
        assert_eq!(
            sealer.seal(&sealed),
            sealed,
            "sealing twice changes nothing"
        );
        assert_eq!(sealer.unseal("plain-old").unwrap(), "plain-old");
    }

    #[test]
    fn a_tampered_or_foreign_sealed_value_fails_without_naming_the_secret() {
        let sealer = Sealer::from_key([4; 32]);
        let sealed = sealer.seal("tok-SECRET-1234567");
        let other = Sealer::from_key([5; 32]);
        assert_eq!(other.unseal(&sealed), Err(UnsealError));
        let mut bytes = BASE64.decode(&sealed["sealed:v1:".len()..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("sealed:v1:{}", BASE64.encode(&bytes));
        assert_eq!(sealer.unseal(&tampered), Err(UnsealError));
        assert_eq!(sealer.unseal("sealed:v1:not base64!"), Err(UnsealError));
        assert_eq!(sealer.unseal("sealed:v1:AAAA"), Err(UnsealError));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = Sealer::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SNAPSHOT_KEY_FILE);
        assert_eq!(fsutil::mode_of(&path).unwrap(), 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let sealed = first.seal("s3cret");
        let again = Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.unseal(&sealed).unwrap(), "s3cret");
        std::fs::write(&path, b"short").unwrap();
        let e = Sealer::load_or_create(dir.path())
            .err()
            .expect("a short key is refused");
        assert!(e.to_string().contains("holds 5 bytes"), "{e}");
    }
}
