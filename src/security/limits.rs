//! Rate limits: one GCRA limiter (the `governor` crate) per kind of caller — API keys, client
//! addresses without a valid key, webhook sources and senders, sign-ins per key — with the numbers a
//! refused request answers in its `Retry-After` and `RateLimit-*` headers.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::config::RateLimitConfig;

/// Keys tracked by one limiter before the idle ones are dropped.
const PRUNE_ABOVE: usize = 50_000;

/// A refused request: the limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Requests allowed at once (`RateLimit-Limit`).
    pub limit: u32,
    /// How long until one more request is allowed (`Retry-After`, `RateLimit-Reset`).
    pub retry_after: Duration,
}

impl Limited {
    /// `retry_after` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed limiter, or none when its limit is off.
struct Limiter<K: Hash + Eq + Clone> {
    inner: Option<Keyed<K>>,
    burst: u32,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(config: &RateLimitConfig) -> Self {
        let quota = config.enabled().then(|| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
            Quota::with_period(config.replenish_interval())
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst)
        });
        Limiter {
            inner: quota.map(|q| RateLimiter::keyed(q).with_middleware()),
            burst: config.burst,
        }
    }

    fn check(&self, key: &K) -> Result<(), Limited> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        if limiter.len() > PRUNE_ABOVE {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        match limiter.check_key(key) {
            Ok(_) => Ok(()),
            Err(not_until) => Err(Limited {
                limit: self.burst,
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            }),
        }
    }
}

/// Every rate limiter of the server.
pub struct RateLimits {
    keys: Limiter<Uuid>,
    unauthenticated: Limiter<IpAddr>,
    hook_sources: Limiter<String>,
    hook_senders: Limiter<IpAddr>,
    sessions: Limiter<Uuid>,
    /// Senders whose refused deliveries used up the unauthenticated limit: until when further
    /// deliveries are refused before they run.
    hook_cooldowns: Mutex<HashMap<IpAddr, Instant>>,
}

impl RateLimits {
    /// The limiters of `[security]`.
    pub fn new(config: &crate::config::SecurityConfig) -> Self {
        RateLimits {
            keys: Limiter::new(&config.key_limit),
            unauthenticated: Limiter::new(&config.unauthenticated_limit),
            hook_sources: Limiter::new(&config.hook_source_limit),
            hook_senders: Limiter::new(&config.hook_ip_limit),
            sessions: Limiter::new(&config.session_limit),
            hook_cooldowns: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request by API key `key`.
    pub fn check_key(&self, key: Uuid) -> Result<(), Limited> {
        self.keys.check(&key)
    }

    /// Counts a dashboard sign-in (a new session) with API key `key`.
    pub fn check_session(&self, key: Uuid) -> Result<(), Limited> {
        self.sessions.check(&key)
    }

    /// Counts a request without a valid key from `ip`.
    pub fn check_unauthenticated(&self, ip: IpAddr) -> Result<(), Limited> {
        self.unauthenticated.check(&ip)
    }

    /// Counts a webhook delivery from `ip`, and for a configured `source` one to that source;
    /// refuses it while the sender's refused deliveries have used up its unauthenticated limit.
    pub fn check_hook(&self, source: Option<&str>, ip: IpAddr) -> Result<(), Limited> {
        let now = Instant::now();
        let cooldown = {
            let mut cooldowns = self
                .hook_cooldowns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if cooldowns.len() > 1024 {
                cooldowns.retain(|_, until| *until > now);
            }
            cooldowns.get(&ip).copied().filter(|until| *until > now)
        };
        if let Some(until) = cooldown {
            return Err(Limited {
                limit: self.unauthenticated.burst,
                retry_after: until - now,
            });
        }
        self.hook_senders.check(&ip)?;
        match source {
            Some(source) => self.hook_sources.check(&source.to_string()),
            None => Ok(()),
        }
    }

    /// Counts a refused webhook delivery from `ip` against its unauthenticated limit; once that
    /// is used up, its deliveries are refused before they run until the limit allows one again.
    pub fn hook_refused(&self, ip: IpAddr) {
        if let Err(limited) = self.unauthenticated.check(&ip) {
            self.hook_cooldowns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ip, Instant::now() + limited.retry_after);
        }
    }
}
