//! `[security]`: rate limits, trusted proxies, allowlists, blocked addresses and the brute-force
//! auto-block.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least, between, invalid};

/// `[security]`: who may send how much, and what happens to an address that keeps failing to
/// authenticate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Addresses or CIDR ranges exempt from rate limits and blocks.
    pub allowlist: Vec<String>,
    /// Addresses or CIDR ranges always refused.
    pub blocked_ips: Vec<String>,
    /// Peers whose `X-Forwarded-For` header names the client (loopback by default).
    pub trusted_proxies: Vec<String>,
    /// Requests per API key.
    pub key_limit: RateLimitConfig,
    /// Requests without a valid key per client address (failed authentications, sign-in
    /// attempts, refused webhook deliveries).
    pub unauthenticated_limit: RateLimitConfig,
    /// Webhook deliveries per source.
    pub hook_source_limit: RateLimitConfig,
    /// Webhook deliveries per client address.
    pub hook_ip_limit: RateLimitConfig,
    /// Dashboard sign-ins (new sessions) per API key.
    pub session_limit: RateLimitConfig,
    /// Failed authentications from one address, within the window, that block it.
    pub failed_auth_limit: u32,
    /// The window failed authentications are counted in, in seconds.
    pub failed_auth_window_seconds: u64,
    /// How long the first block lasts, in seconds; each repeat doubles it.
    pub block_seconds: u64,
    /// The longest block, in seconds.
    pub max_block_seconds: u64,
    /// How long security events are kept, in days.
    pub event_retention_days: u64,
    /// Server-Sent Event streams open at once per API key.
    pub max_streams_per_key: usize,
    /// Server-Sent Event streams open at once in all.
    pub max_streams: usize,
    /// How long a task stream stays open while its task waits (queued or retrying), in seconds.
    pub stream_waiting_timeout_seconds: u64,
}

/// One rate limit: `requests` per `per_seconds` on average, and at most `burst` at once.
/// `requests = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per period (0: no limit).
    pub requests: u32,
    /// The period, in seconds.
    pub per_seconds: u64,
    /// Requests allowed at once.
    pub burst: u32,
}

impl RateLimitConfig {
    const fn new(requests: u32, per_seconds: u64, burst: u32) -> Self {
        Self {
            requests,
            per_seconds,
            burst,
        }
    }

    /// Whether the limit applies at all.
    pub fn enabled(&self) -> bool {
        self.requests > 0
    }

    /// The time one request's allowance takes to come back.
    pub fn replenish_interval(&self) -> Duration {
        Duration::from_secs(self.per_seconds) / self.requests.max(1)
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        between(&format!("{key}.per_seconds"), self.per_seconds, 1, 86_400)?;
        at_least(&format!("{key}.burst"), u64::from(self.burst), 1)?;
        if self.replenish_interval().is_zero() {
            return Err(invalid(
                &format!("{key}.requests"),
                "is more than one request per nanosecond",
            ));
        }
        Ok(())
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            allowlist: Vec::new(),
            blocked_ips: Vec::new(),
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1/128".into()],
            key_limit: RateLimitConfig::new(100_000, 1, 200_000),
            unauthenticated_limit: RateLimitConfig::new(1000, 900, 1000),
            hook_source_limit: RateLimitConfig::new(1000, 1, 2000),
            hook_ip_limit: RateLimitConfig::new(1000, 1, 2000),
            session_limit: RateLimitConfig::new(60, 3600, 20),
            failed_auth_limit: 5,
            failed_auth_window_seconds: 600,
            block_seconds: 600,
            max_block_seconds: 86_400,
            event_retention_days: 30,
            max_streams_per_key: 16,
            max_streams: 256,
            stream_waiting_timeout_seconds: 3600,
        }
    }
}

/// An address range: an address and how many leading bits of it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    address: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `1.2.3.4`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={bits}"))?,
        };
        Ok(IpRange { address, prefix })
    }

    /// Whether `ip` lies in this range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `ip`, with an IPv4-mapped IPv6 address turned into the IPv4 address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_ranges(key: &str, texts: &[String]) -> Result<Vec<IpRange>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| IpRange::parse(t).map_err(|e| invalid(&format!("{key}[{i}]"), e)))
        .collect()
}

impl SecurityConfig {
    /// `allowlist`, parsed (validation has checked it).
    pub fn allowlist_ranges(&self) -> Vec<IpRange> {
        parse_ranges("security.allowlist", &self.allowlist).unwrap_or_default()
    }

    /// `blocked_ips`, parsed.
    pub fn blocked_ranges(&self) -> Vec<IpRange> {
        parse_ranges("security.blocked_ips", &self.blocked_ips).unwrap_or_default()
    }

    /// `trusted_proxies`, parsed.
    pub fn trusted_proxy_ranges(&self) -> Vec<IpRange> {
        parse_ranges("security.trusted_proxies", &self.trusted_proxies).unwrap_or_default()
    }

    /// `stream_waiting_timeout_seconds` as a duration.
    pub fn stream_waiting_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_waiting_timeout_seconds)
    }

    /// `failed_auth_window_seconds` as a duration.
    pub fn failed_auth_window(&self) -> Duration {
        Duration::from_secs(self.failed_auth_window_seconds)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        parse_ranges("security.allowlist", &self.allowlist)?;
        parse_ranges("security.blocked_ips", &self.blocked_ips)?;
        parse_ranges("security.trusted_proxies", &self.trusted_proxies)?;
        self.key_limit.validate("security.key_limit")?;
        self.unauthenticated_limit
            .validate("security.unauthenticated_limit")?;
        self.hook_source_limit
            .validate("security.hook_source_limit")?;
        self.hook_ip_limit.validate("security.hook_ip_limit")?;
        self.session_limit.validate("security.session_limit")?;
        between(
            "security.failed_auth_limit",
            u64::from(self.failed_auth_limit),
            1,
            1000,
        )?;
        between(
            "security.failed_auth_window_seconds",
            self.failed_auth_window_seconds,
            1,
            86_400,
        )?;
        between("security.block_seconds", self.block_seconds, 1, 86_400)?;
        between(
            "security.max_streams_per_key",
            self.max_streams_per_key as u64,
            1,
            10_000,
        )?;
        between(
            "security.max_streams",
            self.max_streams as u64,
            self.max_streams_per_key as u64,
            100_000,
        )?;
        between(
            "security.stream_waiting_timeout_seconds",
            self.stream_waiting_timeout_seconds,
            1,
            7 * 86_400,
        )?;
        between(
            "security.event_retention_days",
            self.event_retention_days,
            1,
            3650,
        )?;
        between(
            "security.max_block_seconds",
            self.max_block_seconds,
            self.block_seconds,
            30 * 86_400,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_their_addresses_only() {
        let r = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.9.9".parse().unwrap()));
        let one = IpRange::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(
            IpRange::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("example.com").is_err());
    }

    #[test]
    fn a_bad_range_names_its_key_and_index() {
        let config = SecurityConfig {
            allowlist: vec!["10.0.0.1".into(), "nope".into()],
            ..SecurityConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("security.allowlist[1]:"), "{err}");
    }
}
