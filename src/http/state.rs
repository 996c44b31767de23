//! What every handler reads: the rooms and services the HTTP surface calls, and the facts
//! about this process. The application assembles it; http never reaches above itself.

use std::sync::Arc;

use crate::audit::Audit;
use crate::auth::Auth;
use crate::budget::Budgets;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::cycles::Cycles;
use crate::events::EventBus;
use crate::exec::Dispatcher;
use crate::exec::circuit::Circuits;
use crate::inbox::Inbox;
use crate::metrics::Metrics;
use crate::process::Process;
use crate::queue::Queue;
use crate::security::Security;
use crate::store::Store;
use crate::supervisor::Supervisor;

/// The shared state of the router: one per running application.
pub struct HttpState {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Time source.
    pub clock: SharedClock,
    /// The database.
    pub store: Arc<Store>,
    /// The audit log.
    pub audit: Arc<Audit>,
    /// API keys.
    pub auth: Arc<Auth>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The after-commit event bus.
    pub events: Arc<EventBus>,
    /// The task queue.
    pub queue: Arc<Queue>,
    /// Circuit breakers of task targets.
    pub circuits: Arc<Circuits>,
    /// Inbound webhooks.
    pub inbox: Arc<Inbox>,
    /// LLM budgets and the cost ledger.
    pub budgets: Arc<Budgets>,
    /// Background workers.
    pub supervisor: Arc<Supervisor>,
    /// Runs queued tasks.
    pub dispatcher: Arc<Dispatcher>,
    /// Profiles, cycles, telemetry, advice and governance.
    pub cycles: Arc<Cycles>,
    /// Rate limits, blocks and the brute-force auto-block.
    pub security: Arc<Security>,
    /// Version, start time, uptime, shutdown flag.
    pub process: Arc<Process>,
}

impl HttpState {
    /// Why keel is not ready to serve, if it is not.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.process.is_shutting_down() {
            problems.push("shutting down".to_string());
        }
        if !self.store.is_writable() {
            problems.push("the store's writer is not running".to_string());
        }
        for name in self.supervisor.dead_workers() {
            problems.push(format!("background worker {name} has stopped"));
        }
        problems
    }
}
