//! Wire models of what cycles learn and who governs them: telemetry events, advisory signals,
//! strategy proposals and governance flags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Timestamp, json_text, time_opt};
use crate::cycles::GovernanceView;
use crate::cycles::model::{
    GovernanceFlag as StoredFlag, Proposal as StoredProposal, Signal as StoredSignal,
    TelemetryEvent as StoredEvent,
};

/// A telemetry event (also one line of `GET /api/v1/telemetry/replay`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TelemetryEvent {
    /// Id.
    pub id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When.
    pub time: Timestamp,
    /// When, in epoch ms.
    pub time_ms: i64,
    /// The profile.
    pub profile_id: Option<String>,
    /// The cycle.
    pub run_id: Option<Uuid>,
    /// The namespace.
    pub namespace: String,
    /// Free-form metadata (JSON).
    pub metadata: Value,
}

impl From<&StoredEvent> for TelemetryEvent {
    fn from(e: &StoredEvent) -> Self {
        TelemetryEvent {
            id: e.id,
            event_type: e.event_type.clone(),
            time: e.at.into(),
            time_ms: e.at,
            profile_id: e.profile_id.clone(),
            run_id: e.run_id,
            namespace: e.namespace.clone(),
            metadata: json_text(&e.metadata),
        }
    }
}

/// `GET /api/v1/telemetry`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Telemetry {
    /// The events.
    pub events: Vec<TelemetryEvent>,
}

/// An advisory signal computed for a profile (read-only advice, never acted on by itself).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Signal {
    /// Id.
    pub id: Uuid,
    /// The profile.
    pub profile_id: String,
    /// When it was computed.
    pub at: Timestamp,
    /// The signal, e.g. `healthy`, `degrading`.
    pub signal: String,
    /// Confidence from 0 to 1.
    pub confidence: f64,
    /// Share of successful cycles.
    pub success_rate: Option<f64>,
    /// Share of confirmed deliveries.
    pub delivery_rate: Option<f64>,
    /// 95th percentile of dispatch latency.
    pub dispatch_latency_p95_ms: Option<u64>,
    /// Cycles looked at.
    pub samples: u64,
    /// Start of the window looked at.
    pub window_from: Timestamp,
    /// What it recommends.
    pub recommendation: String,
    /// Always true: signals change nothing.
    pub read_only: bool,
}

impl From<&StoredSignal> for Signal {
    fn from(s: &StoredSignal) -> Self {
        Signal {
            id: s.id,
            profile_id: s.profile_id.clone(),
            at: s.at.into(),
            signal: s.signal.clone(),
            confidence: s.confidence,
            success_rate: s.success_rate,
            delivery_rate: s.delivery_rate,
            dispatch_latency_p95_ms: s.dispatch_latency_p95_ms,
            samples: s.samples,
            window_from: s.window_from.into(),
            recommendation: s.recommendation.clone(),
            read_only: true,
        }
    }
}

/// One signal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignalOne {
    /// The signal.
    pub signal: Signal,
}

/// A profile's signals, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Signals {
    /// The signals.
    pub signals: Vec<Signal>,
}

/// A strategy proposal: a change to a profile that an operator approves or rejects.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Proposal {
    /// Id.
    pub id: Uuid,
    /// The profile.
    pub profile_id: String,
    /// The signal it comes from.
    pub signal_id: Uuid,
    /// When it was made.
    pub created_at: Timestamp,
    /// Who made it.
    pub created_by: String,
    /// What kind of change.
    pub kind: String,
    /// Why.
    pub rationale: String,
    /// The change (JSON).
    pub patch: Value,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<Timestamp>,
    /// What the decision did.
    pub outcome: Option<String>,
}

impl From<&StoredProposal> for Proposal {
    fn from(p: &StoredProposal) -> Self {
        Proposal {
            id: p.id,
            profile_id: p.profile_id.clone(),
            signal_id: p.signal_id,
            created_at: p.created_at.into(),
            created_by: p.created_by.clone(),
            kind: p.kind.clone(),
            rationale: p.rationale.clone(),
            patch: json_text(&p.patch),
            status: p.status.clone(),
            decided_by: p.decided_by.clone(),
            decided_at: time_opt(p.decided_at),
            outcome: p.outcome.clone(),
        }
    }
}

/// Several proposals.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Proposals {
    /// The proposals.
    pub proposals: Vec<Proposal>,
}

/// One proposal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProposalOne {
    /// The proposal.
    pub proposal: Proposal,
}

/// A governance switch: who turned it on or off, when and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GovernanceFlag {
    /// Whether it is on.
    pub on: bool,
    /// Who set it.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// Why.
    pub reason: Option<String>,
}

impl From<&StoredFlag> for GovernanceFlag {
    fn from(f: &StoredFlag) -> Self {
        GovernanceFlag {
            on: f.on,
            by: f.by.clone(),
            at: f.at.into(),
            reason: f.reason.clone(),
        }
    }
}

/// Whether cycles run: the global pause and halted namespaces.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Governance {
    /// Whether cycles are paused (by config or at runtime).
    pub paused: bool,
    /// Whether the configuration pauses them.
    pub paused_by_config: bool,
    /// The runtime pause switch.
    pub pause: Option<GovernanceFlag>,
    /// Namespaces whose cycles are halted.
    pub halted_namespaces: Vec<String>,
    /// Every namespace switch.
    pub namespaces: BTreeMap<String, GovernanceFlag>,
}

impl From<&GovernanceView> for Governance {
    fn from(g: &GovernanceView) -> Self {
        Governance {
            paused: g.is_paused(),
            paused_by_config: g.paused_by_config,
            pause: g.paused.as_ref().map(GovernanceFlag::from),
            halted_namespaces: g
                .namespaces
                .iter()
                .filter(|(_, f)| f.on)
                .map(|(ns, _)| ns.clone())
                .collect(),
            namespaces: g
                .namespaces
                .iter()
                .map(|(ns, f)| (ns.clone(), f.into()))
                .collect(),
        }
    }
}

/// The governance state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GovernanceOne {
    /// The state.
    pub governance: Governance,
}

/// Optional body of a pause or halt: why.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "incident 42"}))]
pub struct Reason {
    /// Why, for the audit log and the dashboard.
    #[serde(default)]
    pub reason: Option<String>,
}
