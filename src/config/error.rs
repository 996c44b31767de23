//! Why a configuration could not be loaded, and the small checks validation is made of; every
//! error names the full key.

use std::path::PathBuf;

use super::Secret;

/// Why a configuration could not be loaded. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named config file does not exist.
    #[error("config file {} does not exist", .path.display())]
    FileNotFound {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// The named config file exists but could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    FileUnreadable {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit the schema.
    #[error("{location}: {message}")]
    Parse {
        /// `file:line:column` (or just the file when the position is unknown).
        location: String,
        /// What is wrong, naming the key when known.
        message: String,
    },
    /// A `KEEL_*` environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or badly formed.
    #[error("{key}: {message}")]
    Invalid {
        /// Full key path, e.g. `store.max_batch`.
        key: String,
        /// What is wrong and what was found.
        message: String,
    },
}

/// `a, b, c`, or `none`.
pub(super) fn names_or_none<'a, S: AsRef<str> + 'a>(names: impl Iterator<Item = &'a S>) -> String {
    let names: Vec<&str> = names.map(AsRef::as_ref).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Checks what an http handler and a dispatch endpoint share: an http(s) URL, a method that
/// carries a body, a Standard Webhooks secret when given, and a timeout.
pub(super) fn check_http_target(
    key: &dyn Fn(&str) -> String,
    url: &str,
    method: &str,
    signing_secret: Option<&Secret>,
    timeout_seconds: u64,
) -> Result<(), ConfigError> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(invalid(
            &key("url"),
            format!("must be an http:// or https:// URL, got {url:?}"),
        ));
    }
    if !["POST", "PUT", "PATCH"].contains(&method) {
        return Err(invalid(
            &key("method"),
            format!("must be POST, PUT or PATCH, got {method:?}"),
        ));
    }
    if let Some(secret) = signing_secret {
        let ok = secret.expose().strip_prefix("whsec_").is_some_and(|b64| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .is_ok_and(|k| k.len() >= 16)
        });
        if !ok {
            return Err(invalid(
                &key("signing_secret"),
                "must be `whsec_` followed by base64 of at least 16 bytes",
            ));
        }
    }
    between(&key("timeout_seconds"), timeout_seconds, 1, 3600)
}

pub(super) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

pub(super) fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {min}, got {value}")));
    }
    Ok(())
}

pub(super) fn between(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(invalid(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}
