//! In-memory metrics core: counters, gauges and HDR histogram series, rendered as Prometheus text
//! or JSON, with interval snapshots (V2-encoded histograms) that can be stored and merged later.
//!
//! Hot-path rules: once a caller holds a [`Counter`], [`Gauge`] or [`Histogram`] handle, recording
//! never touches the registry lock. A counter or gauge is one atomic; a histogram takes its own
//! series mutex for the duration of one record. [`Metrics::observe_http`] caches its handles behind
//! a read lock.
//!
//! Histograms are exposed to Prometheus as summaries (`quantile="0.5"`, `0.95`, `0.99`, `_sum`,
//! `_count`). A series in [`Unit::Micros`] records microseconds and is exposed in seconds; a series
//! in [`Unit::Count`] is exposed as recorded.

pub mod history;
mod snapshot;
pub mod tables;

use snapshot::new_hdr;
pub use snapshot::{
    DecodeError, IntervalSnapshot, Summary, merge_snapshots, merge_snapshots_by_series,
};

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

type Hdr = hdrhistogram::Histogram<u64>;

/// Significant decimal digits kept by every histogram.
const SIGFIG: u8 = 3;
/// Largest value a [`Unit::Micros`] series keeps: one hour in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;
/// Largest value a [`Unit::Count`] series keeps.
const MAX_COUNT: u64 = u32::MAX as u64;
/// Quantiles exposed on `/metrics` for each histogram series.
const PROM_QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")];
/// Quantiles reported in JSON, snapshots and summaries: p50, p90, p95, p99, p999.
const SUMMARY_QUANTILES: [f64; 5] = [0.5, 0.9, 0.95, 0.99, 0.999];
/// Distinct (route, method) pairs `observe_http` tracks before folding new ones into
/// [`HTTP_OTHER_ROUTE`]: each pair is a histogram series, so this bounds memory when a caller
/// passes raw paths instead of route templates.
const MAX_HTTP_PAIRS: usize = 256;
/// Route label [`Metrics::observe_http`] uses once 256 distinct (route, method) pairs are tracked.
pub const HTTP_OTHER_ROUTE: &str = "other";
/// Name of the HTTP request counter fed by [`Metrics::observe_http`].
pub const HTTP_REQUESTS_TOTAL: &str = "keel_http_requests_total";
/// Name of the HTTP request duration histogram fed by [`Metrics::observe_http`].
pub const HTTP_REQUEST_DURATION: &str = "keel_http_request_duration_seconds";

/// What a histogram series records. Stored in snapshots with postcard: never reorder variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    /// Durations in microseconds, clamped to 1 µs ..= 1 hour; exposed in seconds on `/metrics`.
    #[serde(rename = "microseconds")]
    Micros,
    /// Plain numbers (batch sizes, bytes, ...), clamped to 0 ..= `u32::MAX`; exposed as recorded.
    #[serde(rename = "count")]
    Count,
}

impl Unit {
    /// The unit's name as used in JSON output: `"microseconds"` or `"count"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Micros => "microseconds",
            Unit::Count => "count",
        }
    }

    fn clamp(self, value: u64) -> u64 {
        match self {
            Unit::Micros => value.clamp(1, MAX_MICROS),
            Unit::Count => value.min(MAX_COUNT),
        }
    }

    /// Divisor from the recorded unit to the Prometheus unit (seconds for durations). A division
    /// (not a multiplication by 1e-6) keeps `7000 µs` printing as `0.007`.
    fn prometheus_divisor(self) -> f64 {
        match self {
            Unit::Micros => 1e6,
            Unit::Count => 1.0,
        }
    }
}

/// A monotonically increasing counter. Cheap to clone; clones share the value.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (an `f64` stored as bits). Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (may be negative).
    pub fn add(&self, delta: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Histogram state of one series, behind the series mutex.
struct HistState {
    /// Every value since start (for `/metrics` and `/metrics/json`).
    cumulative: Hdr,
    /// Values since the last interval snapshot.
    interval: Hdr,
    /// Exact sum of the (clamped) values since start, in the series' unit.
    sum: u64,
}

struct HistSeries {
    unit: Unit,
    state: Mutex<HistState>,
}

impl HistSeries {
    fn new(unit: Unit) -> HistSeries {
        HistSeries {
            unit,
            state: Mutex::new(HistState {
                cumulative: new_hdr(),
                interval: new_hdr(),
                sum: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HistState> {
        // A panic while recording cannot leave the counts unusable: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records into an auto-resizing histogram (`saturating_record` would clamp instead of growing).
/// Values are clamped to the unit's range first, so growth is bounded and cannot fail on 64-bit.
fn record_into(h: &mut Hdr, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

/// A handle to one histogram series. Cheap to clone; clones record into the same series.
#[derive(Clone)]
pub struct Histogram(Arc<HistSeries>);

impl Histogram {
    /// Records one value in the series' unit, clamped into its range.
    pub fn record(&self, value: u64) {
        let value = self.0.unit.clamp(value);
        let mut st = self.0.lock();
        record_into(&mut st.cumulative, value);
        record_into(&mut st.interval, value);
        st.sum = st.sum.saturating_add(value);
    }

    /// Records a duration as whole microseconds (intended for [`Unit::Micros`] series).
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The series' unit.
    pub fn unit(&self) -> Unit {
        self.0.unit
    }

    /// Statistics of every value recorded since start, `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Summary> {
        let st = self.0.lock();
        (!st.cumulative.is_empty()).then(|| Summary::from_hdr(self.0.unit, &st.cumulative))
    }

    /// Number of values recorded since start.
    pub fn count(&self) -> u64 {
        self.0.lock().cumulative.len()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("unit", &self.0.unit)
            .field("count", &self.count())
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Unit),
}

#[derive(Clone)]
enum SeriesRef {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<HistSeries>),
}

impl SeriesRef {
    fn new(kind: Kind) -> SeriesRef {
        match kind {
            Kind::Counter => SeriesRef::Counter(Arc::new(AtomicU64::new(0))),
            Kind::Gauge => SeriesRef::Gauge(Arc::new(AtomicU64::new(0f64.to_bits()))),
            Kind::Histogram(unit) => SeriesRef::Histogram(Arc::new(HistSeries::new(unit))),
        }
    }
}

/// Label set of one series, sorted by label name.
type LabelSet = Vec<(&'static str, String)>;

#[derive(Clone)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelSet, SeriesRef>,
}

/// Cached handles for one (route, method) pair of [`Metrics::observe_http`].
struct HttpEntry {
    duration: Histogram,
    by_status: Vec<(u16, Counter)>,
}

/// Handle cache of [`Metrics::observe_http`].
#[derive(Default)]
struct HttpCache {
    /// route → method → handles.
    routes: HashMap<String, HashMap<&'static str, HttpEntry>>,
    /// Number of (route, method) pairs in `routes`.
    pairs: usize,
}

impl HttpCache {
    /// The entry `(route, method)` is recorded under, if it exists: its own, or the
    /// [`HTTP_OTHER_ROUTE`] one once the cache is full.
    fn lookup(&self, route: &str, method: &str) -> Option<&HttpEntry> {
        let own = self.routes.get(route).and_then(|m| m.get(method));
        if own.is_some() || self.pairs < MAX_HTTP_PAIRS {
            return own;
        }
        self.routes
            .get(HTTP_OTHER_ROUTE)
            .and_then(|m| m.get(method))
    }
}

/// The metrics registry. `Send + Sync`; share it in an `Arc`.
pub struct Metrics {
    families: RwLock<BTreeMap<&'static str, Family>>,
    http: RwLock<HttpCache>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Metrics")
            .field("families", &families.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A new registry exposing `keel_build_info{version="..."} 1` and
    /// `keel_process_start_time_seconds` (the wall-clock time of this call).
    pub fn new(version: &str) -> Metrics {
        let m = Metrics {
            families: RwLock::new(BTreeMap::new()),
            http: RwLock::new(HttpCache::default()),
        };
        m.gauge(
            "keel_build_info",
            "Build information; the value is always 1.",
            &[("version", version)],
        )
        .set(1.0);
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        m.gauge(
            "keel_process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            &[],
        )
        .set(start);
        m
    }

    /// The counter series `name{labels}`, created on first call (same series for the same name
    /// and label set, in any label order). A name already used by another kind, or an invalid
    /// name or label, gives a working handle that is not exposed, and logs an error.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        match self.register(name, help, Kind::Counter, labels) {
            Some(SeriesRef::Counter(c)) => Counter(c),
            _ => Counter(Arc::new(AtomicU64::new(0))),
        }
    }

    /// The gauge series `name{labels}`; same rules as [`Metrics::counter`].
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        match self.register(name, help, Kind::Gauge, labels) {
            Some(SeriesRef::Gauge(g)) => Gauge(g),
            _ => Gauge(Arc::new(AtomicU64::new(0f64.to_bits()))),
        }
    }

    /// The histogram series `name{labels}` recording values in `unit`; same rules as
    /// [`Metrics::counter`], and the same name with a different unit counts as another kind.
    /// Name a [`Unit::Micros`] family `..._seconds`: it is exposed in seconds.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        unit: Unit,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        match self.register(name, help, Kind::Histogram(unit), labels) {
            Some(SeriesRef::Histogram(h)) => Histogram(h),
            _ => Histogram(Arc::new(HistSeries::new(unit))),
        }
    }

    /// Counts one HTTP request in `keel_http_requests_total{method,route,status}` and records its
    /// duration in `keel_http_request_duration_seconds{method,route}`.
    ///
    /// `route` must be the matched route template (`/api/v1/tasks/{id}`), not the raw path: once
    /// 256 distinct (route, method) pairs are tracked, new ones are counted under the route
    /// [`HTTP_OTHER_ROUTE`]. Methods other than the nine standard ones are counted as `OTHER`.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = normalize_method(method);
        {
            let cache = self.http.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = cache.lookup(route, method)
                && let Some((_, counter)) = entry.by_status.iter().find(|(s, _)| *s == status)
            {
                counter.inc();
                entry.duration.record_duration(elapsed);
                return;
            }
        }
        let mut cache = self.http.write().unwrap_or_else(PoisonError::into_inner);
        let known = cache
            .routes
            .get(route)
            .is_some_and(|m| m.contains_key(method));
        let route = if known || cache.pairs < MAX_HTTP_PAIRS {
            route
        } else {
            HTTP_OTHER_ROUTE
        };
        let cache = &mut *cache;
        let methods = cache.routes.entry(route.to_owned()).or_default();
        let entry = methods.entry(method).or_insert_with(|| {
            cache.pairs += 1;
            HttpEntry {
                duration: self.histogram(
                    HTTP_REQUEST_DURATION,
                    "HTTP request duration in seconds, by method and route.",
                    Unit::Micros,
                    &[("method", method), ("route", route)],
                ),
                by_status: Vec::new(),
            }
        });
        let counter = match entry.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.clone(),
            None => {
                let c = self.counter(
                    HTTP_REQUESTS_TOTAL,
                    "HTTP requests answered, by method, route and status.",
                    &[
                        ("method", method),
                        ("route", route),
                        ("status", &status.to_string()),
                    ],
                );
                entry.by_status.push((status, c.clone()));
                c
            }
        };
        counter.inc();
        entry.duration.record_duration(elapsed);
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
    ) -> Option<SeriesRef> {
        let key = match label_set(name, kind, labels) {
            Ok(key) => key,
            Err(problem) => {
                tracing::error!(
                    metric = name,
                    problem,
                    "metrics: invalid registration, series not exposed"
                );
                return None;
            }
        };
        let conflict = |existing: Kind| {
            tracing::error!(
                metric = name,
                existing = ?existing,
                requested = ?kind,
                "metrics: name already registered as another kind, series not exposed"
            );
        };
        {
            let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(family) = families.get(name) {
                if family.kind != kind {
                    conflict(family.kind);
                    return None;
                }
                if let Some(series) = family.series.get(&key) {
                    return Some(series.clone());
                }
            }
        }
        let mut families = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            conflict(family.kind);
            return None;
        }
        Some(
            family
                .series
                .entry(key)
                .or_insert_with(|| SeriesRef::new(kind))
                .clone(),
        )
    }

    /// Copies the registry (names, help, kinds and series handles) under its read lock, so values
    /// are read without holding it.
    fn collect(&self) -> Vec<(&'static str, Family)> {
        let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
        families
            .iter()
            .map(|(name, f)| (*name, f.clone()))
            .collect()
    }

    /// Renders every series in the Prometheus text exposition format 0.0.4, families sorted by
    /// name and series by labels. Histograms appear as summaries.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (name, Family { help, kind, series }) in self.collect() {
            let type_name = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "summary",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {type_name}");
            for (labels, s) in series {
                let pairs = || labels.iter().map(|(k, v)| (*k, v.as_str()));
                match s {
                    SeriesRef::Counter(c) => {
                        out.push_str(name);
                        write_labels(&mut out, pairs(), None);
                        let _ = writeln!(out, " {}", c.load(Ordering::Relaxed));
                    }
                    SeriesRef::Gauge(g) => {
                        out.push_str(name);
                        write_labels(&mut out, pairs(), None);
                        let _ = writeln!(
                            out,
                            " {}",
                            fmt_f64(f64::from_bits(g.load(Ordering::Relaxed)))
                        );
                    }
                    SeriesRef::Histogram(h) => {
                        let divisor = h.unit.prometheus_divisor();
                        let (quantiles, count, sum) = {
                            let st = h.lock();
                            let mut q = [0u64; PROM_QUANTILES.len()];
                            for (slot, v) in q.iter_mut().zip(
                                st.cumulative
                                    .value_at_quantiles(PROM_QUANTILES.map(|(q, _)| q)),
                            ) {
                                *slot = v;
                            }
                            (q, st.cumulative.len(), st.sum)
                        };
                        for ((_, qname), v) in PROM_QUANTILES.iter().zip(quantiles) {
                            out.push_str(name);
                            write_labels(&mut out, pairs(), Some(("quantile", qname)));
                            let value = if count == 0 {
                                f64::NAN
                            } else {
                                v as f64 / divisor
                            };
                            let _ = writeln!(out, " {}", fmt_f64(value));
                        }
                        let _ = write!(out, "{name}_sum");
                        write_labels(&mut out, pairs(), None);
                        let _ = writeln!(out, " {}", fmt_f64(sum as f64 / divisor));
                        let _ = write!(out, "{name}_count");
                        write_labels(&mut out, pairs(), None);
                        let _ = writeln!(out, " {count}");
                    }
                }
            }
        }
        out
    }

    /// The same data as JSON for `GET /metrics/json`:
    /// `{"counters": [{name, help, labels, value}], "gauges": [...], "histograms": [{name, help,
    /// labels, unit, count, sum, min, max, mean, p50, p90, p95, p99, p999}]}`. Histogram values
    /// are in the series' unit (`"microseconds"` or `"count"`); statistics are `null` while a
    /// series is empty.
    pub fn to_json(&self) -> Value {
        let mut counters = Vec::new();
        let mut gauges = Vec::new();
        let mut histograms = Vec::new();
        for (name, Family { help, series, .. }) in self.collect() {
            for (labels, s) in series {
                let labels: Map<String, Value> = labels
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::String(v)))
                    .collect();
                match s {
                    SeriesRef::Counter(c) => counters.push(json!({
                        "name": name, "help": help, "labels": labels,
                        "value": c.load(Ordering::Relaxed),
                    })),
                    SeriesRef::Gauge(g) => gauges.push(json!({
                        "name": name, "help": help, "labels": labels,
                        "value": f64::from_bits(g.load(Ordering::Relaxed)),
                    })),
                    SeriesRef::Histogram(h) => {
                        let (summary, sum) = {
                            let st = h.lock();
                            let summary = (!st.cumulative.is_empty())
                                .then(|| Summary::from_hdr(h.unit, &st.cumulative));
                            (summary, st.sum)
                        };
                        histograms.push(json!({
                            "name": name,
                            "help": help,
                            "labels": labels,
                            "unit": h.unit.as_str(),
                            "count": summary.as_ref().map_or(0, |s| s.count),
                            "sum": sum,
                            "min": summary.as_ref().map(|s| s.min),
                            "max": summary.as_ref().map(|s| s.max),
                            "mean": summary.as_ref().map(|s| s.mean),
                            "p50": summary.as_ref().map(|s| s.p50),
                            "p90": summary.as_ref().map(|s| s.p90),
                            "p95": summary.as_ref().map(|s| s.p95),
                            "p99": summary.as_ref().map(|s| s.p99),
                            "p999": summary.as_ref().map(|s| s.p999),
                        }));
                    }
                }
            }
        }
        json!({ "counters": counters, "gauges": gauges, "histograms": histograms })
    }

    /// For every histogram series with at least one value since the previous call, returns the
    /// interval's statistics and V2-encoded histogram, and starts a new interval. Series are in
    /// the same order as on `/metrics`.
    pub fn take_interval_snapshots(&self) -> Vec<IntervalSnapshot> {
        let mut out = Vec::new();
        for (name, Family { kind, series, .. }) in self.collect() {
            let Kind::Histogram(unit) = kind else {
                continue;
            };
            for (labels, s) in series {
                let SeriesRef::Histogram(h) = s else { continue };
                if h.lock().interval.is_empty() {
                    continue;
                }
                // Allocate the fresh histogram outside the lock; swap it in under the lock.
                let mut taken = new_hdr();
                std::mem::swap(&mut h.lock().interval, &mut taken);
                if taken.is_empty() {
                    continue; // another caller took it in between
                }
                let mut histogram = Vec::new();
                if let Err(e) = V2Serializer::new().serialize(&taken, &mut histogram) {
                    tracing::error!(
                        metric = name,
                        error = ?e,
                        "metrics: cannot encode interval histogram"
                    );
                    histogram.clear();
                }
                let s = Summary::from_hdr(unit, &taken);
                out.push(IntervalSnapshot {
                    name: name.to_owned(),
                    labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    unit,
                    count: s.count,
                    min: s.min,
                    max: s.max,
                    mean: s.mean,
                    p50: s.p50,
                    p90: s.p90,
                    p95: s.p95,
                    p99: s.p99,
                    p999: s.p999,
                    histogram,
                });
            }
        }
        out
    }
}

/// Validates a registration and returns its label set sorted by name.
fn label_set(
    name: &str,
    kind: Kind,
    labels: &[(&'static str, &str)],
) -> Result<LabelSet, &'static str> {
    if !valid_metric_name(name) {
        return Err("metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*");
    }
    let mut set: LabelSet = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    set.sort();
    for (i, (k, _)) in set.iter().enumerate() {
        if !valid_label_name(k) {
            return Err("label name must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __");
        }
        if matches!(kind, Kind::Histogram(_)) && *k == "quantile" {
            return Err("label name `quantile` is reserved for histograms");
        }
        if i > 0 && set[i - 1].0 == *k {
            return Err("duplicate label name");
        }
    }
    Ok(set)
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    !s.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn normalize_method(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("OTHER")
}

/// Writes `{k="v",...}` (nothing when there are no labels), escaping label values.
fn write_labels<'a>(
    out: &mut String,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
    extra: Option<(&'a str, &'a str)>,
) {
    let mut first = true;
    for (k, v) in labels.chain(extra) {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// HELP text escaping: backslash and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Formats a sample value as Prometheus expects (`+Inf`, `-Inf`, `NaN`).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(actual: u64, expected: u64) -> bool {
        // 3 significant digits: within 0.1% (and exact below 2048).
        actual.abs_diff(expected) as f64 <= expected as f64 * 0.001 + 1.0
    }

    /// A parsed sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parses one exposition sample line: `name{labels} value` or `name value`.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let bytes: Vec<char> = line.chars().collect();
        let mut i = 0;
        let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
        let is_cont = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if !bytes.first().copied().is_some_and(is_start) {
            return Err(format!("bad name start: {line}"));
        }
        while i < bytes.len() && is_cont(bytes[i]) {
            i += 1;
        }
        let name: String = bytes[..i].iter().collect();
        let mut labels = Vec::new();
        if bytes.get(i) == Some(&'{') {
            i += 1;
            loop {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                    i += 1;
                }
                if start == i {
                    return Err(format!("empty label name: {line}"));
                }
                let key: String = bytes[start..i].iter().collect();
                if bytes.get(i) != Some(&'=') || bytes.get(i + 1) != Some(&'"') {
                    return Err(format!("expected =\": {line}"));
                }
                i += 2;
                let mut value = String::new();
                loop {
                    match bytes.get(i) {
                        None => return Err(format!("unterminated value: {line}")),
                        Some('"') => break,
                        Some('\\') => {
                            match bytes.get(i + 1) {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                _ => return Err(format!("bad escape: {line}")),
                            }
                            i += 2;
                        }
                        Some('\n') => return Err(format!("raw newline: {line}")),
                        Some(c) => {
                            value.push(*c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                labels.push((key, value));
                match bytes.get(i) {
                    Some(',') => i += 1,
                    Some('}') => {
                        i += 1;
                        break;
                    }
                    _ => return Err(format!("expected , or }}: {line}")),
                }
            }
        }
        if bytes.get(i) != Some(&' ') {
            return Err(format!("expected space before value: {line}"));
        }
        let rest: String = bytes[i + 1..].iter().collect();
        let value = match rest.as_str() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            s => s
                .parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))?,
        };
        Ok((name, labels, value))
    }

    fn assert_valid_exposition(text: &str) {
        assert!(text.ends_with('\n'));
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(helped.insert(name), "HELP twice: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap_or_default().to_owned();
                let ty = parts.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "summary"].contains(&ty),
                    "bad type: {line}"
                );
                assert!(typed.insert(name), "TYPE twice: {line}");
            } else {
                assert!(!line.starts_with('#'), "unexpected comment: {line}");
                let (name, _, _) = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
                let family = ["_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(&name);
                assert!(typed.contains(family), "sample before its TYPE: {line}");
            }
        }
    }

    #[test]
    fn quantiles_of_1_to_1000_micros() {
        let m = Metrics::new("1.2.3");
        let h = m.histogram("keel_test_seconds", "Test durations.", Unit::Micros, &[]);
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary().expect("values recorded");
        assert_eq!(s.count, 1000);
        assert!(approx(s.p50, 500), "p50 {}", s.p50);
        assert!(approx(s.p99, 990), "p99 {}", s.p99);
        assert!(approx(s.p999, 999), "p999 {}", s.p999);
        assert_eq!(s.min, 1);
        assert!(approx(s.max, 1000));
        assert!((s.mean - 500.5).abs() < 1.0, "mean {}", s.mean);

        let text = m.render_prometheus();
        assert!(
            text.contains("keel_test_seconds{quantile=\"0.99\"} 0.00099\n"),
            "{text}"
        );
        assert!(
            text.contains("keel_test_seconds{quantile=\"0.5\"} 0.0005\n"),
            "{text}"
        );
        assert!(text.contains("keel_test_seconds_count 1000\n"), "{text}");
        // Exact sum 500500 µs.
        assert!(text.contains("keel_test_seconds_sum 0.5005\n"), "{text}");
        assert!(text.contains("# TYPE keel_test_seconds summary\n"));
        assert_valid_exposition(&text);
    }

    #[test]
    fn values_are_clamped_not_rejected() {
        let m = Metrics::new("t");
        let h = m.histogram("keel_clamp_seconds", "c", Unit::Micros, &[]);
        h.record(0);
        h.record(u64::MAX);
        h.record_duration(Duration::from_secs(10 * 3600));
        h.record_duration(Duration::from_nanos(10));
        let s = h.summary().expect("recorded");
        assert_eq!(s.count, 4);
        assert_eq!(s.min, 1);
        assert!(approx(s.max, MAX_MICROS), "max {}", s.max);

        let c = m.histogram("keel_batch_size", "b", Unit::Count, &[]);
        c.record(0);
        c.record(u64::MAX);
        let s = c.summary().expect("recorded");
        assert_eq!((s.count, s.min), (2, 0));
        assert!(approx(s.max, MAX_COUNT));
        // Count units are exposed as recorded, not scaled.
        let text = m.render_prometheus();
        assert!(
            text.contains(&format!("keel_batch_size_sum {MAX_COUNT}\n")),
            "{text}"
        );
    }

    #[test]
    fn exposition_format_and_escaping() {
        let m = Metrics::new("v\"1\\x\ny");
        let a = m.counter("keel_jobs_total", "Jobs done.", &[("queue", "a")]);
        let b = m.counter("keel_jobs_total", "Jobs done.", &[("queue", "b\"q\\\n")]);
        a.inc();
        a.add(4);
        b.inc();
        assert_eq!(a.get(), 5);
        m.gauge("keel_depth", "Queue depth.\nSecond line \\ here.", &[])
            .set(-2.5);
        m.gauge("keel_inf", "Inf gauge.", &[]).set(f64::INFINITY);
        m.histogram(
            "keel_empty_seconds",
            "Nothing yet.",
            Unit::Micros,
            &[("k", "v")],
        );
        let h = m.histogram(
            "keel_lat_seconds",
            "Latency.",
            Unit::Micros,
            &[("z", "1"), ("a", "2")],
        );
        h.record(1500);
        m.histogram(
            "keel_lat_seconds",
            "Latency.",
            Unit::Micros,
            &[("a", "3"), ("z", "1")],
        )
        .record(10);

        let text = m.render_prometheus();
        assert_valid_exposition(&text);
        assert!(text.contains("keel_jobs_total{queue=\"a\"} 5\n"), "{text}");
        assert!(
            text.contains("keel_jobs_total{queue=\"b\\\"q\\\\\\n\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("keel_build_info{version=\"v\\\"1\\\\x\\ny\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP keel_depth Queue depth.\\nSecond line \\\\ here.\n"),
            "{text}"
        );
        assert!(text.contains("keel_depth -2.5\n"));
        assert!(text.contains("keel_inf +Inf\n"));
        assert!(
            text.contains("keel_empty_seconds{k=\"v\",quantile=\"0.5\"} NaN\n"),
            "{text}"
        );
        assert!(text.contains("keel_empty_seconds_count{k=\"v\"} 0\n"));
        // Labels sorted by name; series sorted by labels.
        let first = text
            .find("keel_lat_seconds{a=\"2\",z=\"1\",quantile=\"0.5\"} 0.0015")
            .expect("a=2 series");
        let second = text
            .find("keel_lat_seconds{a=\"3\",z=\"1\",quantile=\"0.5\"} 0.00001")
            .expect("a=3 series");
        assert!(first < second);
        assert_eq!(text.matches("# TYPE keel_jobs_total counter\n").count(), 1);
        assert_eq!(text.matches("# HELP keel_jobs_total ").count(), 1);
        assert_eq!(text.matches("# TYPE keel_lat_seconds summary\n").count(), 1);
        // Families in sorted order.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"keel_process_start_time_seconds"));
        // Stable: rendering twice gives the same text.
        assert_eq!(text, m.render_prometheus());

        // Counter increments are visible in the next render.
        a.inc();
        assert!(
            m.render_prometheus()
                .contains("keel_jobs_total{queue=\"a\"} 6\n")
        );
    }

    #[test]
    fn same_series_for_same_name_and_labels_in_any_order() {
        let m = Metrics::new("t");
        let x = m.counter("keel_c_total", "c", &[("a", "1"), ("b", "2")]);
        let y = m.counter("keel_c_total", "c", &[("b", "2"), ("a", "1")]);
        x.inc();
        y.inc();
        assert_eq!(x.get(), 2);
        let z = m.counter("keel_c_total", "c", &[("a", "1"), ("b", "3")]);
        assert_eq!(z.get(), 0);
    }

    #[test]
    fn kind_conflicts_and_bad_names_are_not_exposed() {
        let m = Metrics::new("t");
        m.counter("keel_thing", "a counter", &[]).inc();
        let g = m.gauge("keel_thing", "a gauge", &[]);
        g.set(7.0);
        assert_eq!(g.get(), 7.0); // works, but detached
        let h = m.histogram("keel_thing", "h", Unit::Count, &[]);
        h.record(3);
        m.histogram("keel_h", "h", Unit::Micros, &[]).record(1);
        m.histogram("keel_h", "h", Unit::Count, &[]).record(1);
        m.counter("bad-name", "x", &[]).inc();
        m.counter("keel_dup_total", "x", &[("a", "1"), ("a", "2")])
            .inc();
        m.histogram("keel_q_seconds", "x", Unit::Micros, &[("quantile", "1")])
            .record(1);
        let text = m.render_prometheus();
        assert_valid_exposition(&text);
        assert!(text.contains("keel_thing 1\n"));
        assert!(text.contains("keel_h_count 1\n"));
        assert!(!text.contains("keel_thing 7"));
        assert!(!text.contains("bad-name"));
        assert!(!text.contains("keel_dup_total"));
        assert!(!text.contains("keel_q_seconds"));
    }

    #[test]
    fn concurrent_records_on_one_handle() {
        let m = Arc::new(Metrics::new("t"));
        let h = m.histogram("keel_conc_seconds", "c", Unit::Micros, &[]);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let h = h.clone();
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(1 + (i + t) % 5000);
                        if i % 1000 == 0 {
                            m.observe_http("get", "/api/v1/system", 200, Duration::from_micros(i));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        assert_eq!(h.count(), 80_000);
        let snaps = m.take_interval_snapshots();
        let snap = snaps
            .iter()
            .find(|s| s.name == "keel_conc_seconds")
            .expect("snapshot");
        assert_eq!(snap.count, 80_000);
        let text = m.render_prometheus();
        assert!(text.contains(
            "keel_http_requests_total{method=\"GET\",route=\"/api/v1/system\",status=\"200\"} 80\n"
        ), "{text}");
    }

    #[test]
    fn observe_http_counts_by_status_and_times_by_route() {
        let m = Metrics::new("t");
        m.observe_http("GET", "/api/v1/tasks/{id}", 200, Duration::from_millis(2));
        m.observe_http("GET", "/api/v1/tasks/{id}", 200, Duration::from_millis(4));
        m.observe_http("GET", "/api/v1/tasks/{id}", 404, Duration::from_millis(1));
        m.observe_http("BREW", "/api/v1/tasks/{id}", 405, Duration::from_millis(1));
        let text = m.render_prometheus();
        assert_valid_exposition(&text);
        let r = "/api/v1/tasks/{id}";
        let has = |line: String| assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        has(format!(
            r#"keel_http_requests_total{{method="GET",route="{r}",status="200"}} 2"#
        ));
        has(format!(
            r#"keel_http_requests_total{{method="GET",route="{r}",status="404"}} 1"#
        ));
        has(format!(
            r#"keel_http_requests_total{{method="OTHER",route="{r}",status="405"}} 1"#
        ));
        let d = "keel_http_request_duration_seconds";
        has(format!(r#"{d}_count{{method="GET",route="{r}"}} 3"#));
        has(format!(r#"{d}_sum{{method="GET",route="{r}"}} 0.007"#));
        assert_eq!(
            text.matches("# TYPE keel_http_requests_total counter")
                .count(),
            1
        );

        // (route, method) pairs beyond the cap fold into `other`: two pairs exist already, so
        // of MAX + 10 new routes, 12 land in `other`, and repeats of a folded route go there too.
        for i in 0..MAX_HTTP_PAIRS + 10 {
            m.observe_http("GET", &format!("/raw/{i}"), 200, Duration::from_micros(5));
        }
        m.observe_http(
            "GET",
            &format!("/raw/{}", MAX_HTTP_PAIRS + 9),
            200,
            Duration::from_micros(5),
        );
        m.observe_http("GET", "/raw/0", 200, Duration::from_micros(5));
        let text = m.render_prometheus();
        assert_valid_exposition(&text);
        assert!(
            text.contains(&format!(
                r#"keel_http_requests_total{{method="GET",route="{}",status="200"}} 13"#,
                HTTP_OTHER_ROUTE
            )),
            "{text}"
        );
        assert!(text.contains(
            "keel_http_requests_total{method=\"GET\",route=\"/raw/0\",status=\"200\"} 2\n"
        ));
        assert!(!text.contains(&format!("route=\"/raw/{}\"", MAX_HTTP_PAIRS + 9)));
    }

    #[test]
    fn json_has_counters_gauges_and_histograms() {
        let m = Metrics::new("9.9.9");
        m.counter("keel_jobs_total", "Jobs.", &[("queue", "a")])
            .add(3);
        let h = m.histogram("keel_lat_seconds", "Latency.", Unit::Micros, &[("op", "x")]);
        for v in 1..=1000 {
            h.record(v);
        }
        m.histogram("keel_batch", "Batch size.", Unit::Count, &[]);
        let j = m.to_json();
        let counters = j["counters"].as_array().expect("counters");
        assert!(counters.iter().any(|c| c["name"] == "keel_jobs_total"
            && c["labels"]["queue"] == "a"
            && c["value"] == 3));
        let gauges = j["gauges"].as_array().expect("gauges");
        assert!(gauges.iter().any(|g| g["name"] == "keel_build_info"
            && g["labels"]["version"] == "9.9.9"
            && g["value"] == 1.0));
        let hist = j["histograms"].as_array().expect("histograms");
        let lat = hist
            .iter()
            .find(|x| x["name"] == "keel_lat_seconds")
            .expect("lat");
        assert_eq!(lat["unit"], "microseconds");
        assert_eq!(lat["count"], 1000);
        assert_eq!(lat["sum"], 500_500);
        assert_eq!(lat["min"], 1);
        assert_eq!(lat["p50"], 500);
        assert_eq!(lat["p99"], 990);
        assert!(lat["p999"].as_u64().is_some_and(|v| approx(v, 999)));
        let batch = hist
            .iter()
            .find(|x| x["name"] == "keel_batch")
            .expect("batch");
        assert_eq!(batch["unit"], "count");
        assert_eq!(batch["count"], 0);
        assert!(batch["p50"].is_null());
    }

    #[test]
    fn interval_snapshots_reset_encode_and_merge() {
        let m = Metrics::new("t");
        let h = m.histogram(
            "keel_http_request_duration_seconds",
            "d",
            Unit::Micros,
            &[("route", "/api/v1/system"), ("method", "GET")],
        );
        let idle = m.histogram("keel_idle_seconds", "i", Unit::Micros, &[]);
        for v in 1..=1000 {
            h.record(v);
        }
        let snaps = m.take_interval_snapshots();
        assert_eq!(snaps.len(), 1, "idle series has no snapshot");
        let first = snaps[0].clone();
        assert_eq!(first.count, 1000);
        assert_eq!(first.unit, Unit::Micros);
        assert_eq!(
            first.series_key(),
            "keel_http_request_duration_seconds{method=\"GET\",route=\"/api/v1/system\"}"
        );
        assert!(approx(first.p50, 500) && approx(first.p99, 990));
        let decoded = first.decode_histogram().expect("decodes");
        assert_eq!(decoded.len(), 1000);
        assert_eq!(decoded.value_at_quantile(0.5), first.p50);

        // Reset: nothing new, nothing returned; cumulative keeps counting.
        assert!(m.take_interval_snapshots().is_empty());
        for v in 1001..=3000 {
            h.record(v);
        }
        idle.record(7);
        let snaps = m.take_interval_snapshots();
        assert_eq!(snaps.len(), 2);
        let second = snaps
            .iter()
            .find(|s| s.name == "keel_http_request_duration_seconds")
            .expect("second")
            .clone();
        assert_eq!(second.count, 2000);
        assert!(approx(second.min, 1001));
        assert_eq!(h.count(), 3000);

        let merged = merge_snapshots(&[first.clone(), second.clone()]).expect("merged");
        assert_eq!(merged.count, 3000);
        assert_eq!(merged.unit, Unit::Micros);
        assert!(approx(merged.p50, 1500), "p50 {}", merged.p50);
        assert!(approx(merged.p99, 2970), "p99 {}", merged.p99);
        assert_eq!(merged.min, 1);
        assert!(approx(merged.max, 3000));
        assert!(merge_snapshots(&[]).is_none());

        // Postcard round trip (how the store room keeps them).
        let bytes = postcard::to_allocvec(&second).expect("encode");
        let back: IntervalSnapshot = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, second);

        // Corrupt or mismatched snapshots are skipped, not fatal.
        let mut bad = first.clone();
        bad.histogram.truncate(10);
        assert!(bad.decode_histogram().is_err());
        let mut other_unit = first.clone();
        other_unit.unit = Unit::Count;
        let merged = merge_snapshots(&[second.clone(), bad, other_unit]).expect("merged");
        assert_eq!(merged.count, 2000);

        let by_series =
            merge_snapshots_by_series(&[first, second, snaps[0].clone(), snaps[1].clone()]);
        assert_eq!(by_series.len(), 2);
        assert_eq!(by_series["keel_idle_seconds"].count, 1);
        assert_eq!(
            by_series[r#"keel_http_request_duration_seconds{method="GET",route="/api/v1/system"}"#]
                .count,
            5000
        );
    }

    #[test]
    fn metrics_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
        check::<Histogram>();
        check::<Counter>();
        check::<Gauge>();
    }
}
