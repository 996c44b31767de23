//! Cancelling a cycle by hand: its `cycle_failed` checkpoint (reason `cancelled by <actor>`),
//! its run marked failed and no longer active, a telemetry event and the audit entry commit
//! together; then its runner stops waiting, and the queue tasks it was waiting for are
//! cancelled (each audited by the queue). A runner that was about to commit its next stage
//! finds the terminal checkpoint and stops.

use serde_json::json;
use uuid::Uuid;

use super::model::{CycleRun, CycleStatus, Stage};
use super::records::{load_run, save_run, write_checkpoint};
use super::telemetry::emit;
use super::{Cycles, CyclesError, conflict};
use crate::audit::Event as AuditEvent;
use crate::events::Event;
use crate::queue::QueueError;

impl Cycles {
    /// Cancels running cycle `id` (audited as `cycle.cancel`); a finished or failed cycle is a
    /// conflict.
    pub async fn cancel(&self, actor: &str, id: Uuid) -> Result<CycleRun, CyclesError> {
        let now = self.clock.now_ms();
        let audit = std::sync::Arc::clone(&self.audit);
        let actor_key = actor.to_string();
        let run = self
            .write(move |t, tx| {
                let mut run = load_run(t, id)?;
                if run.status != CycleStatus::Running {
                    return Err(conflict(
                        "cycle_not_running",
                        format!("cycle {id} is already {}", run.status.as_str()),
                    ));
                }
                let reason = format!("cancelled by {actor_key}");
                write_checkpoint(
                    t,
                    &run,
                    Stage::CycleFailed,
                    now,
                    None,
                    Vec::new(),
                    json!({"reason": reason}),
                )?;
                run.status = CycleStatus::Failed;
                run.finished_at = Some(now);
                run.error = Some(reason.clone());
                save_run(t, &run)?;
                t.active.remove(run.id.as_u128())?;
                emit(
                    t,
                    now,
                    "cycle_failed",
                    run.profile_id.as_deref(),
                    Some(run.id),
                    &run.namespace,
                    json!({"reason": reason, "run_profile_id": run.run_profile_id,
                           "duration_ms": now - run.created_at}),
                )?;
                audit.append(
                    tx,
                    now,
                    &AuditEvent::new(actor_key.clone(), "cycle.cancel", id.to_string())
                        .with_detail(json!({"namespace": run.namespace})),
                )?;
                Ok(run)
            })
            .await?;
        let waited = self.stop_waiting(id);
        for task in waited {
            match self.queue.cancel(actor, task).await {
                Ok(_) | Err(QueueError::NotFound(_)) | Err(QueueError::Conflict(_)) => {}
                Err(e) => tracing::warn!(cycle = %id, task = %task, error = %e,
                    "cannot cancel a task of a cancelled cycle"),
            }
        }
        self.events.publish(Event::CycleStageReached {
            cycle_id: id,
            stage: Stage::CycleFailed.as_str().to_string(),
        });
        self.events.publish(Event::CycleFinished {
            cycle_id: id,
            outcome: "cancelled".to_string(),
        });
        Ok(run)
    }
}
