//! The command line: `serve`, `config check`, `audit verify`, `keys …`, `healthcheck`,
//! `doctor`, `completions`, `version` and `bench store` (and the hidden `manpage`, used when
//! building packages).
//!
//! Exit codes: 0 success, 1 failure (including a failed verification or health check, and a
//! server's error answer), 2 bad usage or bad configuration, 3 (`audit verify`) the database
//! needs crash recovery first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::{CommandFactory, Parser, Subcommand};

use crate::app::{self, StartError};
use crate::audit::Audit;
use crate::auth::Role;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::config::{Config, LoadOptions, LogFormat};
use crate::store::StoreError;

mod manage;

use manage::{dlq, keys};

/// keel: a self-hosted reliability appliance in one binary.
#[derive(Debug, Parser)]
#[command(name = "keel", version = app::VERSION, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: embedded defaults; env KEEL_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides data_dir; env KEEL_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// keel's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API, dashboard, workers).
    Serve {
        /// Address to listen on (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Inspect the configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with the audit log (offline: the server must be stopped).
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage API keys: through the running server, or directly when it is stopped.
    Keys {
        /// How to reach a running server.
        #[command(flatten)]
        server: ServerAccess,
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect and drain the dead-letter queue: through the running server, or directly when
    /// it is stopped.
    Dlq {
        /// How to reach a running server.
        #[command(flatten)]
        server: ServerAccess,
        /// What to do.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Exit 0 when the server's /ready answers 200 (for container and systemd checks).
    Healthcheck {
        /// Server URL (default: from server.listen; env KEEL_URL).
        #[arg(long, env = "KEEL_URL", value_name = "URL")]
        url: Option<String>,
    },
    /// Check the installation: config, data dir, disk, database, schema, audit chain, secret
    /// file modes, clock, listen port and systemd unit. Exits 1 when a check fails.
    Doctor {
        /// Print the report as JSON: {"ok": bool, "checks": [{name, status, message, hint}]}.
        #[arg(long)]
        json: bool,
        /// An operator or admin key, so that a running keel verifies its audit chain for doctor
        /// (env KEEL_API_KEY; default: the initial-admin-key file in the data dir, if readable).
        #[arg(long, env = "KEEL_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
    /// Write the man pages (`keel.1` and one per subcommand, roff) into DIR; used when
    /// building packages.
    #[command(hide = true)]
    Manpage {
        /// Directory to write the pages into (it must exist).
        dir: PathBuf,
    },
    /// Measure performance on this machine.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// How management commands reach a running server (when it holds the database).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerAccess {
    /// Server URL when it is running (default: from server.listen; env KEEL_URL).
    #[arg(long, global = true, env = "KEEL_URL", value_name = "URL")]
    url: Option<String>,
    /// API key for the running server (env KEEL_API_KEY; default: the initial-admin-key
    /// file in the data dir, if readable).
    #[arg(long, global = true, env = "KEEL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// `keel dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead tasks by type and error class, and the oldest one's age.
    Stats,
    /// Move dead tasks back to the queue with fresh attempts.
    Drain {
        /// Only tasks of this type.
        #[arg(long, value_name = "TYPE")]
        filter_type: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N")]
        max: usize,
        /// Only list what would move.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `keel config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets as ***).
    Check,
}

/// `keel audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain and the signed checkpoints. Exit 3 when the database needs crash
    /// recovery first (keel was killed): run again with --repair, or start keel once.
    Verify {
        /// Run redb's crash recovery first when the database needs it (writes only what
        /// recovery writes; the audit entries are not changed).
        #[arg(long)]
        repair: bool,
    },
}

/// `keel keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Its role.
        #[arg(long, value_enum)]
        role: Role,
        /// Lifetime with its unit, e.g. 90d, 12h, 30m, 45s (at most 5 years).
        #[arg(long, value_name = "DURATION", value_parser = parse_lifetime_secs)]
        expires_in: Option<u64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key at once.
    Revoke {
        /// Key id.
        #[arg(value_parser = parse_key_id)]
        id: uuid::Uuid,
        /// Revoke it even when it is the last active admin key.
        #[arg(long)]
        force: bool,
    },
    /// Replace a key; the old one keeps working during the overlap.
    Rotate {
        /// Key id.
        #[arg(value_parser = parse_key_id)]
        id: uuid::Uuid,
        /// How long the old key keeps working, e.g. 24h, at most 30d (default:
        /// auth.rotation_overlap_seconds).
        #[arg(long, value_name = "DURATION", value_parser = parse_overlap_secs)]
        overlap: Option<u64>,
        /// Lifetime of the new key from now, e.g. 90d, at most 5 years (default: the old key's
        /// expiry).
        #[arg(long, value_name = "DURATION", value_parser = parse_lifetime_secs)]
        expires_in: Option<u64>,
    },
}

/// `keel bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable write rates: raw redb single commits vs keel's group commit.
    Store {
        /// Directory for the scratch database (default: the current directory's disk).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Task queue rates: durable enqueue and full lifecycle, in-process and over HTTP.
    Queue {
        /// Directory for the scratch databases (default: the current directory's disk).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// The machine's limits: fsync latency and rate, raw redb single commits, group commit.
    Limits(crate::bench::limits::LimitsArgs),
    /// A bare axum "hello" endpoint: the HTTP ceiling, for a load generator such as wrk.
    Hello(crate::bench::limits::HelloArgs),
    /// In-process durable enqueue (1, 8, 64 producers) and full lifecycle, without HTTP.
    Inproc(crate::bench::inproc::InprocArgs),
    /// Audit chain verification against raw blake3 over the same bytes.
    Audit(crate::bench::inproc::AuditArgs),
    /// Full lifecycle against a running keel: submit over HTTP, deliver to a local sink.
    Lifecycle(crate::bench::drive::LifecycleArgs),
    /// Enqueue-to-start latency against a running keel at a fixed rate, open loop.
    Rate(crate::bench::drive::RateArgs),
    /// One table from the JSON-lines results of a run (`bench/run` calls it).
    Report(crate::bench::report::ReportArgs),
    /// Dashboard render times (overview, tasks) over many tasks and days of metric history.
    Admin {
        /// Directory for the scratch database (default: the current directory's disk).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Tasks in the store.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Days of per-minute metric snapshots.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Requests per page measured.
        #[arg(long, default_value_t = 200)]
        renders: usize,
    },
}

/// Parses a duration with its unit: `90d`, `12h`, `30m` or `45s`, into seconds. A bare number
/// is refused, since nobody can tell whether `90` meant seconds or days.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 90d, 12h, 30m, 45s)"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => {
            return Err(format!("`{s}` has no unit: write {s}s, {s}m, {s}h or {s}d"));
        }
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// A rotation overlap: a duration of at most 30 days.
fn parse_overlap_secs(s: &str) -> Result<u64, String> {
    let secs = parse_duration_secs(s)?;
    if secs > crate::config::MAX_ROTATION_OVERLAP_SECONDS {
        return Err(format!(
            "`{s}` is longer than the 30 days an overlap may last"
        ));
    }
    Ok(secs)
}

/// A key lifetime: a duration of at least a second and at most 5 years (1826 days).
fn parse_lifetime_secs(s: &str) -> Result<u64, String> {
    let secs = parse_duration_secs(s)?;
    if secs == 0 {
        return Err(format!("`{s}` would expire the key at once"));
    }
    if secs.saturating_mul(1000) > crate::auth::MAX_KEY_LIFETIME_MS as u64 {
        return Err(format!(
            "`{s}` is longer than the 5 years (1826d) a key may live"
        ));
    }
    Ok(secs)
}

/// Parses a key id argument, saying what was expected when it is not one.
fn parse_key_id(s: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim()).map_err(|_| format!("expected a key id (UUID), got `{s}`"))
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 1, error }
    }
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("keel: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let mut options = LoadOptions::from_process_env(cli.config.clone());
    options.data_dir = cli.data_dir.clone();
    if let Command::Serve { listen } = &cli.command {
        options.listen = *listen;
    }
    Config::load(&options).map_err(usage)
}

fn init_logging(config: &Config, default_level: Option<&str>) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| default_level.map(str::to_string))
        .unwrap_or_else(|| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?)
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "keel", &mut script);
            write_stdout(&script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            println!("keel {}", app::VERSION);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Doctor { json, api_key } => {
            let mut load = LoadOptions::from_process_env(cli.config.clone());
            load.data_dir = cli.data_dir.clone();
            return doctor(load, *json, api_key.clone());
        }
        Command::Manpage { dir } => {
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let config = load_config(&cli)?;
    let clock: SharedClock = Arc::new(SystemClock);
    match cli.command {
        Command::Serve { .. } => {
            init_logging(&config, None);
            runtime()?
                .block_on(app::serve(config, clock))
                .map_err(start_failure)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            app::validate_start(&config).map_err(start_failure)?;
            println!("# keel configuration is valid; effective values:");
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { repair },
        } => {
            init_logging(&config, Some("warn"));
            audit_verify(&config, repair)
        }
        Command::Keys { server, command } => {
            init_logging(&config, Some("warn"));
            keys(config, clock, server, command)
        }
        Command::Dlq { server, command } => {
            init_logging(&config, Some("warn"));
            dlq(config, clock, server, command)
        }
        Command::Healthcheck { url } => healthcheck(&config, url),
        Command::Bench {
            command: BenchCommand::Store { dir, seconds },
        } => {
            init_logging(&config, Some("warn"));
            crate::bench::store(&dir, std::time::Duration::from_secs(seconds.max(1)))
                .map_err(Failure::from)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Queue { dir, seconds },
        } => {
            init_logging(&config, Some("warn"));
            crate::bench::queue(&dir, std::time::Duration::from_secs(seconds.max(1)))
                .map_err(Failure::from)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                command @ (BenchCommand::Limits(_)
                | BenchCommand::Hello(_)
                | BenchCommand::Inproc(_)
                | BenchCommand::Audit(_)
                | BenchCommand::Lifecycle(_)
                | BenchCommand::Rate(_)
                | BenchCommand::Report(_)),
        } => {
            init_logging(&config, Some("warn"));
            match command {
                BenchCommand::Limits(args) => crate::bench::limits::run(&args),
                BenchCommand::Hello(args) => crate::bench::limits::hello(&args),
                BenchCommand::Inproc(args) => crate::bench::inproc::run(&args),
                BenchCommand::Audit(args) => crate::bench::inproc::audit(&args),
                BenchCommand::Lifecycle(args) => crate::bench::drive::lifecycle(&args),
                BenchCommand::Rate(args) => crate::bench::drive::rate(&args),
                BenchCommand::Report(args) => crate::bench::report::run(&args),
                _ => unreachable!("matched by the pattern above"),
            }
            .map_err(Failure::from)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Admin {
                    dir,
                    tasks,
                    days,
                    renders,
                },
        } => {
            init_logging(&config, Some("warn"));
            crate::bench::admin::run(&dir, tasks, days.max(1), renders.max(1))
                .map_err(Failure::from)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { .. }
        | Command::Version
        | Command::Manpage { .. }
        | Command::Doctor { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `keel doctor`: runs every check (a bad configuration is one of them, not a usage error).
fn doctor(load: LoadOptions, json: bool, api_key: Option<String>) -> Result<ExitCode, Failure> {
    let report = crate::doctor::run(&crate::doctor::Options {
        load,
        api_key,
        now_ms: SystemClock.now_ms(),
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes to stdout; a closed pipe (`keel … | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e)
            .context("cannot write to stdout")
            .into()),
        _ => Ok(()),
    }
}

fn start_failure(e: StartError) -> Failure {
    match e {
        StartError::Store(StoreError::NewerSchema { .. })
        | StartError::Cycles(crate::cycles::CyclesError::Config(_)) => usage(e),
        other => Failure::from(anyhow::Error::new(other)),
    }
}

/// Exit code of `keel audit verify` when the database needs crash recovery before it can be
/// read: not a failed verification, which is 1.
const NEEDS_RECOVERY: u8 = 3;

fn audit_verify(config: &Config, repair: bool) -> Result<ExitCode, Failure> {
    let path = config.database_path();
    if !path.exists() {
        bail_usage(format!(
            "no keel database at {} (data_dir is {}; give --data-dir, --config or KEEL_DATA_DIR)",
            path.display(),
            config.data_dir.display()
        ))?;
    }
    let in_use = || {
        anyhow!(
            "{} is in use by a running keel: stop it first, or use POST /api/v1/audit/verify",
            path.display()
        )
    };
    if repair {
        // A writable open runs redb's recovery when the file needs it, then closes cleanly.
        match redb::Database::open(&path) {
            Ok(db) => drop(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(in_use().into()),
            Err(other) => {
                return Err(anyhow!("cannot repair {}: {other}", path.display()).into());
            }
        }
    }
    let db = match redb::ReadOnlyDatabase::open(&path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(in_use().into()),
        Err(redb::DatabaseError::RepairAborted) => {
            return Err(Failure {
                code: NEEDS_RECOVERY,
                error: anyhow!(
                    "{} was not closed cleanly (keel was stopped by a crash or kill -9) and needs crash recovery before it can be verified; nothing is known to be wrong with the audit log. Run `keel audit verify --repair` (recovers, then verifies), or start keel once",
                    path.display()
                ),
            });
        }
        Err(other) => return Err(anyhow!("cannot open {}: {other}", path.display()).into()),
    };
    let audit =
        Audit::load(&config.data_dir, config.audit.checkpoint_every).map_err(anyhow::Error::new)?;
    let tx = redb::ReadableDatabase::begin_read(&db).context("cannot read the database")?;
    let report = audit.verify(&tx).context("cannot read the audit log")?;
    println!("{report}");
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bail_usage(message: String) -> Result<(), Failure> {
    Err(usage(anyhow!(message)))
}

/// The base URL of the server: `url` when given (it must be an `http://` or `https://` URL with
/// a host, else a usage error), or the configured `server.listen`.
fn server_url(config: &Config, url: Option<String>) -> Result<String, Failure> {
    let url = match url {
        Some(url) => {
            let parsed: Option<ureq::http::Uri> = url.trim().parse().ok();
            let usable = parsed.as_ref().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            if !usable {
                return Err(usage(anyhow!(
                    "--url: expected an http:// or https:// URL such as http://127.0.0.1:8080, got `{url}`"
                )));
            }
            url.trim().to_string()
        }
        None => {
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    Ok(url.trim_end_matches('/').to_string())
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

fn healthcheck(config: &Config, url: Option<String>) -> Result<ExitCode, Failure> {
    let url = format!("{}/ready", server_url(config, url)?);
    let mut response = http_agent()
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if status == 200 {
        println!("ready");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("not ready ({status}): {body}");
        Ok(ExitCode::FAILURE)
    }
}
