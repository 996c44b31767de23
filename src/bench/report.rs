//! `keel bench report`: one table from the records of a run — metric, keel, each peer, the
//! limit, and the ratios keel/peer and keel/limit — printed and written as Markdown with the
//! machine's description and how each system was configured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::record::{Record, format_value};

/// `keel bench report`
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The JSON-lines file the measurements appended to.
    #[arg(long, value_name = "FILE")]
    pub results: PathBuf,
    /// Where to write the Markdown report.
    #[arg(long, value_name = "FILE", default_value = "target/bench/report.md")]
    pub out: PathBuf,
    /// Free text placed under the title (the command, the run's duration, the load average).
    #[arg(long)]
    pub preamble: Option<String>,
}

/// Columns, in order: record system and heading.
const SYSTEMS: [(&str, &str); 4] = [
    ("keel", "keel"),
    ("bullmq", "BullMQ ¹"),
    ("pgboss", "pg-boss ²"),
    ("bullmq-everysec", "BullMQ everysec ³"),
];

/// What the footnote marks of the column headings mean.
pub const LEGEND: &str = "¹ BullMQ on Redis with `appendonly yes`, `appendfsync always`: each job is fsynced before it is acknowledged, as keel's are.\n\n\
² pg-boss on PostgreSQL with `synchronous_commit = on`, `fsync = on`: each job is durable when acknowledged.\n\n\
³ BullMQ on Redis with `appendfsync everysec` (Redis's default): a crash can lose the last second of acknowledged jobs; not durable per job, so it is shown apart and in no ratio.";

/// Where a row's limit comes from.
#[derive(Clone, Copy)]
enum Limit {
    /// No physical ceiling applies.
    None,
    /// A record with system `limit` and the row's own id.
    Own,
    /// The value of another record: (id, system).
    Of(&'static str, &'static str),
}

struct Row {
    id: &'static str,
    label: &'static str,
    limit: Limit,
}

const fn row(id: &'static str, label: &'static str, limit: Limit) -> Row {
    Row { id, label, limit }
}

/// The table's sections and rows; rows with no figure at all are left out.
const SECTIONS: &[(&str, &[Row])] = &[
    (
        "1. Limits of this machine",
        &[
            row("fsync.p50", "fsync p50 (data dir's disk)", Limit::Own),
            row("fsync.p99", "fsync p99", Limit::Own),
            row("fsync.rate", "fsyncs/s, one thread", Limit::Own),
            row(
                "redb.single",
                "raw redb, 1 write per durable commit",
                Limit::Own,
            ),
            row(
                "store.group.w1",
                "keel group commit, 1 writer",
                Limit::Of("redb.single", "limit"),
            ),
            row(
                "store.group.w8",
                "keel group commit, 8 writers",
                Limit::Of("redb.single", "limit"),
            ),
            row(
                "store.group.w64",
                "keel group commit, 64 writers",
                Limit::Of("redb.single", "limit"),
            ),
            row("http.hello.c1", "axum hello, 1 connection", Limit::Own),
            row("http.hello.c8", "axum hello, 8 connections", Limit::Own),
            row("http.hello.c64", "axum hello, 64 connections", Limit::Own),
            row(
                "http.hello.c64.p99",
                "axum hello p99, 64 connections",
                Limit::Own,
            ),
        ],
    ),
    (
        "2. Durable enqueue",
        &[
            row(
                "enqueue.http.c1",
                "enqueue, 1 producer (keel over HTTP)",
                Limit::Of("http.hello.c1", "limit"),
            ),
            row(
                "enqueue.http.c8",
                "enqueue, 8 producers (keel over HTTP)",
                Limit::Of("http.hello.c8", "limit"),
            ),
            row(
                "enqueue.http.c64",
                "enqueue, 64 producers (keel over HTTP)",
                Limit::Of("http.hello.c64", "limit"),
            ),
            row(
                "enqueue.http.c64.p99",
                "enqueue p99 ack, 64 producers",
                Limit::Of("http.hello.c64.p99", "limit"),
            ),
            row(
                "enqueue.inproc.p1",
                "enqueue, 1 producer (keel in-process)",
                Limit::Of("store.group.w1", "keel"),
            ),
            row(
                "enqueue.inproc.p8",
                "enqueue, 8 producers (keel in-process)",
                Limit::Of("store.group.w8", "keel"),
            ),
            row(
                "enqueue.inproc.p64",
                "enqueue, 64 producers (keel in-process)",
                Limit::Of("store.group.w64", "keel"),
            ),
        ],
    ),
    (
        "3. Full lifecycle",
        &[
            row(
                "lifecycle",
                "enqueue → start → no-op → complete",
                Limit::None,
            ),
            row(
                "lifecycle.inproc",
                "same, keel in-process (no HTTP)",
                Limit::None,
            ),
        ],
    ),
    (
        "4. Latency at a fixed rate",
        &[
            row(
                "latency.rate",
                "jobs started/s at the fixed rate",
                Limit::None,
            ),
            row("latency.p50", "enqueue-to-start p50", Limit::None),
            row("latency.p99", "enqueue-to-start p99", Limit::None),
            row("latency.max", "enqueue-to-start max", Limit::None),
        ],
    ),
    (
        "5. Webhook delivery",
        &[
            row(
                "webhook.rate",
                "deliveries/s, healthy target alone",
                Limit::None,
            ),
            row(
                "webhook.p99",
                "delivery lag p99, healthy target alone",
                Limit::None,
            ),
            row(
                "webhook.slow.rate",
                "deliveries/s, healthy target, other target timing out",
                Limit::Of("webhook.rate", "keel"),
            ),
            row(
                "webhook.slow.p99",
                "delivery lag p99, healthy target, other timing out",
                Limit::None,
            ),
        ],
    ),
    (
        "6. Audit verify",
        &[row(
            "audit.verify",
            "audit verify (limit: raw blake3, same bytes)",
            Limit::Own,
        )],
    ),
    (
        "7. Footprint",
        &[
            row("rss.idle", "RSS idle", Limit::None),
            row("rss.load", "RSS under load (peak)", Limit::None),
            row("binary", "binary size", Limit::None),
            row(
                "data.per_million",
                "data per 10^6 finished tasks",
                Limit::None,
            ),
        ],
    ),
];

/// Looks records up by (id, system); the last record of a pair wins.
struct Figures {
    values: BTreeMap<(String, String), (f64, String)>,
    configs: BTreeMap<String, Vec<String>>,
    notes: BTreeMap<String, Vec<(String, String)>>,
}

impl Figures {
    fn new(records: &[Record]) -> Self {
        let mut values = BTreeMap::new();
        let mut configs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut notes: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for r in records {
            match r.value {
                None => {
                    let list = configs.entry(r.system.clone()).or_default();
                    if !list.contains(&r.note) {
                        list.push(r.note.clone());
                    }
                }
                Some(v) => {
                    values.insert((r.id.clone(), r.system.clone()), (v, r.unit.clone()));
                    if !r.note.is_empty() {
                        let list = notes.entry(r.system.clone()).or_default();
                        list.retain(|(id, _)| id != &r.id);
                        list.push((r.id.clone(), r.note.clone()));
                    }
                }
            }
        }
        Figures {
            values,
            configs,
            notes,
        }
    }

    fn get(&self, id: &str, system: &str) -> Option<(f64, &str)> {
        self.values
            .get(&(id.to_string(), system.to_string()))
            .map(|(v, u)| (*v, u.as_str()))
    }
}

fn cell(value: Option<(f64, &str)>) -> String {
    match value {
        Some((v, unit)) => format!("{} {unit}", format_value(v)),
        None => "—".into(),
    }
}

fn ratio(a: Option<(f64, &str)>, b: Option<(f64, &str)>) -> String {
    match (a, b) {
        (Some((a, _)), Some((b, _))) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// The table, as Markdown.
pub fn table(records: &[Record]) -> String {
    let figures = Figures::new(records);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| metric | {} | limit | keel/BullMQ | keel/pg-boss | keel/limit |",
        SYSTEMS.map(|(_, h)| h).join(" | ")
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (section, rows) in SECTIONS {
        let present: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                SYSTEMS.iter().any(|(s, _)| figures.get(r.id, s).is_some())
                    || figures.get(r.id, "limit").is_some()
            })
            .collect();
        if present.is_empty() {
            continue;
        }
        let _ = writeln!(out, "| **{section}** | | | | | | | | |");
        for r in present {
            let keel = figures.get(r.id, "keel");
            let limit = match r.limit {
                Limit::None => None,
                Limit::Own => figures.get(r.id, "limit"),
                Limit::Of(id, system) => figures.get(id, system),
            };
            let cells: Vec<String> = SYSTEMS
                .iter()
                .map(|(s, _)| cell(figures.get(r.id, s)))
                .collect();
            // A limit-only row (the machine's own figures) has no keel/limit ratio.
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.label,
                cells.join(" | "),
                cell(limit),
                ratio(keel, figures.get(r.id, "bullmq")),
                ratio(keel, figures.get(r.id, "pgboss")),
                ratio(keel, limit),
            );
        }
    }
    out
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.1} GiB memory, Linux {}",
        kernel.trim()
    )
}

/// The whole report as Markdown.
pub fn markdown(records: &[Record], preamble: Option<&str>) -> String {
    let figures = Figures::new(records);
    let mut out = String::new();
    let _ = writeln!(out, "# keel benchmark report");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "- date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(out, "- machine: {}", machine());
    if let (Some((p50, _)), Some((p99, _)), Some((rate, _))) = (
        figures.get("fsync.p50", "limit"),
        figures.get("fsync.p99", "limit"),
        figures.get("fsync.rate", "limit"),
    ) {
        let _ = writeln!(
            out,
            "- disk (data dir): fdatasync p50 {p50:.3} ms, p99 {p99:.3} ms, {} fsyncs/s from one thread",
            format_value(rate)
        );
    }
    if let Some(text) = preamble {
        for line in text.lines() {
            let _ = writeln!(out, "- {line}");
        }
    }
    let _ = writeln!(out);
    out.push_str(&table(records));
    let _ = writeln!(out);
    let _ = writeln!(out, "{LEGEND}");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Ratios are keel ÷ the other column: above 1× is better for rates, below 1× is better for latencies and sizes. \
         Every system ran on this machine in this run, one after another, with its load generator on the same 2 cores."
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "## How each system was configured");
    let _ = writeln!(out);
    for (system, heading) in SYSTEMS.iter().copied().chain([("limit", "limit")]) {
        if let Some(list) = figures.configs.get(system) {
            for text in list {
                let _ = writeln!(out, "- **{heading}**: {text}");
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## How each figure was measured");
    let _ = writeln!(out);
    for (system, heading) in SYSTEMS.iter().copied().chain([("limit", "limit")]) {
        if let Some(list) = figures.notes.get(system) {
            // Figures measured the same way share one line.
            let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
            for (id, note) in list {
                match grouped.iter_mut().find(|(n, _)| n == note) {
                    Some((_, ids)) => ids.push(id),
                    None => grouped.push((note, vec![id])),
                }
            }
            for (note, ids) in grouped {
                let ids: Vec<String> = ids.iter().map(|id| format!("`{id}`")).collect();
                let _ = writeln!(out, "- {heading} {}: {note}", ids.join(", "));
            }
        }
    }
    out
}

/// Prints the table and writes the report.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let records = super::record::read(&args.results)?;
    let report = markdown(&records, args.preamble.as_deref());
    if let Some(parent) = args.out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &report)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.out.display()))?;
    println!("{}", table(&records));
    println!("{LEGEND}");
    println!();
    println!("report written to {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, system: &str, value: f64, unit: &str) -> Record {
        Record {
            id: id.into(),
            system: system.into(),
            value: Some(value),
            unit: unit.into(),
            note: String::new(),
        }
    }

    #[test]
    fn rows_carry_ratios_to_peers_and_limits() {
        let records = vec![
            rec("redb.single", "limit", 500.0, "writes/s"),
            rec("store.group.w64", "keel", 20_000.0, "writes/s"),
            rec("lifecycle", "keel", 3000.0, "jobs/s"),
            rec("lifecycle", "bullmq", 1500.0, "jobs/s"),
            rec("lifecycle", "pgboss", 1000.0, "jobs/s"),
        ];
        let table = table(&records);
        assert!(table.contains(
            "| keel group commit, 64 writers | 20,000 writes/s | — | — | — | 500 writes/s | — | — | 40.00× |"
        ), "{table}");
        assert!(
            table.contains(
                "| 3,000 jobs/s | 1,500 jobs/s | 1,000 jobs/s | — | — | 2.00× | 3.00× | — |"
            ),
            "{table}"
        );
        // Rows nobody measured are left out, and so are empty sections.
        assert!(!table.contains("Audit"));
    }

    #[test]
    fn the_report_lists_configuration_and_notes() {
        let mut records = vec![rec("fsync.p50", "limit", 0.3, "ms")];
        records.push(Record {
            id: "config".into(),
            system: "bullmq".into(),
            value: None,
            unit: String::new(),
            note: "appendfsync always".into(),
        });
        let report = markdown(&records, Some("load average 0.1"));
        assert!(report.contains("- **BullMQ ¹**: appendfsync always"));
        assert!(report.contains("- load average 0.1"));
        assert!(report.contains("| fsync p50 (data dir's disk) |"));
    }
}
