//! `keel keys …` and `keel dlq …`: run through a running server's API when one holds the
//! store, or offline on the store itself, and print the answer.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::{
    DlqCommand, Failure, KeysCommand, ServerAccess, http_agent, runtime, server_url, start_failure,
    usage,
};
use crate::app::{Core, StartError};
use crate::auth::{INITIAL_ADMIN_KEY_FILE, NewKey, Rotation, secs_to_ms};
use crate::clock::{Clock, SharedClock};
use crate::config::Config;
use crate::store::StoreError;

/// Where a management command runs.
enum Target {
    /// On the database directly (the server is stopped).
    Offline(Core),
    /// Through the running server's API.
    Remote {
        /// Base URL.
        base: String,
        /// API key.
        token: String,
    },
}

/// Opens the database for a management command, or, when a running keel holds it, prepares to
/// go through its API.
///
/// A command that only reads (`read_only`) never creates a data dir or a database: without one
/// it fails (exit 2: the configuration points nowhere), saying where it looked.
fn management_target(
    config: &Config,
    clock: &SharedClock,
    server: ServerAccess,
    read_only: bool,
) -> Result<Target, Failure> {
    let database = config.database_path();
    if read_only && !database.exists() {
        return Err(usage(anyhow!(
            "no keel database at {} (data_dir is {}): give --data-dir, --config or KEEL_DATA_DIR to point at keel's data",
            database.display(),
            config.data_dir.display()
        )));
    }
    match Core::open(config.clone(), Arc::clone(clock)) {
        Ok(core) => Ok(Target::Offline(core)),
        Err(StartError::Store(StoreError::Locked { .. })) => {
            let token = match server.api_key {
                Some(k) => k,
                None => std::fs::read_to_string(config.data_dir.join(INITIAL_ADMIN_KEY_FILE))
                    .map(|s| s.trim().to_string())
                    .map_err(|_| {
                        usage(anyhow!(
                            "keel is running, so this goes through its API: give an API key with --api-key or KEEL_API_KEY"
                        ))
                    })?,
            };
            Ok(Target::Remote {
                base: server_url(config, server.url)?,
                token,
            })
        }
        Err(e) => Err(start_failure(e)),
    }
}

/// Runs `work` on the offline core and closes the store afterwards.
fn run_offline<F, Fut>(core: Core, work: F) -> Result<Value, Failure>
where
    F: FnOnce(Arc<Core>) -> Fut,
    Fut: std::future::Future<Output = Result<Value, Failure>>,
{
    let core = Arc::new(core);
    let result = runtime()?.block_on(work(Arc::clone(&core)));
    core.store.close();
    result
}

pub(super) fn keys(
    config: Config,
    clock: SharedClock,
    server: ServerAccess,
    command: KeysCommand,
) -> Result<ExitCode, Failure> {
    let overlap_default = config.auth.rotation_overlap_seconds;
    let read_only = matches!(command, KeysCommand::List);
    let value = match management_target(&config, &clock, server, read_only)? {
        Target::Offline(core) => run_offline(core, |core| async move {
            keys_offline(&core, clock.as_ref(), command, overlap_default).await
        })?,
        Target::Remote { base, token } => keys_remote(&base, &token, command)?,
    };
    print_keys_result(value);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn dlq(
    config: Config,
    clock: SharedClock,
    server: ServerAccess,
    command: DlqCommand,
) -> Result<ExitCode, Failure> {
    // Without a database there is no dead task to look at or drain: never create one.
    let value = match management_target(&config, &clock, server, true)? {
        Target::Offline(core) => run_offline(core, |core| async move {
            let queue_failure = |e: crate::queue::QueueError| match e {
                crate::queue::QueueError::Invalid(_) => usage(e),
                other => Failure::from(anyhow::Error::new(other)),
            };
            Ok(match command {
                DlqCommand::Stats => {
                    serde_json::to_value(core.queue.dlq_stats().await.map_err(queue_failure)?)
                        .unwrap_or_default()
                }
                DlqCommand::Drain {
                    filter_type,
                    max,
                    dry_run,
                } => {
                    let report = core
                        .queue
                        .dlq_drain(crate::audit::SYSTEM_ACTOR, filter_type, max, dry_run)
                        .await
                        .map_err(queue_failure)?;
                    serde_json::json!({
                        "dry_run": report.dry_run,
                        "count": report.tasks.len(),
                        "tasks": report.tasks.iter().map(|t| serde_json::json!({
                            "id": t.id, "type": t.task_type, "error_class": t.last_error_class(),
                        })).collect::<Vec<_>>(),
                    })
                }
            })
        })?,
        Target::Remote { base, token } => match command {
            DlqCommand::Stats => remote_call(&base, &token, "GET", "/api/v1/dlq/stats", None)?,
            DlqCommand::Drain {
                filter_type,
                max,
                dry_run,
            } => remote_call(
                &base,
                &token,
                "POST",
                "/api/v1/dlq/drain",
                Some(
                    serde_json::json!({"filter_type": filter_type, "max": max, "dry_run": dry_run}),
                ),
            )?,
        },
    };
    print_dlq_result(&value);
    Ok(ExitCode::SUCCESS)
}

fn print_dlq_result(value: &Value) {
    if let Some(total) = value["total"].as_u64() {
        println!("dead tasks: {total}");
        if let Some(age) = value["oldest_age_seconds"].as_u64() {
            println!("oldest:     {age}s ago");
        }
        for (title, field) in [("by type", "by_type"), ("by error class", "by_error_class")] {
            if let Some(map) = value[field].as_object().filter(|m| !m.is_empty()) {
                println!("{title}:");
                for (k, v) in map {
                    println!("  {k:<32} {v}");
                }
            }
        }
        return;
    }
    let verb = if value["dry_run"] == Value::Bool(true) {
        "would move"
    } else {
        "moved"
    };
    println!("{verb} {} task(s) back to the queue", value["count"]);
    for t in value["tasks"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:<24} {}",
            t["id"].as_str().unwrap_or("-"),
            t["type"].as_str().unwrap_or("-"),
            t["error_class"].as_str().unwrap_or("-")
        );
    }
}

async fn keys_offline(
    core: &Core,
    clock: &dyn Clock,
    command: KeysCommand,
    overlap_default: u64,
) -> Result<Value, Failure> {
    let actor = crate::audit::SYSTEM_ACTOR;
    let auth = &core.auth;
    let created = |c: crate::auth::CreatedKey| serde_json::json!({"key": crate::http::key_json(&c.view), "token": c.token});
    Ok(match command {
        KeysCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let expires_at = expires_in.map(|s| clock.now_ms().saturating_add(secs_to_ms(s)));
            let new = NewKey {
                name,
                role,
                expires_at,
            };
            created(auth.create(actor, new).await.map_err(auth_failure)?)
        }
        KeysCommand::List => {
            serde_json::json!({"keys": auth.list().iter().map(crate::http::key_json).collect::<Vec<_>>()})
        }
        KeysCommand::Revoke { id, force } => {
            let view = auth.revoke(actor, id, force).await.map_err(auth_failure)?;
            serde_json::json!({"key": crate::http::key_json(&view)})
        }
        KeysCommand::Rotate {
            id,
            overlap,
            expires_in,
        } => {
            let rotation = Rotation {
                overlap_ms: secs_to_ms(overlap.unwrap_or(overlap_default)),
                expires_at: expires_in.map(|s| clock.now_ms().saturating_add(secs_to_ms(s))),
            };
            created(
                auth.rotate(actor, id, rotation)
                    .await
                    .map_err(auth_failure)?,
            )
        }
    })
}

fn auth_failure(e: crate::auth::AuthError) -> Failure {
    use crate::auth::AuthError;
    match e {
        AuthError::Invalid(_) => usage(e),
        other => Failure::from(anyhow::Error::new(other)),
    }
}

fn keys_remote(base: &str, token: &str, command: KeysCommand) -> Result<Value, Failure> {
    let (method, path, body) = match command {
        KeysCommand::Create {
            name,
            role,
            expires_in,
        } => (
            "POST",
            "/api/v1/keys".to_string(),
            Some(serde_json::json!({"name": name, "role": role, "expires_in_seconds": expires_in})),
        ),
        KeysCommand::List => ("GET", "/api/v1/keys".to_string(), None),
        KeysCommand::Revoke { id, force } => (
            "POST",
            format!("/api/v1/keys/{id}/revoke?force={force}"),
            None,
        ),
        KeysCommand::Rotate {
            id,
            overlap,
            expires_in,
        } => (
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            Some(serde_json::json!({"overlap_seconds": overlap, "expires_in_seconds": expires_in})),
        ),
    };
    remote_call(base, token, method, &path, body)
}

/// One API call to the running server; any answer but a success is a failure (exit 1) with the
/// server's message.
fn remote_call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let agent = http_agent();
    let auth = format!("Bearer {token}");
    let url = format!("{base}{path}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        (_, Some(body)) => agent
            .post(&url)
            .header("authorization", &auth)
            .send_json(body),
        (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
    };
    let mut response = response.with_context(|| format!("cannot reach keel at {base}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .context("cannot read the server's answer")?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("the server answered {status} with a body that is not JSON"))?;
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or(&text)
            .to_string();
        Err(anyhow!("server answered {status}: {message}").into())
    }
}

fn print_keys_result(value: Value) {
    if let Some(keys) = value["keys"].as_array() {
        println!(
            "{:<36}  {:<8}  {:<8}  {:<24}  {:<24}  NAME",
            "ID", "ROLE", "STATUS", "LAST USED", "EXPIRES"
        );
        for k in keys {
            let s = |f: &str| k[f].as_str().unwrap_or("-").to_string();
            println!(
                "{:<36}  {:<8}  {:<8}  {:<24}  {:<24}  {}",
                s("id"),
                s("role"),
                s("status"),
                s("last_used_at"),
                s("expires_at"),
                s("name")
            );
        }
        return;
    }
    let key = &value["key"];
    println!("id:      {}", key["id"].as_str().unwrap_or("-"));
    println!("name:    {}", key["name"].as_str().unwrap_or("-"));
    println!("role:    {}", key["role"].as_str().unwrap_or("-"));
    println!("status:  {}", key["status"].as_str().unwrap_or("-"));
    if let Some(expires) = key["expires_at"].as_str() {
        println!("expires: {expires}");
    }
    if let Some(token) = value["token"].as_str() {
        println!("key:     {token}");
        println!("(shown once: store it now; keel keeps only a hash)");
    }
}
