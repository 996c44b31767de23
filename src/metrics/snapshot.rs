//! Interval snapshots of histogram series and their statistics: the V2-encoded histogram of one
//! interval, decoding it again, and merging intervals into one [`Summary`].

use std::collections::BTreeMap;

use hdrhistogram::serialization::Deserializer;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::store::codec::Record;

use super::{Hdr, MAX_COUNT, MAX_MICROS, SIGFIG, SUMMARY_QUANTILES, Unit, write_labels};

/// An auto-resizing histogram: its counts array grows only as far as the largest value recorded.
/// Values are clamped first (one hour or `u32::MAX`), so it never exceeds ≈184 KB, and typical
/// latency series stay well below that fixed-size cost.
pub(super) fn new_hdr() -> Hdr {
    Hdr::new(SIGFIG).expect("constant histogram precision is valid")
}

/// Statistics of one histogram (a live series or a merged window), in the series' [`Unit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Unit of every value below.
    pub unit: Unit,
    /// Number of recorded values.
    pub count: u64,
    /// Smallest value (within HDR precision).
    pub min: u64,
    /// Largest value (within HDR precision).
    pub max: u64,
    /// Mean value (within HDR precision).
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

impl Summary {
    pub(super) fn from_hdr(unit: Unit, h: &Hdr) -> Summary {
        let mut q = [0u64; 5];
        for (slot, v) in q.iter_mut().zip(h.value_at_quantiles(SUMMARY_QUANTILES)) {
            *slot = v;
        }
        Summary {
            unit,
            count: h.len(),
            min: h.min(),
            max: h.max(),
            mean: h.mean(),
            p50: q[0],
            p90: q[1],
            p95: q[2],
            p99: q[3],
            p999: q[4],
        }
    }
}

/// One histogram series' values recorded since the previous [`Metrics::take_interval_snapshots`].
///
/// Stored with postcard by the store room: fields are only ever appended in a new record
/// version, never reordered or removed. Values are in [`IntervalSnapshot::unit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalSnapshot {
    /// Metric family name, e.g. `keel_http_request_duration_seconds`.
    pub name: String,
    /// Labels sorted by name.
    pub labels: Vec<(String, String)>,
    /// Unit of every value in this snapshot.
    pub unit: Unit,
    /// Number of values recorded in the interval.
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
    /// The interval histogram in HdrHistogram's V2 encoding (uncompressed), for merging.
    pub histogram: Vec<u8>,
}

impl IntervalSnapshot {
    /// The series identity: name plus labels sorted by name in Prometheus form, e.g.
    /// `keel_http_request_duration_seconds{method="GET",route="/api/v1/system"}`.
    pub fn series_key(&self) -> String {
        let mut labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        labels.sort();
        let mut out = String::from(&self.name);
        write_labels(&mut out, labels.iter().copied(), None);
        out
    }

    /// This snapshot's statistics as a [`Summary`].
    pub fn summary(&self) -> Summary {
        Summary {
            unit: self.unit,
            count: self.count,
            min: self.min,
            max: self.max,
            mean: self.mean,
            p50: self.p50,
            p90: self.p90,
            p95: self.p95,
            p99: self.p99,
            p999: self.p999,
        }
    }

    /// Decodes [`IntervalSnapshot::histogram`].
    pub fn decode_histogram(&self) -> Result<hdrhistogram::Histogram<u64>, DecodeError> {
        decode_v2(&self.histogram)
    }
}

/// Why an encoded interval histogram could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The header declares bounds no keel histogram uses (corrupt or foreign data).
    #[error("encoded histogram header is invalid or out of range")]
    BadHeader,
    /// The HdrHistogram V2 decoder rejected the bytes.
    #[error("cannot decode V2 histogram: {0:?}")]
    Decode(hdrhistogram::serialization::DeserializeError),
}

/// Decodes a V2 histogram after checking its header, so corrupt bytes cannot ask for a huge
/// counts array.
fn decode_v2(bytes: &[u8]) -> Result<Hdr, DecodeError> {
    // V2 header: cookie u32, payload len u32, offset u32, sigfig u32, lowest u64, highest u64.
    let header = bytes.get(..32).ok_or(DecodeError::BadHeader)?;
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let be64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let (sigfig, lowest, highest) = (be32(12), be64(16), be64(24));
    if sigfig > 5 || lowest == 0 || highest > MAX_MICROS.max(MAX_COUNT).saturating_mul(4) {
        return Err(DecodeError::BadHeader);
    }
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(DecodeError::Decode)
}

/// Merges interval snapshots (normally of one series over consecutive intervals) and computes
/// statistics over the whole window. Snapshots whose unit differs from the first one's, or whose
/// histogram cannot be decoded, are skipped with a warning. `None` when nothing was merged.
pub fn merge_snapshots(snaps: &[IntervalSnapshot]) -> Option<Summary> {
    let unit = snaps.first()?.unit;
    let mut merged = new_hdr();
    for snap in snaps {
        if snap.unit != unit {
            tracing::warn!(
                series = %snap.series_key(),
                "metrics: skipping snapshot with a different unit while merging"
            );
            continue;
        }
        match snap.decode_histogram() {
            Ok(h) => {
                if let Err(e) = merged.add(&h) {
                    tracing::warn!(
                        series = %snap.series_key(),
                        error = ?e,
                        "metrics: cannot merge snapshot"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(
                    series = %snap.series_key(),
                    error = %e,
                    "metrics: skipping undecodable snapshot"
                );
            }
        }
    }
    (!merged.is_empty()).then(|| Summary::from_hdr(unit, &merged))
}

/// Groups snapshots by [`IntervalSnapshot::series_key`] and merges each group with
/// [`merge_snapshots`].
pub fn merge_snapshots_by_series(snaps: &[IntervalSnapshot]) -> BTreeMap<String, Summary> {
    let mut groups: BTreeMap<String, Vec<IntervalSnapshot>> = BTreeMap::new();
    for snap in snaps {
        groups
            .entry(snap.series_key())
            .or_default()
            .push(snap.clone());
    }
    groups
        .into_iter()
        .filter_map(|(key, group)| merge_snapshots(&group).map(|s| (key, s)))
        .collect()
}

/// One stored interval of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInterval {
    /// Interval start (epoch ms).
    pub start_ms: Millis,
    /// Interval end (epoch ms).
    pub end_ms: Millis,
    /// The series' values over the interval.
    pub snapshot: IntervalSnapshot,
}

impl Record for StoredInterval {
    const VERSION: u8 = 1;
}
