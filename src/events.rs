//! The after-commit event bus: rooms publish typed events once the commit that made them true
//! is durable, and watchers (SSE streams, the cycle runner, the dashboard, the coming monitors,
//! incidents and health rooms) subscribe instead of polling.
//!
//! The bus is a bounded [`tokio::sync::broadcast`] channel. It is a hint, never the record: a
//! subscriber that falls behind is told how many events it missed (and
//! `keel_events_lagged_total` counts them), and then re-reads durable state. Nothing that must
//! not be missed depends on the bus alone.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::metrics::{Counter, Metrics};

/// How many events the bus holds for its slowest subscriber before that subscriber lags.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Something that became durably true in one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A task was leased and an attempt started.
    TaskStarted {
        /// The task.
        task_id: Uuid,
        /// Its type.
        task_type: String,
    },
    /// New log lines of a task were stored.
    TaskLogged {
        /// The task.
        task_id: Uuid,
    },
    /// A task finished successfully.
    TaskSucceeded {
        /// The task.
        task_id: Uuid,
        /// Its type.
        task_type: String,
    },
    /// An attempt failed and the task waits for another one.
    TaskRetried {
        /// The task.
        task_id: Uuid,
        /// Its type.
        task_type: String,
        /// When the next attempt is due (epoch ms).
        due_ms: i64,
    },
    /// A task failed for good without reaching the dead-letter queue.
    TaskFailed {
        /// The task.
        task_id: Uuid,
        /// Its type.
        task_type: String,
    },
    /// A task used up its attempts and moved to the dead-letter queue.
    TaskDead {
        /// The task.
        task_id: Uuid,
        /// Its type.
        task_type: String,
    },
    /// A task was cancelled.
    TaskCancelled {
        /// The task.
        task_id: Uuid,
        /// Its type.
        task_type: String,
    },
    /// A circuit opened: its target gets no attempts until it half-opens.
    CircuitOpened {
        /// The circuit's target.
        target: String,
    },
    /// A circuit half-opened: one probe attempt may pass.
    CircuitHalfOpen {
        /// The circuit's target.
        target: String,
    },
    /// A circuit closed again.
    CircuitClosed {
        /// The circuit's target.
        target: String,
    },
    /// A cycle's checkpoint for a stage was stored.
    CycleStageReached {
        /// The cycle.
        cycle_id: Uuid,
        /// The stage's name.
        stage: String,
    },
    /// A cycle finished (its final checkpoint was stored).
    CycleFinished {
        /// The cycle.
        cycle_id: Uuid,
        /// How it ended (`succeeded`, `failed`, `cancelled`, ...).
        outcome: String,
    },
    /// A webhook delivery was acknowledged by its receiver.
    DeliveryConfirmed {
        /// The task that delivered it.
        task_id: Uuid,
        /// The receiver's host.
        target: String,
    },
    /// A webhook delivery attempt failed.
    DeliveryFailed {
        /// The task that delivered it.
        task_id: Uuid,
        /// The receiver's host.
        target: String,
    },
    /// An API key was created.
    KeyCreated {
        /// The key.
        key_id: Uuid,
    },
    /// An API key was revoked.
    KeyRevoked {
        /// The key.
        key_id: Uuid,
    },
    /// An API key was found expired.
    KeyExpired {
        /// The key.
        key_id: Uuid,
    },
    /// Entries were appended to the audit chain, up to this sequence number.
    AuditAppended {
        /// The newest entry's sequence number.
        seq: u64,
    },
    /// The configuration (profiles) was reloaded.
    ConfigReloaded {
        /// What changed.
        changed: Vec<String>,
    },
}

impl Event {
    /// The task this event is about, if it is about one.
    pub fn task_id(&self) -> Option<Uuid> {
        match self {
            Event::TaskStarted { task_id, .. }
            | Event::TaskLogged { task_id }
            | Event::TaskSucceeded { task_id, .. }
            | Event::TaskRetried { task_id, .. }
            | Event::TaskFailed { task_id, .. }
            | Event::TaskDead { task_id, .. }
            | Event::TaskCancelled { task_id, .. }
            | Event::DeliveryConfirmed { task_id, .. }
            | Event::DeliveryFailed { task_id, .. } => Some(*task_id),
            _ => None,
        }
    }

    /// The cycle this event is about, if it is about one.
    pub fn cycle_id(&self) -> Option<Uuid> {
        match self {
            Event::CycleStageReached { cycle_id, .. } | Event::CycleFinished { cycle_id, .. } => {
                Some(*cycle_id)
            }
            _ => None,
        }
    }
}

/// The bus. Cheap to share behind an `Arc`; publishing never blocks and never fails.
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    lagged: Counter,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.sender.receiver_count())
            .finish()
    }
}

impl EventBus {
    /// A bus holding up to `capacity` events for its slowest subscriber, counting missed events
    /// in `keel_events_lagged_total` of `metrics`.
    pub fn new(capacity: usize, metrics: &Metrics) -> EventBus {
        let (sender, _) = broadcast::channel(capacity.max(1));
        let lagged = metrics.counter(
            "keel_events_lagged_total",
            "Events a slow subscriber of the event bus missed (it re-read durable state).",
            &[],
        );
        EventBus { sender, lagged }
    }

    /// Publishes an event. Call only after the commit that made it true is durable.
    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Publishes several events in order.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.publish(event);
        }
    }

    /// A new subscription that sees every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            lagged: self.lagged.clone(),
        }
    }
}

/// What a subscription hands out next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// The subscriber fell behind and missed this many events: re-read durable state.
    Lagged(u64),
    /// The bus is gone (the app is shutting down).
    Closed,
}

/// One subscriber's view of the bus.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    lagged: Counter,
}

impl Subscription {
    /// Waits for the next event.
    pub async fn recv(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.lagged.add(missed);
                Received::Lagged(missed)
            }
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }

    /// Waits until an event matching `wanted` arrives, the subscriber lags (it must re-read
    /// state anyway) or the bus closes. Returns `false` only when the bus closed.
    pub async fn changed(&mut self, wanted: impl Fn(&Event) -> bool) -> bool {
        loop {
            match self.recv().await {
                Received::Event(event) if wanted(&event) => return true,
                Received::Event(_) => continue,
                Received::Lagged(_) => return true,
                Received::Closed => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn succeeded(n: u128) -> Event {
        Event::TaskSucceeded {
            task_id: Uuid::from_u128(n),
            task_type: "t".into(),
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order() {
        let metrics = Metrics::new("test");
        let bus = EventBus::new(8, &metrics);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        bus.publish_all([succeeded(1), succeeded(2)]);
        for sub in [&mut a, &mut b] {
            assert_eq!(sub.recv().await, Received::Event(Arc::new(succeeded(1))));
            assert_eq!(sub.recv().await, Received::Event(Arc::new(succeeded(2))));
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_missed_and_counted() {
        let metrics = Metrics::new("test");
        let bus = EventBus::new(2, &metrics);
        let mut slow = bus.subscribe();
        for n in 0..5 {
            bus.publish(succeeded(n));
        }
        assert_eq!(slow.recv().await, Received::Lagged(3));
        assert_eq!(slow.recv().await, Received::Event(Arc::new(succeeded(3))));
        assert!(
            metrics
                .render_prometheus()
                .contains("keel_events_lagged_total 3")
        );
    }

    #[tokio::test]
    async fn changed_skips_unrelated_events_and_sees_closing() {
        let metrics = Metrics::new("test");
        let bus = EventBus::new(8, &metrics);
        let mut sub = bus.subscribe();
        bus.publish(succeeded(1));
        bus.publish(Event::KeyCreated {
            key_id: Uuid::from_u128(7),
        });
        assert!(sub.changed(|e| matches!(e, Event::KeyCreated { .. })).await);
        drop(bus);
        assert!(!sub.changed(|_| true).await);
    }
}
