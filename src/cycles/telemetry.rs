//! The telemetry bus: normalized events (`execution_started`, `stage_completed`,
//! `delivery_confirmed`, `delivery_failed`, `governance_changed`, …) written in the same
//! transaction as what they report, keyed by (time, id) so they replay in order; retention in
//! days, with an optional cold archive of gzip-compressed JSON-lines files written (durably)
//! before any event is deleted.

use std::io::Write;
use std::path::{Path, PathBuf};

use redb::{ReadableTable, TableHandle};
use serde_json::{Value, json};
use uuid::Uuid;

use super::model::TelemetryEvent;
use super::tables::CycleTables;
use super::{Cycles, CyclesError};
use crate::clock::{Millis, rfc3339};
use crate::store::codec;

/// Most events deleted (and archived into one file) per transaction.
const PRUNE_BATCH: usize = 5000;

/// Directory of the cold archive inside the data dir.
pub const ARCHIVE_DIR: &str = "telemetry-archive";

/// Position in the bus: (time ms, event id).
pub type Cursor = (i64, u128);

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct TelemetryFilter {
    /// From this time (inclusive); without it, the latest events.
    pub since: Option<Millis>,
    /// Only this type.
    pub event_type: Option<String>,
    /// Only this profile.
    pub profile_id: Option<String>,
    /// Only this run.
    pub run_id: Option<Uuid>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// At most (1..=1000).
    pub limit: usize,
}

impl TelemetryFilter {
    fn matches(&self, e: &TelemetryEvent) -> bool {
        self.event_type.as_ref().is_none_or(|t| e.event_type == *t)
            && self
                .profile_id
                .as_ref()
                .is_none_or(|p| e.profile_id.as_ref() == Some(p))
            && self.run_id.is_none_or(|r| e.run_id == Some(r))
            && self.namespace.as_ref().is_none_or(|n| e.namespace == *n)
    }
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneReport {
    /// Events deleted.
    pub pruned: usize,
    /// Archive files written.
    pub archived: Vec<PathBuf>,
}

/// Appends an event inside the caller's transaction.
fn append(t: &mut CycleTables<'_>, event: &TelemetryEvent) -> Result<(), CyclesError> {
    t.telemetry.insert(
        (event.at, event.id.as_u128()),
        codec::encode(event).as_slice(),
    )?;
    Ok(())
}

/// Puts an event on the telemetry bus, inside the caller's transaction.
pub(super) fn emit(
    t: &mut CycleTables<'_>,
    now: Millis,
    event_type: &str,
    profile_id: Option<&str>,
    run_id: Option<Uuid>,
    namespace: &str,
    metadata: Value,
) -> Result<(), CyclesError> {
    append(
        t,
        &TelemetryEvent {
            id: Uuid::now_v7(),
            at: now,
            event_type: event_type.to_string(),
            profile_id: profile_id.map(str::to_string),
            run_id,
            namespace: namespace.to_string(),
            metadata: metadata.to_string(),
        },
    )
}

/// One event as a JSON object (the API's and the archive's shape).
pub fn event_json(e: &TelemetryEvent) -> Value {
    json!({
        "id": e.id,
        "type": e.event_type,
        "time": rfc3339(e.at),
        "time_ms": e.at,
        "profile_id": e.profile_id,
        "run_id": e.run_id,
        "namespace": e.namespace,
        "metadata": serde_json::from_str::<Value>(&e.metadata).unwrap_or(Value::Null),
    })
}

fn decode(
    table: &impl TableHandle,
    key: Cursor,
    bytes: &[u8],
) -> Result<TelemetryEvent, CyclesError> {
    Ok(codec::decode(
        table.name(),
        format!("{}/{}", key.0, Uuid::from_u128(key.1)),
        bytes,
    )?)
}

/// Writes `lines` as a gzip file at `path` (through a temporary file, synced, renamed, and the
/// directory synced), so a crash leaves either the whole file or none.
fn write_archive(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let _ = std::fs::remove_file(&tmp);
        let file = crate::fsutil::create_private_file(&tmp)?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        for line in lines {
            gz.write_all(line.as_bytes())?;
            gz.write_all(b"\n")?;
        }
        gz.finish()?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Cycles {
    /// Events matching `filter`, oldest first: from `since`, or the latest ones without it.
    pub async fn telemetry(
        &self,
        filter: TelemetryFilter,
    ) -> Result<Vec<TelemetryEvent>, CyclesError> {
        self.read(move |t| -> Result<Vec<TelemetryEvent>, CyclesError> {
            let limit = filter.limit.clamp(1, 1000);
            let table = &t.telemetry;
            let mut out = Vec::new();
            match filter.since {
                Some(since) => {
                    for row in table.range((since, 0)..)? {
                        let (k, v) = row?;
                        let e = decode(table, k.value(), v.value())?;
                        if filter.matches(&e) {
                            out.push(e);
                            if out.len() == limit {
                                break;
                            }
                        }
                    }
                }
                None => {
                    for row in table.iter()?.rev() {
                        let (k, v) = row?;
                        let e = decode(table, k.value(), v.value())?;
                        if filter.matches(&e) {
                            out.push(e);
                            if out.len() == limit {
                                break;
                            }
                        }
                    }
                    out.reverse();
                }
            }
            Ok(out)
        })
        .await
    }

    /// The next `limit` events after `after` (or from `from` when `after` is none), in order,
    /// for replay.
    pub async fn telemetry_page(
        &self,
        from: Millis,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<(Cursor, TelemetryEvent)>, CyclesError> {
        self.read(move |t| -> Result<_, CyclesError> {
            let table = &t.telemetry;
            let mut out = Vec::new();
            let rows = match after {
                Some(cursor) => table.range(cursor..)?,
                None => table.range((from, 0)..)?,
            };
            for row in rows {
                let (k, v) = row?;
                let key = k.value();
                if Some(key) == after {
                    continue;
                }
                out.push((key, decode(table, key, v.value())?));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes events older than `telemetry.retention_days`; with `telemetry.cold_archive`,
    /// each batch is first written durably to `<data_dir>/telemetry-archive/` as a
    /// gzip-compressed JSON-lines file.
    pub async fn prune_telemetry(&self) -> Result<PruneReport, CyclesError> {
        let cutoff = self.clock.now_ms() - self.config.telemetry.retention_days as i64 * 86_400_000;
        let archive = self
            .config
            .telemetry
            .cold_archive
            .then(|| self.config.data_dir.join(ARCHIVE_DIR));
        let mut report = PruneReport::default();
        loop {
            let batch: Vec<(Cursor, TelemetryEvent)> = self
                .read(move |t| -> Result<_, CyclesError> {
                    let table = &t.telemetry;
                    let mut out = Vec::new();
                    for row in table.range(..(cutoff, 0))?.take(PRUNE_BATCH) {
                        let (k, v) = row?;
                        out.push((k.value(), decode(table, k.value(), v.value())?));
                    }
                    Ok(out)
                })
                .await?;
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                break;
            };
            if let Some(dir) = &archive {
                let path = dir.join(format!(
                    "telemetry-{}-{}-{}.jsonl.gz",
                    first.0.0,
                    Uuid::from_u128(first.0.1).simple(),
                    last.0.0
                ));
                let lines: Vec<String> = batch
                    .iter()
                    .map(|(_, e)| event_json(e).to_string())
                    .collect();
                let write_path = path.clone();
                tokio::task::spawn_blocking(move || write_archive(&write_path, &lines))
                    .await
                    .map_err(|e| CyclesError::Io(format!("archive writer panicked: {e}")))?
                    .map_err(|e| {
                        CyclesError::Io(format!("cannot write {}: {e}", path.display()))
                    })?;
                report.archived.push(path);
            }
            let keys: Vec<Cursor> = batch.iter().map(|(k, _)| *k).collect();
            let n = keys.len();
            self.write(move |t, _| -> Result<(), CyclesError> {
                for key in &keys {
                    t.telemetry.remove(*key)?;
                }
                Ok(())
            })
            .await?;
            report.pruned += n;
            if n < PRUNE_BATCH {
                break;
            }
        }
        if report.pruned > 0 {
            tracing::info!(
                pruned = report.pruned,
                archived_files = report.archived.len(),
                "telemetry past its retention pruned"
            );
        }
        Ok(report)
    }
}
