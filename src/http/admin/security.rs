//! The security page (admins): the blocked client addresses with a lift button for automatic
//! blocks, and the latest security events.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;

use super::{AdminError, Ctx, Layout, PagePath, ago, time};
use crate::http::AppState;

/// Events shown on the page.
const EVENTS_SHOWN: usize = 100;

/// One blocked address.
pub struct BlockRow {
    /// The address or configured range.
    pub ip: String,
    /// `auto` or `config`.
    pub source: &'static str,
    /// When it ends, or `—` for a configured block.
    pub until: String,
    /// Strikes and failures, or `—`.
    pub why: String,
    /// Whether the page may lift it (automatic blocks only).
    pub liftable: bool,
}

/// One event row.
pub struct EventLine {
    /// The minute.
    pub minute: String,
    /// The kind.
    pub kind: String,
    /// The address or key id.
    pub subject: String,
    /// How many.
    pub count: u64,
    /// What the last one was about.
    pub detail: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/security.html")]
pub struct SecurityPage {
    l: Layout,
    blocks: Vec<BlockRow>,
    events: Vec<EventLine>,
    policy: String,
}

/// `GET /admin/security`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> Result<SecurityPage, AdminError> {
    let now = app.clock.now_ms();
    let blocks = app
        .security
        .active_blocks()
        .into_iter()
        .map(|b| BlockRow {
            until: b.record.as_ref().map_or("—".into(), |r| {
                format!("{} ({})", time(r.until), ago(now, r.until))
            }),
            why: b
                .record
                .as_ref()
                .map_or("security.blocked_ips".into(), |r| {
                    format!(
                        "{} failed authentications, strike {}",
                        r.failures, r.strikes
                    )
                }),
            liftable: b.record.is_some(),
            source: b.source,
            ip: b.ip,
        })
        .collect();
    let events = app
        .security
        .events(None, EVENTS_SHOWN)
        .await?
        .into_iter()
        .map(|e| EventLine {
            minute: time(e.minute),
            kind: e.kind,
            subject: e.subject,
            count: e.record.count,
            detail: e.record.detail,
        })
        .collect();
    let c = &app.config.security;
    Ok(SecurityPage {
        l: ctx.layout("Security", "security"),
        blocks,
        events,
        policy: format!(
            "An address is blocked for {} s after {} failed authentications within {} s; each repeat doubles the block, up to {} s.",
            c.block_seconds, c.failed_auth_limit, c.failed_auth_window_seconds, c.max_block_seconds
        ),
    })
}

/// `POST /admin/security/blocks/{ip}/lift`: lifts an automatic block (audited as
/// `security.unblock`).
pub async fn lift(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(ip): PagePath<String>,
) -> Result<Redirect, AdminError> {
    app.security.lift(&ctx.actor(), &ip).await?;
    Ok(Redirect::to("/admin/security?msg=unblocked"))
}
