//! In-process measurements: `keel bench inproc` (durable enqueue with 1, 8, 64 producers and the
//! full lifecycle through `Queue::enqueue`, `lease` and `complete`, with no HTTP on either side)
//! and `keel bench audit` (verifying the audit chain against raw blake3 over the same bytes).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::record::Recorder;
use crate::queue::{LeaseRequest, Outcome};

/// `keel bench inproc`
#[derive(Debug, clap::Args)]
pub struct InprocArgs {
    /// Directory for the scratch databases (the data dir's disk).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Seconds per enqueue measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Jobs in the lifecycle measurement.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// Append the results as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `keel bench audit`
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Directory for the scratch database (the data dir's disk).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Audit entries written, then verified.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Append the results as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Durable enqueue with 1, 8 and 64 producers, then the full lifecycle of `jobs` tasks.
pub fn run(args: &InprocArgs) -> anyhow::Result<()> {
    let each = Duration::from_secs(args.seconds.max(1));
    let scratch = tempfile::tempdir_in(&args.dir).with_context(|| {
        format!(
            "cannot create a scratch directory in {}",
            args.dir.display()
        )
    })?;
    let out = Recorder::new(args.json.as_deref());
    println!(
        "keel bench inproc: enqueue {}s per measurement, lifecycle of {} jobs",
        each.as_secs(),
        args.jobs
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The handler is never called: enqueued tasks are due tomorrow, and the lifecycle
        // completes leased tasks itself.
        let sink = "http://127.0.0.1:9/";
        for producers in [1usize, 8, 64] {
            let row = super::enqueue_in_process(
                &scratch.path().join(format!("enqueue-{producers}")),
                sink,
                producers,
                each,
            )
            .await?;
            out.figure(
                &format!("enqueue.inproc.p{producers}"),
                "keel",
                row.rate(),
                "jobs/s",
                "Queue::enqueue awaited by each producer (a tokio task) in a loop; task, indexes, counts and audit entry in one durable group commit",
            )?;
        }
        let (jobs, elapsed) =
            lifecycle(&scratch.path().join("lifecycle"), sink, args.jobs.max(1)).await?;
        out.figure(
            "lifecycle.inproc",
            "keel",
            jobs as f64 / elapsed.as_secs_f64(),
            "jobs/s",
            &format!(
                "{jobs} jobs: 64 producers enqueue while 4 consumers lease up to 64 at a time and complete each; no HTTP"
            ),
        )?;
        anyhow::Ok(())
    })
}

/// `jobs` tasks enqueued by 64 producers while 4 consumers lease and complete them; returns
/// the count and the time from the first enqueue to the last completion.
async fn lifecycle(
    dir: &std::path::Path,
    sink: &str,
    jobs: u64,
) -> anyhow::Result<(u64, Duration)> {
    let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
    let core = crate::app::Core::open(super::bench_config(dir, sink), Arc::clone(&clock))?;
    let queue = Arc::clone(&core.queue);
    let remaining = Arc::new(std::sync::atomic::AtomicI64::new(jobs as i64));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..64 {
        let queue = Arc::clone(&queue);
        let clock = Arc::clone(&clock);
        let remaining = Arc::clone(&remaining);
        producers.push(tokio::spawn(async move {
            while remaining.fetch_sub(1, Ordering::Relaxed) > 0 {
                queue
                    .enqueue("bench", super::bench_task(false, clock.now_ms()))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let wake = queue.wake();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let queue = Arc::clone(&queue);
        let done = Arc::clone(&done);
        let wake = Arc::clone(&wake);
        consumers.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < jobs {
                let leased = queue
                    .lease(LeaseRequest {
                        max: 64,
                        ..LeaseRequest::default()
                    })
                    .await?;
                if leased.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_millis(5), wake.notified()).await;
                    continue;
                }
                let mut completions = tokio::task::JoinSet::new();
                for task in leased {
                    let queue = Arc::clone(&queue);
                    let lease = task.lease.map(|l| l.id).unwrap_or_default();
                    completions.spawn(async move {
                        let outcome = Outcome::Succeeded {
                            result: None,
                            form: Default::default(),
                            receipt: None,
                        };
                        queue.complete(task.id, lease, outcome).await
                    });
                }
                while let Some(result) = completions.join_next().await {
                    result??;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for p in producers {
        p.await??;
    }
    for c in consumers {
        c.await??;
    }
    let elapsed = started.elapsed();
    core.store.close();
    Ok((done.load(Ordering::Relaxed), elapsed))
}

/// Writes `entries` audit entries, verifies the chain, then hashes the same bytes with raw
/// blake3 (one hash per entry, from memory).
pub fn audit(args: &AuditArgs) -> anyhow::Result<()> {
    use crate::audit::{Audit, Event};
    use crate::store::{Store, StoreError, StoreOptions};

    let scratch = tempfile::tempdir_in(&args.dir).with_context(|| {
        format!(
            "cannot create a scratch directory in {}",
            args.dir.display()
        )
    })?;
    let out = Recorder::new(args.json.as_deref());
    let entries = args.entries.max(1);
    println!("keel bench audit: {entries} entries");
    let store = Store::open(
        &scratch.path().join("audit.redb"),
        StoreOptions {
            max_batch: 1024,
            commit_observer: None,
            ..Default::default()
        },
    )?;
    let audit = Arc::new(Audit::load_or_create(scratch.path(), 1000)?);
    let now = chrono::Utc::now().timestamp_millis();
    let mut written = 0u64;
    while written < entries {
        let n = (entries - written).min(5_000);
        let first = written;
        let audit = Arc::clone(&audit);
        store.write_blocking(move |tx| {
            for i in first..first + n {
                // The shape of a task enqueue's entry.
                audit.append(
                    tx,
                    now,
                    &Event::new(
                        "key_0190c0ffee",
                        "task.enqueue",
                        uuid::Uuid::from_u128(i as u128).to_string(),
                    )
                    .with_detail(serde_json::json!({
                        "type": "bench", "priority": 100, "idempotency_key": null
                    })),
                )?;
            }
            Ok::<_, StoreError>(())
        })?;
        written += n;
    }
    let t0 = Instant::now();
    let report = store.read_blocking(|tx| audit.verify(tx))?;
    let verify = t0.elapsed();
    if !report.ok || report.entries != entries {
        anyhow::bail!("the benchmark chain did not verify: {report}");
    }
    // The same bytes the entry hash covers, gathered into memory first.
    let blobs: Vec<Vec<u8>> = store.read_blocking(|tx| {
        crate::audit::list(tx, 0, entries as usize).map(|list| {
            list.iter()
                .map(|e| {
                    let mut b = Vec::with_capacity(96 + e.detail.len());
                    b.extend_from_slice(&e.seq.to_be_bytes());
                    b.extend_from_slice(&e.prev_hash);
                    b.extend_from_slice(&e.time_ms.to_be_bytes());
                    for field in [&e.actor, &e.action, &e.target, &e.detail] {
                        b.extend_from_slice(&(field.len() as u64).to_be_bytes());
                        b.extend_from_slice(field.as_bytes());
                    }
                    b
                })
                .collect()
        })
    })?;
    store.close();
    let bytes: usize = blobs.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let mut acc = 0u8;
    for blob in &blobs {
        acc ^= blake3::hash(blob).as_bytes()[0];
    }
    let raw = t0.elapsed();
    std::hint::black_box(acc);
    out.figure(
        "audit.verify",
        "keel",
        entries as f64 / verify.as_secs_f64(),
        "entries/s",
        &format!(
            "keel audit verify over {entries} entries (read, decode, rehash, chain and {} signed checkpoints)",
            report.checkpoints
        ),
    )?;
    out.figure(
        "audit.verify",
        "limit",
        blobs.len() as f64 / raw.as_secs_f64(),
        "entries/s",
        &format!(
            "raw blake3 of the same bytes from memory, one hash per entry ({:.0} MB/s)",
            bytes as f64 / raw.as_secs_f64() / 1e6
        ),
    )?;
    Ok(())
}
