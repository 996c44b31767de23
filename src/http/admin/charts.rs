//! Charts for the dashboard: metric history merged into time buckets (from the persisted
//! interval histograms, through the metrics room's `history` functions), and server-rendered
//! SVG (line and bar charts) styled by classes from `admin.css`, so they work offline, without
//! JavaScript and under a strict CSP.
//!
//! Buckets that can no longer change (older than one snapshot interval) are merged once and
//! kept in a small cache for five minutes, so a page mostly decodes only the histograms of its
//! newest buckets.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::clock::Millis;
use crate::http::AppState;
use crate::metrics::IntervalSnapshot;
use crate::metrics::history;
use crate::store::StoreError;

/// Most buckets kept in the cache before it starts over.
const CACHE_CAP: usize = 5_000;
/// How long a settled bucket is trusted: a snapshot stored late (a worker that was backing
/// off) shows up after this at the latest.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// A time window of the charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last hour, by minute.
    Hour,
    /// The last 6 hours, by 5 minutes.
    SixHours,
    /// The last day, by 15 minutes.
    Day,
    /// The last week, by 2 hours.
    Week,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 4] = [Window::Hour, Window::SixHours, Window::Day, Window::Week];

    /// The window's name in `?window=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::SixHours => "6h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }

    /// The window named `s` (6 hours when unknown).
    pub fn parse(s: Option<&str>) -> Window {
        Window::ALL
            .into_iter()
            .find(|w| Some(w.as_str()) == s)
            .unwrap_or(Window::SixHours)
    }

    /// Length in ms.
    pub fn ms(self) -> i64 {
        match self {
            Window::Hour => 3_600_000,
            Window::SixHours => 6 * 3_600_000,
            Window::Day => 24 * 3_600_000,
            Window::Week => 7 * 24 * 3_600_000,
        }
    }

    /// Bucket length in ms.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Window::Hour => 60_000,
            Window::SixHours => 300_000,
            Window::Day => 900_000,
            Window::Week => 7_200_000,
        }
    }
}

/// Which histogram series a chart merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// `keel_http_request_duration_seconds` of every route but the dashboard's own.
    Api,
    /// `keel_task_duration_seconds` of every task type.
    Tasks,
    /// `keel_queue_waiting`: the queue's depth, sampled by its maintenance worker.
    Depth,
}

impl Group {
    fn includes(self, series_key: &str) -> bool {
        match self {
            Group::Api => {
                series_key.starts_with(crate::metrics::HTTP_REQUEST_DURATION)
                    && series_key[crate::metrics::HTTP_REQUEST_DURATION.len()..].starts_with('{')
                    && !series_key.contains("route=\"/admin")
            }
            Group::Tasks => {
                series_key == "keel_task_duration_seconds"
                    || series_key.starts_with("keel_task_duration_seconds{")
            }
            Group::Depth => series_key == crate::queue::QUEUE_WAITING_SERIES,
        }
    }
}

type Hdr = hdrhistogram::Histogram<u64>;

/// Count and percentiles of a merged histogram, in the series' unit (microseconds here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Values recorded.
    pub count: u64,
    /// 50th percentile.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
}

fn stats(h: &Hdr) -> Option<Stats> {
    (!h.is_empty()).then(|| Stats {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p95: h.value_at_quantile(0.95),
        p99: h.value_at_quantile(0.99),
    })
}

fn empty_hdr() -> Hdr {
    Hdr::new(3).expect("constant histogram precision is valid")
}

/// One bucket of a chart: its start and the statistics of the intervals that started in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start (epoch ms).
    pub start: Millis,
    /// Merged statistics (`None` when nothing was recorded).
    pub stats: Option<Stats>,
}

/// A chart's data: the buckets, oldest first, and the statistics of the whole window.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Buckets, oldest first.
    pub buckets: Vec<Bucket>,
    /// The whole window merged.
    pub overall: Option<Stats>,
}

/// A settled bucket: its statistics and its merged histogram (V2-encoded, empty when nothing
/// was recorded) for window-wide merges.
struct Settled {
    stats: Option<Stats>,
    encoded: Vec<u8>,
    merged_at: std::time::Instant,
}

/// Merged buckets that can no longer change, by (group, bucket length, start).
#[derive(Default)]
pub struct ChartCache {
    buckets: Mutex<HashMap<(Group, i64, Millis), Arc<Settled>>>,
}

impl ChartCache {
    fn get(&self, key: &(Group, i64, Millis)) -> Option<Arc<Settled>> {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|s| s.merged_at.elapsed() < CACHE_TTL)
            .cloned()
    }

    fn put(&self, entries: Vec<((Group, i64, Millis), Arc<Settled>)>) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() + entries.len() > CACHE_CAP {
            buckets.clear();
        }
        buckets.extend(entries);
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn decode(encoded: &[u8]) -> Option<Hdr> {
    if encoded.is_empty() {
        return None;
    }
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &encoded[..])
        .ok()
}

fn encode(h: &Hdr) -> Vec<u8> {
    use hdrhistogram::serialization::Serializer as _;
    let mut out = Vec::new();
    if !h.is_empty()
        && hdrhistogram::serialization::V2Serializer::new()
            .serialize(h, &mut out)
            .is_err()
    {
        out.clear();
    }
    out
}

fn merge_into(target: &mut Hdr, snapshots: &[IntervalSnapshot]) {
    for snap in snapshots {
        match snap.decode_histogram() {
            Ok(h) => {
                if let Err(e) = target.add(&h) {
                    tracing::warn!(series = %snap.series_key(), error = ?e, "chart: cannot merge a snapshot");
                }
            }
            Err(e) => {
                tracing::warn!(series = %snap.series_key(), error = %e, "chart: skipping an undecodable snapshot");
            }
        }
    }
}

/// The buckets of `group` over `window` ending now, read with the metrics room's `history`
/// functions (the data of `GET /api/v1/metrics/history`), merged per bucket and overall.
pub async fn series(
    app: &AppState,
    cache: &ChartCache,
    group: Group,
    window: Window,
) -> Result<Series, StoreError> {
    let now = app.clock.now_ms();
    let size = window.bucket_ms();
    let first = (now - window.ms()).div_euclid(size) * size + size;
    let starts: Vec<Millis> = (0..)
        .map(|i| first + i * size)
        .take_while(|s| *s <= now)
        .collect();
    // A bucket is settled once every interval that started in it has been stored.
    let settled_before =
        now - app.config.metrics.snapshot_interval().as_millis() as i64 - 5_000 - size;
    let cached: Vec<Option<Arc<Settled>>> = starts
        .iter()
        .map(|s| {
            (*s <= settled_before)
                .then(|| cache.get(&(group, size, *s)))
                .flatten()
        })
        .collect();
    let missing_from = starts
        .iter()
        .zip(&cached)
        .find(|(_, c)| c.is_none())
        .map(|(s, _)| *s);
    let grouped = match missing_from {
        None => HashMap::new(),
        Some(from) => {
            app.store
                .read(
                    move |tx| -> Result<HashMap<Millis, Vec<IntervalSnapshot>>, StoreError> {
                        let mut grouped: HashMap<Millis, Vec<IntervalSnapshot>> = HashMap::new();
                        for key in history::series(tx)?
                            .into_iter()
                            .filter(|k| group.includes(k))
                        {
                            for interval in history::query(tx, &key, from, i64::MAX, 1_000_000)? {
                                let start = interval.start_ms.div_euclid(size) * size;
                                grouped.entry(start).or_default().push(interval.snapshot);
                            }
                        }
                        Ok(grouped)
                    },
                )
                .await?
        }
    };
    let mut overall = empty_hdr();
    let mut fresh = Vec::new();
    let mut buckets = Vec::with_capacity(starts.len());
    for (start, cached) in starts.into_iter().zip(cached) {
        let stats = match cached {
            Some(settled) => {
                if let Some(h) = decode(&settled.encoded) {
                    let _ = overall.add(&h);
                }
                settled.stats
            }
            None => {
                let mut merged = empty_hdr();
                if let Some(snaps) = grouped.get(&start) {
                    merge_into(&mut merged, snaps);
                }
                let _ = overall.add(&merged);
                let stats = stats(&merged);
                if start <= settled_before {
                    fresh.push((
                        (group, size, start),
                        Arc::new(Settled {
                            stats,
                            encoded: encode(&merged),
                            merged_at: std::time::Instant::now(),
                        }),
                    ));
                }
                stats
            }
        };
        buckets.push(Bucket { start, stats });
    }
    cache.put(fresh);
    Ok(Series {
        buckets,
        overall: stats(&overall),
    })
}

/// One line of a line chart.
pub struct Line {
    /// Legend text.
    pub label: &'static str,
    /// CSS class of the stroke (`s1`, `s2`, `s3`).
    pub class: &'static str,
    /// Values by bucket start; `None` leaves a gap.
    pub points: Vec<(Millis, Option<f64>)>,
}

const W: f64 = 640.0;
const H: f64 = 200.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round upper bound for the y axis: 1, 2, 2.5 or 5 times a power of ten.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

fn x_label(ms: Millis, span_ms: i64) -> String {
    let t = crate::clock::to_datetime(ms);
    if span_ms > 2 * 86_400_000 {
        t.format("%a %H:%M").to_string()
    } else {
        t.format("%H:%M").to_string()
    }
}

/// A round step for an axis of whole numbers: 1, 2 or 5 times a power of ten, at least 1.
fn whole_step(step: f64) -> f64 {
    if step <= 1.0 || !step.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(step.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= step)
        .unwrap_or(10.0 * magnitude)
}

/// The y axis of a line chart: what its values are, which sets their labels and its scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Microseconds, labelled in milliseconds.
    Duration,
    /// A rate per minute.
    Rate,
    /// Whole numbers: every grid line falls on an integer, so no label repeats.
    Count,
}

/// Grid lines above the baseline.
const Y_STEPS: u32 = 4;

impl Axis {
    fn label(self, v: f64) -> String {
        match self {
            Axis::Duration => fmt_ms(v),
            Axis::Rate => fmt_rate(v),
            Axis::Count => format!("{v:.0}"),
        }
    }

    /// The top of the axis for a largest value of `max`.
    fn top(self, max: f64) -> f64 {
        match self {
            Axis::Count => whole_step(max / f64::from(Y_STEPS)) * f64::from(Y_STEPS),
            Axis::Duration | Axis::Rate => nice_max(max),
        }
    }
}

/// An SVG line chart over `[from, to]` with a y axis of `axis`. `title` names it for screen
/// readers; the legend is HTML beside it (see the templates). When `collecting_since` falls
/// inside the window, the part before it is shaded and labelled: nothing was recorded then.
pub fn line_chart(
    title: &str,
    from: Millis,
    to: Millis,
    lines: &[Line],
    axis: Axis,
    collecting_since: Option<Millis>,
) -> String {
    let span = (to - from).max(1) as f64;
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|(_, v)| *v))
        .fold(0.0f64, f64::max);
    let top = axis.top(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |t: Millis| LEFT + ((t - from) as f64 / span).clamp(0.0, 1.0) * plot_w;
    let y = |v: f64| TOP + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
    let has_data = max > 0.0
        || lines
            .iter()
            .any(|l| l.points.iter().any(|(_, v)| v.is_some()));
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}"><title>{}</title>"#,
        esc(title),
        esc(title)
    );
    if let Some(since) = collecting_since.filter(|s| *s > from && *s < to) {
        let edge = x(since);
        let _ = write!(
            svg,
            r#"<rect class="nodata" x="{LEFT}" y="{TOP}" width="{:.1}" height="{plot_h:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">collecting since {}</text>"#,
            edge - LEFT,
            (edge - 4.0).max(LEFT + 120.0),
            TOP + 14.0,
            esc(&x_label(since, to - from))
        );
    }
    for i in 0..=Y_STEPS {
        let v = top * f64::from(i) / f64::from(Y_STEPS);
        let yy = y(v);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/>"#,
            W - RIGHT,
        );
        // Without data the scale means nothing: only the baseline is labelled.
        if has_data || i == 0 {
            let _ = write!(
                svg,
                r#"<text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                yy + 4.0,
                esc(&axis.label(v))
            );
        }
    }
    let ticks = 5;
    for i in 0..=ticks {
        let t = from + ((to - from) as f64 * f64::from(i) / f64::from(ticks)) as i64;
        let anchor = match i {
            0 => "start",
            i if i == ticks => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r#"<text class="axis" x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
            x(t),
            H - 6.0,
            esc(&x_label(t, to - from))
        );
    }
    let mut any = false;
    for line in lines {
        let mut d = String::new();
        let mut pen_down = false;
        for (t, v) in &line.points {
            match v {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(*t),
                        y(*v)
                    );
                    pen_down = true;
                    any = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                svg,
                r#"<path class="series {}" d="{}"><title>{}</title></path>"#,
                line.class,
                d.trim_end(),
                esc(line.label)
            );
            // Single points (no neighbour) would be invisible as a path: mark them.
            for (i, (t, v)) in line.points.iter().enumerate() {
                let alone = |j: Option<usize>| {
                    j.and_then(|j| line.points.get(j))
                        .is_none_or(|(_, v)| v.is_none())
                };
                if let Some(v) = v
                    && alone(i.checked_sub(1))
                    && alone(Some(i + 1))
                {
                    let _ = write!(
                        svg,
                        r#"<circle class="dot {}" cx="{:.1}" cy="{:.1}" r="2.5"/>"#,
                        line.class,
                        x(*t),
                        y(*v)
                    );
                }
            }
        }
    }
    if !any {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">No data in this window yet</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One bar of a bar chart.
pub struct Bar {
    /// Label at the left.
    pub label: String,
    /// Value.
    pub value: f64,
    /// Value as shown at the right.
    pub text: String,
    /// CSS class of the bar.
    pub class: &'static str,
}

/// A horizontal SVG bar chart; `max` is the full width (at least the largest value).
pub fn bar_chart(title: &str, bars: &[Bar], max: Option<f64>) -> String {
    let row = 22.0;
    let h = (bars.len().max(1) as f64) * row + 4.0;
    let label_w = 150.0;
    let text_w = 110.0;
    let plot_w = W - label_w - text_w;
    let top = bars
        .iter()
        .map(|b| b.value)
        .fold(max.unwrap_or(0.0), f64::max);
    let top = if top > 0.0 { top } else { 1.0 };
    let mut svg = String::with_capacity(1024);
    let _ = write!(
        svg,
        r#"<svg class="chart bars" viewBox="0 0 {W} {h}" role="img" aria-label="{}"><title>{}</title>"#,
        esc(title),
        esc(title)
    );
    if bars.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{}" y="16" text-anchor="middle">Nothing to show yet</text>"#,
            W / 2.0
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let yy = i as f64 * row + 2.0;
        let width =
            (bar.value.max(0.0) / top * plot_w).max(if bar.value > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            svg,
            r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect class="track" x="{label_w}" y="{yy:.1}" width="{plot_w:.1}" height="{:.1}" rx="3"/><rect class="bar {}" x="{label_w}" y="{yy:.1}" width="{width:.1}" height="{:.1}" rx="3"/><text class="axis" x="{:.1}" y="{:.1}">{}</text>"#,
            label_w - 8.0,
            yy + 14.0,
            esc(&bar.label),
            row - 6.0,
            bar.class,
            row - 6.0,
            label_w + plot_w + 8.0,
            yy + 14.0,
            esc(&bar.text)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Milliseconds from microseconds, for latency axes.
pub fn fmt_ms(v: f64) -> String {
    let ms = v / 1000.0;
    if ms >= 100.0 || ms == 0.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// A rate per minute.
pub fn fmt_rate(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}/min")
    } else if v >= 10.0 {
        format!("{v:.1}/min")
    } else {
        let s = format!("{v:.2}");
        format!("{}/min", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// p50/p95/p99 lines of `buckets` (values in the series' unit, microseconds here).
pub fn latency_lines(buckets: &[Bucket]) -> Vec<Line> {
    let pick = |f: fn(&Stats) -> u64| -> Vec<(Millis, Option<f64>)> {
        buckets
            .iter()
            .map(|b| (b.start, b.stats.as_ref().map(|s| f(s) as f64)))
            .collect()
    };
    vec![
        Line {
            label: "p50",
            class: "s1",
            points: pick(|s| s.p50),
        },
        Line {
            label: "p95",
            class: "s2",
            points: pick(|s| s.p95),
        },
        Line {
            label: "p99",
            class: "s3",
            points: pick(|s| s.p99),
        },
    ]
}

/// Median and p99 of a sampled level (e.g. queue depth) in each bucket.
pub fn level_lines(buckets: &[Bucket]) -> Vec<Line> {
    let pick = |f: fn(&Stats) -> u64| -> Vec<(Millis, Option<f64>)> {
        buckets
            .iter()
            .map(|b| (b.start, b.stats.as_ref().map(|s| f(s) as f64)))
            .collect()
    };
    vec![
        Line {
            label: "median",
            class: "s1",
            points: pick(|s| s.p50),
        },
        Line {
            label: "p99",
            class: "s3",
            points: pick(|s| s.p99),
        },
    ]
}

/// Values recorded per minute in each bucket; buckets that ended before `collecting_since`, or
/// every bucket when nothing was recorded, have no value (which is not a rate of zero).
pub fn rate_points(
    buckets: &[Bucket],
    bucket_ms: i64,
    collecting_since: Option<Millis>,
) -> Vec<(Millis, Option<f64>)> {
    let minutes = bucket_ms as f64 / 60_000.0;
    buckets
        .iter()
        .map(|b| {
            let before = collecting_since.is_none_or(|since| b.start + bucket_ms <= since);
            (
                b.start,
                (!before).then(|| b.stats.as_ref().map_or(0.0, |s| s.count as f64 / minutes)),
            )
        })
        .collect()
}

/// When the first bucket of `series` with a value starts, if any has one (the queue-depth
/// series is sampled at every snapshot interval, so on a running keel it has values from the
/// moment recording began).
pub fn first_recorded(series: &Series) -> Option<Millis> {
    series
        .buckets
        .iter()
        .find(|b| b.stats.is_some())
        .map(|b| b.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_pick_their_series() {
        assert!(Group::Api.includes(
            r#"keel_http_request_duration_seconds{method="GET",route="/api/v1/system"}"#
        ));
        assert!(!Group::Api.includes(
            r#"keel_http_request_duration_seconds{method="GET",route="/admin/live/overview"}"#
        ));
        assert!(Group::Tasks.includes(r#"keel_task_duration_seconds{type="hook"}"#));
        assert!(!Group::Tasks.includes(r#"keel_task_duration_seconds_x{type="hook"}"#));
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(fmt_rate(0.0), "0/min");
        assert_eq!(fmt_rate(0.25), "0.25/min");
        assert_eq!(fmt_rate(2.5), "2.5/min");
        assert_eq!(fmt_rate(1.0), "1/min");
        assert_eq!(fmt_rate(12.34), "12.3/min");
        assert_eq!(fmt_rate(250.0), "250/min");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(2300.0), 2500.0);
    }

    #[test]
    fn line_charts_draw_gaps_points_and_escape_titles() {
        let svg = line_chart(
            "a <b> & c",
            0,
            300_000,
            &[Line {
                label: "p95",
                class: "s2",
                points: vec![
                    (0, Some(1000.0)),
                    (60_000, Some(2000.0)),
                    (120_000, None),
                    (180_000, Some(500.0)),
                    (240_000, None),
                ],
            }],
            Axis::Duration,
            None,
        );
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(
            svg.matches(" M").count() + svg.matches("\"M").count(),
            2,
            "{svg}"
        );
        assert_eq!(
            svg.matches("<circle").count(),
            1,
            "the lone point is marked"
        );
        assert!(!svg.contains("style="), "no inline styles under the CSP");
        let empty = line_chart("none", 0, 1, &[], Axis::Duration, None);
        assert!(empty.contains("No data"));
    }

    fn y_labels(svg: &str) -> Vec<String> {
        svg.split(r#"text-anchor="end">"#)
            .skip(1)
            .map(|rest| rest.split('<').next().unwrap_or_default().to_string())
            .filter(|l| !l.contains(':') && !l.starts_with("collecting"))
            .collect()
    }

    #[test]
    fn count_axes_label_each_grid_line_with_a_distinct_whole_number() {
        for max in [1.0, 2.0, 3.0, 7.0, 13.0, 180.0] {
            let svg = line_chart(
                "depth",
                0,
                300_000,
                &[Line {
                    label: "median",
                    class: "s1",
                    points: vec![(0, Some(0.0)), (60_000, Some(max))],
                }],
                Axis::Count,
                None,
            );
            let labels = y_labels(&svg);
            assert_eq!(labels.len(), 5, "{svg}");
            let values: Vec<f64> = labels.iter().map(|l| l.parse().unwrap()).collect();
            assert!(values.windows(2).all(|w| w[1] > w[0]), "{max}: {labels:?}");
            assert!(values.iter().all(|v| v.fract() == 0.0), "{max}: {labels:?}");
            assert!(*values.last().unwrap() >= max, "{max}: {labels:?}");
        }
    }

    #[test]
    fn a_window_that_starts_before_recording_says_so() {
        let points = vec![(120_000, Some(3.0)), (180_000, Some(4.0))];
        let line = || Line {
            label: "median",
            class: "s1",
            points: points.clone(),
        };
        let svg = line_chart("d", 0, 300_000, &[line()], Axis::Count, Some(120_000));
        assert!(svg.contains(r#"class="nodata""#), "{svg}");
        assert!(svg.contains("collecting since"), "{svg}");
        let full = line_chart("d", 0, 300_000, &[line()], Axis::Count, Some(0));
        assert!(!full.contains("collecting since"), "{full}");
        let buckets = [0, 60_000, 120_000]
            .map(|start| Bucket { start, stats: None })
            .to_vec();
        let rates = rate_points(&buckets, 60_000, Some(120_000));
        assert_eq!(rates[0].1, None);
        assert_eq!(rates[1].1, None);
        assert_eq!(rates[2].1, Some(0.0));
        assert!(
            rate_points(&buckets, 60_000, None)
                .iter()
                .all(|(_, v)| v.is_none())
        );
    }

    #[test]
    fn bar_charts_scale_to_the_largest_value() {
        let svg = bar_chart(
            "x",
            &[
                Bar {
                    label: "a".into(),
                    value: 10.0,
                    text: "10".into(),
                    class: "ok",
                },
                Bar {
                    label: "b".into(),
                    value: 5.0,
                    text: "5".into(),
                    class: "bad",
                },
            ],
            None,
        );
        assert!(
            svg.contains(r#"class="bar ok" x="150" y="2.0" width="380.0""#),
            "{svg}"
        );
        assert!(svg.contains(r#"width="190.0""#), "{svg}");
    }
}
