//! Drivers for a running keel (`keel serve`, started by `bench/run`): `keel bench lifecycle`
//! submits jobs over HTTP and waits until keel has delivered each one as a webhook to a local
//! sink and recorded it done; `keel bench rate` submits at a fixed rate, open loop, and measures
//! enqueue-to-start (the moment the sink receives the webhook) against the time each job was
//! *due* to be sent, so a stall is charged to every job it delays.
//!
//! The HTTP client is a minimal HTTP/1.1 keep-alive client over one TCP connection per
//! producer: cheap enough that the driver does not become what is measured on 2 cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::record::Recorder;

/// Where keel is and how to reach it.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// keel's base URL (loopback).
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    pub url: String,
    /// File holding an API key with the service role (keel writes `initial-admin-key`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// Address the webhook sink listens on (keel's `bench` handler points there).
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub sink: SocketAddr,
    /// Task type delivered to the sink.
    #[arg(long, default_value = "bench")]
    pub task_type: String,
    /// Append the results as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

/// `keel bench lifecycle`
#[derive(Debug, clap::Args)]
pub struct LifecycleArgs {
    #[command(flatten)]
    pub target: Target,
    /// Jobs submitted.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// Concurrent producers (one connection each).
    #[arg(long, default_value_t = 64)]
    pub producers: usize,
}

/// `keel bench rate`
#[derive(Debug, clap::Args)]
pub struct RateArgs {
    #[command(flatten)]
    pub target: Target,
    /// Jobs per second offered to the healthy target.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of offered load.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Connections the submissions are spread over (a submission waits for a free one; its
    /// latency still counts from the time it was due).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Record ids start with this (`latency`, `webhook`, `webhook.slow`).
    #[arg(long, default_value = "latency")]
    pub id: String,
    /// Jobs per second offered, in addition, to a target that never answers.
    #[arg(long, default_value_t = 0)]
    pub slow_rate: u64,
    /// Task type of the target that never answers.
    #[arg(long, default_value = "bench_slow")]
    pub slow_type: String,
    /// Address the never-answering target listens on.
    #[arg(long, default_value = "127.0.0.1:18082")]
    pub slow_sink: SocketAddr,
}

/// Microseconds since the epoch (the same clock in every process of this machine).
fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What a sink saw.
struct SinkStats {
    count: AtomicU64,
    /// Epoch µs of the first and last delivery.
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// Delivery time minus the `t` the job carries, in µs.
    lag_us: Mutex<Histogram<u64>>,
}

impl SinkStats {
    fn new() -> Arc<Self> {
        Arc::new(SinkStats {
            count: AtomicU64::new(0),
            first_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
            lag_us: Mutex::new(super::histogram()),
        })
    }

    fn delivered(&self, body: &[u8]) {
        let now = epoch_us();
        if let Ok(job) = serde_json::from_slice::<JobPayload>(body) {
            self.lag_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .saturating_record(now.saturating_sub(job.t).max(1));
        }
        self.first_us.fetch_min(now, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(serde::Deserialize)]
struct JobPayload {
    t: u64,
}

/// Starts a webhook sink on `addr`: it answers 200 at once, or (`answer = false`) never
/// answers (the request is held until keel gives up on it).
async fn start_sink(addr: SocketAddr, stats: Arc<SinkStats>, answer: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the webhook sink"))?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(
            move |axum::extract::State(stats): axum::extract::State<Arc<SinkStats>>,
                  body: axum::body::Bytes| async move {
                stats.delivered(&body);
                if !answer {
                    tokio::time::sleep(Duration::from_secs(300)).await;
                }
                "ok"
            },
        ),
    );
    let app = app.with_state(stats);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// A minimal HTTP/1.1 keep-alive client on one connection.
pub(crate) struct Client {
    stream: BufReader<TcpStream>,
    host: String,
    auth: String,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr, token: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(stream),
            host: addr.to_string(),
            auth: format!("Bearer {token}"),
        })
    }

    /// Sends one request and reads the whole answer: status and body.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n",
            self.host, self.auth
        )
        .into_bytes();
        if let Some(body) = body {
            out.extend_from_slice(
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).await?;
        read_response(&mut self.stream).await
    }
}

fn bad(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Reads one HTTP/1.1 response (content-length or chunked body).
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(bad("the server closed the connection"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP status line: {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(bad("the server closed the connection in the headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| bad("bad content-length"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            line.clear();
            reader.read_line(&mut line).await?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).await?;
    }
    Ok((status, body))
}

/// keel's address from its base URL (`http://host:port`).
fn keel_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs on this machine"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{url}: expected http://IP:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: benchmarks only target loopback addresses");
    }
    Ok(addr)
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API key from {}", path.display()))?
        .trim()
        .to_string())
}

fn submit_body(task_type: &str, t: u64) -> Vec<u8> {
    format!(r#"{{"type":"{task_type}","payload":{{"t":{t}}}}}"#).into_bytes()
}

async fn submit(client: &mut Client, body: &[u8]) -> anyhow::Result<()> {
    let (status, answer) = client.request("POST", "/api/v1/tasks", Some(body)).await?;
    if status != 201 {
        bail!(
            "keel answered {status} to a submission: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}

/// Whether keel still has tasks waiting or running.
async fn busy(client: &mut Client) -> anyhow::Result<bool> {
    for status in ["queued", "running", "retrying"] {
        let (code, body) = client
            .request(
                "GET",
                &format!("/api/v1/tasks?status={status}&limit=1"),
                None,
            )
            .await?;
        if code != 200 {
            bail!(
                "keel answered {code} to a task listing: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        if page["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn database_bytes(client: &mut Client) -> anyhow::Result<u64> {
    let (code, body) = client.request("GET", "/api/v1/system", None).await?;
    if code != 200 {
        bail!("keel answered {code} to /api/v1/system");
    }
    let system: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(system["database_file_bytes"].as_u64().unwrap_or(0))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Submits `jobs` jobs with `producers` connections, waits until each was delivered and keel
/// has nothing left queued or running.
pub fn lifecycle(args: &LifecycleArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let addr = keel_addr(&target.url)?;
    let token = read_token(&target.key_file)?;
    let out = Recorder::new(target.json.as_deref());
    let jobs = args.jobs.max(1);
    println!(
        "keel bench lifecycle: {jobs} jobs, {} producers, against {}",
        args.producers, target.url
    );
    runtime()?.block_on(async {
        let stats = SinkStats::new();
        start_sink(target.sink, Arc::clone(&stats), true).await?;
        let mut control = Client::connect(addr, &token).await?;
        let bytes_before = database_bytes(&mut control).await?;
        let remaining = Arc::new(AtomicI64::new(jobs as i64));
        let started = Instant::now();
        let mut producers = Vec::new();
        for _ in 0..args.producers.max(1) {
            let remaining = Arc::clone(&remaining);
            let token = token.clone();
            let task_type = target.task_type.clone();
            producers.push(tokio::spawn(async move {
                let mut client = Client::connect(addr, &token).await?;
                while remaining.fetch_sub(1, Ordering::Relaxed) > 0 {
                    submit(&mut client, &submit_body(&task_type, epoch_us())).await?;
                }
                anyhow::Ok(())
            }));
        }
        for p in producers {
            p.await??;
        }
        let submitted = started.elapsed();
        let deadline = started + Duration::from_secs(target.timeout_seconds.max(1));
        while stats.count.load(Ordering::Relaxed) < jobs {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {jobs} jobs were delivered within {}s",
                    stats.count.load(Ordering::Relaxed),
                    target.timeout_seconds
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while busy(&mut control).await? {
            if Instant::now() > deadline {
                bail!("keel still had tasks queued or running after {}s", target.timeout_seconds);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        let bytes_after = database_bytes(&mut control).await?;
        out.figure(
            "lifecycle",
            "keel",
            jobs as f64 / elapsed.as_secs_f64(),
            "jobs/s",
            &format!(
                "{jobs} jobs: {} producers POST /api/v1/tasks; keel's dispatcher delivers each as a webhook to a local sink answering 200 and records it succeeded; timed to the last completion (all submitted after {:.1}s)",
                args.producers,
                submitted.as_secs_f64()
            ),
        )?;
        let lag = stats.lag_us.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.figure(
            "lifecycle.p99",
            "keel",
            lag.value_at_quantile(0.99) as f64 / 1000.0,
            "ms",
            "submit-to-delivery under the lifecycle's backlog",
        )?;
        let grown = bytes_after.saturating_sub(bytes_before);
        out.figure(
            "data.per_million",
            "keel",
            grown as f64 / jobs as f64 * 1e6 / (1024.0 * 1024.0),
            "MiB",
            &format!(
                "growth of keel.redb over the lifecycle ({bytes_before} → {bytes_after} bytes for {jobs} finished tasks with their audit entries), extrapolated to 10^6"
            ),
        )?;
        anyhow::Ok(())
    })
}

/// Offers `rate` jobs/s (and `slow_rate` to a target that never answers) for `seconds`, open
/// loop, and measures enqueue-to-start at the healthy sink.
pub fn rate(args: &RateArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let addr = keel_addr(&target.url)?;
    let token = read_token(&target.key_file)?;
    let out = Recorder::new(target.json.as_deref());
    let rate = args.rate.max(1);
    let total = rate * args.seconds.max(1);
    let slow_total = args.slow_rate * args.seconds.max(1);
    println!(
        "keel bench rate: {rate} jobs/s for {}s open loop{}, against {}",
        args.seconds,
        if slow_total > 0 {
            format!(", plus {}/s to a target that never answers", args.slow_rate)
        } else {
            String::new()
        },
        target.url
    );
    runtime()?.block_on(async {
        let healthy = SinkStats::new();
        start_sink(target.sink, Arc::clone(&healthy), true).await?;
        let slow = SinkStats::new();
        if slow_total > 0 {
            start_sink(args.slow_sink, Arc::clone(&slow), false).await?;
        }
        // The schedule: job i of the healthy stream is due at i/rate; the slow stream is
        // spread evenly among it.
        let mut schedule: Vec<(u64, bool)> = (0..total)
            .map(|i| (i * 1_000_000 / rate, false))
            .chain((0..slow_total).map(|i| (i * 1_000_000 / args.slow_rate.max(1), true)))
            .collect();
        schedule.sort_unstable();
        let (tx, rx) = tokio::sync::mpsc::channel::<(u64, bool)>(total as usize + slow_total as usize + 1);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let failures = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..args.connections.max(1) {
            let rx = Arc::clone(&rx);
            let token = token.clone();
            let failures = Arc::clone(&failures);
            let healthy_type = target.task_type.clone();
            let slow_type = args.slow_type.clone();
            workers.push(tokio::spawn(async move {
                let mut client = Client::connect(addr, &token).await?;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((due_us, is_slow)) = next else {
                        return anyhow::Ok(());
                    };
                    let task_type = if is_slow { &slow_type } else { &healthy_type };
                    if let Err(e) = submit(&mut client, &submit_body(task_type, due_us)).await {
                        if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("keel bench rate: a submission failed: {e:#}");
                        }
                        client = Client::connect(addr, &token).await?;
                    }
                }
            }));
        }
        let start_us = epoch_us() + 50_000;
        let start = Instant::now() + Duration::from_millis(50);
        for (offset_us, is_slow) in schedule {
            tokio::time::sleep_until((start + Duration::from_micros(offset_us)).into()).await;
            if tx.send((start_us + offset_us, is_slow)).await.is_err() {
                break;
            }
        }
        drop(tx);
        for w in workers {
            w.await??;
        }
        let failed = failures.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} submissions failed");
        }
        let deadline = Instant::now() + Duration::from_secs(target.timeout_seconds.clamp(1, 120));
        while healthy.count.load(Ordering::Relaxed) < total {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delivered = healthy.count.load(Ordering::Relaxed);
        let lag = healthy.lag_us.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let span_us = healthy
            .last_us
            .load(Ordering::Relaxed)
            .saturating_sub(start_us)
            .max(1);
        let offered = format!(
            "{rate} jobs/s offered for {}s, open loop over {} connections{}; latency from the time each job was due to be submitted to its arrival at the sink",
            args.seconds,
            args.connections,
            if slow_total > 0 {
                format!(
                    "; plus {}/s of type {} whose target never answers (keel gives up after the handler's timeout)",
                    args.slow_rate, args.slow_type
                )
            } else {
                String::new()
            }
        );
        out.figure(
            &format!("{}.rate", args.id),
            "keel",
            delivered as f64 / (span_us as f64 / 1e6),
            "jobs/s",
            &format!("{delivered} of {total} delivered; {offered}"),
        )?;
        out.figure(
            &format!("{}.p50", args.id),
            "keel",
            lag.value_at_quantile(0.5) as f64 / 1000.0,
            "ms",
            &offered,
        )?;
        out.figure(
            &format!("{}.p99", args.id),
            "keel",
            lag.value_at_quantile(0.99) as f64 / 1000.0,
            "ms",
            &offered,
        )?;
        out.figure(
            &format!("{}.max", args.id),
            "keel",
            lag.max() as f64 / 1000.0,
            "ms",
            &offered,
        )?;
        if slow_total > 0 {
            println!(
                "  the never-answering target received {} attempts for {slow_total} jobs",
                slow.count.load(Ordering::Relaxed)
            );
        }
        if delivered < total {
            bail!("only {delivered} of {total} jobs reached the sink");
        }
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_with_length_and_chunks_are_read() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut reader = BufReader::new(&raw[..]);
        assert_eq!(
            read_response(&mut reader).await.unwrap(),
            (201, b"hello".to_vec())
        );
        assert_eq!(
            read_response(&mut reader).await.unwrap(),
            (200, b"abcde".to_vec())
        );
    }

    #[test]
    fn only_loopback_targets() {
        assert!(keel_addr("http://127.0.0.1:18080").is_ok());
        assert!(keel_addr("http://10.0.0.1:80").is_err());
        assert!(keel_addr("https://127.0.0.1:1").is_err());
    }

    #[tokio::test]
    async fn client_submits_to_a_server_and_the_sink_measures_lag() {
        let stats = SinkStats::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        start_sink(addr, Arc::clone(&stats), true).await.unwrap();
        let mut client = Client::connect(addr, "k").await.unwrap();
        for _ in 0..3 {
            let (status, body) = client
                .request(
                    "POST",
                    "/",
                    Some(format!(r#"{{"t":{}}}"#, epoch_us()).as_bytes()),
                )
                .await
                .unwrap();
            assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        }
        assert_eq!(stats.count.load(Ordering::Relaxed), 3);
        assert_eq!(stats.lag_us.lock().unwrap().len(), 3);
    }
}
