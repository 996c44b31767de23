//! What cycles leave behind: runs, their append-only checkpoints (a stage is recorded once, in
//! order), dispatch records, execution records and the value ledger; reading them for the API,
//! and writing them inside a stage's transaction.

use redb::{ReadableTable, TableHandle};
use serde_json::Value;
use uuid::Uuid;

use super::model::{Checkpoint, CycleRun, DispatchRecord, ExecutionRecord, LedgerEntry, Stage};
use super::tables::{CycleTables, ReadableTables};
use super::telemetry::emit;
use super::{Cycles, CyclesError, conflict};
use crate::clock::Millis;
use crate::queue::{QueueError, Task};
use crate::store::codec;

/// A cycle with its last stage.
#[derive(Debug, Clone)]
pub struct CycleSummary {
    /// The run.
    pub run: CycleRun,
    /// The last checkpoint's stage.
    pub stage: Stage,
    /// When it was written.
    pub stage_at: Millis,
}

/// Everything about one cycle.
#[derive(Debug, Clone)]
pub struct CycleDetail {
    /// The run.
    pub run: CycleRun,
    /// Its checkpoints, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Its dispatches and their tasks (with the receipts of their attempts).
    pub dispatches: Vec<(DispatchRecord, Option<Task>)>,
    /// Its execution records.
    pub records: Vec<ExecutionRecord>,
    /// Its value ledger entries.
    pub ledger: Vec<LedgerEntry>,
}

/// Filter of execution records and ledger entries.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// One run.
    pub cycle_id: Option<Uuid>,
    /// One profile.
    pub profile_id: Option<String>,
    /// One run profile.
    pub run_profile_id: Option<String>,
    /// One namespace.
    pub namespace: Option<String>,
    /// From (inclusive).
    pub since: Option<Millis>,
    /// Until (exclusive).
    pub until: Option<Millis>,
    /// At most (1..=1000).
    pub limit: usize,
}

impl Cycles {
    /// The last `limit` cycles, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<CycleSummary>, CyclesError> {
        let limit = limit.clamp(1, 1000);
        self.read(move |t| -> Result<Vec<CycleSummary>, CyclesError> {
            let table = t.runs();
            let mut out = Vec::new();
            for row in table.iter()?.rev().take(limit) {
                let (k, v) = row?;
                let run: CycleRun =
                    codec::decode(table.name(), Uuid::from_u128(k.value()), v.value())?;
                let last = last_checkpoint(t, run.id)?;
                out.push(CycleSummary {
                    stage: last.as_ref().map_or(Stage::CycleStarted, |c| c.stage),
                    stage_at: last.as_ref().map_or(run.created_at, |c| c.at),
                    run,
                });
            }
            Ok(out)
        })
        .await
    }

    /// One cycle with its checkpoints, dispatches (and their tasks), records and ledger.
    pub async fn detail(&self, id: Uuid) -> Result<CycleDetail, CyclesError> {
        let (run, checkpoints, dispatches, records, ledger) = self
            .read(move |t| -> Result<_, CyclesError> {
                let run = load_run(t, id)?;
                let checkpoints = checkpoints(t, id)?;
                let dispatches = dispatches(t, id)?;
                let records = records_of_cycle(t, id)?;
                let ledger = ledger_entries(
                    t,
                    &RecordFilter {
                        cycle_id: Some(id),
                        limit: 1000,
                        since: Some(run.created_at),
                        ..RecordFilter::default()
                    },
                )?;
                Ok((run, checkpoints, dispatches, records, ledger))
            })
            .await?;
        let mut with_tasks = Vec::new();
        for d in dispatches {
            let task = match self.queue.get(d.task_id).await {
                Ok(t) => Some(t),
                Err(QueueError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            with_tasks.push((d, task));
        }
        Ok(CycleDetail {
            run,
            checkpoints,
            dispatches: with_tasks,
            records,
            ledger,
        })
    }

    /// Execution records, newest first.
    pub async fn execution_records(
        &self,
        filter: RecordFilter,
    ) -> Result<Vec<ExecutionRecord>, CyclesError> {
        self.read(move |t| -> Result<Vec<ExecutionRecord>, CyclesError> {
            let limit = filter.limit.clamp(1, 1000);
            let matches = |r: &ExecutionRecord| {
                filter
                    .profile_id
                    .as_ref()
                    .is_none_or(|p| r.profile_id.as_ref() == Some(p))
                    && filter
                        .run_profile_id
                        .as_ref()
                        .is_none_or(|p| r.run_profile_id.as_ref() == Some(p))
                    && filter.namespace.as_ref().is_none_or(|n| r.namespace == *n)
                    && filter.since.is_none_or(|s| r.at >= s)
                    && filter.until.is_none_or(|u| r.at < u)
            };
            let mut out = Vec::new();
            if let Some(cycle) = filter.cycle_id {
                let mut all = records_of_cycle(t, cycle)?;
                all.reverse();
                out.extend(all.into_iter().filter(|r| matches(r)).take(limit));
                return Ok(out);
            }
            let table = t.records();
            let from = filter.since.unwrap_or(i64::MIN);
            let to = filter.until.unwrap_or(i64::MAX);
            for row in table.range((from, 0)..(to, 0))?.rev() {
                let (k, v) = row?;
                let r: ExecutionRecord =
                    codec::decode(table.name(), format!("{:?}", k.value()), v.value())?;
                if matches(&r) {
                    out.push(r);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Value ledger entries, newest first.
    pub async fn ledger(&self, filter: RecordFilter) -> Result<Vec<LedgerEntry>, CyclesError> {
        self.read(move |t| ledger_entries(t, &filter)).await
    }
}

/// The run `id`, or `NotFound`.
pub(super) fn load_run(t: &impl ReadableTables, id: Uuid) -> Result<CycleRun, CyclesError> {
    find_run(t, id)?.ok_or_else(|| CyclesError::NotFound(format!("no cycle with id {id}")))
}

/// The run `id`, if there is one.
pub(super) fn find_run(t: &impl ReadableTables, id: Uuid) -> Result<Option<CycleRun>, CyclesError> {
    let table = t.runs();
    Ok(table
        .get(id.as_u128())?
        .map(|v| codec::decode::<CycleRun>(table.name(), id, v.value()))
        .transpose()?)
}

/// Stores `run` (a new one, or its new status).
pub(super) fn save_run(t: &mut CycleTables<'_>, run: &CycleRun) -> Result<(), CyclesError> {
    t.runs
        .insert(run.id.as_u128(), codec::encode(run).as_slice())?;
    Ok(())
}

/// The last checkpoint of cycle `id`.
pub(super) fn last_checkpoint(
    t: &impl ReadableTables,
    id: Uuid,
) -> Result<Option<Checkpoint>, CyclesError> {
    let table = t.checkpoints();
    let last = table
        .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
        .next_back();
    match last {
        Some(row) => {
            let (k, v) = row?;
            Ok(Some(codec::decode(
                table.name(),
                format!("{id}/{}", k.value().1),
                v.value(),
            )?))
        }
        None => Ok(None),
    }
}

/// Every checkpoint of cycle `id`, in order.
pub(super) fn checkpoints(
    t: &impl ReadableTables,
    id: Uuid,
) -> Result<Vec<Checkpoint>, CyclesError> {
    let table = t.checkpoints();
    let mut out = Vec::new();
    for row in table.range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))? {
        let (k, v) = row?;
        out.push(codec::decode(
            table.name(),
            format!("{id}/{}", k.value().1),
            v.value(),
        )?);
    }
    Ok(out)
}

/// The dispatch records of cycle `id`, by endpoint key.
pub(super) fn dispatches(
    t: &impl ReadableTables,
    id: Uuid,
) -> Result<Vec<DispatchRecord>, CyclesError> {
    let table = t.dispatches();
    let mut out = Vec::new();
    for row in table.range((id.as_u128(), "")..(id.as_u128() + 1, ""))? {
        let (k, v) = row?;
        out.push(codec::decode(
            table.name(),
            format!("{id}/{}", k.value().1),
            v.value(),
        )?);
    }
    Ok(out)
}

/// The execution records of cycle `id`, oldest first.
fn records_of_cycle(
    t: &impl ReadableTables,
    id: Uuid,
) -> Result<Vec<ExecutionRecord>, CyclesError> {
    let table = t.records();
    let mut out = Vec::new();
    for row in t
        .records_by_cycle()
        .range((id.as_u128(), i64::MIN, 0)..=(id.as_u128(), i64::MAX, u128::MAX))?
    {
        let (_, at, rid) = row?.0.value();
        if let Some(v) = table.get((at, rid))? {
            out.push(codec::decode(
                table.name(),
                Uuid::from_u128(rid),
                v.value(),
            )?);
        }
    }
    Ok(out)
}

/// Ledger entries matching `filter`, newest first.
fn ledger_entries(
    t: &impl ReadableTables,
    filter: &RecordFilter,
) -> Result<Vec<LedgerEntry>, CyclesError> {
    let limit = filter.limit.clamp(1, 1000);
    let table = t.ledger();
    let from = filter.since.unwrap_or(i64::MIN);
    let to = filter.until.unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for row in table.range((from, 0)..(to, 0))?.rev() {
        let (k, v) = row?;
        let e: LedgerEntry = codec::decode(table.name(), format!("{:?}", k.value()), v.value())?;
        let matches = filter.cycle_id.is_none_or(|c| e.cycle_id == c)
            && filter
                .profile_id
                .as_ref()
                .is_none_or(|p| e.profile_id.as_ref() == Some(p))
            && filter
                .run_profile_id
                .as_ref()
                .is_none_or(|p| e.run_profile_id.as_ref() == Some(p))
            && filter.namespace.as_ref().is_none_or(|n| e.namespace == *n);
        if matches {
            out.push(e);
            if out.len() == limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Appends the checkpoint of `stage` to `run`; the last checkpoint must be the stage before
/// it (for `CycleFailed`: any stage that does not end the cycle), so a stage is never recorded
/// twice. Also writes the stage's execution record and `stage_completed` event.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_checkpoint(
    t: &mut CycleTables<'_>,
    run: &CycleRun,
    stage: Stage,
    now: Millis,
    output: Option<String>,
    webhook_ids: Vec<String>,
    detail: Value,
) -> Result<Checkpoint, CyclesError> {
    let last = last_checkpoint(t, run.id)?;
    let expected_ok = match (&last, stage) {
        (None, Stage::CycleStarted) => true,
        (Some(l), Stage::CycleFailed) => !l.stage.is_terminal(),
        (Some(l), s) => l.stage.next() == Some(s),
        (None, _) => false,
    };
    if !expected_ok {
        return Err(conflict(
            "stage_done",
            format!(
                "cycle {}: cannot record {} after {}",
                run.id,
                stage.as_str(),
                last.map_or("nothing", |l| l.stage.as_str())
            ),
        ));
    }
    let checkpoint = Checkpoint {
        cycle_id: run.id,
        seq: last.map_or(0, |l| l.seq + 1),
        stage,
        at: now,
        output,
        webhook_ids,
        detail: detail.to_string(),
    };
    t.checkpoints.insert(
        (run.id.as_u128(), checkpoint.seq),
        codec::encode(&checkpoint).as_slice(),
    )?;
    let kind = match stage {
        Stage::CycleStarted | Stage::CycleFinished | Stage::CycleFailed => "cycle",
        Stage::Initiation => "initiation",
        Stage::Tier1 | Stage::Tier2 | Stage::Tier3 => "transformation",
        Stage::Normalization => "normalization",
        Stage::DispatchEnqueued | Stage::DispatchComplete => "dispatch",
    };
    let outcome = if stage == Stage::CycleFailed {
        "failed"
    } else {
        "completed"
    };
    append_record(
        t,
        now,
        Some(run.id),
        run.run_profile_id.as_deref(),
        run.profile_id.as_deref(),
        &run.namespace,
        kind,
        stage.as_str(),
        outcome,
        detail.clone(),
    )?;
    emit(
        t,
        now,
        "stage_completed",
        run.profile_id.as_deref(),
        Some(run.id),
        &run.namespace,
        serde_json::json!({"stage": stage.as_str(), "seq": checkpoint.seq,
               "run_profile_id": run.run_profile_id}),
    )?;
    Ok(checkpoint)
}

/// Appends an execution record (and its by-cycle index entry).
#[allow(clippy::too_many_arguments)]
pub(super) fn append_record(
    t: &mut CycleTables<'_>,
    now: Millis,
    cycle_id: Option<Uuid>,
    run_profile_id: Option<&str>,
    profile_id: Option<&str>,
    namespace: &str,
    kind: &str,
    stage: &str,
    outcome: &str,
    detail: Value,
) -> Result<(), CyclesError> {
    let record = ExecutionRecord {
        id: Uuid::now_v7(),
        at: now,
        cycle_id,
        run_profile_id: run_profile_id.map(str::to_string),
        profile_id: profile_id.map(str::to_string),
        namespace: namespace.to_string(),
        kind: kind.to_string(),
        stage: stage.to_string(),
        outcome: outcome.to_string(),
        detail: detail.to_string(),
    };
    let key = (now, record.id.as_u128());
    t.records.insert(key, codec::encode(&record).as_slice())?;
    if let Some(cycle) = cycle_id {
        t.records_by_cycle
            .insert((cycle.as_u128(), key.0, key.1), ())?;
    }
    Ok(())
}

/// Appends a value ledger entry.
pub(super) fn append_ledger(
    t: &mut CycleTables<'_>,
    entry: &LedgerEntry,
) -> Result<(), CyclesError> {
    t.ledger.insert(
        (entry.at, entry.id.as_u128()),
        codec::encode(entry).as_slice(),
    )?;
    Ok(())
}
