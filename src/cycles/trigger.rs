//! Starting cycles: by hand (one raw cycle or one run profile's), for every enabled run
//! profile, and from the cron schedules (a missed slot is caught up once). A cycle is created
//! with its `cycle_started` checkpoint in one transaction; the same slot, or the same
//! initiation, of the same run profile returns the cycle that exists.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::ReadableTable;
use serde_json::json;
use uuid::Uuid;

use super::governance::governance_view;
use super::ids::{initiation_hash, run_profile_key};
use super::model::{CycleRun, CycleStatus, Stage};
use super::profiles::{Profile, ProfileSet, RunProfile, State};
use super::records::{append_record, load_run, save_run, write_checkpoint};
use super::telemetry::emit;
use super::{Cycles, CyclesError, conflict, valid_name};
use crate::audit::{Event as AuditEvent, SYSTEM_ACTOR};
use crate::clock::Millis;
use crate::events;

/// Names of the two cron schedules.
const RAW_SCHEDULE: &str = "cycles";
const RUN_PROFILE_SCHEDULE: &str = "run_profiles";

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    /// Namespace of a raw cycle (default `cycles.default_namespace`); with a run profile, it
    /// must be the run profile's.
    pub namespace: Option<String>,
    /// Run this run profile instead of a raw cycle.
    pub run_profile_id: Option<String>,
    /// Schedule slot; the same slot never runs twice. Default: a new manual slot.
    pub slot: Option<String>,
}

/// A started (or already existing) cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Triggered {
    /// The cycle.
    pub cycle_id: Uuid,
    /// Whether this call created it (false: its slot had run before).
    pub created: bool,
    /// Run profile.
    pub run_profile_id: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Initiation hash.
    pub initiation_hash: String,
}

/// What a run-profile trigger did with one run profile.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProfileOutcome {
    /// Run profile.
    pub run_profile_id: String,
    /// Namespace.
    pub namespace: String,
    /// The cycle, unless skipped.
    pub cycle: Option<Triggered>,
    /// Why nothing ran.
    pub skipped: Option<String>,
}

/// The resolved context of a cycle, frozen when it starts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CycleContext {
    /// The profile (none for a raw cycle).
    pub profile: Option<Profile>,
    /// The run profile (none for a raw cycle).
    pub run_profile: Option<RunProfile>,
    /// (target, endpoint key) pairs to dispatch to.
    pub targets: Vec<(String, String)>,
}

/// A slot given by hand: an RFC 3339 time of at most 200 characters, as the schedules name
/// theirs.
fn check_slot(slot: &str) -> Result<(), CyclesError> {
    if slot.len() > 200 || chrono::DateTime::parse_from_rfc3339(slot).is_err() {
        return Err(CyclesError::Invalid(format!(
            "slot: `{}` is not an RFC 3339 time such as 2026-01-01T06:00:00Z",
            slot.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

impl Cycles {
    /// The namespaces a raw cycle may be triggered in: `cycles.default_namespace`,
    /// `cycles.namespaces` and those of the loaded run profiles.
    fn known_namespaces<'a>(&'a self, set: &'a ProfileSet) -> BTreeSet<&'a str> {
        let c = &self.config.cycles;
        std::iter::once(c.default_namespace.as_str())
            .chain(c.namespaces.iter().map(String::as_str))
            .chain(set.run_profiles.iter().map(|rp| rp.namespace.as_str()))
            .collect()
    }

    /// Starts one cycle (a raw one, or of one run profile). The same slot of the same run
    /// profile returns the existing cycle. Refused while paused or the namespace is halted.
    pub async fn trigger(
        self: &Arc<Self>,
        actor: &str,
        request: TriggerRequest,
    ) -> Result<Triggered, CyclesError> {
        if let Some(slot) = &request.slot {
            check_slot(slot)?;
        }
        let _gate = self.gate.read().await;
        let set = self.profile_set();
        let plan = match &request.run_profile_id {
            Some(id) => {
                let rp = set.run_profile(id).ok_or_else(|| {
                    CyclesError::NotFound(format!("no run profile `{id}` is configured"))
                })?;
                if let Some(ns) = &request.namespace
                    && *ns != rp.namespace
                {
                    return Err(CyclesError::Invalid(format!(
                        "namespace: run profile `{id}` is in namespace `{}`, not `{ns}`",
                        rp.namespace
                    )));
                }
                let profile = set.profile(&rp.profile_id).ok_or_else(|| {
                    CyclesError::NotFound(format!("no profile `{}`", rp.profile_id))
                })?;
                if rp.state != State::Enabled || profile.state != State::Enabled {
                    return Err(conflict(
                        "disabled",
                        format!(
                            "run profile `{id}` or its profile `{}` is disabled",
                            profile.profile_id
                        ),
                    ));
                }
                self.plan(&set, Some(rp), None, request.slot.clone(), "manual", actor)
            }
            None => {
                let ns = request
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.config.cycles.default_namespace.clone());
                if !valid_name(&ns) {
                    return Err(CyclesError::Invalid(
                        "namespace: 1 to 64 letters, digits, '-', '_' or '.'".into(),
                    ));
                }
                let known = self.known_namespaces(&set);
                if !known.contains(ns.as_str()) {
                    return Err(CyclesError::Invalid(format!(
                        "namespace: `{ns}` is not a known namespace (known: {}; add it to cycles.namespaces)",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    )));
                }
                self.plan(&set, None, Some(ns), request.slot.clone(), "manual", actor)
            }
        };
        let results = self.create(vec![plan], None, true).await?;
        let triggered = results
            .into_iter()
            .next()
            .and_then(|r| r.ok())
            .ok_or_else(|| CyclesError::Io("the cycle was not created".into()))?;
        self.wake.notify_one();
        Ok(triggered)
    }

    /// Starts one cycle for every enabled run profile (skipping halted namespaces and disabled
    /// profiles, or all while paused).
    pub async fn trigger_run_profiles(
        self: &Arc<Self>,
        actor: &str,
        slot: Option<String>,
    ) -> Result<Vec<RunProfileOutcome>, CyclesError> {
        if let Some(slot) = &slot {
            check_slot(slot)?;
        }
        let _gate = self.gate.read().await;
        let outcomes = self.run_profiles_now(actor, slot, "manual", None).await?;
        self.wake.notify_one();
        Ok(outcomes)
    }

    async fn run_profiles_now(
        &self,
        actor: &str,
        slot: Option<String>,
        trigger: &str,
        schedule_update: Option<(&'static str, Millis)>,
    ) -> Result<Vec<RunProfileOutcome>, CyclesError> {
        let set = self.profile_set();
        let mut outcomes = Vec::new();
        let mut plans = Vec::new();
        for rp in &set.run_profiles {
            let profile_enabled = set
                .profile(&rp.profile_id)
                .is_some_and(|p| p.state == State::Enabled);
            if rp.state != State::Enabled {
                continue;
            }
            if !profile_enabled {
                outcomes.push(RunProfileOutcome {
                    run_profile_id: rp.run_profile_id.clone(),
                    namespace: rp.namespace.clone(),
                    cycle: None,
                    skipped: Some(format!("profile `{}` is disabled", rp.profile_id)),
                });
                continue;
            }
            plans.push(self.plan(&set, Some(rp), None, slot.clone(), trigger, actor));
        }
        let results = self.create(plans.clone(), schedule_update, false).await?;
        for (plan, result) in plans.iter().zip(results) {
            let (cycle, skipped) = match result {
                Ok(t) => (Some(t), None),
                Err(why) => (None, Some(why)),
            };
            outcomes.push(RunProfileOutcome {
                run_profile_id: plan.run.run_profile_id.clone().unwrap_or_default(),
                namespace: plan.run.namespace.clone(),
                cycle,
                skipped,
            });
        }
        Ok(outcomes)
    }

    /// Builds the record of a cycle to create.
    fn plan(
        &self,
        set: &ProfileSet,
        rp: Option<&RunProfile>,
        namespace: Option<String>,
        slot: Option<String>,
        trigger: &str,
        actor: &str,
    ) -> Plan {
        let id = Uuid::now_v7();
        let slot = slot.unwrap_or_else(|| format!("manual:{id}"));
        let (context, namespace, version) = match rp {
            Some(rp) => {
                let profile = set.profile(&rp.profile_id).cloned();
                let targets = rp
                    .distribution_targets
                    .iter()
                    .map(|t| {
                        let endpoint = profile
                            .as_ref()
                            .and_then(|p| p.distribution_map.get(t))
                            .unwrap_or(t);
                        (t.clone(), endpoint.clone())
                    })
                    .collect();
                let version = set.versions.get(&rp.profile_id).copied().unwrap_or(0);
                (
                    CycleContext {
                        profile,
                        run_profile: Some(rp.clone()),
                        targets,
                    },
                    rp.namespace.clone(),
                    version,
                )
            }
            None => (
                CycleContext {
                    profile: None,
                    run_profile: None,
                    targets: self
                        .config
                        .cycles
                        .default_targets
                        .iter()
                        .map(|t| (t.clone(), t.clone()))
                        .collect(),
                },
                namespace.unwrap_or_else(|| self.config.cycles.default_namespace.clone()),
                0,
            ),
        };
        let key = run_profile_key(rp.map(|r| r.run_profile_id.as_str()), &namespace);
        let hash = initiation_hash(&key, &slot, version);
        Plan {
            key,
            run: CycleRun {
                id,
                run_profile_id: rp.map(|r| r.run_profile_id.clone()),
                profile_id: rp.map(|r| r.profile_id.clone()),
                namespace,
                slot,
                initiation_hash: hash,
                profile_version: version,
                trigger: trigger.to_string(),
                actor: actor.to_string(),
                created_at: self.clock.now_ms(),
                finished_at: None,
                status: CycleStatus::Running,
                context: serde_json::to_string(&context).unwrap_or_default(),
                error: None,
            },
        }
    }

    /// Creates planned cycles in one transaction (with the schedule's new slot, if any). A
    /// plan whose slot or initiation hash ran before returns that cycle. With `refuse`, a
    /// paused or halted state is an error; otherwise the plan is skipped (recorded) and its
    /// result is the reason.
    async fn create(
        &self,
        plans: Vec<Plan>,
        schedule_update: Option<(&'static str, Millis)>,
        refuse: bool,
    ) -> Result<Vec<Result<Triggered, String>>, CyclesError> {
        let now = self.clock.now_ms();
        let paused_by_config = self.config.governance.global_pause;
        #[cfg(feature = "test-hooks")]
        let crash_before = self.crash_before(Stage::CycleStarted);
        let audit = Arc::clone(&self.audit);
        let results = self
            .write(
                move |t, tx| -> Result<Vec<Result<Triggered, String>>, CyclesError> {
                    let governance = governance_view(t, paused_by_config)?;
                    if let Some((name, slot)) = schedule_update {
                        t.schedules.insert(name, slot)?;
                    }
                    let mut out = Vec::new();
                    for plan in &plans {
                        let run = &plan.run;
                        let blocked = if governance.is_paused() {
                            Some(("paused", "cycles are paused (global pause)".to_string()))
                        } else if governance.is_halted(&run.namespace) {
                            Some((
                                "namespace_halted",
                                format!("namespace `{}` is halted", run.namespace),
                            ))
                        } else {
                            None
                        };
                        if let Some((code, why)) = blocked {
                            if refuse {
                                return Err(conflict(code, why));
                            }
                            append_record(
                                t,
                                now,
                                None,
                                run.run_profile_id.as_deref(),
                                run.profile_id.as_deref(),
                                &run.namespace,
                                "governance",
                                "cycle_started",
                                "skipped",
                                json!({"reason": why, "slot": run.slot, "trigger": run.trigger}),
                            )?;
                            emit(
                                t,
                                now,
                                "cycle_skipped",
                                run.profile_id.as_deref(),
                                None,
                                &run.namespace,
                                json!({"reason": why, "slot": run.slot,
                                   "run_profile_id": run.run_profile_id}),
                            )?;
                            out.push(Err(why));
                            continue;
                        }
                        let existing = t
                            .slots
                            .get((plan.key.as_str(), run.slot.as_str()))?
                            .map(|v| v.value());
                        let existing = match existing {
                            Some(id) => Some(id),
                            None => t
                                .initiations
                                .get((plan.key.as_str(), run.initiation_hash.as_str()))?
                                .map(|v| v.value()),
                        };
                        if let Some(raw) = existing {
                            let existing = load_run(t, Uuid::from_u128(raw))?;
                            out.push(Ok(Triggered {
                                cycle_id: existing.id,
                                created: false,
                                run_profile_id: existing.run_profile_id,
                                namespace: existing.namespace,
                                initiation_hash: existing.initiation_hash,
                            }));
                            continue;
                        }
                        let id = run.id.as_u128();
                        save_run(t, run)?;
                        t.active.insert(id, ())?;
                        t.slots.insert((plan.key.as_str(), run.slot.as_str()), id)?;
                        t.initiations
                            .insert((plan.key.as_str(), run.initiation_hash.as_str()), id)?;
                        emit(
                            t,
                            now,
                            "execution_started",
                            run.profile_id.as_deref(),
                            Some(run.id),
                            &run.namespace,
                            json!({"run_profile_id": run.run_profile_id, "slot": run.slot,
                               "trigger": run.trigger}),
                        )?;
                        write_checkpoint(
                            t,
                            run,
                            Stage::CycleStarted,
                            now,
                            None,
                            Vec::new(),
                            json!({"slot": run.slot, "trigger": run.trigger,
                               "initiation_hash": run.initiation_hash}),
                        )?;
                        // A key's trigger is audited with the cycle; the schedule's are not.
                        if run.actor != SYSTEM_ACTOR {
                            audit.append(
                                tx,
                                now,
                                &AuditEvent::new(
                                    run.actor.clone(),
                                    "cycle.trigger",
                                    run.id.to_string(),
                                )
                                .with_detail(json!({
                                    "namespace": run.namespace,
                                    "run_profile_id": run.run_profile_id,
                                    "slot": run.slot,
                                    "trigger": run.trigger,
                                })),
                            )?;
                        }
                        out.push(Ok(Triggered {
                            cycle_id: run.id,
                            created: true,
                            run_profile_id: run.run_profile_id.clone(),
                            namespace: run.namespace.clone(),
                            initiation_hash: run.initiation_hash.clone(),
                        }));
                    }
                    #[cfg(feature = "test-hooks")]
                    if crash_before && out.iter().any(|r| r.as_ref().is_ok_and(|t| t.created)) {
                        super::crash::crash_now("before:cycle_started");
                    }
                    Ok(out)
                },
            )
            .await?;
        let created: Vec<Uuid> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().filter(|t| t.created).map(|t| t.cycle_id))
            .collect();
        if !created.is_empty() {
            #[cfg(feature = "test-hooks")]
            self.crash_point(Stage::CycleStarted);
            self.events.publish_all(created.into_iter().map(|cycle_id| {
                events::Event::CycleStageReached {
                    cycle_id,
                    stage: Stage::CycleStarted.as_str().to_string(),
                }
            }));
        }
        Ok(results)
    }

    /// Runs the cron schedules once: a schedule whose latest slot at or before now has not run
    /// starts it (once, however many slots were missed while keel was down). The first look at
    /// a schedule only records where it starts.
    pub async fn schedule_tick(self: &Arc<Self>) -> Result<usize, CyclesError> {
        if self.draining.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let mut started = 0;
        for (name, schedule) in [
            (RAW_SCHEDULE, &self.raw_schedule),
            (RUN_PROFILE_SCHEDULE, &self.run_profile_schedule),
        ] {
            let Some(schedule) = schedule else { continue };
            let last = self
                .read(move |t| -> Result<Option<i64>, CyclesError> {
                    Ok(t.schedules.get(name)?.map(|v| v.value()))
                })
                .await?;
            let Some(last) = last else {
                self.write(move |t, _| -> Result<(), CyclesError> {
                    if t.schedules.get(name)?.is_none() {
                        t.schedules.insert(name, now)?;
                    }
                    Ok(())
                })
                .await?;
                continue;
            };
            let Some(slot) = schedule.latest_at_or_before(now).filter(|s| *s > last) else {
                continue;
            };
            let missed = schedule.next_after(last).is_some_and(|first| first < slot);
            let trigger = if missed { "catch_up" } else { "schedule" };
            let slot_name = crate::clock::rfc3339(slot);
            let _gate = self.gate.read().await;
            if name == RAW_SCHEDULE {
                let set = self.profile_set();
                let plan = self.plan(&set, None, None, Some(slot_name), trigger, SYSTEM_ACTOR);
                let results = self.create(vec![plan], Some((name, slot)), false).await?;
                started += results
                    .iter()
                    .filter(|r| r.as_ref().is_ok_and(|t| t.created))
                    .count();
            } else {
                let outcomes = self
                    .run_profiles_now(SYSTEM_ACTOR, Some(slot_name), trigger, Some((name, slot)))
                    .await?;
                started += outcomes
                    .iter()
                    .filter(|o| o.cycle.as_ref().is_some_and(|c| c.created))
                    .count();
            }
            if missed {
                tracing::info!(
                    schedule = name,
                    slot = %crate::clock::rfc3339(slot),
                    "caught up a schedule slot missed while keel was down (once, however many were missed)"
                );
            }
        }
        if started > 0 {
            self.wake.notify_one();
        }
        Ok(started)
    }

    /// The next slot of each schedule (for status pages).
    pub fn next_slots(&self) -> Vec<(&'static str, String, Option<Millis>)> {
        let now = self.clock.now_ms();
        [
            (RAW_SCHEDULE, &self.raw_schedule),
            (RUN_PROFILE_SCHEDULE, &self.run_profile_schedule),
        ]
        .into_iter()
        .filter_map(|(name, s)| {
            s.as_ref()
                .map(|s| (name, s.source().to_string(), s.next_after(now)))
        })
        .collect()
    }
}

/// A cycle to create.
#[derive(Debug, Clone)]
struct Plan {
    key: String,
    run: CycleRun,
}
