//! Assembly: opens the rooms in order, starts the workers, serves HTTP, and shuts down in the
//! documented order (stop accepting → drain workers → flush → close the store).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::audit::{self, Audit};
use crate::auth::Auth;
use crate::budget::{BudgetGauges, Budgets};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::cycles::{CycleWorker, Cycles, CyclesError};
use crate::events::EventBus;
use crate::exec::circuit::Circuits;
use crate::exec::seal::{SealKeyError, Sealer};
use crate::exec::snapshot::reseal_stored_snapshots;
use crate::exec::workflow::CheckpointCleanup;
use crate::exec::{DispatchWorker, Dispatcher, Snapshots};
use crate::http::HttpState;
use crate::inbox::Inbox;
use crate::metrics::history::SnapshotWorker;
use crate::metrics::{Metrics, Unit};
use crate::process::Process;
use crate::queue::{Maintenance, Queue, QueueError};
use crate::security::{Security, SecurityEvents};
use crate::store::{Store, StoreError, StoreOptions};
use crate::supervisor::{StepFuture, Supervisor, Worker};

pub use crate::process::VERSION;

/// Errors while starting keel.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be created.
    #[error("cannot create data dir {path}")]
    DataDir {
        /// The data dir.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit signing key is unusable.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// Keys could not be loaded.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// Interrupted tasks could not be recovered.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The profile files are invalid (every problem is listed), or cycles could not start.
    #[error(transparent)]
    Cycles(#[from] CyclesError),
    /// The snapshot sealing key is unusable.
    #[error(transparent)]
    SealKey(#[from] SealKeyError),
    /// Signal handlers could not be installed.
    #[error("cannot listen for shutdown signals: {0}")]
    Signals(std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Everything `serve` checks before it touches a file, beyond the configuration itself (which is
/// validated as it loads): the profile files, every problem listed. `keel config check` and
/// `keel doctor` call this too, so they accept exactly what `serve` accepts.
pub fn validate_start(config: &Config) -> Result<crate::cycles::profiles::ProfileSet, StartError> {
    Ok(crate::cycles::profiles::load(config).map_err(CyclesError::from)?)
}

/// The rooms every entry point needs: store, audit, auth, metrics. The CLI uses this alone
/// when it works offline.
pub struct Core {
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
    /// Seals the secrets of handler snapshots.
    pub sealer: Arc<Sealer>,
}

impl Core {
    /// Opens the data dir and the rooms over it. Fails at once (before touching any other
    /// file) when another keel holds the database.
    pub fn open(config: Config, clock: SharedClock) -> Result<Core, StartError> {
        let data_dir = config.data_dir.clone();
        crate::fsutil::create_private_dir(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let metrics = Arc::new(Metrics::new(VERSION));
        let events = Arc::new(EventBus::new(crate::events::DEFAULT_CAPACITY, &metrics));
        let audit_watch = Arc::new(audit::AppendWatch::new(Arc::clone(&events)));
        let commit_time = metrics.histogram(
            "keel_store_commit_duration_seconds",
            "Time to commit one group of writes durably.",
            Unit::Micros,
            &[],
        );
        let batch_size = metrics.histogram(
            "keel_store_commit_batch_size",
            "Write requests committed together in one transaction.",
            Unit::Count,
            &[],
        );
        let store = Store::open(
            &config.database_path(),
            StoreOptions {
                max_batch: config.store.max_batch,
                commit_observer: Some(Box::new(move |batch, elapsed| {
                    batch_size.record(batch as u64);
                    commit_time.record_duration(elapsed);
                })),
                hooks: vec![Arc::clone(&audit_watch) as Arc<dyn crate::store::TransactionHook>],
            },
        )?;
        let store = Arc::new(store);
        let audit = Arc::new(
            Audit::load_or_create(&data_dir, config.audit.checkpoint_every)?
                .with_watch(audit_watch),
        );
        let hash_key = Auth::hash_key(
            config.auth.key_hash_secret.as_ref().map(|s| s.expose()),
            &data_dir,
        )?;
        let auth = Arc::new(Auth::load(
            Arc::clone(&store),
            Arc::clone(&audit),
            Arc::clone(&clock),
            hash_key,
            Arc::clone(&events),
        )?);
        let sealer = Arc::new(Sealer::load_or_create(&data_dir)?);
        let config = Arc::new(config);
        let queue = Arc::new(Queue::new(
            Arc::clone(&store),
            Arc::clone(&audit),
            Arc::clone(&clock),
            Arc::clone(&config),
            Arc::clone(&events),
            Arc::new(Snapshots::new(Arc::clone(&config), Arc::clone(&sealer))),
            Arc::new(CheckpointCleanup),
        ));
        let circuits = Arc::new(Circuits::load(
            config.circuit.clone(),
            Arc::clone(&store),
            Arc::clone(&queue),
            Arc::clone(&audit),
            Arc::clone(&clock),
            Arc::clone(&metrics),
            Arc::clone(&events),
        )?);
        let inbox = Arc::new(Inbox::new(
            Arc::clone(&store),
            Arc::clone(&queue),
            Arc::clone(&clock),
            Arc::clone(&config),
            Arc::clone(&metrics),
        ));
        let budgets = Arc::new(Budgets::load(
            &config.llm,
            Arc::clone(&store),
            Arc::clone(&audit),
            Arc::clone(&clock),
            Arc::clone(&metrics),
        )?);
        Ok(Core {
            config,
            clock,
            store,
            audit,
            auth,
            metrics,
            events,
            queue,
            circuits,
            inbox,
            budgets,
            sealer,
        })
    }
}

/// The running application: the rooms, the supervisor, the dispatcher, cycles and the facts
/// about this process, held as the HTTP surface's state (which it dereferences to).
pub struct App {
    state: Arc<HttpState>,
}

impl std::ops::Deref for App {
    type Target = HttpState;

    fn deref(&self) -> &HttpState {
        &self.state
    }
}

impl App {
    /// Opens everything, creates the first admin key if there is none, starts the workers.
    pub async fn start(config: Config, clock: SharedClock) -> Result<Arc<App>, StartError> {
        let app = Self::open(config, clock).await?;
        app.start_workers();
        Ok(app)
    }

    /// [`App::start`] with a crash point for crash tests (`KEEL_CRASH_AT`, read only by
    /// `keel serve`; see [`crate::cycles::CRASH_ENV`]).
    #[cfg(feature = "test-hooks")]
    pub async fn start_with(
        config: Config,
        clock: SharedClock,
        crash_at: Option<String>,
    ) -> Result<Arc<App>, StartError> {
        let app = Self::open(config, clock).await?;
        app.cycles.set_crash_point(crash_at);
        app.start_workers();
        Ok(app)
    }

    async fn open(config: Config, clock: SharedClock) -> Result<Arc<App>, StartError> {
        // Invalid profile files refuse the start before any file is touched.
        let profiles = validate_start(&config)?;
        let core = Core::open(config, clock)?;
        if let Some(path) = core
            .auth
            .ensure_initial_admin(&core.config.data_dir)
            .await?
        {
            tracing::warn!(
                path = %path.display(),
                "no API keys existed: created an admin key and wrote it to this file (mode 0600); read it, store it safely, then delete the file"
            );
        }
        // Commands the last keel left running are killed before their tasks run again.
        let stopped_at = crate::exec::orphans::reap(&core.store, &core.clock).await?;
        let running: std::collections::HashSet<_> =
            core.queue.running_ids().await?.into_iter().collect();
        if let Err(e) =
            tokio::task::spawn_blocking(move || crate::exec::orphans::kill_tagged(&running)).await
        {
            tracing::warn!(error = %e, "could not look for processes of interrupted tasks");
        }
        let interrupted = core.queue.recover_interrupted(stopped_at).await?;
        if interrupted > 0 {
            tracing::warn!(
                tasks = interrupted,
                "tasks were running when keel last stopped; they run again"
            );
        }
        let resealed = reseal_stored_snapshots(&core.queue, &core.sealer).await?;
        if resealed > 0 {
            tracing::info!(
                tasks = resealed,
                "sealed the secrets that older task records held in clear"
            );
        }
        let dispatcher = Dispatcher::new(
            Arc::clone(&core.queue),
            Arc::clone(&core.circuits),
            Arc::clone(&core.config),
            Arc::clone(&core.clock),
            Arc::clone(&core.metrics),
            Arc::clone(&core.budgets),
            Arc::clone(&core.store),
            Arc::clone(&core.events),
            Arc::clone(&core.sealer),
        );
        let cycles = Cycles::open(
            Arc::clone(&core.store),
            Arc::clone(&core.audit),
            Arc::clone(&core.clock),
            Arc::clone(&core.config),
            Arc::clone(&core.queue),
            Arc::clone(&core.events),
            Arc::clone(&core.sealer),
            profiles,
        )
        .await?;
        let security = Arc::new(
            Security::open(
                core.config.security.clone(),
                Arc::clone(&core.clock),
                Arc::clone(&core.store),
                Arc::clone(&core.audit),
                Arc::clone(&core.metrics),
            )
            .await?,
        );
        let Core {
            config,
            clock,
            store,
            audit,
            auth,
            metrics,
            events,
            queue,
            circuits,
            inbox,
            budgets,
            sealer: _,
        } = core;
        let app = Arc::new(App {
            state: Arc::new(HttpState {
                process: Arc::new(Process::new(clock.now_ms())),
                supervisor: Arc::new(Supervisor::new(Arc::clone(&clock))),
                dispatcher,
                cycles,
                security,
                config,
                clock,
                store,
                audit,
                auth,
                metrics,
                events,
                queue,
                circuits,
                inbox,
                budgets,
            }),
        });
        Ok(app)
    }

    fn start_workers(&self) {
        let config = &self.config;
        self.supervisor.spawn(SnapshotWorker {
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.metrics),
            clock: Arc::clone(&self.clock),
            interval: config.metrics.snapshot_interval(),
            retention: config.metrics.retention(),
            interval_start_ms: self.process.started_at_ms,
        });
        self.supervisor.spawn(LastUsedFlushWorker {
            auth: Arc::clone(&self.auth),
            interval: config.auth.last_used_flush(),
        });
        self.supervisor.spawn(BudgetGauges {
            budgets: Arc::clone(&self.budgets),
        });
        self.supervisor.spawn(DispatchWorker {
            dispatcher: Arc::clone(&self.dispatcher),
        });
        self.supervisor.spawn(Maintenance {
            queue: Arc::clone(&self.queue),
            metrics: Arc::clone(&self.metrics),
        });
        self.supervisor.spawn(SecurityEvents {
            security: Arc::clone(&self.security),
            auth: Arc::clone(&self.auth),
        });
        self.supervisor.spawn(CycleWorker {
            cycles: Arc::clone(&self.cycles),
        });
        self.supervisor.spawn(self.retention());
        self.supervisor.spawn(CheckpointWorker {
            store: Arc::clone(&self.store),
            audit: Arc::clone(&self.audit),
            clock: Arc::clone(&self.clock),
            interval: config.audit.checkpoint_interval(),
            shutdown: self.supervisor.cancellation(),
        });
    }

    /// The retention worker over this app's rooms.
    pub fn retention(&self) -> Retention {
        Retention {
            queue: Arc::clone(&self.queue),
            inbox: Arc::clone(&self.inbox),
            cycles: Arc::clone(&self.cycles),
            auth: Arc::clone(&self.auth),
            metrics: Arc::clone(&self.metrics),
            last_pass: None,
        }
    }

    /// How long this process has been up.
    pub fn uptime(&self) -> Duration {
        self.process.uptime()
    }

    /// The state the HTTP router serves from.
    pub fn http_state(&self) -> Arc<HttpState> {
        Arc::clone(&self.state)
    }

    /// Stops the workers within the drain deadline (each flushes what it holds), then closes
    /// the store.
    pub async fn shutdown(&self) {
        self.drain_workers().await;
        self.close_store().await;
    }

    /// Marks keel as not ready and stops the workers within the drain deadline; each runs its
    /// final step (metrics snapshot, last-use flush, audit checkpoint).
    pub async fn drain_workers(&self) {
        self.process.begin_shutdown();
        let drain = self.config.shutdown.drain();
        let (report, (), ()) = tokio::join!(
            self.supervisor.shutdown(drain),
            self.dispatcher.drain(drain),
            self.cycles.drain(drain)
        );
        tracing::info!(stopped = ?report.stopped, aborted = ?report.aborted, "workers drained");
    }

    /// Finishes queued writes and closes the store.
    pub async fn close_store(&self) {
        let store = Arc::clone(&self.store);
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        tracing::info!("store closed");
    }
}

/// Deletes what each room keeps past its retention, soon after start and then hourly: each room
/// purges its own tables in bounded batches (one write each, so other writes go between them),
/// counted in `keel_retention_purged_total{table}`. Metric history is pruned by the snapshot
/// worker; inbox rejections are also bounded by `inbox.max_rejections` rows as they are
/// written.
pub struct Retention {
    queue: Arc<Queue>,
    inbox: Arc<Inbox>,
    cycles: Arc<Cycles>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
    last_pass: Option<std::time::Instant>,
}

/// How often the retention pass runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl Retention {
    /// Runs one retention pass over every room; returns the rows deleted per table. A room that
    /// fails does not keep the others from their pass; the first failure is returned after.
    pub async fn run_pass(&self) -> Result<Vec<(&'static str, u64)>, String> {
        let mut purged = Vec::new();
        let mut failures = Vec::new();
        match self.queue.purge_expired().await {
            Ok(q) => purged.extend([
                ("tasks", q.tasks),
                ("task_logs", q.log_lines),
                ("idempotency_keys", q.idempotency_keys),
            ]),
            Err(e) => failures.push(format!("queue: {e}")),
        }
        match self.inbox.prune().await {
            Ok(n) => purged.push(("inbox_seen", n as u64)),
            Err(e) => failures.push(format!("inbox: {e}")),
        }
        match self.inbox.prune_rejections().await {
            Ok(n) => purged.push(("inbox_rejections", n as u64)),
            Err(e) => failures.push(format!("inbox rejections: {e}")),
        }
        match self.cycles.prune_telemetry().await {
            Ok(report) => purged.push(("telemetry", report.pruned as u64)),
            Err(e) => failures.push(format!("telemetry: {e}")),
        }
        match self.auth.purge_ended_sessions().await {
            Ok(n) => purged.push(("admin_sessions", n as u64)),
            Err(e) => failures.push(format!("sessions: {e}")),
        }
        for (table, rows) in &purged {
            self.metrics
                .counter(
                    "keel_retention_purged_total",
                    "Rows deleted past their retention, by table.",
                    &[("table", table)],
                )
                .add(*rows);
        }
        match failures.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(purged),
        }
    }
}

impl Worker for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            if self
                .last_pass
                .is_some_and(|at| at.elapsed() < RETENTION_EVERY)
            {
                return Ok(());
            }
            let purged = self.run_pass().await?;
            self.last_pass = Some(std::time::Instant::now());
            let total: u64 = purged.iter().map(|(_, n)| n).sum();
            if total > 0 {
                tracing::info!(?purged, "retention pass deleted rows past their retention");
            }
            Ok(())
        })
    }
}

/// Flushes keys' last-use times to the store, and announces keys that expired meanwhile.
struct LastUsedFlushWorker {
    auth: Arc<Auth>,
    interval: Duration,
}

impl Worker for LastUsedFlushWorker {
    fn name(&self) -> &'static str {
        "key-last-used-flush"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            self.auth.announce_expired();
            self.auth
                .flush_last_used()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
    fn runs_on_shutdown(&self) -> bool {
        true
    }
}

/// Signs an audit checkpoint when the head moved and the last one is older than the interval;
/// at shutdown, whenever the head moved.
struct CheckpointWorker {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    interval: Duration,
    /// Cancelled at shutdown: the final step then signs any head that moved.
    shutdown: tokio_util::sync::CancellationToken,
}

impl Worker for CheckpointWorker {
    fn name(&self) -> &'static str {
        "audit-checkpoint"
    }
    fn interval(&self) -> Duration {
        // Checked often so a checkpoint is never much later than the interval says.
        (self.interval / 12).max(Duration::from_secs(5))
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            let audit = Arc::clone(&self.audit);
            let now = self.clock.now_ms();
            let min_age = if self.shutdown.is_cancelled() {
                0
            } else {
                self.interval.as_millis() as i64
            };
            self.store
                .write(move |tx| audit.checkpoint_if_due(tx, now, min_age))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
    fn runs_on_shutdown(&self) -> bool {
        true
    }
}

/// Where a browser finds the dashboard of a server listening on `local` (a wildcard address is
/// shown as the loopback one, which reaches it from this host).
fn dashboard_url(local: std::net::SocketAddr) -> String {
    let mut shown = local;
    if shown.ip().is_unspecified() {
        shown.set_ip(match local {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{shown}/admin")
}

/// Binds the configured address (before anything is created), opens everything and serves until
/// SIGTERM/SIGINT, then shuts down in order.
pub async fn serve(config: Config, clock: SharedClock) -> Result<(), StartError> {
    let listen = config.server.listen;
    // The port first: when it is taken, nothing (data dir, database, keys) has been created.
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    #[cfg(feature = "test-hooks")]
    let app = App::start_with(config, clock, crate::cycles::crash_point_from_env()).await?;
    #[cfg(not(feature = "test-hooks"))]
    let app = App::start(config, clock).await?;
    let signalled = shutdown_signal().map_err(StartError::Signals)?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(StartError::Signals)?;
    let reloader = Arc::clone(&app);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the profile files");
            match reloader.cycles.reload(audit::SYSTEM_ACTOR).await {
                Ok(r) => tracing::info!(
                    profiles = r.profiles,
                    run_profiles = r.run_profiles,
                    changed = ?r.changed,
                    "reload done"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the running configuration stays")
                }
            }
        }
    });
    tracing::info!(
        version = VERSION,
        address = %local,
        dashboard = %dashboard_url(local),
        data_dir = %app.config.data_dir.display(),
        "keel is serving"
    );
    let router = crate::http::router(app.http_state());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut server = tokio::spawn(crate::http::serve(
        listener,
        router,
        stop.clone().cancelled_owned(),
    ));
    tokio::select! {
        _ = signalled => {}
        ended = &mut server => {
            tracing::error!(outcome = ?ended, "HTTP server stopped unexpectedly");
        }
    }
    // Stop accepting; open requests and workers share the drain deadline.
    stop.cancel();
    tracing::info!("stopped accepting requests; draining");
    let drain = app.config.shutdown.drain();
    let (http, ()) = tokio::join!(tokio::time::timeout(drain, server), app.drain_workers());
    if http.is_err() {
        tracing::warn!("requests still open at the drain deadline were cut off");
    }
    app.close_store().await;
    Ok(())
}

/// Starts listening for SIGTERM and SIGINT at once (so a signal sent right after keel says it
/// is serving is not lost) and returns a future that resolves on either.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}
