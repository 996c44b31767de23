//! Cycles API: profiles, run profiles and their schemas, reload, triggers, cycles with their
//! checkpoints and dispatch receipts, execution records, the value ledger, telemetry (query and
//! replay), advisory signals, strategy proposals and governance.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Caller, IdPath, OptionalJson, parse_id};
use super::models::ErrorBody;
use super::models::cycles::{
    CycleDetail, CycleTriggered, ExecutionRecord, ExecutionRecords, GovernanceOne, LedgerEntry,
    Profile, ProfileList, Proposal, ProposalOne, Proposals, Reason, RecentCycle, RecentCycles,
    RunProfile, RunProfileList, RunProfileRun, RunProfilesTriggered, Signal, SignalOne, Signals,
    Telemetry, TelemetryEvent, TriggerCycle, TriggerRunProfiles, ValueLedger,
};
use crate::clock::Millis;
use crate::cycles::telemetry::TelemetryFilter;
use crate::cycles::{RecordFilter, TriggerRequest, profiles};

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

/// Every profile from `profiles.json`, with its version.
#[utoipa::path(get, path = "/api/v1/profiles", tag = "profiles", operation_id = "profiles_list",
    responses((status = 200, description = "The profiles", body = ProfileList)))]
pub(super) async fn profiles_list(State(app): State<AppState>) -> Json<ProfileList> {
    let set = app.cycles.profile_set();
    Json(ProfileList {
        profiles: set
            .profiles
            .iter()
            .map(|p| Profile::of(p, set.versions.get(&p.profile_id).copied()))
            .collect(),
        dir: set.dir.display().to_string(),
    })
}

/// Every run profile from `runProfiles.json`.
#[utoipa::path(get, path = "/api/v1/run-profiles", tag = "profiles",
    operation_id = "run_profiles_list",
    responses((status = 200, description = "The run profiles", body = RunProfileList)))]
pub(super) async fn run_profiles_list(State(app): State<AppState>) -> Json<RunProfileList> {
    let set = app.cycles.profile_set();
    Json(RunProfileList {
        run_profiles: set.run_profiles.iter().map(RunProfile::from).collect(),
        dir: set.dir.display().to_string(),
    })
}

/// The JSON Schema the profile files are validated against.
#[utoipa::path(get, path = "/api/v1/schemas/{name}", tag = "profiles", operation_id = "schemas_get",
    params(("name" = String, Path, description = "`profiles` or `runProfiles` (a `.json` or `.schema.json` suffix is allowed)")),
    responses(
        (status = 200, description = "The JSON Schema (draft 2020-12)", body = Object,
            content_type = "application/schema+json"),
        (status = 404, description = "No schema with this name", body = ErrorBody),
    ))]
pub(super) async fn schema_get(ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
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

/// Starts a cycle.
///
/// The cycle of a namespace (or run profile) for a slot; a cycle exists at most once per slot.
#[utoipa::path(post, path = "/api/v1/cycles/trigger", tag = "cycles", operation_id = "cycles_trigger",
    request_body(content = Option<TriggerCycle>, description = "Optional; may be empty"),
    responses(
        (status = 201, description = "A new cycle", body = CycleTriggered),
        (status = 200, description = "The cycle of this slot existed already", body = CycleTriggered),
        (status = 404, description = "No such run profile or profile", body = ErrorBody),
        (status = 409, description = "Cycles are paused, the namespace is halted or the profile is disabled",
            body = ErrorBody),
        (status = 422, description = "An invalid field: a slot that is not an RFC 3339 time, or an unknown namespace",
            body = ErrorBody),
    ))]
pub(super) async fn cycles_trigger(
    State(app): State<AppState>,
    Caller(principal): Caller,
    OptionalJson(body): OptionalJson<TriggerCycle>,
) -> Result<(StatusCode, Json<CycleTriggered>), ApiError> {
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
    Ok((status, Json(CycleTriggered::from(&t))))
}

/// Triggers every enabled run profile for a slot.
#[utoipa::path(post, path = "/api/v1/run-profiles/trigger", tag = "cycles",
    operation_id = "run_profiles_trigger",
    request_body(content = Option<TriggerRunProfiles>, description = "Optional; may be empty"),
    responses(
        (status = 200, description = "One outcome per run profile", body = RunProfilesTriggered),
        (status = 409, description = "Cycles are paused", body = ErrorBody),
        (status = 422, description = "An invalid field", body = ErrorBody),
    ))]
pub(super) async fn run_profiles_trigger(
    State(app): State<AppState>,
    Caller(principal): Caller,
    OptionalJson(body): OptionalJson<TriggerRunProfiles>,
) -> Result<Json<RunProfilesTriggered>, ApiError> {
    let outcomes = app
        .cycles
        .trigger_run_profiles(&principal.actor(), body.slot)
        .await?;
    Ok(Json(RunProfilesTriggered {
        runs: outcomes.iter().map(RunProfileRun::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RecentQuery {
    /// At most this many (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// Recent cycles, newest first, with their current stage.
#[utoipa::path(get, path = "/api/v1/cycles/recent", tag = "cycles", operation_id = "cycles_recent",
    params(RecentQuery),
    responses(
        (status = 200, description = "The cycles", body = RecentCycles),
        (status = 400, description = "`limit` out of range", body = ErrorBody),
    ))]
pub(super) async fn cycles_recent(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<Json<RecentCycles>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 100, got {limit}"
        )));
    }
    let cycles = app.cycles.recent(limit).await?;
    Ok(Json(RecentCycles {
        cycles: cycles.iter().map(RecentCycle::from).collect(),
    }))
}

/// One cycle.
///
/// Its checkpoints, stage timings, dispatches with their receipts, execution records and value
/// ledger entries.
#[utoipa::path(get, path = "/api/v1/cycles/{id}", tag = "cycles", operation_id = "cycles_get",
    params(("id" = Uuid, Path, description = "The cycle's id")),
    responses(
        (status = 200, description = "The cycle", body = CycleDetail),
        (status = 404, description = "No cycle with this id", body = ErrorBody),
    ))]
pub(super) async fn cycles_get(
    State(app): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<CycleDetail>, ApiError> {
    let d = app.cycles.detail(id).await?;
    Ok(Json(CycleDetail {
        waiting_on: super::cycle_runs::waiting_on(&app, id).await?,
        ..CycleDetail::from(&d)
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RecordQuery {
    /// Only of this cycle.
    #[param(value_type = Option<Uuid>)]
    run: Option<String>,
    /// Only of this profile.
    profile: Option<String>,
    /// Only of this run profile.
    run_profile: Option<String>,
    /// Only of this namespace.
    namespace: Option<String>,
    /// From this time on (RFC 3339 or epoch ms).
    #[param(example = "2026-01-01T00:00:00Z")]
    since: Option<String>,
    /// Before this time (RFC 3339 or epoch ms).
    until: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
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

/// Execution records, newest first.
#[utoipa::path(get, path = "/api/v1/execution-records", tag = "cycles",
    operation_id = "execution_records", params(RecordQuery),
    responses(
        (status = 200, description = "The records", body = ExecutionRecords),
        (status = 400, description = "A bad filter (id, time or `limit`)", body = ErrorBody),
    ))]
pub(super) async fn execution_records(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecordQuery>,
) -> Result<Json<ExecutionRecords>, ApiError> {
    let records = app.cycles.execution_records(record_filter(q)?).await?;
    Ok(Json(ExecutionRecords {
        records: records.iter().map(ExecutionRecord::from).collect(),
    }))
}

/// Value ledger entries, newest first.
#[utoipa::path(get, path = "/api/v1/value-ledger", tag = "cycles", operation_id = "value_ledger",
    params(RecordQuery),
    responses(
        (status = 200, description = "The entries", body = ValueLedger),
        (status = 400, description = "A bad filter (id, time or `limit`)", body = ErrorBody),
    ))]
pub(super) async fn value_ledger(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecordQuery>,
) -> Result<Json<ValueLedger>, ApiError> {
    let entries = app.cycles.ledger(record_filter(q)?).await?;
    Ok(Json(ValueLedger {
        entries: entries.iter().map(LedgerEntry::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TelemetryQuery {
    /// From this time on (RFC 3339 or epoch ms).
    since: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only of this profile.
    profile: Option<String>,
    /// Only of this cycle.
    #[param(value_type = Option<Uuid>)]
    run: Option<String>,
    /// Only of this namespace.
    namespace: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Telemetry events of the cycles' bus, filtered.
#[utoipa::path(get, path = "/api/v1/telemetry", tag = "telemetry", operation_id = "telemetry",
    params(TelemetryQuery),
    responses(
        (status = 200, description = "The events", body = Telemetry),
        (status = 400, description = "A bad filter (id, time or `limit`)", body = ErrorBody),
    ))]
pub(super) async fn telemetry(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<TelemetryQuery>,
) -> Result<Json<Telemetry>, ApiError> {
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
    Ok(Json(Telemetry {
        events: events.iter().map(TelemetryEvent::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReplayQuery {
    /// From this time on (RFC 3339 or epoch ms; default: the start).
    from: Option<String>,
}

/// Replays the telemetry bus.
///
/// Every event from `from` on, in order, as JSON lines (`application/x-ndjson`), streamed page
/// by page until the end of the bus at the time each page is read.
#[utoipa::path(get, path = "/api/v1/telemetry/replay", tag = "telemetry",
    operation_id = "telemetry_replay", params(ReplayQuery),
    responses(
        (status = 200, description = "One TelemetryEvent as JSON per line", body = String,
            content_type = "application/x-ndjson"),
        (status = 400, description = "A bad `from`", body = ErrorBody),
    ))]
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
                match serde_json::to_string(&TelemetryEvent::from(e)) {
                    Ok(line) => chunk.push_str(&line),
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                }
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

/// Computes an advisory signal for a profile.
///
/// From its recent cycles; read-only advice that changes nothing. Audited.
#[utoipa::path(post, path = "/api/v1/profiles/{id}/signals", tag = "advice",
    operation_id = "signals_create",
    params(("id" = String, Path, description = "The profile's id")),
    responses(
        (status = 201, description = "The signal", body = SignalOne),
        (status = 404, description = "No profile with this id", body = ErrorBody),
    ))]
pub(super) async fn signals_create(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<SignalOne>), ApiError> {
    let signal = app.cycles.compute_signal(&principal.actor(), &id).await?;
    Ok((
        StatusCode::CREATED,
        Json(SignalOne {
            signal: (&signal).into(),
        }),
    ))
}

/// A profile's signals, newest first.
#[utoipa::path(get, path = "/api/v1/profiles/{id}/signals", tag = "advice",
    operation_id = "signals_list",
    params(("id" = String, Path, description = "The profile's id")),
    responses(
        (status = 200, description = "The signals", body = Signals),
        (status = 404, description = "No profile with this id", body = ErrorBody),
    ))]
pub(super) async fn signals_list(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Signals>, ApiError> {
    let signals = app.cycles.signals(&id, 100).await?;
    Ok(Json(Signals {
        signals: signals.iter().map(Signal::from).collect(),
    }))
}

/// Turns the profile's latest signal into strategy proposals. Audited.
#[utoipa::path(post, path = "/api/v1/profiles/{id}/strategy-proposals", tag = "advice",
    operation_id = "proposals_create",
    params(("id" = String, Path, description = "The profile's id")),
    responses(
        (status = 200, description = "The proposals made (possibly none)", body = Proposals),
        (status = 404, description = "No profile with this id", body = ErrorBody),
        (status = 409, description = "The profile has no signal yet", body = ErrorBody),
    ))]
pub(super) async fn proposals_create(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Proposals>, ApiError> {
    let proposals = app.cycles.propose(&principal.actor(), &id).await?;
    Ok(Json(Proposals {
        proposals: proposals.iter().map(Proposal::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ProposalQuery {
    /// Only of this profile.
    profile: Option<String>,
    /// At most this many (clamped to 1..1000, default 100).
    limit: Option<usize>,
}

/// Strategy proposals, newest first.
#[utoipa::path(get, path = "/api/v1/strategy-proposals", tag = "advice",
    operation_id = "proposals_list", params(ProposalQuery),
    responses((status = 200, description = "The proposals", body = Proposals)))]
pub(super) async fn proposals_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ProposalQuery>,
) -> Result<Json<Proposals>, ApiError> {
    let proposals = app
        .cycles
        .proposals(q.profile, q.limit.unwrap_or(100))
        .await?;
    Ok(Json(Proposals {
        proposals: proposals.iter().map(Proposal::from).collect(),
    }))
}

/// Approves a proposal: its patch is applied to the profile file and reloaded. Audited.
#[utoipa::path(post, path = "/api/v1/strategy-proposals/{id}/approve", tag = "advice",
    operation_id = "proposals_approve",
    params(("id" = Uuid, Path, description = "The proposal's id")),
    responses(
        (status = 200, description = "The decided proposal", body = ProposalOne),
        (status = 404, description = "No proposal with this id", body = ErrorBody),
        (status = 409, description = "Already decided, a cycle is running, or there are no profile files",
            body = ErrorBody),
        (status = 422, description = "The patched files would be invalid", body = ErrorBody),
    ))]
pub(super) async fn proposal_approve(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<Json<ProposalOne>, ApiError> {
    let p = app.cycles.approve(&principal.actor(), id).await?;
    Ok(Json(ProposalOne {
        proposal: (&p).into(),
    }))
}

/// Rejects a proposal. Audited.
#[utoipa::path(post, path = "/api/v1/strategy-proposals/{id}/reject", tag = "advice",
    operation_id = "proposals_reject",
    params(("id" = Uuid, Path, description = "The proposal's id")),
    responses(
        (status = 200, description = "The decided proposal", body = ProposalOne),
        (status = 404, description = "No proposal with this id", body = ErrorBody),
        (status = 409, description = "Already decided", body = ErrorBody),
    ))]
pub(super) async fn proposal_reject(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<Json<ProposalOne>, ApiError> {
    let p = app.cycles.reject(&principal.actor(), id).await?;
    Ok(Json(ProposalOne {
        proposal: (&p).into(),
    }))
}

fn governance(g: &crate::cycles::GovernanceView) -> Json<GovernanceOne> {
    Json(GovernanceOne {
        governance: g.into(),
    })
}

/// Whether cycles are paused and which namespaces are halted.
#[utoipa::path(get, path = "/api/v1/governance", tag = "governance", operation_id = "governance_get",
    responses((status = 200, description = "The governance state", body = GovernanceOne)))]
pub(super) async fn governance_get(
    State(app): State<AppState>,
) -> Result<Json<GovernanceOne>, ApiError> {
    Ok(governance(&app.cycles.governance().await?))
}

/// Pauses every cycle (running ones stop at their next stage). Audited.
#[utoipa::path(post, path = "/api/v1/governance/pause", tag = "governance",
    operation_id = "governance_pause",
    request_body(content = Option<Reason>, description = "Optional; may be empty"),
    responses((status = 200, description = "The governance state", body = GovernanceOne)))]
pub(super) async fn governance_pause(
    State(app): State<AppState>,
    Caller(principal): Caller,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<GovernanceOne>, ApiError> {
    let g = app.cycles.pause(&principal.actor(), body.reason).await?;
    Ok(governance(&g))
}

/// Lifts the runtime pause. Audited.
#[utoipa::path(post, path = "/api/v1/governance/resume", tag = "governance",
    operation_id = "governance_resume",
    responses(
        (status = 200, description = "The governance state", body = GovernanceOne),
        (status = 409, description = "The configuration pauses cycles", body = ErrorBody),
    ))]
pub(super) async fn governance_resume(
    State(app): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<GovernanceOne>, ApiError> {
    Ok(governance(&app.cycles.resume(&principal.actor()).await?))
}

/// Halts the cycles of one namespace. Audited.
#[utoipa::path(post, path = "/api/v1/governance/namespaces/{ns}/halt", tag = "governance",
    operation_id = "namespace_halt",
    params(("ns" = String, Path, description = "The namespace: 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(content = Option<Reason>, description = "Optional; may be empty"),
    responses(
        (status = 200, description = "The governance state", body = GovernanceOne),
        (status = 422, description = "An invalid namespace", body = ErrorBody),
    ))]
pub(super) async fn namespace_halt(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(ns): ApiPath<String>,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<GovernanceOne>, ApiError> {
    let g = app
        .cycles
        .set_halt(&principal.actor(), &ns, true, body.reason)
        .await?;
    Ok(governance(&g))
}

/// Lets a halted namespace's cycles run again. Audited.
#[utoipa::path(post, path = "/api/v1/governance/namespaces/{ns}/resume", tag = "governance",
    operation_id = "namespace_resume",
    params(("ns" = String, Path, description = "The namespace: 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses(
        (status = 200, description = "The governance state", body = GovernanceOne),
        (status = 422, description = "An invalid namespace", body = ErrorBody),
    ))]
pub(super) async fn namespace_resume(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(ns): ApiPath<String>,
) -> Result<Json<GovernanceOne>, ApiError> {
    let g = app
        .cycles
        .set_halt(&principal.actor(), &ns, false, None)
        .await?;
    Ok(governance(&g))
}
