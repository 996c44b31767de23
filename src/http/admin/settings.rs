//! The settings page: the effective configuration as TOML with every secret shown as `***`
//! (the same text as `keel config check`).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

use super::{Ctx, Layout};
use crate::http::AppState;

#[derive(Template, WebTemplate)]
#[template(path = "admin/settings.html")]
pub struct SettingsPage {
    l: Layout,
    toml: String,
    schema_version: u64,
    database: String,
    database_bytes: String,
}

/// `GET /admin/settings`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> SettingsPage {
    SettingsPage {
        l: ctx.layout("Settings", "settings"),
        toml: app.config.to_redacted_toml(),
        schema_version: crate::store::SCHEMA_VERSION,
        database: app.store.path().display().to_string(),
        database_bytes: super::count(app.store.file_size()),
    }
}
