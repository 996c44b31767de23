//! The cycle runner: takes a cycle from its last checkpoint through the remaining stages.
//!
//! Each stage reads the previous stage's output from its checkpoint, does its work (queue
//! tasks with ids derived from (cycle, stage, key), so doing a stage again after a crash finds
//! the tasks it made before), and commits its checkpoint together with its outputs in one
//! transaction. A runner stops (to be started again by the worker) while cycles are paused or
//! the cycle's namespace is halted, when a stage fails in a way that may pass, and at shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{ReadableTable, TableHandle, WriteTransaction};
use serde_json::{Value, json};
use uuid::Uuid;

use super::ids::{dispatch_task_id, step_task_id};
use super::model::{CycleRun, CycleStatus, DispatchRecord, LedgerEntry, Stage};
use super::records::{
    append_ledger, append_record, dispatches, find_run, last_checkpoint, save_run, write_checkpoint,
};
use super::tables::CycleTables;
use super::telemetry::emit;
use super::waiting::{TaskEnd, Wake};
use super::{CycleContext, Cycles, CyclesError, DISPATCH_TASK_TYPE};
use crate::audit::SYSTEM_ACTOR;
use crate::clock::Millis;
use crate::events::Event;
use crate::exec::{HandlerSnapshot, HttpTarget, http_circuit_target};
use crate::queue::{NewTask, QueueError, Status, Task};
use crate::store::codec;

/// Requests in flight to one dispatch endpoint's host at once.
const DISPATCH_TARGET_CONCURRENCY: u32 = 8;

/// What a stage did.
enum Progress {
    /// Its checkpoint is written.
    Done,
    /// It stopped without a checkpoint (shutdown); the cycle resumes later.
    Stopped,
    /// The cycle failed for good instead (its `cycle_failed` checkpoint is written).
    Failed,
}

fn parse_output(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// A task's result as the next payload: JSON as it is, other text as a JSON string.
fn result_value(result: &str) -> Value {
    serde_json::from_str(result).unwrap_or_else(|_| Value::String(result.to_string()))
}

impl Cycles {
    /// Runs cycle `id` from its last checkpoint until it ends, is held, or must stop.
    pub(super) async fn run_cycle(self: &Arc<Self>, id: Uuid) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let state = self
                .read(move |t| -> Result<_, CyclesError> {
                    Ok((find_run(t, id)?, last_checkpoint(t, id)?))
                })
                .await;
            let (run, last) = match state {
                Ok((Some(run), Some(last))) => (run, last),
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(cycle = %id, error = %e, "cannot read the cycle");
                    return;
                }
            };
            if run.status != CycleStatus::Running || last.stage.is_terminal() {
                return;
            }
            match self.governance().await {
                Ok(g) if g.is_paused() || g.is_halted(&run.namespace) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(cycle = %id, error = %e, "cannot read governance");
                    return;
                }
            }
            let Some(next) = last.stage.next() else {
                return;
            };
            let done = match next {
                Stage::Initiation => self.initiation(&run).await,
                Stage::Tier1 | Stage::Tier2 | Stage::Tier3 => {
                    self.tier(&run, next, last.output.as_deref()).await
                }
                Stage::Normalization => self.normalization(&run, last.output.as_deref()).await,
                Stage::DispatchEnqueued => self.dispatch_enqueue(&run).await,
                Stage::DispatchComplete => self.dispatch_complete(&run).await,
                Stage::CycleFinished => self.finish(&run).await,
                Stage::CycleStarted | Stage::CycleFailed => return,
            };
            match done {
                #[cfg(feature = "test-hooks")]
                Ok(Progress::Done) => self.crash_point(next),
                #[cfg(not(feature = "test-hooks"))]
                Ok(Progress::Done) => {}
                Ok(Progress::Failed) => continue,
                Ok(Progress::Stopped) => return,
                Err(CyclesError::Conflict {
                    code: "stage_done", ..
                }) => continue,
                Err(e) => {
                    tracing::warn!(
                        cycle = %id,
                        stage = next.as_str(),
                        error = %e,
                        "cycle stage failed; it is tried again shortly"
                    );
                    return;
                }
            }
        }
    }

    fn context(run: &CycleRun) -> Result<CycleContext, CyclesError> {
        serde_json::from_str(&run.context).map_err(|e| {
            CyclesError::Io(format!(
                "cycle {}: its stored context is unreadable: {e}",
                run.id
            ))
        })
    }

    /// Publishes that `stage`'s checkpoint of cycle `id` is stored (and, for a final one, that
    /// the cycle ended).
    fn publish_stage(&self, id: Uuid, stage: Stage) {
        self.events.publish(Event::CycleStageReached {
            cycle_id: id,
            stage: stage.as_str().to_string(),
        });
        let outcome = match stage {
            Stage::CycleFinished => "succeeded",
            Stage::CycleFailed => "failed",
            _ => return,
        };
        self.events.publish(Event::CycleFinished {
            cycle_id: id,
            outcome: outcome.to_string(),
        });
    }

    /// Commits `stage`'s checkpoint with `extra` outputs in one transaction, then publishes
    /// it.
    async fn commit<F>(
        &self,
        run: &CycleRun,
        stage: Stage,
        output: Option<String>,
        webhook_ids: Vec<String>,
        detail: Value,
        mut extra: F,
    ) -> Result<(), CyclesError>
    where
        F: FnMut(
                &mut CycleTables<'_>,
                &WriteTransaction,
                &CycleRun,
                Millis,
            ) -> Result<(), CyclesError>
            + Send
            + 'static,
    {
        let now = self.clock.now_ms();
        let id = run.id;
        let run = run.clone();
        #[cfg(feature = "test-hooks")]
        let crash = self.crash_before(stage);
        self.write(move |t, tx| -> Result<(), CyclesError> {
            write_checkpoint(
                t,
                &run,
                stage,
                now,
                output.clone(),
                webhook_ids.clone(),
                detail.clone(),
            )?;
            extra(t, tx, &run, now)?;
            #[cfg(feature = "test-hooks")]
            if crash {
                super::crash::crash_now(&format!("before:{}", stage.as_str()));
            }
            Ok(())
        })
        .await?;
        self.publish_stage(id, stage);
        Ok(())
    }

    /// Ends the cycle as failed.
    async fn fail(&self, run: &CycleRun, why: String) -> Result<Progress, CyclesError> {
        tracing::warn!(cycle = %run.id, reason = %why, "cycle failed");
        let reason = why.clone();
        self.commit(
            run,
            Stage::CycleFailed,
            None,
            Vec::new(),
            json!({"reason": why}),
            move |t, _, run, now| {
                let mut run = run.clone();
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
                )
            },
        )
        .await?;
        Ok(Progress::Failed)
    }

    /// Builds the initiation object: the run's identity, slot, hash and the profile's
    /// settings, frozen into the checkpoint.
    async fn initiation(&self, run: &CycleRun) -> Result<Progress, CyclesError> {
        let ctx = Self::context(run)?;
        let profile = ctx.profile.as_ref();
        let rp = ctx.run_profile.as_ref();
        let object = json!({
            "cycle_run_id": run.id,
            "initiation_hash": run.initiation_hash,
            "slot": run.slot,
            "namespace": run.namespace,
            "run_profile_id": run.run_profile_id,
            "profile_id": run.profile_id,
            "profile_version": run.profile_version,
            "instructions": {
                "label": profile.map(|p| p.label.clone()),
                "style_vector": profile.map(|p| p.style_vector.clone()),
                "asset_bindings": profile.map(|p| p.asset_bindings.clone()),
                "execution_policy": rp.map(|r| r.execution_policy.clone()),
                "asset_bundle": rp.map(|r| r.asset_bundle.clone()),
                "distribution_targets": ctx.targets.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            },
        });
        self.commit(
            run,
            Stage::Initiation,
            Some(object.to_string()),
            Vec::new(),
            json!({"initiation_hash": run.initiation_hash}),
            |_, _, _, _| Ok(()),
        )
        .await?;
        Ok(Progress::Done)
    }

    /// Runs the tier's steps in order, each on the previous one's output.
    async fn tier(
        &self,
        run: &CycleRun,
        stage: Stage,
        input: Option<&str>,
    ) -> Result<Progress, CyclesError> {
        let ctx = Self::context(run)?;
        let n = match stage {
            Stage::Tier1 => 1,
            Stage::Tier2 => 2,
            _ => 3,
        };
        let steps = ctx
            .profile
            .as_ref()
            .map(|p| p.execution_rules.tier(n).to_vec())
            .unwrap_or_default();
        let mut payload = parse_output(input);
        let mut tasks = Vec::new();
        for (j, step) in steps.iter().enumerate() {
            let id = step_task_id(run.id, stage, j);
            let new = NewTask {
                task_type: step.handler.clone(),
                payload: payload.clone(),
                max_attempts: step.max_attempts,
                timeout_s: step.timeout_seconds,
                ..NewTask::default()
            };
            match self.run_task(run.id, id, new).await? {
                TaskEnd::Succeeded(result) => {
                    if let Some(result) = result.filter(|r| !r.is_empty()) {
                        payload = result_value(&result);
                    }
                }
                TaskEnd::Failed(why) => {
                    return self
                        .fail(run, format!("tier{n} step `{}`: {why}", step.name))
                        .await;
                }
                TaskEnd::Stopped => return Ok(Progress::Stopped),
            }
            tasks.push(json!({"step": step.name, "task_id": id}));
        }
        self.commit(
            run,
            stage,
            Some(payload.to_string()),
            Vec::new(),
            json!({"steps": tasks}),
            |_, _, _, _| Ok(()),
        )
        .await?;
        Ok(Progress::Done)
    }

    /// Splits the tier-3 output into items (an array's elements, or the one value),
    /// normalizes them in batches through the configured processor (or passes them through),
    /// and stores them idempotently by (cycle, index).
    async fn normalization(
        &self,
        run: &CycleRun,
        input: Option<&str>,
    ) -> Result<Progress, CyclesError> {
        let items = match parse_output(input) {
            Value::Array(items) => items,
            other => vec![other],
        };
        let batch_size = self.config.cycles.normalization_batch_size.max(1);
        let normalizer = self.config.cycles.normalizer.clone();
        let mut normalized = Vec::with_capacity(items.len());
        let mut batches = 0;
        for (k, batch) in items.chunks(batch_size).enumerate() {
            batches += 1;
            if normalizer.is_empty() {
                normalized.extend_from_slice(batch);
                continue;
            }
            let new = NewTask {
                task_type: normalizer.clone(),
                payload: Value::Array(batch.to_vec()),
                ..NewTask::default()
            };
            match self
                .run_task(run.id, step_task_id(run.id, Stage::Normalization, k), new)
                .await?
            {
                TaskEnd::Succeeded(result) => match result.as_deref().map(result_value) {
                    Some(Value::Array(out)) => normalized.extend(out),
                    Some(other) => normalized.push(other),
                    None => normalized.extend_from_slice(batch),
                },
                TaskEnd::Failed(why) => {
                    return self
                        .fail(run, format!("normalization batch {k}: {why}"))
                        .await;
                }
                TaskEnd::Stopped => return Ok(Progress::Stopped),
            }
        }
        let count = normalized.len();
        let texts: Vec<String> = normalized.iter().map(Value::to_string).collect();
        self.commit(
            run,
            Stage::Normalization,
            None,
            Vec::new(),
            json!({"items": count, "batches": batches,
                   "processor": if normalizer.is_empty() { "pass-through" } else { normalizer.as_str() }}),
            move |t, _, run, _| {
                for (i, text) in texts.iter().enumerate() {
                    let key = (run.id.as_u128(), i as u32);
                    if t.items.get(key)?.is_none() {
                        t.items.insert(key, text.as_str())?;
                    }
                }
                Ok(())
            },
        )
        .await?;
        Ok(Progress::Done)
    }

    /// Enqueues one dispatch task per endpoint, with the endpoint's URL, method and token
    /// snapshotted now, in the same transaction as the checkpoint that lists their
    /// `webhook-id`s.
    async fn dispatch_enqueue(&self, run: &CycleRun) -> Result<Progress, CyclesError> {
        let ctx = Self::context(run)?;
        let id = run.id;
        let items: Vec<Value> = self
            .read(move |t| -> Result<Vec<Value>, CyclesError> {
                let mut items = Vec::new();
                for row in t
                    .items
                    .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
                {
                    items.push(serde_json::from_str(row?.1.value()).unwrap_or(Value::Null));
                }
                Ok(items)
            })
            .await?;
        let envelope = json!({
            "cycle_run_id": run.id,
            "run_profile_id": run.run_profile_id,
            "profile_id": run.profile_id,
            "namespace": run.namespace,
            "slot": run.slot,
            "initiation_hash": run.initiation_hash,
            "items": items,
        });
        let mut prepared: Vec<(String, String, Task)> = Vec::new();
        for (target, endpoint) in &ctx.targets {
            if prepared.iter().any(|(_, e, _)| e == endpoint) {
                continue;
            }
            let Some(e) = self.config.dispatch.endpoints.get(endpoint) else {
                return self
                    .fail(
                        run,
                        format!("dispatch endpoint `{endpoint}` is no longer configured"),
                    )
                    .await;
            };
            let http = HttpTarget {
                url: e.url.trim().to_string(),
                method: e.method.clone(),
                token: e.token.as_ref().map(|t| t.expose().to_string()),
                signing_secret: e.signing_secret.as_ref().map(|t| t.expose().to_string()),
                timeout_seconds: e.timeout_seconds,
                target_concurrency: DISPATCH_TARGET_CONCURRENCY,
                circuit_target: http_circuit_target(e.circuit, "dispatch", endpoint, &e.url),
            };
            let new = NewTask {
                task_type: DISPATCH_TASK_TYPE.to_string(),
                payload: envelope.clone(),
                max_attempts: Some(self.config.dispatch.max_retries + 1),
                ..NewTask::default()
            };
            let task = match self.queue.prepare(
                SYSTEM_ACTOR,
                dispatch_task_id(run.id, endpoint),
                &new,
                Some(http.handling(&self.sealer)),
            ) {
                Ok(t) => t,
                Err(QueueError::Invalid(why)) => {
                    return self
                        .fail(run, format!("dispatch to `{endpoint}`: {why}"))
                        .await;
                }
                Err(e) => return Err(e.into()),
            };
            prepared.push((target.clone(), endpoint.clone(), task));
        }
        let webhook_ids: Vec<String> = prepared.iter().map(|(_, _, t)| t.webhook_id()).collect();
        let queue = Arc::clone(&self.queue);
        let detail = json!({
            "dispatches": prepared.iter().map(|(target, endpoint, t)| json!({
                "target": target, "endpoint": endpoint, "task_id": t.id,
                "webhook_id": t.webhook_id(),
            })).collect::<Vec<_>>(),
        });
        self.commit(
            run,
            Stage::DispatchEnqueued,
            None,
            webhook_ids,
            detail,
            move |t, tx, run, now| {
                for (target, endpoint, task) in &prepared {
                    let enqueued = queue.insert_prepared(tx, task)?;
                    let record = DispatchRecord {
                        cycle_id: run.id,
                        target: target.clone(),
                        endpoint: endpoint.clone(),
                        task_id: enqueued.task.id,
                        webhook_id: enqueued.task.webhook_id(),
                        url: match HandlerSnapshot::of(&enqueued.task) {
                            Ok(HandlerSnapshot::Http { url, .. }) => url,
                            _ => String::new(),
                        },
                        method: match HandlerSnapshot::of(&enqueued.task) {
                            Ok(HandlerSnapshot::Http { method, .. }) => method,
                            _ => String::new(),
                        },
                        enqueued_at: now,
                        outcome: None,
                        finished_at: None,
                        status: None,
                        latency_ms: None,
                        attempts: 0,
                    };
                    let key = (run.id.as_u128(), endpoint.as_str());
                    if t.dispatches.get(key)?.is_none() {
                        t.dispatches
                            .insert(key, codec::encode(&record).as_slice())?;
                    }
                }
                Ok(())
            },
        )
        .await?;
        self.queue.notify();
        Ok(Progress::Done)
    }

    /// Waits for every dispatch to succeed or die, recording each outcome (with
    /// `delivery_confirmed` or `delivery_failed`) as it is seen; then checkpoints.
    async fn dispatch_complete(&self, run: &CycleRun) -> Result<Progress, CyclesError> {
        let id = run.id;
        let mut delay = self.fallback.first;
        let mut news = self.events.subscribe();
        loop {
            let records = self.read(move |t| dispatches(t, id)).await?;
            let pending: Vec<&DispatchRecord> =
                records.iter().filter(|d| d.outcome.is_none()).collect();
            let waiting_for: HashSet<Uuid> = pending.iter().map(|d| d.task_id).collect();
            if pending.is_empty() {
                let delivered = records
                    .iter()
                    .filter(|d| d.outcome.as_deref() == Some("delivered"))
                    .count();
                self.commit(
                    run,
                    Stage::DispatchComplete,
                    None,
                    Vec::new(),
                    json!({"delivered": delivered, "failed": records.len() - delivered}),
                    |_, _, _, _| Ok(()),
                )
                .await?;
                return Ok(Progress::Done);
            }
            let mut any_running = false;
            let mut progressed = false;
            for d in pending {
                match self.queue.get(d.task_id).await {
                    Ok(task) if task.status.is_final() => {
                        self.record_outcome(run, d.endpoint.clone(), Some(task))
                            .await?;
                        progressed = true;
                    }
                    Ok(task) => any_running |= task.status == Status::Running,
                    Err(QueueError::NotFound(_)) => {
                        self.record_outcome(run, d.endpoint.clone(), None).await?;
                        progressed = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if progressed {
                delay = self.fallback.first;
                continue;
            }
            if self.stop.is_cancelled() || (self.draining.load(Ordering::SeqCst) && !any_running) {
                return Ok(Progress::Stopped);
            }
            let wait = self.record_wait(id, waiting_for.iter().copied().collect());
            let wake = tokio::select! {
                wake = self.wait_for_news(&mut news, &waiting_for, delay) => wake,
                () = wait.cancelled() => Wake::Stop,
            };
            if let Wake::Stop = wake {
                return Ok(Progress::Stopped);
            }
            delay = self.next_delay(delay, &wake);
        }
    }

    /// Records how one dispatch ended (once), with its execution record and telemetry event.
    async fn record_outcome(
        &self,
        run: &CycleRun,
        endpoint: String,
        task: Option<Task>,
    ) -> Result<(), CyclesError> {
        let now = self.clock.now_ms();
        let run = run.clone();
        self.write(move |t, _| -> Result<(), CyclesError> {
            let key = (run.id.as_u128(), endpoint.as_str());
            let Some(mut record) = t
                .dispatches
                .get(key)?
                .map(|v| {
                    codec::decode::<DispatchRecord>(
                        t.dispatches.name(),
                        format!("{}/{endpoint}", run.id),
                        v.value(),
                    )
                })
                .transpose()?
            else {
                return Ok(());
            };
            if record.outcome.is_some() {
                return Ok(());
            }
            let (outcome, error) = match &task {
                Some(t) if t.status == Status::Succeeded => ("delivered", None),
                Some(t) => (
                    if t.status == Status::Dead {
                        "dead"
                    } else {
                        "cancelled"
                    },
                    t.attempts.last().and_then(|a| {
                        a.error_class.clone().map(|c| {
                            format!("{c}: {}", a.error_message.clone().unwrap_or_default())
                        })
                    }),
                ),
                None => ("missing", Some("the dispatch task no longer exists".into())),
            };
            let receipt = task
                .as_ref()
                .and_then(|t| t.attempts.iter().rev().find_map(|a| a.receipt.clone()));
            record.outcome = Some(outcome.to_string());
            record.finished_at = Some(now);
            record.status = receipt.as_ref().and_then(|r| r.status);
            record.latency_ms = receipt.as_ref().map(|r| r.latency_ms);
            record.attempts = task.as_ref().map_or(0, Task::counted_attempts);
            t.dispatches
                .insert(key, codec::encode(&record).as_slice())?;
            let detail = json!({
                "target": record.target, "endpoint": record.endpoint,
                "task_id": record.task_id, "webhook_id": record.webhook_id,
                "status": record.status, "latency_ms": record.latency_ms,
                "attempts": record.attempts, "error": error,
                "run_profile_id": run.run_profile_id,
            });
            append_record(
                t,
                now,
                Some(run.id),
                run.run_profile_id.as_deref(),
                run.profile_id.as_deref(),
                &run.namespace,
                "dispatch",
                "delivery",
                outcome,
                detail.clone(),
            )?;
            emit(
                t,
                now,
                if outcome == "delivered" {
                    "delivery_confirmed"
                } else {
                    "delivery_failed"
                },
                run.profile_id.as_deref(),
                Some(run.id),
                &run.namespace,
                detail,
            )
        })
        .await
    }

    /// Ends the cycle: its value ledger entry, status and `cycle_finished` event.
    async fn finish(&self, run: &CycleRun) -> Result<Progress, CyclesError> {
        let ctx = Self::context(run)?;
        let tags = ctx
            .run_profile
            .as_ref()
            .map(|r| Value::Object(r.value_tags.clone()))
            .unwrap_or_else(|| json!({}));
        self.commit(
            run,
            Stage::CycleFinished,
            None,
            Vec::new(),
            json!({}),
            move |t, _, run, now| {
                let mut done = run.clone();
                done.status = CycleStatus::Finished;
                done.finished_at = Some(now);
                save_run(t, &done)?;
                t.active.remove(run.id.as_u128())?;
                append_ledger(
                    t,
                    &LedgerEntry {
                        id: Uuid::now_v7(),
                        at: now,
                        cycle_id: run.id,
                        run_profile_id: run.run_profile_id.clone(),
                        profile_id: run.profile_id.clone(),
                        namespace: run.namespace.clone(),
                        tags: tags.to_string(),
                    },
                )?;
                let (mut delivered, mut failed) = (0, 0);
                for d in dispatches(t, run.id)? {
                    if d.outcome.as_deref() == Some("delivered") {
                        delivered += 1;
                    } else {
                        failed += 1;
                    }
                }
                emit(
                    t,
                    now,
                    "cycle_finished",
                    run.profile_id.as_deref(),
                    Some(run.id),
                    &run.namespace,
                    json!({"run_profile_id": run.run_profile_id,
                           "duration_ms": now - run.created_at,
                           "delivered": delivered, "failed": failed}),
                )
            },
        )
        .await?;
        Ok(Progress::Done)
    }
}
