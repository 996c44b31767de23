//! The HTTP API against the real router: health and readiness, security headers, request ids,
//! error answers for bad input (which write nothing), CORS, the keys API end to end with its
//! audit entries, `last_used_at` without per-request writes, the audit API, Prometheus and JSON
//! metrics, persisted metric history, system facts and worker status.

use std::time::Duration;

use keel::clock::Clock;
use keel::metrics::history::SnapshotWorker;
use serde_json::{Value, json};

use crate::support::{Resp, START_MS, TestApp, request_with_headers};

/// `s` with everything but unreserved characters percent-encoded, for a query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn ms_of(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .timestamp_millis()
}

/// The id of the key named `name` (e.g. `initial-admin`).
fn key_id_named(app: &TestApp, name: &str) -> String {
    let r = app.admin_get("/api/v1/keys");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap_or_else(|| panic!("no key named {name}: {}", r.body))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every audit entry, oldest first, by following `next_after` pages of `limit`.
fn all_entries(app: &TestApp, limit: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0u64;
    loop {
        let r = app.admin_get(&format!("/api/v1/audit?after={after}&limit={limit}"));
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        let got = page["entries"].as_array().unwrap().clone();
        assert!(got.len() <= limit, "page longer than limit: {}", r.body);
        match page["next_after"].as_u64() {
            Some(next) => {
                assert_eq!(got.len(), limit, "next_after on a short page: {}", r.body);
                assert_eq!(Some(next), got.last().and_then(|e| e["seq"].as_u64()));
                after = next;
                entries.extend(got);
            }
            None => {
                assert!(got.len() < limit, "a full page must offer next_after");
                entries.extend(got);
                return entries;
            }
        }
    }
}

/// The last audit entry.
fn last_entry(app: &TestApp) -> Value {
    let seq = app.audit_seq();
    let r = app.admin_get(&format!("/api/v1/audit?after={}&limit=1", seq - 1));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entries"][0].clone()
}

/// A key's `last_used_at` as stored on disk (not the in-memory value the API shows), read by
/// loading the keys afresh from the app's store.
fn stored_last_used(app: &TestApp, id: &str) -> Option<i64> {
    let auth = keel::auth::Auth::load(
        app.app.store.clone(),
        app.app.audit.clone(),
        app.app.clock.clone(),
        [0; 32],
        app.app.events.clone(),
    )
    .expect("load keys");
    auth.get(id.parse().expect("uuid"))
        .expect("key exists")
        .last_used_at
}

#[test]
fn health_and_ready_answer_and_ready_fails_once_the_writer_stops() {
    let app = TestApp::start();
    let r = app.get("/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = app.get("/ready", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"status": "ready"}));

    app.app.store.close();

    let r = app.get("/ready", None);
    assert_eq!(r.status, 503, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "not_ready");
    let reasons = v["reasons"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|s| s.as_str().unwrap_or("").contains("writer")),
        "{}",
        r.body
    );
    // Liveness is not readiness; a write now fails cleanly instead of hanging.
    assert_eq!(app.get("/health", None).status, 200);
    let r = app.post_json(
        "/api/v1/keys",
        Some(&app.admin_key),
        &json!({"name": "late", "role": "viewer"}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.error_code(), "shutting_down");
}

fn assert_security_headers(r: &Resp, what: &str) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP in {:?}", r.headers));
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
}

#[test]
fn security_headers_are_on_every_answer_and_hsts_only_when_configured() {
    let app = TestApp::start_with(|c| c.server.max_body_bytes = 64);
    let big = vec![b' '; 1000];
    let answers = [
        ("200", app.get("/health", None)),
        ("200 with key", app.admin_get("/api/v1/system")),
        ("401", app.get("/api/v1/system", None)),
        (
            "403",
            app.get("/api/v1/keys", Some(&app.create_key("viewer"))),
        ),
        ("404", app.get("/nope", None)),
        ("405", app.request("DELETE", "/health", None, None)),
        (
            "413",
            app.request(
                "POST",
                "/api/v1/keys",
                Some(&app.admin_key),
                Some(("application/json", &big)),
            ),
        ),
        ("400", app.admin_get("/api/v1/audit?limit=abc")),
    ];
    for (what, r) in &answers {
        assert_eq!(&r.status.to_string(), &what[..3], "{what}: {}", r.body);
        assert_security_headers(r, what);
        assert_eq!(
            r.header("strict-transport-security"),
            None,
            "{what}: HSTS is off by default"
        );
    }

    let app = TestApp::start_with(|c| c.server.hsts_max_age_seconds = 31_536_000);
    for r in [app.get("/health", None), app.get("/nope", None)] {
        assert_security_headers(&r, "with HSTS");
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000")
        );
    }
}

#[test]
fn request_id_is_echoed_when_sane_and_generated_otherwise() {
    let app = TestApp::start();
    let get = |headers: &[(&str, &str)], path: &str| {
        request_with_headers(&app.base, "GET", path, headers, None)
    };
    let id = |r: &Resp| {
        r.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id: {:?}", r.headers))
            .to_string()
    };

    let sane = "client-42.retry_1:a";
    assert_eq!(id(&get(&[("x-request-id", sane)], "/health")), sane);
    assert_eq!(id(&get(&[("x-request-id", sane)], "/nope")), sane);

    let a = id(&get(&[], "/health"));
    let b = id(&get(&[], "/health"));
    assert!(!a.is_empty() && a.len() <= 128, "{a}");
    assert_ne!(a, b, "generated ids are unique");

    let long = "a".repeat(300);
    for insane in [long.as_str(), "has space", "semi;colon", "quote\"d"] {
        let got = id(&get(&[("x-request-id", insane)], "/health"));
        assert_ne!(got, insane);
        assert!(!got.is_empty() && got.len() <= 128, "{got}");
        assert!(
            got.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "{got}"
        );
    }
}

/// One bad request and what it must get.
struct Bad {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
    mentions: Option<&'static str>,
}

fn bad(what: &'static str, method: &'static str, path: impl Into<String>, status: u16) -> Bad {
    Bad {
        what,
        method,
        path: path.into(),
        content_type: None,
        body: None,
        status,
        code: None,
        mentions: None,
    }
}

impl Bad {
    fn json(mut self, body: &str) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.as_bytes().to_vec());
        self
    }
    fn raw(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }
    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    fn mentions(mut self, text: &'static str) -> Self {
        self.mentions = Some(text);
        self
    }
}

#[test]
fn bad_requests_get_a_clear_4xx_and_write_nothing() {
    let app = TestApp::start_with(|c| c.server.max_body_bytes = 256);
    let (id, _) = app.create_key_with(&json!({"name": "target", "role": "viewer"}));
    let unknown = uuid::Uuid::now_v7();
    let too_big = format!(r#"{{"name":"{}","role":"viewer"}}"#, "x".repeat(1000));
    let cases = vec![
        bad("unknown route", "GET", "/nope/deeper", 404)
            .code("not_found")
            .mentions("/nope/deeper"),
        bad("wrong method", "DELETE", "/health", 405).code("method_not_allowed"),
        bad("wrong method on a role route", "PUT", "/api/v1/keys", 405).code("method_not_allowed"),
        bad("malformed JSON", "POST", "/api/v1/keys", 400)
            .json(r#"{"name": "x", "role": "#)
            .code("malformed_json"),
        bad("wrong field type", "POST", "/api/v1/keys", 422)
            .json(r#"{"name": 5, "role": "viewer"}"#)
            .code("invalid_field")
            .mentions("name"),
        bad("unknown role", "POST", "/api/v1/keys", 422)
            .json(r#"{"name": "x", "role": "superuser"}"#)
            .code("invalid_field")
            .mentions("superuser"),
        bad("unknown field", "POST", "/api/v1/keys", 422)
            .json(r#"{"name": "x", "role": "viewer", "admin": true}"#)
            .code("invalid_field")
            .mentions("admin"),
        bad("missing field", "POST", "/api/v1/keys", 422)
            .json(r#"{"name": "x"}"#)
            .code("invalid_field")
            .mentions("role"),
        bad("empty name", "POST", "/api/v1/keys", 422)
            .json(r#"{"name": " ", "role": "viewer"}"#)
            .code("invalid_field")
            .mentions("name"),
        bad("bad expires_at", "POST", "/api/v1/keys", 422)
            .json(r#"{"name": "x", "role": "viewer", "expires_at": "tomorrow"}"#)
            .code("invalid_field")
            .mentions("expires_at"),
        bad("no content type", "POST", "/api/v1/keys", 415)
            .raw(br#"{"name": "x", "role": "viewer"}"#.to_vec())
            .code("unsupported_media_type"),
        bad("body over the limit", "POST", "/api/v1/keys", 413)
            .json(&too_big)
            .code("payload_too_large"),
        bad(
            "rotate body over the limit",
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            413,
        )
        .json(&format!(
            r#"{{"overlap_seconds": 60, "pad": "{}"}}"#,
            "x".repeat(1000)
        ))
        .code("payload_too_large"),
        bad(
            "rotate malformed JSON",
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            400,
        )
        .json("{")
        .code("malformed_json"),
        bad(
            "rotate negative overlap",
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            422,
        )
        .json(r#"{"overlap_seconds": -5}"#)
        .code("invalid_field"),
        bad("key id not a UUID", "GET", "/api/v1/keys/not-a-uuid", 400)
            .code("bad_request")
            .mentions("not-a-uuid"),
        bad("unknown key", "GET", format!("/api/v1/keys/{unknown}"), 404).code("not_found"),
        bad(
            "revoke unknown key",
            "POST",
            format!("/api/v1/keys/{unknown}/revoke"),
            404,
        )
        .code("not_found"),
        bad("limit not a number", "GET", "/api/v1/audit?limit=abc", 400)
            .code("invalid_query")
            .mentions("limit"),
        bad("limit zero", "GET", "/api/v1/audit?limit=0", 400).mentions("limit"),
        bad("limit too large", "GET", "/api/v1/audit?limit=1001", 400).mentions("limit"),
        bad(
            "unknown query parameter",
            "GET",
            "/api/v1/audit?bogus=1",
            400,
        )
        .code("invalid_query")
        .mentions("bogus"),
        bad("after negative", "GET", "/api/v1/audit?after=-1", 400).code("invalid_query"),
    ];

    let seq = app.audit_seq();
    let keys = app.admin_get("/api/v1/keys").json()["keys"].clone();
    for case in cases {
        let what = case.what;
        let mut headers = vec![("authorization", format!("Bearer {}", app.admin_key))];
        if let Some(ct) = case.content_type {
            headers.push(("content-type", ct.to_string()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = request_with_headers(
            &app.base,
            case.method,
            &case.path,
            &headers,
            case.body.as_deref(),
        );
        assert_eq!(r.status, case.status, "{what}: {}", r.body);
        let v = r.json();
        let code = v["error"]["code"].as_str().unwrap_or_else(|| {
            panic!("{what}: no error code in {}", r.body);
        });
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{what}: empty message");
        if let Some(expected) = case.code {
            assert_eq!(code, expected, "{what}: {}", r.body);
        }
        if let Some(text) = case.mentions {
            assert!(
                message.contains(text),
                "{what}: {message:?} should name {text}"
            );
        }
        assert_eq!(app.audit_seq(), seq, "{what}: the audit log moved");
        assert_eq!(app.get("/health", None).status, 200, "{what}: server down");
    }
    assert_eq!(
        app.admin_get("/api/v1/keys").json()["keys"],
        keys,
        "a bad request changed the keys"
    );
}

#[test]
fn cors_answers_only_configured_origins() {
    let allowed = "https://ops.example.com";
    let preflight = |app: &TestApp, origin: &str| {
        request_with_headers(
            &app.base,
            "OPTIONS",
            "/api/v1/keys",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            None,
        )
    };

    let app = TestApp::start_with(|c| c.server.cors_allowed_origins = vec![allowed.to_string()]);
    let r = preflight(&app, allowed);
    assert!(r.status < 300, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
    let methods = r.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    let headers = r
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    assert_security_headers(&r, "preflight");

    let r = preflight(&app, "https://evil.example.com");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");

    // An actual cross-origin call from the allowed origin can read the answer and its id.
    let r = request_with_headers(&app.base, "GET", "/health", &[("origin", allowed)], None);
    assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
    assert!(
        r.header("access-control-expose-headers")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("x-request-id"),
        "{r:?}"
    );

    let app = TestApp::start();
    for r in [
        preflight(&app, allowed),
        request_with_headers(&app.base, "GET", "/health", &[("origin", allowed)], None),
    ] {
        assert!(
            !r.headers
                .iter()
                .any(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-")),
            "no CORS without configured origins: {r:?}"
        );
    }
}

/// True when `text` contains `token` or any 20-character piece of its secret.
fn leaks(text: &str, token: &str) -> bool {
    let secret = &token["keel_".len() + 33..];
    assert!(secret.len() >= 40, "secret part of {token}");
    text.contains(token) || (0..=secret.len() - 20).any(|i| text.contains(&secret[i..i + 20]))
}

#[test]
fn keys_api_creates_lists_rotates_and_revokes_with_one_audit_entry_each() {
    let app = TestApp::start();
    let initial = key_id_named(&app, "initial-admin");
    let (second_admin_id, second_admin) =
        app.create_key_with(&json!({"name": "second-admin", "role": "admin"}));

    // Create.
    let seq = app.audit_seq();
    let r = app.post_json(
        "/api/v1/keys",
        Some(&app.admin_key),
        &json!({"name": "ci-runner", "role": "service"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["key"]["id"].as_str().unwrap().to_string();
    let simple = id.replace('-', "");
    assert!(token.starts_with(&format!("keel_{simple}_")), "{token}");
    assert_eq!(created["key"]["role"], "service");
    assert_eq!(created["key"]["status"], "active");
    assert_eq!(created["key"]["created_by"], initial.as_str());
    assert_eq!(created["key"]["expires_at"], Value::Null);
    let prefix = created["key"]["prefix"].as_str().unwrap();
    assert!(token.starts_with(prefix.trim_end_matches('…')), "{prefix}");
    assert_eq!(app.audit_seq(), seq + 1);
    let e = last_entry(&app);
    assert_eq!(e["action"], "key.create");
    assert_eq!(e["actor"], initial.as_str());
    assert_eq!(e["target"], id.as_str());

    // Shown once: never in a read of the key, the list or the audit log.
    let one = app.admin_get(&format!("/api/v1/keys/{id}"));
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.json()["key"]["name"], "ci-runner");
    let list = app.admin_get("/api/v1/keys");
    assert!(
        list.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str())
    );
    let audit = app.admin_get("/api/v1/audit?limit=1000");
    for (what, body) in [
        ("get", &one.body),
        ("list", &list.body),
        ("audit", &audit.body),
    ] {
        assert!(!leaks(body, &token), "{what} shows the secret: {body}");
        assert!(!body.contains("token"), "{what}: {body}");
    }
    assert_eq!(app.get("/api/v1/system", Some(&token)).status, 200);

    // Rotate, by another admin: both keys work during the overlap.
    let seq = app.audit_seq();
    let r = app.post_json(
        &format!("/api/v1/keys/{id}/rotate"),
        Some(&second_admin),
        &json!({"overlap_seconds": 60}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let rotated = r.json();
    let new_token = rotated["token"].as_str().unwrap().to_string();
    let new_id = rotated["key"]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    assert_ne!(new_token, token);
    assert_eq!(rotated["key"]["rotated_from"], id.as_str());
    assert_eq!(rotated["key"]["role"], "service");
    assert_eq!(rotated["key"]["name"], "ci-runner");
    assert_eq!(app.audit_seq(), seq + 1);
    let e = last_entry(&app);
    assert_eq!(e["action"], "key.rotate");
    assert_eq!(e["actor"], second_admin_id.as_str());
    assert_eq!(e["target"], id.as_str());
    assert_eq!(e["detail"]["new_key_id"], new_id.as_str());
    let old = app.admin_get(&format!("/api/v1/keys/{id}")).json();
    assert_eq!(
        ms_of(old["key"]["expires_at"].as_str().unwrap()),
        START_MS + 60_000
    );
    assert_eq!(app.get("/api/v1/system", Some(&token)).status, 200);
    assert_eq!(app.get("/api/v1/system", Some(&new_token)).status, 200);
    assert!(!leaks(&app.admin_get("/api/v1/keys").body, &new_token));

    // After the overlap only the new key works.
    app.clock.advance_ms(61_000);
    let r = app.get("/api/v1/system", Some(&token));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "key_expired");
    assert_eq!(app.get("/api/v1/system", Some(&new_token)).status, 200);
    assert_eq!(
        app.admin_get(&format!("/api/v1/keys/{id}")).json()["key"]["status"],
        "expired"
    );

    // Revoke.
    let seq = app.audit_seq();
    let r = app.request(
        "POST",
        &format!("/api/v1/keys/{new_id}/revoke"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["key"]["status"], "revoked");
    assert_eq!(app.audit_seq(), seq + 1);
    let e = last_entry(&app);
    assert_eq!(e["action"], "key.revoke");
    assert_eq!(e["actor"], initial.as_str());
    assert_eq!(e["target"], new_id.as_str());
    let r = app.get("/api/v1/system", Some(&new_token));
    assert_eq!(r.error_code(), "key_revoked");

    // Revoking again changes nothing and records nothing; a revoked key cannot be rotated.
    let r = app.request(
        "POST",
        &format!("/api/v1/keys/{new_id}/revoke"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.request(
        "POST",
        &format!("/api/v1/keys/{new_id}/rotate"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(app.audit_seq(), seq + 1);

    // Expiry: in the past is refused, in the future is kept; not both forms at once.
    let now = app.clock.now_ms();
    let past = keel::clock::rfc3339(now - 1_000);
    let r = app.post_json(
        "/api/v1/keys",
        Some(&app.admin_key),
        &json!({"name": "old", "role": "viewer", "expires_at": past}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_field");
    let r = app.post_json(
        "/api/v1/keys",
        Some(&app.admin_key),
        &json!({"name": "both", "role": "viewer", "expires_at": keel::clock::rfc3339(now + 10_000), "expires_in_seconds": 10}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(app.audit_seq(), seq + 1, "refused creations wrote nothing");
    let future = keel::clock::rfc3339(now + 3_600_000);
    let r = app.post_json(
        "/api/v1/keys",
        Some(&app.admin_key),
        &json!({"name": "later", "role": "viewer", "expires_at": future}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["key"]["expires_at"], future.as_str());
    let e = last_entry(&app);
    assert_eq!(e["action"], "key.create");
    assert_eq!(e["detail"]["expires_at"], now + 3_600_000);
}

#[test]
fn last_used_is_shown_at_once_and_survives_a_restart_after_the_flush() {
    let app = TestApp::start();
    let (id, token) = app.create_key_with(&json!({"name": "user", "role": "viewer"}));
    let path = format!("/api/v1/keys/{id}");
    assert_eq!(
        app.admin_get(&path).json()["key"]["last_used_at"],
        Value::Null
    );

    app.clock.advance_ms(5_000);
    assert_eq!(app.get("/api/v1/system", Some(&token)).status, 200);
    let used = keel::clock::rfc3339(START_MS + 5_000);
    assert_eq!(
        app.admin_get(&path).json()["key"]["last_used_at"],
        used.as_str()
    );

    let flushed = app.block_on(app.app.auth.flush_last_used()).expect("flush");
    assert!(flushed >= 1, "the viewer's use was pending");
    let dir = app.stop();

    let app = TestApp::start_in(dir, |_| {});
    let key = app.admin_get(&path).json()["key"].clone();
    assert_eq!(key["last_used_at"], used.as_str(), "{key}");
}

/// Authentication remembers a key's last use in memory only: twenty authenticated requests
/// write nothing (the stored `last_used_at` and the audit log stay as they were) until the
/// flush writes the latest use.
#[test]
fn authenticated_requests_do_not_write_last_use_until_the_flush() {
    let app = TestApp::start_with(|c| c.auth.last_used_flush_seconds = 3600);
    let (id, viewer) = app.create_key_with(&json!({"name": "reader", "role": "viewer"}));
    let seq = app.audit_seq();
    assert_eq!(stored_last_used(&app, &id), None);
    for i in 0..20 {
        app.clock.advance_ms(1_000);
        let r = app.get("/api/v1/system", Some(&viewer));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let last = START_MS + 20_000;
    let shown = app.admin_get(&format!("/api/v1/keys/{id}")).json()["key"]["last_used_at"].clone();
    assert_eq!(
        shown,
        keel::clock::rfc3339(last).as_str(),
        "the API shows the use at once"
    );
    assert_eq!(
        stored_last_used(&app, &id),
        None,
        "a request wrote last_used_at"
    );
    assert_eq!(app.audit_seq(), seq, "a request wrote to the audit log");

    let flushed = app.block_on(app.app.auth.flush_last_used()).unwrap();
    assert_eq!(flushed, 2, "viewer and admin were used");
    assert_eq!(stored_last_used(&app, &id), Some(last));
    assert_eq!(app.block_on(app.app.auth.flush_last_used()).unwrap(), 0);
    assert_eq!(app.audit_seq(), seq, "last use is not an audited change");
}

#[test]
fn audit_api_pages_heads_verifies_and_lists_signed_checkpoints() {
    let app = TestApp::start_with(|c| c.audit.checkpoint_every = 3);
    for role in ["viewer", "service", "operator", "admin", "viewer"] {
        app.create_key(role);
    }
    // The initial admin key plus five.
    let entries = all_entries(&app, 2);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(
        all_entries(&app, 1000),
        entries,
        "page size does not matter"
    );
    assert_eq!(entries[0]["actor"], "system");
    assert_eq!(entries[0]["prev_hash"], "0".repeat(64));
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1]["prev_hash"], pair[0]["hash"],
            "chain at {}",
            pair[1]["seq"]
        );
        assert_eq!(pair[1]["action"], "key.create");
    }

    let head = app.admin_get("/api/v1/audit/head").json();
    assert_eq!(head["seq"], 6);
    assert_eq!(head["hash"], entries[5]["hash"]);
    assert_eq!(head["time"], entries[5]["time"]);

    let operator = app.create_key("operator");
    let r = app.request("POST", "/api/v1/audit/verify", Some(&operator), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries"], 7);
    assert_eq!(report["checkpoints"], 2);
    assert!(
        report["summary"].as_str().unwrap().starts_with("OK:"),
        "{report}"
    );

    let r = app.admin_get("/api/v1/audit/checkpoints");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let checkpoints = v["checkpoints"].as_array().unwrap();
    let cp_seqs: Vec<u64> = checkpoints
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(cp_seqs, vec![6, 3], "newest first");
    assert_eq!(v["public_key"], head["public_key"]);
    let key_bytes: [u8; 32] = hex_decode(v["public_key"].as_str().unwrap())
        .try_into()
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).expect("public key");
    for cp in checkpoints {
        let seq = cp["seq"].as_u64().unwrap();
        assert_eq!(cp["head_hash"], entries[seq as usize - 1]["hash"]);
        let signature: [u8; 64] = hex_decode(cp["signature"].as_str().unwrap())
            .try_into()
            .unwrap();
        let mut message = b"keel audit checkpoint v1".to_vec();
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(&hex_decode(cp["head_hash"].as_str().unwrap()));
        message.extend_from_slice(&ms_of(cp["time"].as_str().unwrap()).to_be_bytes());
        key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
            .unwrap_or_else(|e| panic!("checkpoint {seq} signature: {e}"));
    }
    let r = app.admin_get("/api/v1/audit/checkpoints?limit=1");
    assert_eq!(r.json()["checkpoints"].as_array().unwrap().len(), 1);
}

/// The value of the Prometheus sample line starting with `series ` (exact series text).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or(f64::NAN))
}

#[test]
fn metrics_count_requests_and_report_quantiles() {
    let app = TestApp::start();
    let health = r#"keel_http_requests_total{method="GET",route="/health",status="200"}"#;
    for _ in 0..3 {
        assert_eq!(app.get("/health", None).status, 200);
    }
    let r = app.admin_get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    let text = r.body;
    assert_eq!(sample(&text, health), Some(3.0), "{text}");
    assert!(text.contains("# TYPE keel_http_requests_total counter"));
    for q in ["0.5", "0.95", "0.99"] {
        for series in [
            format!(
                r#"keel_http_request_duration_seconds{{method="GET",route="/health",quantile="{q}"}}"#
            ),
            format!(r#"keel_store_commit_duration_seconds{{quantile="{q}"}}"#),
            format!(r#"keel_store_commit_batch_size{{quantile="{q}"}}"#),
        ] {
            let v = sample(&text, &series).unwrap_or_else(|| panic!("no {series} in {text}"));
            assert!(v.is_finite() && v >= 0.0, "{series} = {v}");
        }
    }
    let version = format!(r#"keel_build_info{{version="{}"}}"#, keel::app::VERSION);
    assert_eq!(sample(&text, &version), Some(1.0), "{text}");

    for _ in 0..2 {
        app.get("/health", None);
    }
    let text = app.admin_get("/metrics").body;
    assert_eq!(sample(&text, health), Some(5.0));
    // The route label is the template, not the raw path.
    app.admin_get(&format!("/api/v1/keys/{}", uuid::Uuid::now_v7()));
    let text = app.admin_get("/metrics").body;
    assert_eq!(
        sample(
            &text,
            r#"keel_http_requests_total{method="GET",route="/api/v1/keys/{id}",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );

    let r = app.admin_get("/metrics/json");
    assert_eq!(r.status, 200);
    let v = r.json();
    let counter = v["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["name"] == "keel_http_requests_total"
                && c["labels"] == json!({"method": "GET", "route": "/health", "status": "200"})
        })
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(counter["value"], 5);
    assert!(
        v["histograms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "keel_store_commit_duration_seconds" && h["p99"].is_number())
    );
}

#[test]
fn metric_history_is_stored_queried_and_survives_a_restart() {
    let app = TestApp::start_with(|c| c.metrics.snapshot_interval_seconds = 3600);
    for _ in 0..5 {
        app.get("/health", None);
    }
    app.clock.advance_ms(1_000);
    let start = app.clock.now_ms();
    let mut worker = SnapshotWorker {
        store: app.app.store.clone(),
        metrics: app.app.metrics.clone(),
        clock: app.app.clock.clone(),
        interval: Duration::from_secs(60),
        retention: Duration::from_secs(14 * 86_400),
        interval_start_ms: start,
    };
    app.clock.advance_ms(60_000);
    let stored = app.block_on(worker.persist_now()).expect("persist");
    assert!(stored >= 2, "http and commit series: {stored}");

    let health = r#"keel_http_request_duration_seconds{method="GET",route="/health"}"#;
    let check = |app: &TestApp| {
        let r = app.admin_get("/api/v1/metrics/history");
        assert_eq!(r.status, 200, "{}", r.body);
        let series = r.json()["series"].clone();
        let names: Vec<&str> = series
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(names.contains(&health), "{names:?}");
        assert!(
            names.contains(&"keel_store_commit_duration_seconds"),
            "{names:?}"
        );

        let r = app.admin_get(&format!(
            "/api/v1/metrics/history?series={}",
            percent_encode(health)
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["series"], health);
        let points = v["points"].as_array().unwrap();
        assert_eq!(points.len(), 1, "{v}");
        let p = &points[0];
        assert_eq!(p["start_ms"], start);
        assert_eq!(p["end_ms"], start + 60_000);
        assert_eq!(p["count"], 5);
        assert_eq!(p["unit"], "microseconds");
        assert!(
            p["p95"].as_u64().unwrap() <= p["p99"].as_u64().unwrap(),
            "{p}"
        );
        assert!(
            p["p99"].as_u64().unwrap() <= p["max"].as_u64().unwrap(),
            "{p}"
        );
        assert_eq!(v["overall"]["count"], 5, "{v}");

        let r = app.admin_get("/api/v1/metrics/history?series=no_such_series");
        assert_eq!(r.json()["points"], json!([]));
    };
    check(&app);
    drop(worker); // it holds the store open
    let dir = app.stop();
    let app = TestApp::start_in(dir, |c| c.metrics.snapshot_interval_seconds = 3600);
    check(&app);
}

#[test]
fn system_and_cron_status_report_facts() {
    let app = TestApp::start_with(|c| c.metrics.snapshot_interval_seconds = 120);
    let r = app.admin_get("/api/v1/system");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["version"], keel::app::VERSION);
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert_eq!(v["data_dir"], app.dir.path().display().to_string());
    assert!(v["database_file_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["schema_version"], keel::store::SCHEMA_VERSION);
    assert_eq!(v["started_at"], keel::clock::rfc3339(START_MS));

    let r = app.admin_get("/api/v1/cron/status");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let workers = v["workers"].as_array().unwrap();
    let find = |name: &str| {
        workers
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no worker {name}: {v}"))
            .clone()
    };
    for w in workers {
        assert!(w["next_run_at"].is_string(), "{w}");
        assert!(
            w["schedule"].as_str().unwrap_or("").starts_with("every "),
            "{w}"
        );
    }
    // Next runs follow each schedule from the (manual) start time.
    for (name, every_ms) in [
        ("metrics-snapshot", 120_000),
        ("key-last-used-flush", 60_000),
        ("audit-checkpoint", 300_000),
        ("dispatcher", 250),
        ("queue-maintenance", 5_000),
    ] {
        let w = find(name);
        let next = w["next_run_at"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no next_run_at: {w}"));
        assert_eq!(ms_of(next), START_MS + every_ms, "{name}: {w}");
        assert_eq!(w["errors"], 0, "{w}");
    }
    assert_eq!(find("metrics-snapshot")["schedule"], "every 2m");
}

/// `GET /api/v1/openapi.json`: an OpenAPI 3.1 document for a viewer (401 without a key) that
/// lists exactly the API routes of the route table, each with the roles that may call it, a
/// security requirement when it needs a key, and described responses including the error shape.
#[test]
fn the_openapi_document_lists_every_api_route_with_its_roles() {
    let app = TestApp::start();
    let viewer = app.create_key("viewer");
    let r = app.get("/api/v1/openapi.json", None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "missing_key");
    let r = app.get("/api/v1/openapi.json", Some(&viewer));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], keel::process::VERSION);
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "{doc}"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    documented.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    // The dashboard and its `GET /` redirect are for browsers, not API clients.
    let mut table: Vec<_> = keel::http::routes()
        .into_iter()
        .filter(|s| !s.path.starts_with("/admin") && s.path != "/")
        .collect();
    table.sort_by(|a, b| (a.method.as_str(), a.path).cmp(&(b.method.as_str(), b.path)));
    assert_eq!(
        documented
            .iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect::<Vec<_>>(),
        table
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect::<Vec<_>>(),
        "the document and the route table disagree"
    );
    for ((_, _, op), spec) in documented.iter().zip(&table) {
        let what = format!("{} {}", spec.method, spec.path);
        let roles: Vec<&str> = match spec.access {
            keel::http::Access::Role(needed) => keel::auth::Role::ALL
                .iter()
                .filter(|r| **r >= needed)
                .map(|r| r.as_str())
                .collect(),
            _ => Vec::new(),
        };
        assert_eq!(op["x-roles"], json!(roles), "{what}");
        if let keel::http::Access::Role(needed) = spec.access {
            assert_eq!(
                op["security"][0]["bearer"],
                json!([needed.as_str()]),
                "{what}"
            );
            for status in ["401", "403"] {
                assert!(op["responses"][status].is_object(), "{what}: no {status}");
            }
        } else {
            assert!(op.get("security").is_none(), "{what}");
        }
        assert!(op["summary"].is_string(), "{what}");
        assert!(op["responses"]["500"].is_object(), "{what}");
        for (status, response) in op["responses"].as_object().unwrap() {
            let described = response["description"].is_string()
                || response["$ref"]
                    .as_str()
                    .and_then(|r| r.rsplit('/').next())
                    .is_some_and(|name| {
                        doc["components"]["responses"][name]["description"].is_string()
                    });
            assert!(described, "{what} {status}: {response}");
        }
    }
}

/// axum's own rejections (bad JSON, no JSON content type, a bad path segment or query, a body
/// over the limit) answer keel's JSON error shape, never plain text.
#[test]
fn extractor_rejections_answer_the_json_error_shape() {
    let app = TestApp::start_with(|c| c.server.max_body_bytes = 1024);
    let key = app.admin_key.clone();
    let cases: Vec<(Resp, u16, &str)> = vec![
        (
            app.request(
                "POST",
                "/api/v1/tasks",
                Some(&key),
                Some(("application/json", b"{\"type\": ")),
            ),
            400,
            "malformed_json",
        ),
        (
            app.request(
                "POST",
                "/api/v1/tasks",
                Some(&key),
                Some(("text/plain", b"{\"type\": \"x\"}")),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            app.request(
                "POST",
                "/api/v1/dlq/drain",
                Some(&key),
                Some(("application/json", b"{\"max\": \"lots\"}")),
            ),
            422,
            "invalid_field",
        ),
        (
            app.get("/api/v1/tasks?limit=many", Some(&key)),
            400,
            "invalid_query",
        ),
        (
            app.get("/api/v1/tasks?colour=red", Some(&key)),
            400,
            "invalid_query",
        ),
        (
            app.get("/api/v1/tasks/not-a-uuid", Some(&key)),
            400,
            "bad_request",
        ),
        (
            app.get("/api/v1/circuits/%FF/reset", Some(&key)),
            405,
            "method_not_allowed",
        ),
        (
            app.request("POST", "/api/v1/circuits/%FF%FE/reset", Some(&key), None),
            400,
            "invalid_path",
        ),
        (
            app.request(
                "POST",
                "/api/v1/cycles/trigger",
                Some(&key),
                Some(("application/json", &vec![b' '; 4096])),
            ),
            413,
            "payload_too_large",
        ),
        (
            app.request(
                "POST",
                "/api/v1/tasks",
                Some(&key),
                Some(("application/json", &vec![b' '; 4096])),
            ),
            413,
            "payload_too_large",
        ),
    ];
    for (r, status, code) in cases {
        assert_eq!(r.status, status, "{r:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{r:?}"
        );
        assert_eq!(r.error_code(), code, "{r:?}");
        assert!(r.json()["error"]["message"].is_string(), "{r:?}");
    }
}
