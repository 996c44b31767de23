//! `keel bench limits`: what this machine's disk and HTTP stack allow at best, measured on the
//! data dir's disk — the ceilings keel's own figures are divided by — and `keel bench hello`,
//! the bare axum endpoint whose requests/s is the HTTP ceiling.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use super::record::Recorder;

/// `keel bench limits`
#[derive(Debug, clap::Args)]
pub struct LimitsArgs {
    /// Directory on the disk to measure (the data dir's disk).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Append the results as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `keel bench hello`
#[derive(Debug, clap::Args)]
pub struct HelloArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:18090")]
    pub listen: SocketAddr,
    /// Stop by itself after this many seconds, so a forgotten server never lingers.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
}

/// Measures fsync latency and rate, raw redb single commits and keel's group commit.
pub fn run(args: &LimitsArgs) -> anyhow::Result<()> {
    let each = Duration::from_secs(args.seconds.max(1));
    let scratch = tempfile::tempdir_in(&args.dir).with_context(|| {
        format!(
            "cannot create a scratch directory in {}",
            args.dir.display()
        )
    })?;
    let out = Recorder::new(args.json.as_deref());
    println!(
        "keel bench limits: {}s per measurement on the disk of {}",
        each.as_secs(),
        args.dir.display()
    );
    let (latency_us, count, elapsed) = fsync_probe(scratch.path(), each)?;
    let note = "fdatasync after rewriting one 4 KiB block, one thread";
    out.figure(
        "fsync.p50",
        "limit",
        latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        "ms",
        note,
    )?;
    out.figure(
        "fsync.p99",
        "limit",
        latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
        note,
    )?;
    out.figure(
        "fsync.rate",
        "limit",
        count as f64 / elapsed.as_secs_f64(),
        "fsyncs/s",
        note,
    )?;
    let raw = super::raw_redb(&scratch.path().join("raw.redb"), each)?;
    out.figure(
        "redb.single",
        "limit",
        raw.rate(),
        "writes/s",
        "raw redb, one 128-byte insert per Durability::Immediate commit, one thread",
    )?;
    for writers in [1usize, 8, 64] {
        let row = super::group_commit(
            &scratch.path().join(format!("group-{writers}.redb")),
            writers,
            each,
        )?;
        let (batch, _) = row.commits.unwrap_or((1.0, Duration::ZERO));
        out.figure(
            &format!("store.group.w{writers}"),
            "keel",
            row.rate(),
            "writes/s",
            &format!(
                "keel's group-commit writer, {writers} writer thread(s), mean {batch:.1} writes per commit"
            ),
        )?;
    }
    Ok(())
}

/// Rewrites one 4 KiB block and `fdatasync`s it, in a loop, for `each`.
fn fsync_probe(dir: &Path, each: Duration) -> anyhow::Result<(Histogram<u64>, u64, Duration)> {
    let path = dir.join("fsync.probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = [0xa5u8; 4096];
    file.write_all_at(&block, 0)?;
    file.sync_all()?;
    let mut latency_us = super::histogram();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < each {
        let t0 = Instant::now();
        file.write_all_at(&block, 0)?;
        file.sync_data()?;
        latency_us.saturating_record(t0.elapsed().as_micros().max(1) as u64);
        count += 1;
    }
    Ok((latency_us, count, started.elapsed()))
}

/// Serves `GET /` and `POST /` answering `hello`, with nothing else in front of it, until
/// SIGTERM/SIGINT or `max_seconds`.
pub fn hello(args: &HelloArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async { "hello" }).post(|| async { "hello" }),
        );
        let signalled = crate::app::shutdown_signal()?;
        let limit = Duration::from_secs(args.max_seconds.max(1));
        println!("keel bench hello: listening on {}", listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = signalled => {}
                    _ = tokio::time::sleep(limit) => {}
                }
            })
            .await?;
        anyhow::Ok(())
    })
}
