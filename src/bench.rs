//! Benchmarks. `keel bench store`: durable write rates measured in one run on one disk — raw
//! redb single commits (the baseline) against keel's group-committed writer with 1, 8 and 64
//! writers. `keel bench queue`: the queue's rates in one process. `keel bench admin`: the
//! dashboard's render times ([`admin`]).
//!
//! The pieces `bench/run` assembles into one report (keel against the machine's limits and
//! against peer queues): `limits` and `hello` ([`limits`]), `inproc` and `audit` ([`inproc`]),
//! `lifecycle` and `rate` against a running keel ([`drive`]), and `report` ([`report`]), all
//! writing [`record::Record`]s as JSON lines.

pub mod admin;
pub mod drive;
pub mod inproc;
pub mod limits;
pub mod record;
pub mod report;
mod tables;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use redb::{Database, Durability};

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
        tables::records(&tx)?.insert(writes, PAYLOAD.as_slice())?;
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
            hooks: Vec::new(),
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
                        tables::records(tx)?.insert(key, PAYLOAD.as_slice())?;
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

/// One row of the queue benchmark.
struct QueueRow {
    label: String,
    tasks: u64,
    elapsed: Duration,
}

impl QueueRow {
    fn rate(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }
}

/// A configuration for a benchmark data dir: one http handler `bench` pointing at `sink`.
fn bench_config(data_dir: &Path, sink: &str) -> crate::config::Config {
    let mut config = crate::config::Config {
        data_dir: data_dir.to_path_buf(),
        ..crate::config::Config::default()
    };
    config.server.listen = "127.0.0.1:0".parse().expect("valid address");
    config.queue.concurrency = 64;
    config.queue.max_depth = 10_000_000;
    config.log.level = "warn".into();
    config.handlers.insert(
        "bench".into(),
        crate::config::HandlerConfig::Http(crate::config::HttpHandlerConfig {
            url: sink.to_string(),
            method: "POST".into(),
            token: None,
            signing_secret: None,
            timeout_seconds: 30,
            target_concurrency: 64,
            circuit: Default::default(),
            concurrency: None,
            max_attempts: None,
        }),
    );
    config
}

fn bench_task(run_later: bool, now_ms: i64) -> crate::queue::NewTask {
    crate::queue::NewTask {
        task_type: "bench".into(),
        payload: serde_json::json!({"n": 1}),
        run_at: run_later.then_some(now_ms + 86_400_000),
        ..crate::queue::NewTask::default()
    }
}

/// A local HTTP sink answering 200 to every POST; returns its URL.
async fn start_sink() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/"))
}

/// Runs the queue benchmark in a scratch directory under `dir` and prints the table.
pub fn queue(dir: &Path, each: Duration) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    println!(
        "keel bench queue: {}s per measurement, scratch dir {} (deleted afterwards)",
        each.as_secs(),
        scratch.path().display()
    );
    let baseline = raw_redb(&scratch.path().join("raw.redb"), each)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        let sink = start_sink().await?;
        for clients in [1usize, 8, 64] {
            rows.push(
                enqueue_in_process(
                    &scratch.path().join(format!("enq-{clients}")),
                    &sink,
                    clients,
                    each,
                )
                .await?,
            );
        }
        rows.push(drain_in_process(&scratch.path().join("drain"), &sink, each).await?);
        let http_rows = over_http(&scratch.path().join("http"), &sink, each).await?;
        rows.extend(http_rows);
        anyhow::Ok(())
    })?;
    let base = baseline.rate();
    println!();
    println!(
        "baseline: raw redb, 1 write per durable commit: {:.0} writes/s (p50 {:.2}ms)",
        base,
        baseline.latency_us.value_at_quantile(0.5) as f64 / 1000.0
    );
    println!();
    println!(
        "| {:<52} | {:>10} | {:>11} |",
        "measurement", "tasks/s", "× baseline"
    );
    println!("|{:-<54}|{:->12}|{:->13}|", "", "", "");
    for row in &rows {
        println!(
            "| {:<52} | {:>10.0} | {:>10.1}× |",
            row.label,
            row.rate(),
            row.rate() / base
        );
    }
    Ok(())
}

/// `clients` concurrent callers of `Queue::enqueue` for `each`.
async fn enqueue_in_process(
    dir: &Path,
    sink: &str,
    clients: usize,
    each: Duration,
) -> anyhow::Result<QueueRow> {
    let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
    let core = crate::app::Core::open(bench_config(dir, sink), Arc::clone(&clock))?;
    let queue = Arc::clone(&core.queue);
    let started = Instant::now();
    let deadline = started + each;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let queue = Arc::clone(&queue);
        let clock = Arc::clone(&clock);
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                queue
                    .enqueue("bench", bench_task(true, clock.now_ms()))
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut tasks = 0;
    for h in handles {
        tasks += h.await??;
    }
    let elapsed = started.elapsed();
    core.store.close();
    Ok(QueueRow {
        label: format!("durable enqueue, in-process, {clients} client(s)"),
        tasks,
        elapsed,
    })
}

/// Drain, in-process: a backlog is enqueued first (64 producers), then 4 consumers lease up to
/// 64 tasks at a time and complete each, until the backlog is gone.
async fn drain_in_process(dir: &Path, sink: &str, each: Duration) -> anyhow::Result<QueueRow> {
    use crate::queue::{LeaseRequest, Outcome};
    let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
    let core = crate::app::Core::open(bench_config(dir, sink), Arc::clone(&clock))?;
    let queue = Arc::clone(&core.queue);
    let backlog = ((each.as_secs_f64() * 10_000.0) as u64).max(5_000);
    let mut fill = Vec::new();
    for _ in 0..64 {
        let queue = Arc::clone(&queue);
        let clock = Arc::clone(&clock);
        fill.push(tokio::spawn(async move {
            for _ in 0..backlog / 64 {
                queue
                    .enqueue("bench", bench_task(false, clock.now_ms()))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in fill {
        h.await??;
    }
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let queue = Arc::clone(&queue);
        consumers.push(tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                let leased = queue
                    .lease(LeaseRequest {
                        max: 64,
                        ..LeaseRequest::default()
                    })
                    .await?;
                if leased.is_empty() {
                    return anyhow::Ok(done);
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
                    done += 1;
                }
            }
        }));
    }
    let mut tasks = 0;
    for c in consumers {
        tasks += c.await??;
    }
    let elapsed = started.elapsed();
    core.store.close();
    Ok(QueueRow {
        label: format!("drain {tasks} queued tasks (lease → complete), in-process"),
        tasks,
        elapsed,
    })
}

/// Over HTTP against the real app: enqueue with 1, 8 and 64 clients (tasks due tomorrow, so
/// only enqueue is measured), then the full lifecycle through the dispatcher and the http
/// executor delivering to a local sink.
async fn over_http(dir: &Path, sink: &str, each: Duration) -> anyhow::Result<Vec<QueueRow>> {
    let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
    let app = crate::app::App::start(bench_config(dir, sink), clock).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = crate::http::router(app.http_state());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(crate::http::serve(
        listener,
        router,
        stop.clone().cancelled_owned(),
    ));
    let token = std::fs::read_to_string(dir.join(crate::auth::INITIAL_ADMIN_KEY_FILE))?
        .trim()
        .to_string();
    let mut rows = Vec::new();
    for clients in [1usize, 8, 64] {
        let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
        let body = serde_json::json!({"type": "bench", "payload": {"n": 1}, "run_at": tomorrow.to_rfc3339()});
        let (tasks, elapsed) = http_clients(&base, &token, clients, body, Some(each), None).await?;
        rows.push(QueueRow {
            label: format!("durable enqueue, over HTTP, {clients} client(s)"),
            tasks,
            elapsed,
        });
    }
    let count = ((each.as_secs_f64() * 3000.0) as u64).max(1000);
    let body = serde_json::json!({"type": "bench", "payload": {"n": 1}});
    let started = Instant::now();
    let (submitted, _) = http_clients(&base, &token, 64, body, None, Some(count)).await?;
    loop {
        let counts = app.queue.counts().await?;
        let finished: u64 = counts
            .iter()
            .filter(|((status, _), _)| *status == crate::queue::Status::Succeeded)
            .map(|(_, n)| *n)
            .sum();
        let failed: u64 = counts
            .iter()
            .filter(|((status, _), _)| *status == crate::queue::Status::Dead)
            .map(|(_, n)| *n)
            .sum();
        if failed > 0 {
            anyhow::bail!("{failed} benchmark tasks failed");
        }
        if finished >= submitted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rows.push(QueueRow {
        label: "lifecycle over HTTP: submit → dispatch → webhook → done".into(),
        tasks: submitted,
        elapsed: started.elapsed(),
    });
    stop.cancel();
    let _ = server.await;
    app.shutdown().await;
    Ok(rows)
}

/// `clients` threads POSTing `body` to /api/v1/tasks, for `duration` or until `total` were sent.
async fn http_clients(
    base: &str,
    token: &str,
    clients: usize,
    body: serde_json::Value,
    duration: Option<Duration>,
    total: Option<u64>,
) -> anyhow::Result<(u64, Duration)> {
    let url = format!("{base}/api/v1/tasks");
    let auth = format!("Bearer {token}");
    let remaining = Arc::new(std::sync::atomic::AtomicI64::new(
        total.map_or(i64::MAX, |t| t as i64),
    ));
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (url, auth, body) = (url.clone(), auth.clone(), body.clone());
        let remaining = Arc::clone(&remaining);
        handles.push(tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .build()
                .into();
            let mut sent = 0u64;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || remaining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) <= 0
                {
                    break;
                }
                let response = agent
                    .post(&url)
                    .header("authorization", &auth)
                    .send_json(&body)?;
                if response.status() != 201 {
                    anyhow::bail!("enqueue answered {}", response.status());
                }
                sent += 1;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut sent = 0;
    for h in handles {
        sent += h.await??;
    }
    Ok((sent, started.elapsed()))
}
