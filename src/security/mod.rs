//! The security engine: who the client is (the peer, or `X-Forwarded-For` from a trusted proxy),
//! rate limits per API key, per client address and per webhook source (`limits`), allowlists and
//! configured blocks, and the brute-force auto-block: too many failed authentications from one
//! address block it for a while, doubling on each repeat; security events (`events`); and the
//! slots of Server-Sent Event streams (`streams`).
//!
//! Failed authentications are counted in memory (a flood writes nothing); the block they lead
//! to is written to the store with its audit entry, so it survives a restart. Blocks are kept in
//! memory as well, so checking one never reads the store.

pub mod events;
pub mod limits;
pub mod model;
pub mod streams;
mod tables;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::audit::{Audit, Event, SYSTEM_ACTOR};
use crate::clock::{Millis, SharedClock};
use crate::config::{IpRange, SecurityConfig, canonical_ip};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
pub use events::{EventKind, SecurityEvents};
pub use limits::{Limited, RateLimits};
pub use model::BlockRecord;
pub use streams::{StreamPermit, StreamRefusal, StreamSlots};
pub use tables::EventRow;
use tables::{SecurityRead, SecurityWrite};

/// How long an ended block is remembered, so that the next one lasts twice as long.
const STRIKES_REMEMBERED_MS: Millis = 24 * 3600 * 1000;

/// Addresses whose failures are tracked before quiet ones are forgotten.
const TRACKED_ADDRESSES: usize = 65_536;

/// Why a request from an address is refused before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in `security.blocked_ips`.
    Configured,
    /// The address is blocked automatically until this time.
    Until(Millis),
}

/// A block, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    /// The address (or, for a configured block, the range).
    pub ip: String,
    /// `auto` (after failed authentications) or `config` (`security.blocked_ips`).
    pub source: &'static str,
    /// The automatic block's record; none for a configured block.
    pub record: Option<BlockRecord>,
}

/// Why lifting a block failed.
#[derive(Debug, thiserror::Error)]
pub enum LiftError {
    /// The text is not an IP address.
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    /// The address is blocked by configuration, which the API cannot change.
    #[error("{0} is blocked by security.blocked_ips; remove it from the configuration instead")]
    Configured(String),
    /// No automatic block of that address is in force.
    #[error("{0} is not blocked")]
    NotBlocked(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The security engine of one server.
pub struct Security {
    config: SecurityConfig,
    allowlist: Vec<IpRange>,
    blocked: Vec<IpRange>,
    trusted_proxies: Vec<IpRange>,
    clock: SharedClock,
    store: Arc<Store>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    /// The rate limiters.
    pub limits: RateLimits,
    /// Slots of Server-Sent Event streams.
    pub streams: StreamSlots,
    failures: Mutex<HashMap<IpAddr, VecDeque<Millis>>>,
    blocks: RwLock<HashMap<IpAddr, BlockRecord>>,
    pending: Mutex<events::Pending>,
}

impl Security {
    /// Opens the engine of `[security]`, loading the stored blocks.
    pub async fn open(
        config: SecurityConfig,
        clock: SharedClock,
        store: Arc<Store>,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
    ) -> Result<Security, StoreError> {
        let stored = store
            .read(|tx| SecurityRead::open(tx)?.all_blocks())
            .await?;
        let blocks = stored
            .into_iter()
            .filter_map(|(ip, record)| Some((ip.parse().ok()?, record)))
            .collect();
        let security = Security {
            allowlist: config.allowlist_ranges(),
            blocked: config.blocked_ranges(),
            trusted_proxies: config.trusted_proxy_ranges(),
            limits: RateLimits::new(&config),
            streams: StreamSlots::new(config.max_streams_per_key, config.max_streams),
            config,
            clock,
            store,
            audit,
            metrics,
            failures: Mutex::new(HashMap::new()),
            blocks: RwLock::new(blocks),
            pending: Mutex::new(events::Pending::default()),
        };
        security.publish_active_blocks();
        Ok(security)
    }

    /// The client behind a connection from `peer`: the peer itself, or, when the peer is a
    /// trusted proxy, the right-most address of `X-Forwarded-For` that is not a trusted proxy
    /// (the left-most when all are). A trusted peer without the header is its own client.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = canonical_ip(peer);
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|r| r.contains(ip));
        let Some(header) = forwarded_for.filter(|_| trusted(peer)) else {
            return peer;
        };
        let hops: Vec<IpAddr> = header
            .split(',')
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical_ip)
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !trusted(**ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }

    /// Whether `ip` is on the allowlist (never limited or blocked).
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.allowlist.iter().any(|r| r.contains(ip))
    }

    /// Why requests from `ip` are refused now, if they are.
    pub fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        if self.exempt(ip) {
            return None;
        }
        if self.blocked.iter().any(|r| r.contains(ip)) {
            return Some(Refusal::Configured);
        }
        let now = self.clock.now_ms();
        let blocks = self.blocks.read().unwrap_or_else(PoisonError::into_inner);
        blocks
            .get(&ip)
            .filter(|b| b.active(now))
            .map(|b| Refusal::Until(b.until))
    }

    /// Records a failed authentication from `ip` (`reason`: `missing_key`, `invalid_key`,
    /// `sign_in`, …). The one that reaches `security.failed_auth_limit` within the window blocks
    /// the address, durably and audited; whether it did.
    pub async fn auth_failed(&self, ip: IpAddr, reason: &'static str) -> Result<bool, StoreError> {
        self.metrics
            .counter(
                "keel_auth_failures_total",
                "Failed authentications, by reason.",
                &[("reason", reason)],
            )
            .inc();
        self.record_ip_event(EventKind::AuthFailure, ip, reason);
        if self.exempt(ip) {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let window = self.config.failed_auth_window_seconds as i64 * 1000;
        let failures = {
            let mut all = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if all.len() >= TRACKED_ADDRESSES {
                all.retain(|_, times| times.back().is_some_and(|t| now - t < window));
            }
            let times = all.entry(ip).or_default();
            times.retain(|t| now - t < window);
            times.push_back(now);
            if times.len() < self.config.failed_auth_limit as usize {
                return Ok(false);
            }
            let count = times.len() as u32;
            all.remove(&ip);
            count
        };
        self.block(ip, failures, now).await?;
        Ok(true)
    }

    async fn block(&self, ip: IpAddr, failures: u32, now: Millis) -> Result<(), StoreError> {
        let key = ip.to_string();
        let base_ms = self.config.block_seconds as i64 * 1000;
        let max_ms = self.config.max_block_seconds as i64 * 1000;
        let audit = Arc::clone(&self.audit);
        let record =
            self.store
                .write(move |tx| -> Result<BlockRecord, StoreError> {
                    let mut tables = SecurityWrite::open(tx)?;
                    let previous = tables.block(&key)?;
                    if let Some(current) = previous.as_ref().filter(|b| b.active(now)) {
                        return Ok(current.clone());
                    }
                    let strikes = previous
                        .filter(|b| now - b.until < STRIKES_REMEMBERED_MS)
                        .map_or(1, |b| b.strikes.saturating_add(1));
                    let duration = base_ms
                        .saturating_mul(1i64 << (strikes - 1).min(40))
                        .min(max_ms);
                    let record = BlockRecord {
                        blocked_at: now,
                        until: now + duration,
                        strikes,
                        failures,
                    };
                    for (other, old) in tables.all_blocks()? {
                        if now - old.until >= STRIKES_REMEMBERED_MS {
                            tables.remove_block(&other)?;
                        }
                    }
                    tables.put_block(&key, &record)?;
                    drop(tables);
                    let event = Event::new(SYSTEM_ACTOR, "security.block", key.clone())
                        .with_detail(serde_json::json!({
                            "failures": failures,
                            "strikes": strikes,
                            "seconds": duration / 1000,
                        }));
                    audit.append(tx, now, &event)?;
                    Ok(record)
                })
                .await?;
        tracing::warn!(ip = %ip, until_ms = record.until, strikes = record.strikes,
            "blocked a client address after failed authentications");
        let detail = format!(
            "blocked for {} s after {} failed authentications (strike {})",
            (record.until - record.blocked_at) / 1000,
            record.failures,
            record.strikes
        );
        self.record_ip_event(EventKind::Block, ip, &detail);
        self.blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ip, record);
        self.publish_active_blocks();
        Ok(())
    }

    /// Lifts the automatic block of `ip` (audited with `actor`) and forgets its strikes.
    pub async fn lift(&self, actor: &str, ip: &str) -> Result<(), LiftError> {
        let parsed: IpAddr = ip
            .parse()
            .map(canonical_ip)
            .map_err(|_| LiftError::BadAddress(ip.to_string()))?;
        if self.blocked.iter().any(|r| r.contains(parsed)) {
            return Err(LiftError::Configured(parsed.to_string()));
        }
        let now = self.clock.now_ms();
        let key = parsed.to_string();
        let audit = Arc::clone(&self.audit);
        let event = Event::new(actor, "security.unblock", key.clone());
        self.store
            .write(move |tx| -> Result<(), LiftError> {
                let mut tables = SecurityWrite::open(tx)?;
                match tables.block(&key)? {
                    Some(b) if b.active(now) => {}
                    _ => return Err(LiftError::NotBlocked(key.clone())),
                }
                tables.remove_block(&key)?;
                drop(tables);
                audit.append(tx, now, &event)?;
                Ok(())
            })
            .await?;
        self.blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&parsed);
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&parsed);
        self.publish_active_blocks();
        Ok(())
    }

    /// The blocks in force: configured ones first, then automatic ones by address.
    pub fn active_blocks(&self) -> Vec<BlockView> {
        let now = self.clock.now_ms();
        let mut out: Vec<BlockView> = self
            .config
            .blocked_ips
            .iter()
            .map(|ip| BlockView {
                ip: ip.trim().to_string(),
                source: "config",
                record: None,
            })
            .collect();
        let blocks = self.blocks.read().unwrap_or_else(PoisonError::into_inner);
        let mut auto: Vec<BlockView> = blocks
            .iter()
            .filter(|(_, b)| b.active(now))
            .map(|(ip, b)| BlockView {
                ip: ip.to_string(),
                source: "auto",
                record: Some(b.clone()),
            })
            .collect();
        auto.sort_by(|a, b| a.ip.cmp(&b.ip));
        out.extend(auto);
        out
    }

    /// Counts a request from `ip` refused by a rate limit on `route`.
    pub fn count_rate_limited(&self, route: &str, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.record_ip_event(EventKind::RateLimited, ip, route);
        }
        self.metrics
            .counter(
                "keel_rate_limited_total",
                "Requests refused by a rate limit, by route.",
                &[("route", route)],
            )
            .inc();
    }

    fn publish_active_blocks(&self) {
        let now = self.clock.now_ms();
        let active = self
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|b| b.active(now))
            .count();
        self.metrics
            .gauge(
                "keel_security_blocks_active",
                "Client addresses blocked automatically right now.",
                &[],
            )
            .set(active as f64);
    }
}
