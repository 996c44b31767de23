//! The keys page (admins): every API key with its role, status and last use; create and rotate
//! (each POST redirects to a one-time page that shows the new key once, with a copy button),
//! revoke.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Redirect;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    AdminError, AdminState, Ctx, Layout, PageForm, PagePath, ago, seconds, time, time_opt,
};
use crate::auth::{KeyView, NewKey, Role, Rotation, secs_to_ms};
use crate::http::AppState;

/// A key in the list.
pub struct KeyRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: &'static str,
    /// `active`, `expired`, `revoked`.
    pub status: &'static str,
    /// Recognisable start of the key.
    pub prefix: String,
    /// Created, and by whom.
    pub created: String,
    /// Expiry.
    pub expires: String,
    /// Last use, relative.
    pub last_used: String,
    /// The key this one replaced by rotation (its prefix), or empty.
    pub rotated_from: String,
    /// Whether this is the key of the current session.
    pub yours: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/keys.html")]
pub struct KeysPage {
    l: Layout,
    rows: Vec<KeyRow>,
    roles: Vec<&'static str>,
    default_overlap: u64,
    default_overlap_text: String,
}

/// `GET /admin/keys`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> KeysPage {
    let now = app.clock.now_ms();
    let me = ctx.principal().key_id;
    let mut keys = app.auth.list();
    keys.reverse();
    // Creators and predecessors by name where they are keys.
    let names: std::collections::HashMap<String, (String, String)> = keys
        .iter()
        .map(|k| (k.id.to_string(), (k.name.clone(), k.prefix.clone())))
        .collect();
    KeysPage {
        l: ctx.layout("API keys", "keys"),
        rows: keys
            .iter()
            .map(|k| KeyRow {
                id: k.id.to_string(),
                name: k.name.clone(),
                role: k.role.as_str(),
                status: k.status,
                prefix: k.prefix.clone(),
                created: format!(
                    "{} by {}",
                    time(k.created_at),
                    names
                        .get(&k.created_by)
                        .map_or_else(|| k.created_by.clone(), |(name, _)| name.clone())
                ),
                expires: time_opt(k.expires_at),
                last_used: k.last_used_at.map_or("never".into(), |t| ago(now, t)),
                rotated_from: k.rotated_from.map_or(String::new(), |r| {
                    names
                        .get(&r.to_string())
                        .map_or_else(|| r.to_string(), |(_, prefix)| prefix.clone())
                }),
                yours: k.id == me,
            })
            .collect(),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        default_overlap: app.config.auth.rotation_overlap_seconds,
        default_overlap_text: seconds(app.config.auth.rotation_overlap_seconds),
    }
}

/// The page that shows a new key, once.
#[derive(Template, WebTemplate)]
#[template(path = "admin/key_created.html")]
pub struct KeyCreatedPage {
    l: Layout,
    heading: &'static str,
    name: String,
    role: &'static str,
    token: String,
    note: String,
}

/// How long a new key waits in memory for its one-time page.
const REVEAL_TTL: Duration = Duration::from_secs(600);

/// A new key waiting to be shown once, to the admin who made it.
struct Reveal {
    /// The key of the session that made it: nobody else sees it.
    shown_to: Uuid,
    heading: &'static str,
    name: String,
    role: &'static str,
    token: String,
    note: String,
    made: Instant,
}

/// New keys between the POST that made them and the one GET that shows them. Held in memory
/// only: the full key is never stored, and a restart in between loses it (rotate again).
#[derive(Default)]
pub struct Reveals {
    waiting: Mutex<HashMap<Uuid, Reveal>>,
}

impl Reveals {
    fn hold(&self, ctx: &Ctx, heading: &'static str, view: &KeyView, token: String, note: String) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|_, r| r.made.elapsed() < REVEAL_TTL);
        waiting.insert(
            view.id,
            Reveal {
                shown_to: ctx.session.principal.key_id,
                heading,
                name: view.name.clone(),
                role: view.role.as_str(),
                token,
                note,
                made: Instant::now(),
            },
        );
    }

    /// Takes the new key `id` out, if it waits for this session's key and has not expired.
    fn take(&self, ctx: &Ctx, id: Uuid) -> Option<Reveal> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mine = waiting.get(&id).is_some_and(|r| {
            r.shown_to == ctx.session.principal.key_id && r.made.elapsed() < REVEAL_TTL
        });
        if mine { waiting.remove(&id) } else { None }
    }
}

/// Holds the new key for its one-time page and redirects there (303).
fn reveal_once(
    state: &AdminState,
    ctx: &Ctx,
    heading: &'static str,
    view: &KeyView,
    token: String,
    note: String,
) -> Redirect {
    state.reveals.hold(ctx, heading, view, token, note);
    Redirect::to(&format!("/admin/keys/{}/created", view.id))
}

/// `GET /admin/keys/{id}/created`: the new key, shown this once; afterwards (or to anyone else)
/// 410, so a refresh never shows it again nor makes another key.
pub async fn created(
    Extension(state): Extension<Arc<AdminState>>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<KeyCreatedPage, AdminError> {
    let id = key_id(&id)?;
    let reveal = state.reveals.take(&ctx, id).ok_or_else(|| {
        AdminError::new(
            StatusCode::GONE,
            "gone",
            format!(
                "key {id} was shown once already and keel keeps only its hash; rotate it for a new one"
            ),
        )
    })?;
    Ok(KeyCreatedPage {
        l: ctx.layout(reveal.heading, "keys"),
        heading: reveal.heading,
        name: reveal.name,
        role: reveal.role,
        token: reveal.token,
        note: reveal.note,
    })
}

/// The create form.
#[derive(Deserialize)]
pub struct CreateForm {
    name: String,
    role: String,
    #[serde(default)]
    expires_in_days: String,
}

/// `POST /admin/keys`: creates a key through the auth room (audited as `key.create`).
pub async fn create(
    State(app): State<AppState>,
    Extension(state): Extension<Arc<AdminState>>,
    ctx: Ctx,
    PageForm(form): PageForm<CreateForm>,
) -> Result<Redirect, AdminError> {
    let role: Role = form.role.parse().map_err(AdminError::bad_request)?;
    let expires_at = match form.expires_in_days.trim() {
        "" => None,
        days => {
            let days: u32 = days.parse().map_err(|_| {
                AdminError::bad_request(format!(
                    "expires in: `{days}` is not a whole number of days"
                ))
            })?;
            Some(app.clock.now_ms() + i64::from(days) * 86_400_000)
        }
    };
    let created = app
        .auth
        .create(
            &ctx.actor(),
            NewKey {
                name: form.name,
                role,
                expires_at,
            },
        )
        .await?;
    let note = match created.view.expires_at {
        Some(t) => format!("It expires at {}.", time(t)),
        None => "It does not expire.".into(),
    };
    Ok(reveal_once(
        &state,
        &ctx,
        "Key created",
        &created.view,
        created.token,
        note,
    ))
}

fn key_id(raw: &str) -> Result<Uuid, AdminError> {
    Uuid::parse_str(raw)
        .map_err(|_| AdminError::bad_request(format!("`{raw}` is not a valid key id")))
}

/// The rotate form.
#[derive(Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    overlap_seconds: String,
}

/// `POST /admin/keys/{id}/rotate`: a new key replaces this one, which keeps working for the
/// overlap (audited as `key.rotate`).
pub async fn rotate(
    State(app): State<AppState>,
    Extension(state): Extension<Arc<AdminState>>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<RotateForm>,
) -> Result<Redirect, AdminError> {
    let id = key_id(&id)?;
    let overlap: u64 = match form.overlap_seconds.trim() {
        "" => app.config.auth.rotation_overlap_seconds,
        s => s.parse().map_err(|_| {
            AdminError::bad_request(format!("overlap: `{s}` is not a whole number of seconds"))
        })?,
    };
    let created = app
        .auth
        .rotate(
            &ctx.actor(),
            id,
            Rotation {
                overlap_ms: secs_to_ms(overlap),
                expires_at: None,
            },
        )
        .await?;
    let note = format!(
        "The old key keeps working for {} more, then expires.",
        seconds(overlap)
    );
    Ok(reveal_once(
        &state,
        &ctx,
        "New key",
        &created.view,
        created.token,
        note,
    ))
}

/// `POST /admin/keys/{id}/revoke`: revokes at once (audited as `key.revoke`).
pub async fn revoke(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    app.auth.revoke(&ctx.actor(), key_id(&id)?, false).await?;
    Ok(Redirect::to("/admin/keys?msg=revoked"))
}
