//! Benchmark results as records: one JSON object per line, appended to the file named with
//! `--json`, so that `bench/run` can gather keel's figures, the peers' (written by the Node
//! drivers in `bench/peers/`) and the machine's limits into one report.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One measured figure, or (with `id = "config"` and no value) a note on how a system was set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What was measured, e.g. `enqueue.http.c8` (the report's rows are keyed by it).
    pub id: String,
    /// Who was measured: `keel`, `bullmq`, `bullmq-everysec`, `pgboss`, or `limit`.
    pub system: String,
    /// The figure (absent on configuration notes).
    #[serde(default)]
    pub value: Option<f64>,
    /// Its unit, e.g. `jobs/s`, `ms`, `MiB`.
    #[serde(default)]
    pub unit: String,
    /// How it was measured, when that needs saying.
    #[serde(default)]
    pub note: String,
}

/// Prints records and, when given a file, appends them to it as JSON lines.
pub struct Recorder {
    path: Option<PathBuf>,
}

impl Recorder {
    /// A recorder appending to `path` (created if missing), or printing only.
    pub fn new(path: Option<&Path>) -> Self {
        Recorder {
            path: path.map(Path::to_path_buf),
        }
    }

    /// Records one figure.
    pub fn figure(
        &self,
        id: &str,
        system: &str,
        value: f64,
        unit: &str,
        note: &str,
    ) -> anyhow::Result<()> {
        println!(
            "  {id:<28} {system:<10} {:>14} {unit}{}",
            format_value(value),
            if note.is_empty() {
                String::new()
            } else {
                format!("   ({note})")
            }
        );
        self.append(&Record {
            id: id.to_string(),
            system: system.to_string(),
            value: Some(value),
            unit: unit.to_string(),
            note: note.to_string(),
        })
    }

    /// Records how `system` was configured.
    pub fn config(&self, system: &str, text: &str) -> anyhow::Result<()> {
        println!("  config {system}: {text}");
        self.append(&Record {
            id: "config".into(),
            system: system.to_string(),
            value: None,
            unit: String::new(),
            note: text.to_string(),
        })
    }

    fn append(&self, record: &Record) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// Reads every record of a JSON-lines file; lines that are not records are reported as errors.
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| {
                anyhow::anyhow!("{}:{}: not a benchmark record: {e}", path.display(), n + 1)
            })
        })
        .collect()
}

/// A figure with as many decimals as its size deserves.
pub fn format_value(value: f64) -> String {
    let abs = value.abs();
    if abs >= 100.0 {
        group_thousands(value.round() as i64)
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_by_size() {
        assert_eq!(format_value(1_234_567.4), "1,234,567");
        assert_eq!(format_value(100.0), "100");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(1.234), "1.23");
        assert_eq!(format_value(0.1234), "0.123");
    }

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let recorder = Recorder::new(Some(&path));
        recorder
            .figure("fsync.p50", "limit", 0.25, "ms", "")
            .unwrap();
        recorder.config("keel", "group commit").unwrap();
        let records = read(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].value, Some(0.25));
        assert_eq!(records[1].id, "config");
        assert_eq!(records[1].value, None);
    }
}
