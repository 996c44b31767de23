//! Cycles API: profiles, run profiles and their schemas, reload, triggers, cycles with their
//! checkpoints and dispatch receipts, execution records, the value ledger, telemetry (query and
//! replay), advisory signals, strategy proposals and governance.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::{ApiQuery, optional_body, parse_id};
use super::error::ApiError;
use super::tasks::task_json;
use crate::auth::Principal;
use crate::clock::{Millis, rfc3339};
use crate::cycles::model::{
    Checkpoint, CycleRun, DispatchRecord, ExecutionRecord, GovernanceFlag, LedgerEntry, Proposal,
    Signal,
};
use crate::cycles::telemetry::{TelemetryFilter, event_json};
use crate::cycles::{GovernanceView, RecordFilter, TriggerRequest, profiles};

/// Events sent per read while replaying.
const REPLAY_PAGE: usize = 500;

/// Parses a time given as RFC 3339 or epoch milliseconds.
fn parse_time(field: &str, raw: &str) -> Result<Millis, ApiError> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{field}: `{raw}` is neither an RFC 3339 time nor epoch milliseconds"
            ))
        })
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn cycle_json(run: &CycleRun) -> Value {
    json!({
        "id": run.id,
        "status": run.status.as_str(),
        "run_profile_id": run.run_profile_id,
        "profile_id": run.profile_id,
        "namespace": run.namespace,
        "slot": run.slot,
        "initiation_hash": run.initiation_hash,
        "profile_version": run.profile_version,
        "trigger": run.trigger,
        "created_by": run.actor,
        "created_at": rfc3339(run.created_at),
        "finished_at": run.finished_at.map(rfc3339),
        "duration_ms": run.finished_at.map(|f| f - run.created_at),
        "error": run.error,
    })
}

fn checkpoint_json(c: &Checkpoint) -> Value {
    json!({
        "seq": c.seq,
        "stage": c.stage.as_str(),
        "at": rfc3339(c.at),
        "output": c.output.as_deref().map(json_text),
        "webhook_ids": c.webhook_ids,
        "detail": json_text(&c.detail),
    })
}

fn dispatch_json(d: &DispatchRecord, task: Option<&crate::queue::Task>) -> Value {
    json!({
        "target": d.target,
        "endpoint": d.endpoint,
        "url": d.url,
        "method": d.method,
        "task_id": d.task_id,
        "webhook_id": d.webhook_id,
        "enqueued_at": rfc3339(d.enqueued_at),
        "outcome": d.outcome,
        "finished_at": d.finished_at.map(rfc3339),
        "http_status": d.status,
        "latency_ms": d.latency_ms,
        "attempts": d.attempts,
        "task_status": task.map(|t| t.status.as_str()),
        "receipts": task.map(|t| task_json(t)["attempts"].clone()),
    })
}

fn record_json(r: &ExecutionRecord) -> Value {
    json!({
        "id": r.id,
        "at": rfc3339(r.at),
        "cycle_id": r.cycle_id,
        "run_profile_id": r.run_profile_id,
        "profile_id": r.profile_id,
        "namespace": r.namespace,
        "kind": r.kind,
        "stage": r.stage,
        "outcome": r.outcome,
        "detail": json_text(&r.detail),
    })
}

fn ledger_json(e: &LedgerEntry) -> Value {
    json!({
        "id": e.id,
        "at": rfc3339(e.at),
        "cycle_id": e.cycle_id,
        "run_profile_id": e.run_profile_id,
        "profile_id": e.profile_id,
        "namespace": e.namespace,
        "tags": json_text(&e.tags),
    })
}

fn signal_json(s: &Signal) -> Value {
    json!({
        "id": s.id,
        "profile_id": s.profile_id,
        "at": rfc3339(s.at),
        "signal": s.signal,
        "confidence": s.confidence,
        "success_rate": s.success_rate,
        "delivery_rate": s.delivery_rate,
        "dispatch_latency_p95_ms": s.dispatch_latency_p95_ms,
        "samples": s.samples,
        "window_from": rfc3339(s.window_from),
        "recommendation": s.recommendation,
        "read_only": true,
    })
}

fn proposal_json(p: &Proposal) -> Value {
    json!({
        "id": p.id,
        "profile_id": p.profile_id,
        "signal_id": p.signal_id,
        "created_at": rfc3339(p.created_at),
        "created_by": p.created_by,
        "kind": p.kind,
        "rationale": p.rationale,
        "patch": json_text(&p.patch),
        "status": p.status,
        "decided_by": p.decided_by,
        "decided_at": p.decided_at.map(rfc3339),
        "outcome": p.outcome,
    })
}

fn flag_json(f: &GovernanceFlag) -> Value {
    json!({"on": f.on, "by": f.by, "at": rfc3339(f.at), "reason": f.reason})
}

fn governance_json(g: &GovernanceView) -> Value {
    json!({
        "paused": g.is_paused(),
        "paused_by_config": g.paused_by_config,
        "pause": g.paused.as_ref().map(flag_json),
        "halted_namespaces": g.namespaces.iter().filter(|(_, f)| f.on)
            .map(|(ns, _)| ns).collect::<Vec<_>>(),
        "namespaces": g.namespaces.iter().map(|(ns, f)| (ns.clone(), flag_json(f)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

pub(super) async fn profiles_list(State(app): State<AppState>) -> Json<Value> {
    let set = app.cycles.profile_set();
    let list: Vec<Value> = set
        .profiles
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
            v["version"] = json!(set.versions.get(&p.profile_id).copied());
            v
        })
        .collect();
    Json(json!({"profiles": list, "dir": set.dir}))
}

pub(super) async fn run_profiles_list(State(app): State<AppState>) -> Json<Value> {
    let set = app.cycles.profile_set();
    Json(json!({"run_profiles": set.run_profiles, "dir": set.dir}))
}

pub(super) async fn schema_get(Path(name): Path<String>) -> Result<Response, ApiError> {
    let schema = profiles::schema(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no schema `{name}` (there are: {})",
            profiles::SCHEMAS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/schema+json")], schema).into_response())
}

pub(super) async fn config_reload(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let report = app.cycles.reload(&principal.actor()).await?;
    Ok(Json(json!({
        "profiles": report.profiles,
        "run_profiles": report.run_profiles,
        "versions": report.versions,
        "changed": report.changed,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    namespace: Option<String>,
    run_profile_id: Option<String>,
    slot: Option<String>,
}

pub(super) async fn cycles_trigger(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: TriggerBody = optional_body(&body)?;
    let t = app
        .cycles
        .trigger(
            &principal.actor(),
            TriggerRequest {
                namespace: body.namespace,
                run_profile_id: body.run_profile_id,
                slot: body.slot,
            },
        )
        .await?;
    let status = if t.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "cycle_run_id": t.cycle_id,
            "created": t.created,
            "run_profile_id": t.run_profile_id,
            "namespace": t.namespace,
            "initiation_hash": t.initiation_hash,
        })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunProfilesTriggerBody {
    slot: Option<String>,
}

pub(super) async fn run_profiles_trigger(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: RunProfilesTriggerBody = optional_body(&body)?;
    let outcomes = app
        .cycles
        .trigger_run_profiles(&principal.actor(), body.slot)
        .await?;
    Ok(Json(json!({
        "runs": outcomes.iter().map(|o| json!({
            "run_profile_id": o.run_profile_id,
            "namespace": o.namespace,
            "cycle_run_id": o.cycle.as_ref().map(|c| c.cycle_id),
            "created": o.cycle.as_ref().map(|c| c.created),
            "skipped": o.skipped,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecentQuery {
    limit: Option<usize>,
}

pub(super) async fn cycles_recent(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 100, got {limit}"
        )));
    }
    let cycles = app.cycles.recent(limit).await?;
    Ok(Json(json!({
        "cycles": cycles.iter().map(|c| {
            let mut v = cycle_json(&c.run);
            v["stage"] = json!(c.stage.as_str());
            v["stage_at"] = json!(rfc3339(c.stage_at));
            v
        }).collect::<Vec<_>>(),
    })))
}

pub(super) async fn cycles_get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let d = app.cycles.detail(id).await?;
    let mut timings = Vec::new();
    let mut previous = d.run.created_at;
    for c in &d.checkpoints {
        timings.push(json!({"stage": c.stage.as_str(), "ms": c.at - previous}));
        previous = c.at;
    }
    Ok(Json(json!({
        "cycle": cycle_json(&d.run),
        "stage": d.checkpoints.last().map(|c| c.stage.as_str()),
        "checkpoints": d.checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
        "timings": timings,
        "dispatches": d.dispatches.iter().map(|(r, t)| dispatch_json(r, t.as_ref()))
            .collect::<Vec<_>>(),
        "records": d.records.iter().map(record_json).collect::<Vec<_>>(),
        "ledger": d.ledger.iter().map(ledger_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordQuery {
    run: Option<String>,
    profile: Option<String>,
    run_profile: Option<String>,
    namespace: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

fn record_filter(q: RecordQuery) -> Result<RecordFilter, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    Ok(RecordFilter {
        cycle_id: q.run.as_deref().map(parse_id).transpose()?,
        profile_id: q.profile,
        run_profile_id: q.run_profile,
        namespace: q.namespace,
        since: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
        limit,
    })
}

pub(super) async fn execution_records(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecordQuery>,
) -> Result<Json<Value>, ApiError> {
    let records = app.cycles.execution_records(record_filter(q)?).await?;
    Ok(Json(
        json!({"records": records.iter().map(record_json).collect::<Vec<_>>()}),
    ))
}

pub(super) async fn value_ledger(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecordQuery>,
) -> Result<Json<Value>, ApiError> {
    let entries = app.cycles.ledger(record_filter(q)?).await?;
    Ok(Json(
        json!({"entries": entries.iter().map(ledger_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetryQuery {
    since: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    profile: Option<String>,
    run: Option<String>,
    namespace: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn telemetry(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<TelemetryQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    let events = app
        .cycles
        .telemetry(TelemetryFilter {
            since: q
                .since
                .as_deref()
                .map(|s| parse_time("since", s))
                .transpose()?,
            event_type: q.event_type,
            profile_id: q.profile,
            run_id: q.run.as_deref().map(parse_id).transpose()?,
            namespace: q.namespace,
            limit,
        })
        .await?;
    Ok(Json(
        json!({"events": events.iter().map(event_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayQuery {
    from: Option<String>,
}

/// Every event from `from` on, in order, as JSON lines (`application/x-ndjson`), streamed page
/// by page until the end of the bus at the time each page is read.
pub(super) async fn telemetry_replay(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ReplayQuery>,
) -> Result<Response, ApiError> {
    let from = q
        .from
        .as_deref()
        .map(|s| parse_time("from", s))
        .transpose()?
        .unwrap_or(i64::MIN);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut after = None;
        loop {
            let page = match app.cycles.telemetry_page(from, after, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry replay stopped");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let Some((last, _)) = page.last() else { return };
            after = Some(*last);
            let mut chunk = String::new();
            for (_, e) in &page {
                chunk.push_str(&event_json(e).to_string());
                chunk.push('\n');
            }
            let full = page.len() == REPLAY_PAGE;
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() || !full {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

pub(super) async fn signals_create(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let signal = app.cycles.compute_signal(&principal.actor(), &id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"signal": signal_json(&signal)})),
    )
        .into_response())
}

pub(super) async fn signals_list(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let signals = app.cycles.signals(&id, 100).await?;
    Ok(Json(
        json!({"signals": signals.iter().map(signal_json).collect::<Vec<_>>()}),
    ))
}

pub(super) async fn proposals_create(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let proposals = app.cycles.propose(&principal.actor(), &id).await?;
    Ok(Json(
        json!({"proposals": proposals.iter().map(proposal_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProposalQuery {
    profile: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn proposals_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ProposalQuery>,
) -> Result<Json<Value>, ApiError> {
    let proposals = app
        .cycles
        .proposals(q.profile, q.limit.unwrap_or(100))
        .await?;
    Ok(Json(
        json!({"proposals": proposals.iter().map(proposal_json).collect::<Vec<_>>()}),
    ))
}

pub(super) async fn proposal_approve(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = app
        .cycles
        .approve(&principal.actor(), parse_id(&id)?)
        .await?;
    Ok(Json(json!({"proposal": proposal_json(&p)})))
}

pub(super) async fn proposal_reject(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = app
        .cycles
        .reject(&principal.actor(), parse_id(&id)?)
        .await?;
    Ok(Json(json!({"proposal": proposal_json(&p)})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

pub(super) async fn governance_get(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let g = app.cycles.governance().await?;
    Ok(Json(json!({"governance": governance_json(&g)})))
}

pub(super) async fn governance_pause(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ReasonBody = optional_body(&body)?;
    let g = app.cycles.pause(&principal.actor(), body.reason).await?;
    Ok(Json(json!({"governance": governance_json(&g)})))
}

pub(super) async fn governance_resume(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let g = app.cycles.resume(&principal.actor()).await?;
    Ok(Json(json!({"governance": governance_json(&g)})))
}

pub(super) async fn namespace_halt(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ReasonBody = optional_body(&body)?;
    let g = app
        .cycles
        .set_halt(&principal.actor(), &ns, true, body.reason)
        .await?;
    Ok(Json(json!({"governance": governance_json(&g)})))
}

pub(super) async fn namespace_resume(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let g = app
        .cycles
        .set_halt(&principal.actor(), &ns, false, None)
        .await?;
    Ok(Json(json!({"governance": governance_json(&g)})))
}
