//! The dashboard's static files (`assets/`), embedded in the binary with rust-embed and served
//! under `/admin/assets/` with their content type, an ETag, and a year of caching when asked for
//! by their content-hashed name (`admin.1a2b3c4d5e.css`), which the pages always use.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

use crate::audit::hex;

#[derive(Embed)]
#[folder = "assets/"]
struct Files;

/// Hex characters of the content hash put into asset names.
const HASH_LEN: usize = 10;

/// Cache of a hashed name: a year, never revalidated (the name changes with the content).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache of a plain name: revalidate with the ETag every time.
const REVALIDATE: &str = "no-cache";

/// Content hash (hex) of every embedded file, computed once.
fn hashes() -> &'static HashMap<String, String> {
    static HASHES: OnceLock<HashMap<String, String>> = OnceLock::new();
    HASHES.get_or_init(|| {
        Files::iter()
            .filter_map(|name| {
                let file = Files::get(&name)?;
                Some((name.to_string(), hex(&file.metadata.sha256_hash())))
            })
            .collect()
    })
}

/// `stem.ext` → `stem.<hash>.ext`.
fn hashed_name(name: &str, hash: &str) -> String {
    let short = &hash[..HASH_LEN.min(hash.len())];
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{short}.{ext}"),
        None => format!("{name}.{short}"),
    }
}

/// The URL of an embedded file under its content-hashed name (the plain name if it is unknown,
/// which then answers 404 and shows up in tests).
pub fn url(name: &str) -> String {
    match hashes().get(name) {
        Some(hash) => format!("/admin/assets/{}", hashed_name(name, hash)),
        None => format!("/admin/assets/{name}"),
    }
}

/// Splits `stem.<hash>.ext` into (`stem.ext`, hash) when the middle part looks like a hash.
fn split_hashed(requested: &str) -> Option<(String, &str)> {
    let (rest, ext) = requested.rsplit_once('.')?;
    let (stem, hash) = rest.rsplit_once('.')?;
    (hash.len() == HASH_LEN && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (format!("{stem}.{ext}"), hash))
}

/// `GET /admin/assets/{file}`.
pub async fn serve(Path(requested): Path<String>, headers: HeaderMap) -> Response {
    // Flat names only: nothing outside the embedded folder can be asked for.
    let flat = !requested.is_empty()
        && !requested.starts_with('.')
        && requested
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let (name, asked_hash) = match split_hashed(&requested) {
        Some((plain, hash)) if Files::get(&plain).is_some() => (plain, Some(hash.to_string())),
        _ => (requested.clone(), None),
    };
    let Some(file) = Files::get(&name).filter(|_| flat) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset",
        )
            .into_response();
    };
    let hash = hex(&file.metadata.sha256_hash());
    let etag = format!("\"{}\"", &hash[..16]);
    // An old hashed name (a page from before an upgrade) gets today's file, not cached for long.
    let cache = match asked_hash {
        Some(asked) if hash.starts_with(&asked) => IMMUTABLE,
        _ => REVALIDATE,
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mime = file.metadata.mimetype();
        let content_type = if mime.starts_with("text/") || mime.ends_with("javascript") {
            format!("{mime}; charset=utf-8")
        } else {
            mime.to_string()
        };
        (
            [(header::CONTENT_TYPE, content_type)],
            file.data.into_owned(),
        )
            .into_response()
    };
    let out = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_content_hashed_and_split_back() {
        let url = url("admin.css");
        let name = url.strip_prefix("/admin/assets/").unwrap();
        let (plain, hash) = split_hashed(name).unwrap();
        assert_eq!(plain, "admin.css");
        assert!(hashes()["admin.css"].starts_with(hash));
        assert_eq!(split_hashed("admin.css"), None);
        assert_eq!(split_hashed("jquery.min.js"), None);
    }
}
