//! Advice, never action by itself: advisory signals aggregated from a profile's telemetry,
//! strategy proposals made from them (pending until an operator decides), and controlled
//! autonomy: an approved proposal changes its profile only when both `autonomy.enabled` and
//! `autonomy.allow_mutation` are true; otherwise the approval is logged as skipped and nothing
//! changes. Signals and proposals belong to a profile, not a namespace: their execution
//! records and events carry the namespace `*`.

use std::sync::Arc;

use redb::{ReadableTable, TableHandle};
use serde_json::{Value, json};
use uuid::Uuid;

use super::model::{Proposal, Signal, TelemetryEvent};
use super::profiles::{self, PROFILES_FILE, RUN_PROFILES_FILE};
use super::records::append_record;
use super::telemetry::emit;
use super::{Cycles, CyclesError, conflict};
use crate::audit::Event;
use crate::store::codec;

/// Success and delivery rates below this are `low_performance`.
const LOW: f64 = 0.8;
/// Success and delivery rates at or above this are `elevated_performance`.
const ELEVATED: f64 = 0.95;

/// The 95th percentile (nearest rank) of `values`.
fn p95(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64) * 0.95).ceil() as usize;
    values.get(rank.saturating_sub(1)).copied()
}

/// Writes `text` to `path` through a synced temporary file and a rename.
fn write_file_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Cycles {
    /// Aggregates the profile's telemetry over `telemetry.signal_window_hours` (success rate of
    /// its cycles, delivery rate, dispatch latency p95) into a stored signal.
    pub async fn compute_signal(
        &self,
        actor: &str,
        profile_id: &str,
    ) -> Result<Signal, CyclesError> {
        if self.profile_set().profile(profile_id).is_none() {
            return Err(CyclesError::NotFound(format!(
                "no profile `{profile_id}` is configured"
            )));
        }
        let now = self.clock.now_ms();
        let from = now - self.config.telemetry.signal_window_hours as i64 * 3_600_000;
        let min_samples = self.config.telemetry.signal_min_samples;
        let id = profile_id.to_string();
        let (finished, failed, confirmed, undelivered, mut latencies) = self
            .read(move |t| -> Result<_, CyclesError> {
                let table = &t.telemetry;
                let (mut finished, mut failed, mut confirmed, mut undelivered) =
                    (0u64, 0u64, 0u64, 0u64);
                let mut latencies = Vec::new();
                for row in table.range((from, 0)..)? {
                    let (k, v) = row?;
                    let e: TelemetryEvent =
                        codec::decode(table.name(), format!("{:?}", k.value()), v.value())?;
                    if e.profile_id.as_deref() != Some(id.as_str()) {
                        continue;
                    }
                    match e.event_type.as_str() {
                        "cycle_finished" => finished += 1,
                        "cycle_failed" => failed += 1,
                        "delivery_confirmed" => {
                            confirmed += 1;
                            let meta: Value =
                                serde_json::from_str(&e.metadata).unwrap_or(Value::Null);
                            if let Some(ms) = meta["latency_ms"].as_u64() {
                                latencies.push(ms);
                            }
                        }
                        "delivery_failed" => undelivered += 1,
                        _ => {}
                    }
                }
                Ok((finished, failed, confirmed, undelivered, latencies))
            })
            .await?;
        let samples = finished + failed;
        let success_rate = (samples > 0).then(|| finished as f64 / samples as f64);
        let deliveries = confirmed + undelivered;
        let delivery_rate = (deliveries > 0).then(|| confirmed as f64 / deliveries as f64);
        let latency = p95(&mut latencies);
        let confidence = ((samples as f64) / (min_samples as f64 * 4.0)).min(1.0);
        let confidence = (confidence * 100.0).round() / 100.0;
        let (signal, recommendation) = if samples < min_samples {
            (
                "stable",
                format!(
                    "Too little data: {samples} cycle(s) ended in the window, {min_samples} are needed before a trend is called."
                ),
            )
        } else if success_rate.is_some_and(|r| r < LOW) || delivery_rate.is_some_and(|r| r < LOW) {
            (
                "low_performance",
                "Cycles or deliveries of this profile fail often: look at the failed stages and the dead-letter queue; consider disabling the profile until fixed.".to_string(),
            )
        } else if success_rate.is_some_and(|r| r >= ELEVATED)
            && delivery_rate.is_none_or(|r| r >= ELEVATED)
        {
            (
                "elevated_performance",
                "Cycles and deliveries of this profile succeed consistently; it can be tagged as performing well.".to_string(),
            )
        } else {
            ("stable", "No strong trend: nothing to change.".to_string())
        };
        let record = Signal {
            id: Uuid::now_v7(),
            profile_id: profile_id.to_string(),
            at: now,
            signal: signal.to_string(),
            confidence,
            success_rate,
            delivery_rate,
            dispatch_latency_p95_ms: latency,
            samples,
            window_from: from,
            recommendation,
        };
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let stored = record.clone();
        let namespace = "*".to_string();
        self.write(move |t, tx| -> Result<(), CyclesError> {
            t.signals
                .insert(stored.id.as_u128(), codec::encode(&stored).as_slice())?;
            audit.append(
                tx,
                now,
                &Event::new(actor.clone(), "signal.compute", stored.profile_id.clone())
                    .with_detail(json!({"signal": stored.signal, "id": stored.id})),
            )?;
            emit(
                t,
                now,
                "signal_computed",
                Some(&stored.profile_id),
                None,
                &namespace,
                json!({"signal": stored.signal, "confidence": stored.confidence,
                           "signal_id": stored.id}),
            )
        })
        .await?;
        Ok(record)
    }

    /// The profile's signals, newest first.
    pub async fn signals(
        &self,
        profile_id: &str,
        limit: usize,
    ) -> Result<Vec<Signal>, CyclesError> {
        let id = profile_id.to_string();
        let limit = limit.clamp(1, 1000);
        self.read(move |t| -> Result<Vec<Signal>, CyclesError> {
            let table = &t.signals;
            let mut out = Vec::new();
            for row in table.iter()?.rev() {
                let (k, v) = row?;
                let s: Signal = codec::decode(table.name(), Uuid::from_u128(k.value()), v.value())?;
                if s.profile_id == id {
                    out.push(s);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Makes proposals from the profile's latest signal: `elevated_performance` proposes
    /// tagging the profile, `low_performance` proposes disabling it, `stable` proposes
    /// nothing. A signal that already has a proposal returns it instead of a second one.
    pub async fn propose(
        &self,
        actor: &str,
        profile_id: &str,
    ) -> Result<Vec<Proposal>, CyclesError> {
        if self.profile_set().profile(profile_id).is_none() {
            return Err(CyclesError::NotFound(format!(
                "no profile `{profile_id}` is configured"
            )));
        }
        let Some(signal) = self.signals(profile_id, 1).await?.into_iter().next() else {
            return Err(conflict(
                "no_signal",
                format!(
                    "profile `{profile_id}` has no signal yet; compute one with POST /api/v1/profiles/{profile_id}/signals"
                ),
            ));
        };
        let (kind, patch, rationale) = match signal.signal.as_str() {
            "elevated_performance" => (
                "tag_elevated_performance",
                json!({"value_tags": {"performance": "elevated"}}),
                format!(
                    "success rate {:.2}, delivery rate {}: tag the profile `performance = elevated`",
                    signal.success_rate.unwrap_or(0.0),
                    signal
                        .delivery_rate
                        .map_or("n/a".to_string(), |r| format!("{r:.2}"))
                ),
            ),
            "low_performance" => (
                "disable_profile",
                json!({"state": "disabled"}),
                format!(
                    "success rate {}, delivery rate {}: disable the profile until it is fixed",
                    signal
                        .success_rate
                        .map_or("n/a".to_string(), |r| format!("{r:.2}")),
                    signal
                        .delivery_rate
                        .map_or("n/a".to_string(), |r| format!("{r:.2}"))
                ),
            ),
            _ => return Ok(Vec::new()),
        };
        let now = self.clock.now_ms();
        let proposal = Proposal {
            id: Uuid::now_v7(),
            profile_id: profile_id.to_string(),
            signal_id: signal.id,
            created_at: now,
            created_by: actor.to_string(),
            kind: kind.to_string(),
            rationale,
            patch: patch.to_string(),
            status: "pending".to_string(),
            decided_by: None,
            decided_at: None,
            outcome: None,
        };
        let audit = Arc::clone(&self.audit);
        let namespace = "*".to_string();
        let created = self
            .write(move |t, tx| -> Result<Proposal, CyclesError> {
                for row in t.proposals.iter()? {
                    let (k, v) = row?;
                    let p: Proposal =
                        codec::decode(t.proposals.name(), Uuid::from_u128(k.value()), v.value())?;
                    if p.signal_id == proposal.signal_id && p.kind == proposal.kind {
                        return Ok(p);
                    }
                }
                t.proposals
                    .insert(proposal.id.as_u128(), codec::encode(&proposal).as_slice())?;
                audit.append(
                    tx,
                    now,
                    &Event::new(
                        proposal.created_by.clone(),
                        "proposal.create",
                        proposal.id.to_string(),
                    )
                    .with_detail(
                        json!({"profile_id": proposal.profile_id, "kind": proposal.kind,
                                            "patch": patch}),
                    ),
                )?;
                emit(
                    t,
                    now,
                    "strategy_proposed",
                    Some(&proposal.profile_id),
                    None,
                    &namespace,
                    json!({"proposal_id": proposal.id, "kind": proposal.kind}),
                )?;
                Ok(proposal.clone())
            })
            .await?;
        Ok(vec![created])
    }

    /// Proposals, newest first, optionally of one profile.
    pub async fn proposals(
        &self,
        profile_id: Option<String>,
        limit: usize,
    ) -> Result<Vec<Proposal>, CyclesError> {
        let limit = limit.clamp(1, 1000);
        self.read(move |t| -> Result<Vec<Proposal>, CyclesError> {
            let table = &t.proposals;
            let mut out = Vec::new();
            for row in table.iter()?.rev() {
                let (k, v) = row?;
                let p: Proposal =
                    codec::decode(table.name(), Uuid::from_u128(k.value()), v.value())?;
                if profile_id.as_ref().is_none_or(|id| p.profile_id == *id) {
                    out.push(p);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn load_proposal(&self, id: Uuid) -> Result<Proposal, CyclesError> {
        self.read(move |t| -> Result<Proposal, CyclesError> {
            let table = &t.proposals;
            table
                .get(id.as_u128())?
                .map(|v| codec::decode::<Proposal>(table.name(), id, v.value()))
                .transpose()?
                .ok_or_else(|| CyclesError::NotFound(format!("no strategy proposal with id {id}")))
        })
        .await
    }

    /// Rejects a pending proposal (audited).
    pub async fn reject(&self, actor: &str, id: Uuid) -> Result<Proposal, CyclesError> {
        let _decision = self.decisions.lock().await;
        self.decide(
            actor,
            id,
            "rejected",
            "rejected by an operator; nothing changed".into(),
            "proposal.reject",
            "rejected",
        )
        .await
    }

    /// Approves a pending proposal (audited). Only with both autonomy switches on does it
    /// change the profile: the patched profiles are validated like a reload, written to
    /// `profiles.json` and loaded as a new version. Otherwise the approval is recorded as
    /// skipped and nothing changes.
    ///
    /// Decisions are taken one at a time, and each checks that the proposal is still pending
    /// inside the transaction that records it: a reject arriving while an approval patches
    /// `profiles.json` waits for it and then finds the proposal decided, so the file is never
    /// patched for a proposal that says rejected.
    pub async fn approve(&self, actor: &str, id: Uuid) -> Result<Proposal, CyclesError> {
        let _decision = self.decisions.lock().await;
        let proposal = self.load_proposal(id).await?;
        if proposal.status != "pending" {
            return Err(conflict(
                "proposal_decided",
                format!("proposal {id} is already {}", proposal.status),
            ));
        }
        let autonomy = &self.config.autonomy;
        if !(autonomy.enabled && autonomy.allow_mutation) {
            let why = format!(
                "skipped: autonomy is off (autonomy.enabled = {}, autonomy.allow_mutation = {}); the profile was not changed",
                autonomy.enabled, autonomy.allow_mutation
            );
            tracing::info!(proposal = %id, "{why}");
            return self
                .decide(actor, id, "approved", why, "proposal.approve", "skipped")
                .await;
        }
        let _gate = self.gate.write().await;
        let active = self.active_ids().await?;
        if !active.is_empty() {
            return Err(conflict(
                "cycle_active",
                format!(
                    "{} cycle(s) are active; approve when they have finished",
                    active.len()
                ),
            ));
        }
        let dir = self.config.cycles.profiles_dir.clone();
        if dir.as_os_str().is_empty() {
            return Err(conflict(
                "no_profile_files",
                "cycles.profiles_dir is not set: there is no profiles.json to change",
            ));
        }
        let patch: Value = serde_json::from_str(&proposal.patch).unwrap_or(Value::Null);
        let config = Arc::clone(&self.config);
        let profile_id = proposal.profile_id.clone();
        let (set, text) = tokio::task::spawn_blocking(move || -> Result<_, CyclesError> {
            let read = |file: &str| -> Result<Value, CyclesError> {
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| CyclesError::Io(format!("cannot read {}: {e}", path.display())))?;
                serde_json::from_str(&text).map_err(|e| {
                    CyclesError::Invalid(format!("{} is not valid JSON: {e}", path.display()))
                })
            };
            let mut profiles_doc = read(PROFILES_FILE)?;
            let run_profiles_doc = read(RUN_PROFILES_FILE)?;
            let target = profiles_doc
                .as_array_mut()
                .and_then(|list| {
                    list.iter_mut()
                        .find(|p| p["profile_id"].as_str() == Some(profile_id.as_str()))
                })
                .ok_or_else(|| {
                    CyclesError::NotFound(format!(
                        "profile `{profile_id}` is no longer in {PROFILES_FILE}"
                    ))
                })?;
            profiles::merge_patch(target, &patch);
            target["profile_id"] = Value::String(profile_id.clone());
            let set = profiles::validate(&config, dir.clone(), &profiles_doc, &run_profiles_doc)?;
            let text = serde_json::to_string_pretty(&profiles_doc).unwrap_or_default() + "\n";
            write_file_atomically(&dir.join(PROFILES_FILE), &text).map_err(|e| {
                CyclesError::Io(format!(
                    "cannot write {}: {e}",
                    dir.join(PROFILES_FILE).display()
                ))
            })?;
            Ok((set, text))
        })
        .await
        .map_err(|e| CyclesError::Io(format!("profile writer panicked: {e}")))??;
        let (set, _) = self.sync_versions(set, actor, None).await?;
        let version = set.versions.get(&proposal.profile_id).copied().unwrap_or(0);
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        tracing::info!(proposal = %id, profile = %proposal.profile_id, version, bytes = text.len(), "approved proposal applied to its profile");
        self.decide(
            actor,
            id,
            "applied",
            format!(
                "applied: profile `{}` is now version {version}",
                proposal.profile_id
            ),
            "proposal.approve",
            "applied",
        )
        .await
    }

    async fn decide(
        &self,
        actor: &str,
        id: Uuid,
        status: &'static str,
        outcome: String,
        action: &'static str,
        record_outcome: &'static str,
    ) -> Result<Proposal, CyclesError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let namespace = "*".to_string();
        self.write(move |t, tx| -> Result<Proposal, CyclesError> {
            let mut p = t
                .proposals
                .get(id.as_u128())?
                .map(|v| codec::decode::<Proposal>(t.proposals.name(), id, v.value()))
                .transpose()?
                .ok_or_else(|| {
                    CyclesError::NotFound(format!("no strategy proposal with id {id}"))
                })?;
            if p.status != "pending" {
                return Err(conflict(
                    "proposal_decided",
                    format!("proposal {id} is already {}", p.status),
                ));
            }
            p.status = status.to_string();
            p.decided_by = Some(actor.clone());
            p.decided_at = Some(now);
            p.outcome = Some(outcome.clone());
            t.proposals
                .insert(id.as_u128(), codec::encode(&p).as_slice())?;
            audit.append(
                tx,
                now,
                &Event::new(actor.clone(), action, id.to_string()).with_detail(json!({
                    "profile_id": p.profile_id, "kind": p.kind, "status": p.status,
                    "outcome": outcome,
                })),
            )?;
            append_record(
                t,
                now,
                None,
                None,
                Some(&p.profile_id),
                &namespace,
                "autonomy",
                action,
                record_outcome,
                json!({"proposal_id": id, "outcome": outcome}),
            )?;
            emit(
                t,
                now,
                match record_outcome {
                    "applied" => "profile_mutated",
                    "skipped" => "autonomy_skipped",
                    _ => "proposal_rejected",
                },
                Some(&p.profile_id),
                None,
                &namespace,
                json!({"proposal_id": id, "outcome": outcome, "by": actor}),
            )?;
            Ok(p)
        })
        .await
    }
}
