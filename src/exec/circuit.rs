//! Circuit breakers, one per target: a failure ratio over a rolling window above the threshold
//! (with a minimum volume) opens the circuit; after `open_seconds` one trial is let through
//! (half-open); its success closes the circuit, its failure opens it again. While open, the
//! target's tasks wait without using attempts. State changes are persisted, so an open circuit
//! stays open across restarts, and published on the event bus once persisted (half-opening is a
//! matter of time, never persisted: it is published when the breaker notices it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use super::model::CircuitRecord;
use super::tables::{ReadTables, ReadableTables, Tables};
use crate::audit::{Audit, Event as AuditEvent};
use crate::clock::{Millis, SharedClock};
use crate::config::CircuitConfig;
use crate::events::{Event, EventBus};
use crate::metrics::Metrics;
use crate::queue::Outcome;
use crate::store::{Store, StoreError};

/// How long other tasks of a half-open target wait while its trial runs.
const TRIAL_WAIT_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Millis },
    HalfOpen { trial_running: bool },
}

#[derive(Debug)]
struct Breaker {
    state: State,
    window: VecDeque<(Millis, bool)>,
    opened_at: Option<Millis>,
    failure_ratio: f64,
}

impl Breaker {
    fn closed() -> Self {
        Breaker {
            state: State::Closed,
            window: VecDeque::new(),
            opened_at: None,
            failure_ratio: 0.0,
        }
    }

    fn record(&self) -> CircuitRecord {
        let (state, open_until) = match self.state {
            State::Closed => ("closed", None),
            State::Open { until } => ("open", Some(until)),
            State::HalfOpen { .. } => ("half_open", None),
        };
        CircuitRecord {
            state: state.to_string(),
            opened_at: self.opened_at,
            open_until,
            failure_ratio: self.failure_ratio,
        }
    }
}

/// A circuit as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitView {
    /// Target name (`http:<host>`, `command:<type>`).
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Failure ratio over the current window.
    pub failure_ratio: f64,
    /// Outcomes in the current window.
    pub window_volume: usize,
    /// When it last opened.
    pub opened_at: Option<Millis>,
    /// When an open circuit lets a trial through.
    pub open_until: Option<Millis>,
}

/// Errors of circuit operations.
#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    /// No circuit has this name.
    #[error("no circuit named `{0}`")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every target's breaker.
pub struct Circuits {
    config: CircuitConfig,
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    events: Arc<EventBus>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

/// Whether an outcome says something about the target's health: `Some(true)` healthy,
/// `Some(false)` failing, `None` neither (a client error, a cancellation, a deferral).
fn health_signal(outcome: &Outcome) -> Option<bool> {
    match outcome {
        Outcome::Succeeded { .. } => Some(true),
        Outcome::Retry { .. } => Some(false),
        Outcome::Fail { class, .. } => (!class.starts_with("http_4")).then_some(false),
        Outcome::Defer { .. } | Outcome::Cancelled | Outcome::Interrupted => None,
    }
}

impl Circuits {
    /// Loads persisted circuit states; state changes are published on `events`.
    pub fn load(
        config: CircuitConfig,
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        events: Arc<EventBus>,
    ) -> Result<Circuits, StoreError> {
        let breakers = store.read_blocking(|tx| -> Result<_, StoreError> {
            let mut breakers = HashMap::new();
            for (name, record) in ReadTables::open(tx)?.circuit_records()? {
                let state = match (record.state.as_str(), record.open_until) {
                    ("open", Some(until)) => State::Open { until },
                    // A trial that was running when keel stopped is gone: allow a new one.
                    ("half_open", _) => State::HalfOpen {
                        trial_running: false,
                    },
                    _ => State::Closed,
                };
                breakers.insert(
                    name,
                    Breaker {
                        state,
                        window: VecDeque::new(),
                        opened_at: record.opened_at,
                        failure_ratio: record.failure_ratio,
                    },
                );
            }
            Ok(breakers)
        })?;
        let circuits = Circuits {
            config,
            store,
            audit,
            clock,
            metrics,
            events,
            breakers: Mutex::new(breakers),
        };
        let names: Vec<String> = circuits.lock().keys().cloned().collect();
        for name in names {
            circuits.publish_gauge(&name);
        }
        Ok(circuits)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_gauge(&self, name: &str) {
        let open = self
            .lock()
            .get(name)
            .is_some_and(|b| !matches!(b.state, State::Closed));
        self.metrics
            .gauge(
                "keel_circuit_open",
                "1 while a target's circuit is open or half-open, else 0.",
                &[("target", name)],
            )
            .set(if open { 1.0 } else { 0.0 });
    }

    /// Targets whose tasks must wait, with the time they may be tried.
    pub fn blocked_targets(&self) -> HashMap<String, Millis> {
        let now = self.clock.now_ms();
        let mut blocked = HashMap::new();
        let mut half_opened = Vec::new();
        for (name, breaker) in self.lock().iter_mut() {
            match breaker.state {
                State::Open { until } if until > now => {
                    blocked.insert(name.clone(), until);
                }
                State::Open { .. } => {
                    breaker.state = State::HalfOpen {
                        trial_running: false,
                    };
                    half_opened.push(name.clone());
                }
                State::HalfOpen {
                    trial_running: true,
                } => {
                    blocked.insert(name.clone(), now + TRIAL_WAIT_MS);
                }
                _ => {}
            }
        }
        self.events.publish_all(
            half_opened
                .into_iter()
                .map(|target| Event::CircuitHalfOpen { target }),
        );
        blocked
    }

    /// Asks to run one task against `target`: `Err(until)` when it must wait (the circuit is
    /// open, or its half-open trial is already running).
    pub fn admit(&self, target: &str) -> Result<(), Millis> {
        let now = self.clock.now_ms();
        let (admission, half_opened) = {
            let mut breakers = self.lock();
            let Some(breaker) = breakers.get_mut(target) else {
                return Ok(());
            };
            match breaker.state {
                State::Closed => (Ok(()), false),
                State::Open { until } if until > now => (Err(until), false),
                State::Open { .. } => {
                    breaker.state = State::HalfOpen {
                        trial_running: true,
                    };
                    (Ok(()), true)
                }
                State::HalfOpen {
                    trial_running: false,
                } => {
                    breaker.state = State::HalfOpen {
                        trial_running: true,
                    };
                    (Ok(()), false)
                }
                State::HalfOpen {
                    trial_running: true,
                } => (Err(now + TRIAL_WAIT_MS), false),
            }
        };
        if half_opened {
            self.events.publish(Event::CircuitHalfOpen {
                target: target.to_string(),
            });
        }
        admission
    }

    /// Feeds an attempt's outcome into `target`'s breaker.
    pub async fn record(&self, target: &str, outcome: &Outcome) -> Result<(), StoreError> {
        let Some(healthy) = health_signal(outcome) else {
            // A trial that said nothing about health frees the slot for another trial.
            if let Some(b) = self.lock().get_mut(target)
                && b.state
                    == (State::HalfOpen {
                        trial_running: true,
                    })
            {
                b.state = State::HalfOpen {
                    trial_running: false,
                };
            }
            return Ok(());
        };
        let now = self.clock.now_ms();
        let changed = {
            let mut breakers = self.lock();
            let breaker = breakers
                .entry(target.to_string())
                .or_insert_with(Breaker::closed);
            let window_start = now - self.config.window_seconds as i64 * 1000;
            breaker.window.push_back((now, healthy));
            while breaker
                .window
                .front()
                .is_some_and(|(t, _)| *t < window_start)
            {
                breaker.window.pop_front();
            }
            let failures = breaker.window.iter().filter(|(_, ok)| !ok).count();
            let volume = breaker.window.len();
            breaker.failure_ratio = failures as f64 / volume as f64;
            let open_until = now + self.config.open_seconds as i64 * 1000;
            match breaker.state {
                State::HalfOpen { .. } if healthy => {
                    breaker.state = State::Closed;
                    breaker.window.clear();
                    Some(breaker.record())
                }
                State::HalfOpen { .. } => {
                    breaker.state = State::Open { until: open_until };
                    breaker.opened_at = Some(now);
                    Some(breaker.record())
                }
                State::Closed
                    if volume as u64 >= self.config.min_volume
                        && breaker.failure_ratio > self.config.threshold =>
                {
                    breaker.state = State::Open { until: open_until };
                    breaker.opened_at = Some(now);
                    tracing::warn!(
                        target_name = target,
                        ratio = breaker.failure_ratio,
                        "circuit opened"
                    );
                    Some(breaker.record())
                }
                _ => None,
            }
        };
        if let Some(record) = changed {
            let event = state_event(target, &record);
            self.persist(target, record).await?;
            self.publish_gauge(target);
            self.events.publish(event);
        }
        Ok(())
    }

    async fn persist(&self, target: &str, record: CircuitRecord) -> Result<(), StoreError> {
        let name = target.to_string();
        self.store
            .write(move |tx| Tables::open(tx)?.put_circuit(&name, &record))
            .await
    }

    /// Every known circuit, by name.
    pub fn list(&self) -> Vec<CircuitView> {
        let now = self.clock.now_ms();
        let window_start = now - self.config.window_seconds as i64 * 1000;
        let breakers = self.lock();
        let sorted: BTreeMap<&String, &Breaker> = breakers.iter().collect();
        sorted
            .into_iter()
            .map(|(name, b)| {
                let recent: Vec<bool> = b
                    .window
                    .iter()
                    .filter(|(t, _)| *t >= window_start)
                    .map(|(_, ok)| *ok)
                    .collect();
                let failures = recent.iter().filter(|ok| !**ok).count();
                CircuitView {
                    name: name.clone(),
                    state: match b.state {
                        State::Closed => "closed",
                        State::Open { .. } => "open",
                        State::HalfOpen { .. } => "half_open",
                    },
                    failure_ratio: if recent.is_empty() {
                        0.0
                    } else {
                        failures as f64 / recent.len() as f64
                    },
                    window_volume: recent.len(),
                    opened_at: b.opened_at,
                    open_until: match b.state {
                        State::Open { until } => Some(until),
                        _ => None,
                    },
                }
            })
            .collect()
    }

    /// Closes a circuit by hand (audited).
    pub async fn reset(&self, actor: &str, name: &str) -> Result<CircuitView, CircuitError> {
        let (record, was_closed) = {
            let mut breakers = self.lock();
            let breaker = breakers
                .get_mut(name)
                .ok_or_else(|| CircuitError::NotFound(name.to_string()))?;
            let was_closed = breaker.state == State::Closed;
            breaker.state = State::Closed;
            breaker.window.clear();
            breaker.failure_ratio = 0.0;
            (breaker.record(), was_closed)
        };
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let (key, actor) = (name.to_string(), actor.to_string());
        self.store
            .write(move |tx| -> Result<(), StoreError> {
                Tables::open(tx)?.put_circuit(&key, &record)?;
                audit.append(
                    tx,
                    now,
                    &AuditEvent::new(actor.clone(), "circuit.reset", key.clone()),
                )?;
                Ok(())
            })
            .await?;
        self.publish_gauge(name);
        if !was_closed {
            self.events.publish(Event::CircuitClosed {
                target: name.to_string(),
            });
        }
        self.list()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| CircuitError::NotFound(name.to_string()))
    }
}

/// The event a persisted state change of `target` publishes.
fn state_event(target: &str, record: &CircuitRecord) -> Event {
    let target = target.to_string();
    match record.state.as_str() {
        "open" => Event::CircuitOpened { target },
        "half_open" => Event::CircuitHalfOpen { target },
        _ => Event::CircuitClosed { target },
    }
}
