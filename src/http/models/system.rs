//! Wire models of liveness, readiness, system facts, background workers and metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Timestamp, time_opt};
use crate::metrics::{Summary, Unit};
use crate::supervisor::{WorkerState, WorkerStatus};

/// `GET /health`: the process answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok`.
    pub status: HealthStatus,
}

/// Liveness status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The process answers requests.
    Ok,
}

/// `GET /ready`: whether keel can serve, and if not, why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "not_ready", "reasons": ["shutting down"]}))]
pub struct Readiness {
    /// `ready` (200) or `not_ready` (503).
    pub status: ReadyStatus,
    /// Why keel is not ready (only when it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

/// Readiness status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Ready to serve.
    Ready,
    /// Not ready (see `reasons`).
    NotReady,
}

/// `GET /api/v1/system`: facts about this keel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SystemInfo {
    /// Always `keel`.
    #[schema(example = "keel")]
    pub name: String,
    /// keel's version.
    #[schema(example = "0.1.0")]
    pub version: String,
    /// When this process started.
    pub started_at: Timestamp,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// The data directory.
    pub data_dir: String,
    /// The database file.
    pub database_file: String,
    /// Size of the database file.
    pub database_file_bytes: u64,
    /// Schema version of the database.
    pub schema_version: u64,
}

/// `GET /api/v1/cron/status`: every background worker.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CronStatus {
    /// In start order.
    pub workers: Vec<Worker>,
}

/// What a background worker is doing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStateWire {
    /// Waiting for its next run.
    Idle,
    /// In a step.
    Running,
    /// Waiting longer than usual after errors.
    BackingOff,
    /// Finished (shutdown).
    Stopped,
}

impl From<WorkerState> for WorkerStateWire {
    fn from(s: WorkerState) -> Self {
        match s {
            WorkerState::Idle => WorkerStateWire::Idle,
            WorkerState::Running => WorkerStateWire::Running,
            WorkerState::BackingOff => WorkerStateWire::BackingOff,
            WorkerState::Stopped => WorkerStateWire::Stopped,
        }
    }
}

/// One background worker's status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    /// Its name.
    #[schema(example = "dispatch")]
    pub name: String,
    /// How often it runs, e.g. `every 1s`.
    pub schedule: String,
    /// What it is doing.
    pub state: WorkerStateWire,
    /// Steps run.
    pub runs: u64,
    /// Steps that failed.
    pub errors: u64,
    /// Failures in a row.
    pub consecutive_errors: u32,
    /// When it last ran.
    pub last_run_at: Option<Timestamp>,
    /// How long its last step took.
    pub last_duration_ms: Option<u64>,
    /// Its last error.
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<Timestamp>,
    /// When it runs next.
    pub next_run_at: Option<Timestamp>,
}

impl From<&WorkerStatus> for Worker {
    fn from(s: &WorkerStatus) -> Self {
        Worker {
            name: s.name.to_string(),
            schedule: s.schedule.clone(),
            state: s.state.into(),
            runs: s.runs,
            errors: s.errors,
            consecutive_errors: s.consecutive_errors,
            last_run_at: time_opt(s.last_run_at),
            last_duration_ms: s.last_duration_ms,
            last_error: s.last_error.clone(),
            last_error_at: time_opt(s.last_error_at),
            next_run_at: time_opt(s.next_run_at),
        }
    }
}

/// The unit of a histogram's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricUnit {
    /// Durations in microseconds.
    Microseconds,
    /// Plain numbers.
    Count,
}

impl From<Unit> for MetricUnit {
    fn from(u: Unit) -> Self {
        match u {
            Unit::Micros => MetricUnit::Microseconds,
            Unit::Count => MetricUnit::Count,
        }
    }
}

/// Statistics of one histogram over a window, in its unit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricSummary {
    /// Unit of every value below.
    pub unit: MetricUnit,
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Mean value.
    pub mean: f64,
    /// 50th percentile.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

impl From<Summary> for MetricSummary {
    fn from(s: Summary) -> Self {
        MetricSummary {
            unit: s.unit.into(),
            count: s.count,
            min: s.min,
            max: s.max,
            mean: s.mean,
            p50: s.p50,
            p90: s.p90,
            p95: s.p95,
            p99: s.p99,
            p999: s.p999,
        }
    }
}

/// `GET /api/v1/metrics/history`: without `series`, the series that have history; with it,
/// their stored intervals.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MetricsHistory {
    /// The series with stored history.
    Series(SeriesList),
    /// One series' intervals.
    History(SeriesHistory),
}

/// The series with stored history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"series": ["keel_http_request_duration_seconds{method=\"GET\",route=\"/api/v1/tasks\"}"]}))]
pub struct SeriesList {
    /// Series keys (name and labels).
    pub series: Vec<String>,
}

/// One series' stored intervals and their merged statistics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeriesHistory {
    /// The series key asked for.
    pub series: String,
    /// One point per stored interval, oldest first.
    pub points: Vec<HistoryPoint>,
    /// All points merged (null when there are none).
    pub overall: Option<MetricSummary>,
}

/// One stored interval of a series.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    /// Interval start (epoch ms).
    pub start_ms: i64,
    /// Interval end (epoch ms).
    pub end_ms: i64,
    /// Unit of the values.
    pub unit: MetricUnit,
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Mean value.
    pub mean: f64,
    /// 50th percentile.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

impl From<&crate::metrics::history::StoredInterval> for HistoryPoint {
    fn from(i: &crate::metrics::history::StoredInterval) -> Self {
        let s = &i.snapshot;
        HistoryPoint {
            start_ms: i.start_ms,
            end_ms: i.end_ms,
            unit: s.unit.into(),
            count: s.count,
            min: s.min,
            max: s.max,
            mean: s.mean,
            p50: s.p50,
            p90: s.p90,
            p95: s.p95,
            p99: s.p99,
            p999: s.p999,
        }
    }
}

/// `GET /metrics/json`: every series of the registry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricsJson {
    /// Counters.
    pub counters: Vec<CounterSeries>,
    /// Gauges.
    pub gauges: Vec<GaugeSeries>,
    /// Histograms (since start).
    pub histograms: Vec<HistogramSeries>,
}

/// One counter series.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CounterSeries {
    /// Family name.
    pub name: String,
    /// What it counts.
    pub help: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The count.
    pub value: u64,
}

/// One gauge series.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GaugeSeries {
    /// Family name.
    pub name: String,
    /// What it measures.
    pub help: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The value (null when it is not a finite number).
    pub value: Option<f64>,
}

/// One histogram series; statistics are null before its first value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistogramSeries {
    /// Family name.
    pub name: String,
    /// What it measures.
    pub help: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Unit of the values.
    pub unit: MetricUnit,
    /// Values recorded.
    pub count: u64,
    /// Sum of the values.
    pub sum: u64,
    /// Smallest value.
    pub min: Option<u64>,
    /// Largest value.
    pub max: Option<u64>,
    /// Mean value.
    pub mean: Option<f64>,
    /// 50th percentile.
    pub p50: Option<u64>,
    /// 90th percentile.
    pub p90: Option<u64>,
    /// 95th percentile.
    pub p95: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
    /// 99.9th percentile.
    pub p999: Option<u64>,
}
