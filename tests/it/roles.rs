//! Who may call what: every route of `keel::http::routes()` with no key and with a key of each
//! role (dashboard routes: with no session and with a signed-in session of each role), and every
//! way a presented key can fail (wrong, garbage, expired, revoked), by `Authorization: Bearer`
//! and by `X-API-Key`.

use keel::auth::Role;
use keel::http::{Access, RouteSpec, routes};
use serde_json::json;

use crate::admin::Client;
use crate::support::{Resp, TestApp, request_with_headers};

/// The request a route is walked with: path with `{id}` filled in, and a body a caller with
/// the right role would send.
fn call(app: &TestApp, spec: &RouteSpec, id: &str, key: Option<&str>) -> Resp {
    let path = spec.path.replace("{id}", id);
    let body = match (spec.method.as_str(), spec.path) {
        ("POST", "/api/v1/keys") => Some(json!({"name": "walk", "role": "viewer"})),
        _ => None,
    };
    match body {
        Some(body) => {
            let bytes = serde_json::to_vec(&body).unwrap();
            app.request(
                spec.method.as_str(),
                &path,
                key,
                Some(("application/json", &bytes)),
            )
        }
        None => app.request(spec.method.as_str(), &path, key, None),
    }
}

fn is_auth_failure(status: u16) -> bool {
    status == 401 || status == 403
}

/// A dashboard route called by a signed-in browser, with the session's CSRF token and a form a
/// caller with the right role would send.
fn session_call(client: &Client, spec: &RouteSpec, id: &str) -> Resp {
    let path = spec.path.replace("{id}", id);
    if spec.method == "GET" {
        return client.get(&path);
    }
    let fields: &[(&str, &str)] = match spec.path {
        "/admin/keys" => &[("name", "walk"), ("role", "viewer")],
        "/admin/tasks" => &[("type", "none"), ("payload", "{}")],
        "/admin/dlq/drain" => &[("max", "1")],
        _ => &[],
    };
    client.post(&path, fields)
}

/// The table test: public routes never ask for a key; role routes answer 401 `missing_key`
/// without one, 403 `forbidden` to a lower role (writing nothing) and succeed for an equal or
/// higher role.
#[test]
fn every_route_answers_no_key_and_each_role_as_the_table_says() {
    let app = TestApp::start();
    let keys: Vec<(Role, String)> = Role::ALL
        .iter()
        .map(|r| (*r, app.create_key(r.as_str())))
        .collect();
    let table = routes();
    assert!(
        table.iter().any(|s| s.access == Access::Public)
            && table.iter().any(|s| s.access == Access::Role(Role::Admin))
            && table
                .iter()
                .any(|s| s.access == Access::Session(Role::Admin)),
        "the table lost its public or admin routes: {table:?}"
    );

    for spec in &table {
        let what = format!("{} {}", spec.method, spec.path);
        // A fresh throwaway key for `{id}`: rotate/revoke act on it, never on a key used to
        // authenticate.
        let (target, _) = app.create_key_with(&json!({"name": "throwaway", "role": "viewer"}));
        match spec.access {
            Access::Public if spec.path == "/admin/login" && spec.method == "POST" => {
                // The sign-in form: open to all; a key of any role signs in, garbage does not.
                for (role, key) in &keys {
                    let r = Client::new(&app.base).try_sign_in(key);
                    assert_eq!(r.status, 303, "{what} as {role}: {r:?}");
                }
                let r = Client::new(&app.base).try_sign_in("garbage");
                assert_eq!(r.status, 401, "{what} with garbage: {r:?}");
            }
            Access::Public => {
                let r = call(&app, spec, &target, None);
                assert!(!is_auth_failure(r.status), "{what} without a key: {r:?}");
                assert!(r.status < 500, "{what}: {r:?}");
                for (role, key) in &keys {
                    let r = call(&app, spec, &target, Some(key));
                    assert!(!is_auth_failure(r.status), "{what} as {role}: {r:?}");
                }
                let r = call(&app, spec, &target, Some("garbage"));
                assert!(!is_auth_failure(r.status), "{what} with garbage: {r:?}");
            }
            Access::Role(needed) => {
                let before = app.audit_seq();
                let r = call(&app, spec, &target, None);
                assert_eq!(r.status, 401, "{what} without a key: {}", r.body);
                assert_eq!(r.error_code(), "missing_key", "{what}");
                for (role, key) in &keys {
                    let r = call(&app, spec, &target, Some(key));
                    if *role < needed {
                        assert_eq!(r.status, 403, "{what} as {role}: {}", r.body);
                        assert_eq!(r.error_code(), "forbidden", "{what} as {role}");
                        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
                        assert!(
                            message.contains(needed.as_str()) && message.contains(role.as_str()),
                            "{what} as {role}: {message}"
                        );
                        assert_eq!(
                            app.audit_seq(),
                            before,
                            "{what}: a forbidden call wrote to the audit log"
                        );
                    } else {
                        // Past the role check: whatever the handler says, but not an auth
                        // failure and not a crash.
                        assert!(
                            !is_auth_failure(r.status) && r.status < 500,
                            "{what} as {role} (needs {needed}): {r:?}"
                        );
                    }
                }
            }
            Access::Session(needed) => {
                let before = app.audit_seq();
                let live = spec.path.starts_with("/admin/live/");
                // No session, and an API key is no session: sign-in first (live JSON: 401).
                let bearer = format!("Bearer {}", app.admin_key);
                for headers in [vec![], vec![("authorization", bearer.as_str())]] {
                    let path = spec.path.replace("{id}", &target);
                    let r =
                        Client::new(&app.base).request(spec.method.as_str(), &path, &headers, None);
                    if live {
                        assert_eq!(r.status, 401, "{what} without a session: {}", r.body);
                        assert_eq!(r.error_code(), "session_required", "{what}");
                    } else {
                        assert_eq!(r.status, 303, "{what} without a session: {}", r.body);
                        let to = r.header("location").unwrap_or("");
                        assert!(
                            to.starts_with("/admin/login?reason=required"),
                            "{what}: {to}"
                        );
                    }
                }
                assert_eq!(
                    app.audit_seq(),
                    before,
                    "{what}: a call without a session wrote"
                );
                for (role, key) in &keys {
                    let client = Client::sign_in(&app.base, key);
                    let before = app.audit_seq();
                    let r = session_call(&client, spec, &target);
                    if *role < needed {
                        assert_eq!(r.status, 403, "{what} as {role}: {}", r.body);
                        assert!(
                            r.body.contains(needed.as_str()) && r.body.contains(role.as_str()),
                            "{what} as {role}: {}",
                            r.body
                        );
                        assert_eq!(
                            app.audit_seq(),
                            before,
                            "{what}: a forbidden call wrote to the audit log"
                        );
                    } else {
                        assert!(
                            !is_auth_failure(r.status) && r.status < 500,
                            "{what} as {role} (needs {needed}): {r:?}"
                        );
                    }
                }
            }
        }
    }

    // The walk revoked and rotated only throwaways: every role's key still works.
    for (role, key) in &keys {
        let r = app.get("/api/v1/system", Some(key));
        assert_eq!(r.status, 200, "{role} key after the walk: {}", r.body);
    }
}

/// A key of the right shape with the wrong secret, an unknown id, and plain garbage are all
/// 401 `invalid_key`; none of them is told apart from another.
#[test]
fn wrong_unknown_and_garbage_keys_are_invalid() {
    let app = TestApp::start();
    let good = app.create_key("admin");
    let mut wrong_secret = good.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'A' { 'B' } else { 'A' });
    let (_, secret) = good["keel_".len()..].split_once('_').unwrap();
    let unknown_id = format!("keel_{}_{secret}", uuid::Uuid::now_v7().simple());
    assert_eq!(app.get("/api/v1/keys", Some(&good)).status, 200);

    for bad in [
        wrong_secret.as_str(),
        unknown_id.as_str(),
        "garbage",
        "keel_",
        "keel_nothex_0123456789012345678901234567890123456789",
    ] {
        let r = app.get("/api/v1/keys", Some(bad));
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_key", "{bad}");
        assert!(!r.body.contains(secret), "the answer echoes the secret");
    }
}

/// A key made to expire in 60 s works until then and answers 401 `key_expired` after.
#[test]
fn an_expired_key_is_refused_as_expired() {
    let app = TestApp::start();
    let (_, token) =
        app.create_key_with(&json!({"name": "short", "role": "viewer", "expires_in_seconds": 60}));
    assert_eq!(app.get("/api/v1/system", Some(&token)).status, 200);
    app.clock.advance_ms(59_000);
    assert_eq!(app.get("/api/v1/system", Some(&token)).status, 200);
    app.clock.advance_ms(2_000);
    let r = app.get("/api/v1/system", Some(&token));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "key_expired");
    // A key without expiry is unaffected by the clock.
    assert_eq!(app.admin_get("/api/v1/system").status, 200);
}

/// A revoked key answers 401 `key_revoked` at once; public routes still answer.
#[test]
fn a_revoked_key_is_refused_as_revoked() {
    let app = TestApp::start();
    let (id, token) = app.create_key_with(&json!({"name": "gone", "role": "operator"}));
    assert_eq!(app.get("/api/v1/system", Some(&token)).status, 200);
    let r = app.request(
        "POST",
        &format!("/api/v1/keys/{id}/revoke"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.get("/api/v1/system", Some(&token));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "key_revoked");
    assert_eq!(app.get("/health", Some(&token)).status, 200);
}

/// `X-API-Key` authenticates exactly like `Authorization: Bearer`, roles included.
#[test]
fn x_api_key_header_works_like_bearer() {
    let app = TestApp::start();
    let viewer = app.create_key("viewer");
    let with = |path: &str, headers: &[(&str, &str)]| {
        request_with_headers(&app.base, "GET", path, headers, None)
    };

    let r = with("/api/v1/system", &[("x-api-key", &viewer)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = with("/api/v1/keys", &[("x-api-key", &viewer)]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "forbidden");
    let r = with("/api/v1/keys", &[("x-api-key", &app.admin_key)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = with("/api/v1/system", &[("x-api-key", "garbage")]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_key");
    let r = with("/api/v1/system", &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "missing_key");

    // The same answers by Bearer, in either capitalisation of the scheme.
    let bearer = format!("Bearer {viewer}");
    let lower = format!("bearer {viewer}");
    assert_eq!(
        with("/api/v1/system", &[("authorization", &bearer)]).status,
        200
    );
    assert_eq!(
        with("/api/v1/system", &[("authorization", &lower)]).status,
        200
    );
    assert_eq!(
        with("/api/v1/keys", &[("authorization", &bearer)]).status,
        403
    );
}
