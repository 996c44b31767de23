//! Running cycles in the background: a runner per unfinished cycle, the supervised cycle
//! worker (fires schedules and starts runners), and the drain at shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Cycles, CyclesError};
use crate::supervisor::{StepFuture, Worker};

impl Cycles {
    /// Starts runners for unfinished cycles that have none (after a start, a trigger, or a
    /// governance resume). Returns how many started.
    pub async fn resume_active(self: &Arc<Self>) -> Result<usize, CyclesError> {
        if self.draining.load(Ordering::SeqCst) || self.tracker.is_closed() {
            return Ok(0);
        }
        let active = self.active_ids().await?;
        let mut started = 0;
        for id in active {
            {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                if !running.insert(id) {
                    continue;
                }
            }
            let this = Arc::clone(self);
            self.tracker.spawn(async move {
                this.run_cycle(id).await;
                this.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
            started += 1;
        }
        Ok(started)
    }

    /// Cycles with a runner now.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stops starting cycles and stages that would wait for the queue, lets runners finish
    /// what they can until `deadline`, then stops the rest (they resume on the next start).
    pub async fn drain(&self, deadline: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                cycles = self.running(),
                "cycles still running at the drain deadline stop here and resume on the next start"
            );
            self.stop.cancel();
            self.tracker.wait().await;
        }
    }
}

/// The cycle runner and schedules as a supervised worker: starts runners for unfinished
/// cycles (woken by triggers) and fires due schedule slots.
pub struct CycleWorker {
    /// The room.
    pub cycles: Arc<Cycles>,
}

impl Worker for CycleWorker {
    fn name(&self) -> &'static str {
        "cycles"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn wake(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.cycles.wake))
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            let run = async {
                self.cycles.schedule_tick().await?;
                self.cycles.resume_active().await?;
                Ok::<(), CyclesError>(())
            };
            run.await.map_err(|e| e.to_string())
        })
    }
}
