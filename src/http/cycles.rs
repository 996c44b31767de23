//! Cycles API: profiles, run profiles and their schemas, reload, triggers, cycles with their
//! checkpoints and dispatch receipts, execution records, the value ledger, telemetry (query and
//! replay), advisory signals, strategy proposals and governance.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Caller, IdPath, OptionalJson, parse_id};
use super::models::cycles::{
    CycleDetail, CycleTriggered, ExecutionRecord, ExecutionRecords, GovernanceOne, LedgerEntry,
    Profile, ProfileList, Proposal, ProposalOne, Proposals, Reason, RecentCycle, RecentCycles,
    Reloaded, RunProfile, RunProfileList, RunProfileRun, RunProfilesTriggered, Signal, SignalOne,
    Signals, Telemetry, TelemetryEvent, TriggerCycle, TriggerRunProfiles, ValueLedger,
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

pub(super) async fn run_profiles_list(State(app): State<AppState>) -> Json<RunProfileList> {
    let set = app.cycles.profile_set();
    Json(RunProfileList {
        run_profiles: set.run_profiles.iter().map(RunProfile::from).collect(),
        dir: set.dir.display().to_string(),
    })
}

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

pub(super) async fn config_reload(
    State(app): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<Reloaded>, ApiError> {
    let report = app.cycles.reload(&principal.actor()).await?;
    Ok(Json(report.into()))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecentQuery {
    limit: Option<usize>,
}

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

pub(super) async fn cycles_get(
    State(app): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<CycleDetail>, ApiError> {
    let d = app.cycles.detail(id).await?;
    Ok(Json(CycleDetail::from(&d)))
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
) -> Result<Json<ExecutionRecords>, ApiError> {
    let records = app.cycles.execution_records(record_filter(q)?).await?;
    Ok(Json(ExecutionRecords {
        records: records.iter().map(ExecutionRecord::from).collect(),
    }))
}

pub(super) async fn value_ledger(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RecordQuery>,
) -> Result<Json<ValueLedger>, ApiError> {
    let entries = app.cycles.ledger(record_filter(q)?).await?;
    Ok(Json(ValueLedger {
        entries: entries.iter().map(LedgerEntry::from).collect(),
    }))
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

pub(super) async fn signals_list(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Signals>, ApiError> {
    let signals = app.cycles.signals(&id, 100).await?;
    Ok(Json(Signals {
        signals: signals.iter().map(Signal::from).collect(),
    }))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProposalQuery {
    profile: Option<String>,
    limit: Option<usize>,
}

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

pub(super) async fn governance_get(
    State(app): State<AppState>,
) -> Result<Json<GovernanceOne>, ApiError> {
    Ok(governance(&app.cycles.governance().await?))
}

pub(super) async fn governance_pause(
    State(app): State<AppState>,
    Caller(principal): Caller,
    OptionalJson(body): OptionalJson<Reason>,
) -> Result<Json<GovernanceOne>, ApiError> {
    let g = app.cycles.pause(&principal.actor(), body.reason).await?;
    Ok(governance(&g))
}

pub(super) async fn governance_resume(
    State(app): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<GovernanceOne>, ApiError> {
    Ok(governance(&app.cycles.resume(&principal.actor()).await?))
}

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
