//! The audit page: the hash-chained log newest first, the head hash and the public key, the
//! signed checkpoints, and a Verify button (operators) that checks the whole chain.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;
use serde::Deserialize;

use super::{AdminError, Ctx, Layout, PageQuery, ago, count, time, time_opt};
use crate::audit::{self, VerifyReport, hex};
use crate::auth::Role;
use crate::http::AppState;

/// Entries per page.
const PAGE: u64 = 50;
/// Checkpoints shown.
const CHECKPOINTS: usize = 10;

/// One audit entry.
pub struct EntryRow {
    /// Sequence number.
    pub seq: u64,
    /// Time.
    pub time: String,
    /// Relative time.
    pub ago: String,
    /// Actor (key id or `system`).
    pub actor: String,
    /// The actor key's name, when known.
    pub actor_name: String,
    /// Action.
    pub action: String,
    /// Target.
    pub target: String,
    /// Detail (JSON).
    pub detail: String,
    /// Start of the entry's hash.
    pub hash: String,
}

/// One signed checkpoint.
pub struct CheckpointRow {
    /// Sequence number covered.
    pub seq: u64,
    /// When it was signed.
    pub time: String,
    /// Head hash signed.
    pub head_hash: String,
    /// Start of the signature.
    pub signature: String,
}

/// The result of a verification.
pub struct Verified {
    /// Whether the chain and every checkpoint check out.
    pub ok: bool,
    /// One line for people.
    pub summary: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/audit.html")]
pub struct AuditPage {
    l: Layout,
    head_seq: String,
    head_hash: String,
    head_time: String,
    public_key: String,
    entries: Vec<EntryRow>,
    checkpoints: Vec<CheckpointRow>,
    older: Option<u64>,
    newer: Option<u64>,
    verified: Option<Verified>,
}

/// Which page: entries before `before` (newest first); `verify=true` (operators) shows a fresh
/// verification of the chain above it.
#[derive(Default, Deserialize)]
pub struct AuditQuery {
    before: Option<u64>,
    #[serde(default)]
    verify: bool,
}

async fn audit_page(
    app: &AppState,
    ctx: &Ctx,
    q: AuditQuery,
    verified: Option<Verified>,
) -> Result<AuditPage, AdminError> {
    let head = app.store.read(audit::head).await?;
    let before = q.before.unwrap_or(head.seq + 1).min(head.seq + 1);
    let after = before.saturating_sub(PAGE + 1);
    let limit = before.saturating_sub(1).saturating_sub(after) as usize;
    let mut entries = if limit == 0 {
        Vec::new()
    } else {
        app.store
            .read(move |tx| audit::list(tx, after, limit))
            .await?
    };
    entries.reverse();
    let checkpoints = app
        .store
        .read(|tx| audit::checkpoints(tx, CHECKPOINTS))
        .await?;
    let names: HashMap<String, String> = app
        .auth
        .list()
        .into_iter()
        .map(|k| (k.id.to_string(), k.name))
        .collect();
    let now = app.clock.now_ms();
    let lowest = entries.last().map(|e| e.seq);
    Ok(AuditPage {
        l: ctx.layout("Audit", "audit"),
        head_seq: count(head.seq),
        head_hash: head.hash,
        head_time: time_opt(head.time_ms),
        public_key: app.audit.public_key_hex(),
        entries: entries
            .iter()
            .map(|e| EntryRow {
                seq: e.seq,
                time: time(e.time_ms),
                ago: ago(now, e.time_ms),
                actor_name: names.get(&e.actor).cloned().unwrap_or_default(),
                actor: e.actor.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
                detail: readable_detail(&e.detail),
                hash: hex(&e.hash)[..16].to_string(),
            })
            .collect(),
        checkpoints: checkpoints
            .iter()
            .map(|c| CheckpointRow {
                seq: c.seq,
                time: time(c.time_ms),
                head_hash: hex(&c.head_hash),
                signature: format!("{}…", &hex(&c.signature)[..24.min(c.signature.len() * 2)]),
            })
            .collect(),
        older: lowest.filter(|s| *s > 1),
        newer: (before <= head.seq).then(|| (before + PAGE).min(head.seq + 1)),
        verified,
    })
}

/// An entry's detail as shown: empty for none, and every `…_at` moment (milliseconds since the
/// epoch in the chain) written as a time, at any depth.
fn readable_detail(detail: &str) -> String {
    fn times(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match v.as_i64() {
                        Some(ms) if key.ends_with("_at") => {
                            *v = serde_json::Value::String(time(ms));
                        }
                        _ => times(v),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(times),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(detail) {
        Ok(serde_json::Value::Null) => String::new(),
        Ok(mut value) => {
            times(&mut value);
            value.to_string()
        }
        Err(_) => detail.to_string(),
    }
}

/// `GET /admin/audit`.
pub async fn page(
    State(app): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<AuditQuery>,
) -> Result<AuditPage, AdminError> {
    let verified = if q.verify {
        // Verifying is an operator's action, as `POST /api/v1/audit/verify` is.
        ctx.session.principal.require(Role::Operator)?;
        let log = Arc::clone(&app.audit);
        let report: VerifyReport = app.store.read(move |tx| log.verify(tx)).await?;
        Some(Verified {
            ok: report.ok,
            summary: report.to_string(),
        })
    } else {
        None
    };
    audit_page(&app, &ctx, q, verified).await
}

/// `POST /admin/audit/verify`: 303 to the audit page that checks the chain and the checkpoints
/// (as `POST /api/v1/audit/verify`) and shows the result above the log.
pub async fn verify() -> Redirect {
    Redirect::to("/admin/audit?verify=true")
}

#[cfg(test)]
mod tests {
    use super::readable_detail;

    #[test]
    fn details_show_moments_as_times() {
        assert_eq!(readable_detail("null"), "");
        assert_eq!(
            readable_detail(
                r#"{"name":"ci","expires_at":1767225600000,"old":{"rotated_at":1767225600000},"n":3}"#
            ),
            r#"{"expires_at":"2026-01-01 00:00:00Z","n":3,"name":"ci","old":{"rotated_at":"2026-01-01 00:00:00Z"}}"#
        );
        assert_eq!(readable_detail("not json"), "not json");
    }
}
