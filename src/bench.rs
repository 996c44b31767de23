//! `keel bench store`: durable write rates measured in one run on one disk — raw redb single
//! commits (the baseline) against keel's group-committed writer with 1, 8 and 64 writers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use redb::{Database, Durability};

use crate::store::tables::BENCH_RECORDS;
use crate::store::{Store, StoreError, StoreOptions};

const PAYLOAD: [u8; 128] = [0x5a; 128];

/// One measured configuration.
struct Row {
    label: String,
    writes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    /// Mean requests per commit and mean commit time (group commit only).
    commits: Option<(f64, Duration)>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs the store benchmark in a scratch directory under `dir` and prints the table.
pub fn store(dir: &Path, each: Duration) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    println!(
        "keel bench store: {}s per measurement, scratch dir {} (deleted afterwards)",
        each.as_secs(),
        scratch.path().display()
    );
    let baseline = raw_redb(&scratch.path().join("raw.redb"), each)?;
    let mut rows = vec![baseline];
    for writers in [1usize, 8, 64] {
        rows.push(group_commit(
            &scratch.path().join(format!("keel-{writers}.redb")),
            writers,
            each,
        )?);
    }
    let base_rate = rows[0].rate();
    println!();
    println!(
        "| {:<38} | {:>10} | {:>9} | {:>9} | {:>10} | {:>11} | {:>11} |",
        "configuration",
        "writes/s",
        "p50 ack",
        "p99 ack",
        "mean batch",
        "mean commit",
        "× baseline"
    );
    println!(
        "|{:-<40}|{:->12}|{:->11}|{:->11}|{:->12}|{:->13}|{:->13}|",
        "", "", "", "", "", "", ""
    );
    for row in &rows {
        let (batch, commit) = match row.commits {
            Some((batch, commit)) => (
                format!("{batch:.1}"),
                format!("{:.2}ms", commit.as_secs_f64() * 1000.0),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "| {:<38} | {:>10.0} | {:>7.2}ms | {:>7.2}ms | {:>10} | {:>11} | {:>10.1}× |",
            row.label,
            row.rate(),
            row.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
            row.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            batch,
            commit,
            row.rate() / base_rate
        );
    }
    Ok(())
}

/// The baseline: one insert per durable commit, one writer, straight on redb.
fn raw_redb(path: &Path, each: Duration) -> anyhow::Result<Row> {
    let db = Database::create(path).context("cannot create the baseline database")?;
    let mut latency_us = histogram();
    let started = Instant::now();
    let mut writes = 0u64;
    while started.elapsed() < each {
        let t0 = Instant::now();
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.open_table(BENCH_RECORDS)?
            .insert(writes, PAYLOAD.as_slice())?;
        tx.commit()?;
        latency_us.saturating_record(t0.elapsed().as_micros() as u64);
        writes += 1;
    }
    Ok(Row {
        label: "raw redb, 1 write per durable commit".into(),
        writes,
        elapsed: started.elapsed(),
        latency_us,
        commits: None,
    })
}

/// `writers` threads writing through keel's store for `each`.
fn group_commit(path: &Path, writers: usize, each: Duration) -> anyhow::Result<Row> {
    let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let commit_micros = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (counted, timed) = (Arc::clone(&commits), Arc::clone(&commit_micros));
    let store = Arc::new(Store::open(
        path,
        StoreOptions {
            max_batch: 1024,
            commit_observer: Some(Box::new(move |_, elapsed| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                timed.fetch_add(
                    elapsed.as_micros() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            })),
        },
    )?);
    // Keys come from one counter, as keel's own keys are time-ordered (sequence numbers,
    // UUIDv7): each batch appends to the end of the table.
    let next_key = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + each;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let store = Arc::clone(&store);
            let next_key = Arc::clone(&next_key);
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), StoreError> {
                let mut latency_us = histogram();
                let mut writes = 0u64;
                while Instant::now() < deadline {
                    let key = next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let t0 = Instant::now();
                    store.write_blocking(move |tx| {
                        tx.open_table(BENCH_RECORDS)?
                            .insert(key, PAYLOAD.as_slice())?;
                        Ok::<_, StoreError>(())
                    })?;
                    latency_us.saturating_record(t0.elapsed().as_micros() as u64);
                    writes += 1;
                }
                Ok((writes, latency_us))
            })
        })
        .collect();
    let mut latency_us = histogram();
    let mut writes = 0;
    for t in threads {
        let (n, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        writes += n;
        latency_us.add(&h).context("merging latency histograms")?;
    }
    let elapsed = started.elapsed();
    store.close();
    let commits = commits.load(std::sync::atomic::Ordering::Relaxed).max(1);
    let mean_commit =
        Duration::from_micros(commit_micros.load(std::sync::atomic::Ordering::Relaxed) / commits);
    Ok(Row {
        label: format!(
            "keel group commit, {writers} writer{}",
            if writers == 1 { "" } else { "s" }
        ),
        writes,
        elapsed,
        latency_us,
        commits: Some((writes as f64 / commits as f64, mean_commit)),
    })
}
