//! `[server]`, `[log]` and `[shutdown]`: the HTTP server, logging and graceful shutdown of the
//! process.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least, between, invalid};

/// `[server]`: the HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time allowed for one request, in seconds.
    pub request_timeout_seconds: u64,
    /// Origins allowed cross-origin (`scheme://host[:port]`); empty means none.
    pub cors_allowed_origins: Vec<String>,
    /// `Strict-Transport-Security` max-age in seconds; 0 sends no header.
    pub hsts_max_age_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1_048_576,
            request_timeout_seconds: 30,
            cors_allowed_origins: Vec::new(),
            hsts_max_age_seconds: 0,
        }
    }
}

impl ServerConfig {
    /// `request_timeout_seconds` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// `hsts_max_age_seconds` as a duration, or `None` when no HSTS header is to be sent.
    pub fn hsts_max_age(&self) -> Option<Duration> {
        (self.hsts_max_age_seconds > 0).then(|| Duration::from_secs(self.hsts_max_age_seconds))
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info` or `info,keel=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        at_least("server.max_body_bytes", self.max_body_bytes as u64, 1)?;
        at_least(
            "server.request_timeout_seconds",
            self.request_timeout_seconds,
            1,
        )?;
        for (i, origin) in self.cors_allowed_origins.iter().enumerate() {
            check_origin(origin)
                .map_err(|why| invalid(&format!("server.cors_allowed_origins[{i}]"), why))?;
        }
        Ok(())
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (try \"info\")"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            return Err(invalid(
                "log.level",
                format!("invalid log filter {:?}: {e}", self.level),
            ));
        }
        Ok(())
    }
}

/// `[shutdown]`: graceful shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time allowed for in-flight work to finish, in seconds (1..=3600).
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_seconds: 30 }
    }
}

impl ShutdownConfig {
    /// `drain_seconds` as a duration.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        between("shutdown.drain_seconds", self.drain_seconds, 1, 3600)
    }
}

/// Checks a CORS origin is `http(s)://host[:port]`, as browsers send it in `Origin`.
pub(super) fn check_origin(origin: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{origin:?} is not an origin: {why}"));
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("expected scheme://host[:port], e.g. \"https://ops.example.com\"");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    if let Some(at) = rest.find(['/', '?', '#']) {
        return if &rest[at..] == "/" {
            bad("remove the trailing \"/\"")
        } else {
            bad("an origin has no path, query or fragment")
        };
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("unclosed \"[\" in the host");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return bad("unexpected text after the host"),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    if !rest.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad("the host may contain only letters, digits, \"-\" and \".\"");
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("write the host in lower case, as browsers send it");
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && matches!(port.parse::<u16>(), Ok(p) if p > 0);
        if !valid {
            return bad("the port must be a number from 1 to 65535");
        }
    }
    Ok(())
}
