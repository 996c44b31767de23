//! `keel bench admin`: render times of the dashboard's pages on a store holding many tasks and
//! days of metric snapshots, measured over HTTP with a signed-in session, next to the JSON API
//! answering the same data as a baseline.
//!
//! The store is filled first through the rooms' own functions (the queue's enqueue, lease and
//! complete; the metrics room's snapshot persistence), then the real app serves it on
//! 127.0.0.1:0 and every page is fetched many times in a row.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, HandlerConfig, HttpHandlerConfig};
use crate::metrics::{Metrics, Unit, history};
use crate::queue::{LeaseRequest, NewTask, Outcome, Receipt};

/// Task types of the generated tasks.
const TYPES: [&str; 3] = ["webhook", "mail", "report"];
/// API routes with latency history.
const ROUTES: [&str; 12] = [
    "/api/v1/tasks",
    "/api/v1/tasks/{id}",
    "/api/v1/tasks/{id}/logs",
    "/api/v1/dlq",
    "/api/v1/dlq/stats",
    "/api/v1/circuits",
    "/api/v1/audit",
    "/api/v1/system",
    "/api/v1/keys",
    "/metrics",
    "/health",
    "/hooks/{source}",
];

fn config(dir: &Path, days: u32) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.server.listen = "127.0.0.1:0".parse().expect("valid address");
    config.queue.max_depth = 100_000_000;
    config.metrics.retention_days = u64::from(days) + 1;
    config.log.level = "warn".into();
    for t in TYPES {
        config.handlers.insert(
            t.into(),
            HandlerConfig::Http(HttpHandlerConfig {
                url: "http://127.0.0.1:9/never".into(),
                method: "POST".into(),
                token: None,
                signing_secret: None,
                timeout_seconds: 5,
                target_concurrency: 8,
                circuit: Default::default(),
                concurrency: None,
                max_attempts: Some(1),
            }),
        );
    }
    config
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Enqueues `n` tasks (95 % due in a month, so nothing runs them), then runs the rest to an end
/// by hand: nine in ten succeed, one in ten dies.
async fn fill_tasks(core: &crate::app::Core, n: usize) -> anyhow::Result<()> {
    let now = core.clock.now_ms();
    let due_now = n / 20;
    let workers = 64;
    let mut handles = Vec::new();
    for w in 0..workers {
        let queue = Arc::clone(&core.queue);
        handles.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let later = i >= due_now;
                queue
                    .enqueue(
                        "bench",
                        NewTask {
                            task_type: TYPES[i % TYPES.len()].into(),
                            payload: serde_json::json!({"n": i, "to": "someone@example.com"}),
                            run_at: later.then_some(now + 30 * 86_400_000),
                            ..NewTask::default()
                        },
                    )
                    .await?;
                i += workers;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let mut done = 0usize;
    loop {
        let leased = core
            .queue
            .lease(LeaseRequest {
                max: 500,
                ..LeaseRequest::default()
            })
            .await?;
        if leased.is_empty() {
            break;
        }
        for task in leased {
            let Some(lease) = task.lease else { continue };
            let outcome = if done % 10 == 9 {
                Outcome::Fail {
                    class: "http_5xx".into(),
                    message: "503 from the target".into(),
                    receipt: Some(Receipt {
                        status: Some(503),
                        latency_ms: 40,
                        body_head: "unavailable".into(),
                    }),
                }
            } else {
                Outcome::Succeeded {
                    result: Some("{\"ok\":true}".into()),
                    form: Default::default(),
                    receipt: Some(Receipt {
                        status: Some(200),
                        latency_ms: 12,
                        body_head: "{\"ok\":true}".into(),
                    }),
                }
            };
            core.queue.complete(task.id, lease.id, outcome).await?;
            done += 1;
        }
    }
    Ok(())
}

/// Persists one snapshot a minute for `days` days of every API route and task type.
async fn fill_history(core: &crate::app::Core, days: u32) -> anyhow::Result<usize> {
    let minutes = i64::from(days) * 1440;
    let now = core.clock.now_ms() / 60_000 * 60_000;
    let metrics = Metrics::new("bench");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stored = 0;
    let mut batch = Vec::new();
    for m in 0..minutes {
        for route in ROUTES {
            let h = metrics.histogram(
                crate::metrics::HTTP_REQUEST_DURATION,
                "bench",
                Unit::Micros,
                &[("method", "GET"), ("route", route)],
            );
            for _ in 0..(20 + rng.next() % 40) {
                let slow = if rng.next().is_multiple_of(50) {
                    80_000
                } else {
                    0
                };
                h.record(300 + rng.next() % 4_000 + slow);
            }
        }
        for t in TYPES {
            let h = metrics.histogram(
                "keel_task_duration_seconds",
                "bench",
                Unit::Micros,
                &[("type", t)],
            );
            for _ in 0..(5 + rng.next() % 20) {
                h.record(8_000 + rng.next() % 120_000);
            }
        }
        let start = now - (minutes - m) * 60_000;
        batch.push((metrics.take_interval_snapshots(), start));
        if batch.len() == 120 || m + 1 == minutes {
            let work = std::mem::take(&mut batch);
            stored += work.iter().map(|(s, _)| s.len()).sum::<usize>();
            core.store
                .write(move |tx| {
                    for (snaps, start) in &work {
                        history::persist(tx, snaps.clone(), *start, start + 60_000)?;
                    }
                    Ok::<_, crate::store::StoreError>(())
                })
                .await?;
        }
    }
    Ok(stored)
}

/// A signed-in dashboard client (cookie kept by hand, redirects not followed).
struct Client {
    agent: ureq::Agent,
    base: String,
    cookie: String,
}

impl Client {
    fn sign_in(base: &str, key: &str) -> anyhow::Result<Client> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .proxy(None)
            .build()
            .into();
        let mut form = agent.get(format!("{base}/admin/login")).call()?;
        let login_cookie = form
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("no sign-in cookie")?
            .to_string();
        let html = form.body_mut().read_to_string()?;
        let at = html
            .find("name=\"csrf\" value=\"")
            .context("no CSRF field")?
            + 19;
        let csrf = &html[at..at + 64];
        let answer = agent
            .post(format!("{base}/admin/login"))
            .header("cookie", &login_cookie)
            .content_type("application/x-www-form-urlencoded")
            .send(format!("csrf={csrf}&key={key}"))?;
        let cookie = answer
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("keel_session="))
            .and_then(|v| v.split(';').next())
            .context("sign-in gave no session")?
            .to_string();
        Ok(Client {
            agent,
            base: base.to_string(),
            cookie,
        })
    }

    /// Fetches `path` (with the session, or with `bearer`) and returns the time it took.
    fn time(&self, path: &str, bearer: Option<&str>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut request = self.agent.get(format!("{}{path}", self.base));
        request = match bearer {
            Some(key) => request.header("authorization", format!("Bearer {key}")),
            None => request.header("cookie", &self.cookie),
        };
        let mut answer = request.call()?;
        let body = answer
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()?;
        let took = started.elapsed();
        anyhow::ensure!(
            answer.status() == 200,
            "{path}: {} {}",
            answer.status(),
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        Ok(took)
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Fills a scratch store with `tasks` tasks and `days` days of snapshots, serves it, and prints
/// the render times of the overview and tasks pages (and the JSON API as a baseline).
pub fn run(dir: &Path, tasks: usize, days: u32, renders: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    let config = config(scratch.path(), days);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let clock: SharedClock = Arc::new(SystemClock);
    println!(
        "keel bench admin: {tasks} tasks, {days} days of per-minute snapshots ({} series), {renders} renders per page; scratch dir {} (deleted afterwards)",
        ROUTES.len() + TYPES.len(),
        scratch.path().display()
    );
    let filled = Instant::now();
    let snapshots = runtime.block_on(async {
        let core = crate::app::Core::open(config.clone(), Arc::clone(&clock))?;
        fill_tasks(&core, tasks).await?;
        let n = fill_history(&core, days).await?;
        core.store.close();
        anyhow::Ok(n)
    })?;
    println!(
        "filled in {:.1} s: {snapshots} snapshots, database {} MB",
        filled.elapsed().as_secs_f64(),
        std::fs::metadata(config.database_path()).map_or(0, |m| m.len()) / 1_000_000
    );
    let (app, base) = runtime.block_on(async {
        let app = crate::app::App::start(config.clone(), Arc::clone(&clock)).await?;
        let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let router = crate::http::router(app.http_state());
        tokio::spawn(crate::http::serve(listener, router, std::future::pending()));
        anyhow::Ok((app, base))
    })?;
    let key = std::fs::read_to_string(scratch.path().join(crate::auth::INITIAL_ADMIN_KEY_FILE))?;
    let key = key.trim();
    let client = Client::sign_in(&base, key)?;
    let pages: [(&str, &str, bool); 7] = [
        ("overview (charts: 6 h)", "/admin", false),
        ("overview (charts: 7 d)", "/admin?window=7d", false),
        ("overview live JSON", "/admin/live/overview", false),
        ("tasks", "/admin/tasks", false),
        ("tasks, status dead", "/admin/tasks?status=dead", false),
        (
            "baseline: GET /api/v1/tasks?limit=50",
            "/api/v1/tasks?limit=50",
            true,
        ),
        ("baseline: GET /api/v1/system", "/api/v1/system", true),
    ];
    println!();
    println!(
        "| {:<38} | {:>9} | {:>8} | {:>8} | {:>8} | {:>8} |",
        "page", "first ms", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    println!(
        "|{:-<40}|{:->11}|{:->10}|{:->10}|{:->10}|{:->10}|",
        "", "", "", "", "", ""
    );
    for (label, path, api) in pages {
        let bearer = api.then_some(key);
        let first = client.time(path, bearer)?;
        let mut times = Vec::with_capacity(renders);
        for _ in 0..renders {
            times.push(client.time(path, bearer)?);
        }
        times.sort();
        println!(
            "| {:<38} | {:>9.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} |",
            label,
            first.as_secs_f64() * 1000.0,
            quantile(&times, 0.5),
            quantile(&times, 0.95),
            quantile(&times, 0.99),
            quantile(&times, 1.0)
        );
    }
    println!();
    println!(
        "first = the first request (the 7 d chart merges a week of histograms once; settled buckets are then cached for 5 min)."
    );
    runtime.block_on(app.shutdown());
    Ok(())
}
