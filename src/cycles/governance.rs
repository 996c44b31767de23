//! Governance: what stops cycles. A global pause (from the configuration, or set through the
//! API) and a halt per namespace; every change is audited, recorded and put on the telemetry
//! bus in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableTable, TableHandle};
use serde_json::json;

use super::model::GovernanceFlag;
use super::records::append_record;
use super::tables::ReadableTables;
use super::telemetry::emit;
use super::{Cycles, CyclesError, conflict, valid_name};
use crate::audit::Event;
use crate::store::codec;

/// Governance state.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernanceView {
    /// Paused by `governance.global_pause`.
    pub paused_by_config: bool,
    /// Paused through the API.
    pub paused: Option<GovernanceFlag>,
    /// Namespaces and their halt flags.
    pub namespaces: BTreeMap<String, GovernanceFlag>,
}

impl GovernanceView {
    /// Whether cycles are paused.
    pub fn is_paused(&self) -> bool {
        self.paused_by_config || self.paused.as_ref().is_some_and(|f| f.on)
    }

    /// Whether `namespace` is halted.
    pub fn is_halted(&self, namespace: &str) -> bool {
        self.namespaces.get(namespace).is_some_and(|f| f.on)
    }
}

/// The governance state stored in `t`, with the configuration's pause.
pub(super) fn governance_view(
    t: &impl ReadableTables,
    paused_by_config: bool,
) -> Result<GovernanceView, CyclesError> {
    let table = t.governance();
    let mut view = GovernanceView {
        paused_by_config,
        paused: None,
        namespaces: BTreeMap::new(),
    };
    for row in table.iter()? {
        let (k, v) = row?;
        let flag: GovernanceFlag = codec::decode(table.name(), k.value(), v.value())?;
        match k.value().strip_prefix("ns:") {
            Some(ns) => {
                view.namespaces.insert(ns.to_string(), flag);
            }
            None => view.paused = Some(flag),
        }
    }
    Ok(view)
}

impl Cycles {
    /// Governance state.
    pub async fn governance(&self) -> Result<GovernanceView, CyclesError> {
        let paused_by_config = self.config.governance.global_pause;
        self.read(move |t| governance_view(t, paused_by_config))
            .await
    }

    /// Pauses every cycle (audited).
    pub async fn pause(
        &self,
        actor: &str,
        reason: Option<String>,
    ) -> Result<GovernanceView, CyclesError> {
        self.set_flag(actor, "global".into(), true, reason).await
    }

    /// Resumes cycles paused through the API (audited); refused while the configuration
    /// pauses them.
    pub async fn resume(&self, actor: &str) -> Result<GovernanceView, CyclesError> {
        if self.config.governance.global_pause {
            return Err(conflict(
                "paused_by_config",
                "governance.global_pause is true in the configuration; set it to false and restart",
            ));
        }
        let view = self.set_flag(actor, "global".into(), false, None).await?;
        self.wake.notify_one();
        Ok(view)
    }

    /// Halts or resumes one namespace (audited).
    pub async fn set_halt(
        &self,
        actor: &str,
        namespace: &str,
        halted: bool,
        reason: Option<String>,
    ) -> Result<GovernanceView, CyclesError> {
        if !valid_name(namespace) {
            return Err(CyclesError::Invalid(format!(
                "namespace `{namespace}`: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let view = self
            .set_flag(actor, format!("ns:{namespace}"), halted, reason)
            .await?;
        if !halted {
            self.wake.notify_one();
        }
        Ok(view)
    }

    async fn set_flag(
        &self,
        actor: &str,
        key: String,
        on: bool,
        reason: Option<String>,
    ) -> Result<GovernanceView, CyclesError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let paused_by_config = self.config.governance.global_pause;
        self.write(move |t, tx| -> Result<GovernanceView, CyclesError> {
            let flag = GovernanceFlag {
                on,
                by: actor.clone(),
                at: now,
                reason: reason.clone(),
            };
            t.governance
                .insert(key.as_str(), codec::encode(&flag).as_slice())?;
            let (namespace, action) = match key.strip_prefix("ns:") {
                Some(ns) => (ns.to_string(), if on { "halt" } else { "resume" }),
                None => ("*".to_string(), if on { "pause" } else { "resume" }),
            };
            audit.append(
                tx,
                now,
                &Event::new(
                    actor.clone(),
                    format!("governance.{action}"),
                    namespace.clone(),
                )
                .with_detail(json!({"reason": reason})),
            )?;
            append_record(
                t,
                now,
                None,
                None,
                None,
                &namespace,
                "governance",
                action,
                "completed",
                json!({"by": actor, "reason": reason}),
            )?;
            emit(
                t,
                now,
                "governance_changed",
                None,
                None,
                &namespace,
                json!({"action": action, "by": actor, "reason": reason}),
            )?;
            governance_view(t, paused_by_config)
        })
        .await
    }
}
