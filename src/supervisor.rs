//! Background workers under one supervisor: schedules, error backoff, status, and a drain
//! deadline on shutdown.
//!
//! A [`Worker`] is a name, a schedule and one public `step`, so a test can call the step
//! directly. The supervisor runs each on its own task, records last run / last error / next
//! run (served at `/api/v1/cron/status`), backs off while a worker keeps failing and, on
//! shutdown, lets each finish (and run its final step) within the deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};

/// The future a worker step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Longest wait between retries of a failing worker.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A unit of background work run on a schedule.
pub trait Worker: Send + 'static {
    /// Stable name, shown in status.
    fn name(&self) -> &'static str;
    /// How often `step` runs.
    fn interval(&self) -> Duration;
    /// Does one round of work.
    fn step(&mut self) -> StepFuture<'_>;
    /// Wakes the worker before its interval is up (e.g. when work arrives).
    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// Whether `step` runs once more during shutdown (to flush what it holds).
    fn runs_on_shutdown(&self) -> bool {
        false
    }
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Waiting for its next run.
    Idle,
    /// In a step.
    Running,
    /// Waiting longer than usual after errors.
    BackingOff,
    /// Finished (shutdown).
    Stopped,
}

/// A worker's status, as served by the API.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Worker name.
    pub name: &'static str,
    /// Human-readable schedule.
    pub schedule: String,
    /// Current state.
    pub state: WorkerState,
    /// Steps run.
    pub runs: u64,
    /// Steps that failed.
    pub errors: u64,
    /// Failures in a row.
    pub consecutive_errors: u32,
    /// Start of the last step (epoch ms).
    pub last_run_at: Option<Millis>,
    /// How long the last step took.
    pub last_duration_ms: Option<u64>,
    /// The last error message.
    pub last_error: Option<String>,
    /// When it happened (epoch ms).
    pub last_error_at: Option<Millis>,
    /// When the next step is due (epoch ms).
    pub next_run_at: Option<Millis>,
}

/// A started worker: its shared status and its task.
type RunningWorker = (Arc<Mutex<WorkerStatus>>, JoinHandle<()>);

/// Runs workers until shutdown.
pub struct Supervisor {
    clock: SharedClock,
    cancel: CancellationToken,
    workers: Mutex<Vec<RunningWorker>>,
}

/// What happened during shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Workers that stopped within the deadline.
    pub stopped: Vec<&'static str>,
    /// Workers cut off at the deadline.
    pub aborted: Vec<&'static str>,
}

impl Supervisor {
    /// A supervisor with no workers yet.
    pub fn new(clock: SharedClock) -> Self {
        Supervisor {
            clock,
            cancel: CancellationToken::new(),
            workers: Mutex::new(Vec::new()),
        }
    }

    /// The token cancelled at shutdown (other long-running tasks can watch it).
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Starts `worker` on its own task.
    pub fn spawn(&self, worker: impl Worker) {
        let interval = worker.interval();
        let status = Arc::new(Mutex::new(WorkerStatus {
            name: worker.name(),
            schedule: format!("every {}", humanize(interval)),
            state: WorkerState::Idle,
            runs: 0,
            errors: 0,
            consecutive_errors: 0,
            last_run_at: None,
            last_duration_ms: None,
            last_error: None,
            last_error_at: None,
            next_run_at: None,
        }));
        let handle = tokio::spawn(run_worker(
            worker,
            Arc::clone(&status),
            Arc::clone(&self.clock),
            self.cancel.clone(),
        ));
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((status, handle));
    }

    /// Every worker's status, in start order.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(s, _)| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Names of workers that ended although no shutdown was asked for (a readiness failure).
    pub fn dead_workers(&self) -> Vec<&'static str> {
        if self.cancel.is_cancelled() {
            return Vec::new();
        }
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(s, _)| s.lock().unwrap_or_else(|e| e.into_inner()).name)
            .collect()
    }

    /// Cancels every worker and waits up to `deadline` for them to finish their current and
    /// final steps; the rest are aborted.
    pub async fn shutdown(&self, deadline: Duration) -> DrainReport {
        self.cancel.cancel();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let until = tokio::time::Instant::now() + deadline;
        let mut report = DrainReport {
            stopped: Vec::new(),
            aborted: Vec::new(),
        };
        for (status, mut handle) in workers {
            let name = status.lock().unwrap_or_else(|e| e.into_inner()).name;
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(_) => report.stopped.push(name),
                Err(_) => {
                    handle.abort();
                    tracing::warn!(
                        worker = name,
                        "worker did not stop within the drain deadline"
                    );
                    report.aborted.push(name);
                }
            }
        }
        report
    }
}

async fn run_worker(
    mut worker: impl Worker,
    status: Arc<Mutex<WorkerStatus>>,
    clock: SharedClock,
    cancel: CancellationToken,
) {
    let interval = worker.interval();
    let wake = worker.wake();
    let mut delay = interval;
    loop {
        update(&status, |s| {
            s.next_run_at = Some(clock.now_ms() + delay.as_millis() as i64)
        });
        let woken = async {
            match &wake {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
            _ = woken => {}
        }
        let failures = run_step(&mut worker, &status, &clock).await;
        delay = if failures == 0 {
            interval
        } else {
            let backoff = Duration::from_secs(1u64 << (failures - 1).min(16)).min(MAX_BACKOFF);
            update(&status, |s| s.state = WorkerState::BackingOff);
            interval.max(backoff)
        };
    }
    if worker.runs_on_shutdown() {
        run_step(&mut worker, &status, &clock).await;
    }
    update(&status, |s| {
        s.state = WorkerState::Stopped;
        s.next_run_at = None;
    });
}

/// Runs one step and records it; returns the number of consecutive failures after it.
async fn run_step(
    worker: &mut impl Worker,
    status: &Mutex<WorkerStatus>,
    clock: &SharedClock,
) -> u32 {
    let started_at = clock.now_ms();
    let started = std::time::Instant::now();
    update(status, |s| {
        s.state = WorkerState::Running;
        s.last_run_at = Some(started_at);
    });
    let outcome = worker.step().await;
    let elapsed = started.elapsed();
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.runs += 1;
    s.last_duration_ms = Some(elapsed.as_millis() as u64);
    s.state = WorkerState::Idle;
    match outcome {
        Ok(()) => s.consecutive_errors = 0,
        Err(error) => {
            tracing::warn!(worker = s.name, %error, "worker step failed");
            s.errors += 1;
            s.consecutive_errors += 1;
            s.last_error = Some(error);
            s.last_error_at = Some(clock.now_ms());
        }
    }
    s.consecutive_errors
}

fn update(status: &Mutex<WorkerStatus>, f: impl FnOnce(&mut WorkerStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// `90s` → `1m30s`, for schedules.
pub fn humanize(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::clock::SystemClock;

    struct Flaky {
        calls: Arc<AtomicU32>,
        fail_first: u32,
    }

    impl Worker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(10)
        }
        fn step(&mut self) -> StepFuture<'_> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if n < self.fail_first {
                    Err(format!("failure {n}"))
                } else {
                    Ok(())
                }
            })
        }
        fn runs_on_shutdown(&self) -> bool {
            true
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_errors_backs_off_and_runs_a_final_step() {
        let sup = Supervisor::new(Arc::new(SystemClock));
        let calls = Arc::new(AtomicU32::new(0));
        sup.spawn(Flaky {
            calls: Arc::clone(&calls),
            fail_first: 2,
        });
        // Paused time: failures at 10 s and 20 s, a success at 30 s, the next run due at 40 s.
        tokio::time::sleep(Duration::from_secs(35)).await;
        let s = &sup.statuses()[0];
        assert_eq!(s.errors, 2);
        assert_eq!(s.last_error.as_deref(), Some("failure 1"));
        assert_eq!(s.runs, 3, "{s:?}");
        assert_eq!(s.consecutive_errors, 0);
        assert!(sup.dead_workers().is_empty());
        let before = calls.load(Ordering::SeqCst);
        let report = sup.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.stopped, vec!["flaky"]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before + 1,
            "final step on shutdown"
        );
    }

    #[test]
    fn humanizes_intervals() {
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_secs(3600)), "1h");
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
    }
}
