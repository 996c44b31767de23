//! API key lifecycle rules through the real router: a revocation racing a rotation always
//! wins, rotation keeps the old key's expiry, overlaps and lifetimes are bounded, and the last
//! active admin key is revoked only when forced.

use std::sync::{Arc, Barrier};

use serde_json::{Value, json};

use crate::support::{START_MS, TestApp};

/// `POST path` with a JSON body (or none) under `key`.
fn post(app: &TestApp, path: &str, key: &str, body: Option<&Value>) -> crate::support::Resp {
    match body {
        Some(body) => app.post_json(path, Some(key), body),
        None => app.request("POST", path, Some(key), None),
    }
}

/// Revoke and rotate of one key sent at the same moment, many times over: whatever order they
/// commit in, the key ends revoked, in the API, for authentication and after a restart.
#[test]
fn a_revocation_racing_a_rotation_is_never_undone() {
    let app = TestApp::start();
    let admin = app.admin_key.clone();
    let base = app.base.clone();
    let mut raced = Vec::new();
    for round in 0..200 {
        let (id, token) =
            app.create_key_with(&json!({"name": format!("raced-{round}"), "role": "viewer"}));
        let barrier = Arc::new(Barrier::new(2));
        let send = |path: String| {
            let (barrier, base, admin) = (Arc::clone(&barrier), base.clone(), admin.clone());
            std::thread::spawn(move || {
                barrier.wait();
                crate::support::request(&base, "POST", &path, Some(&admin), None)
            })
        };
        // Alternate which request starts first, so both commit orders are exercised.
        let (revoke, rotate) = if round % 2 == 0 {
            let revoke = send(format!("/api/v1/keys/{id}/revoke"));
            (revoke, send(format!("/api/v1/keys/{id}/rotate")))
        } else {
            let rotate = send(format!("/api/v1/keys/{id}/rotate"));
            (send(format!("/api/v1/keys/{id}/revoke")), rotate)
        };
        let revoke = revoke.join().unwrap();
        let rotate = rotate.join().unwrap();
        assert_eq!(revoke.status, 200, "round {round}: {}", revoke.body);
        assert!(
            rotate.status == 201 || rotate.status == 422,
            "round {round}: {} {}",
            rotate.status,
            rotate.body
        );
        let key = app.admin_get(&format!("/api/v1/keys/{id}")).json();
        assert_eq!(key["key"]["status"], "revoked", "round {round}: {key}");
        let r = app.get("/api/v1/system", Some(&token));
        assert_eq!(r.status, 401, "round {round}: the revoked key still works");
        assert_eq!(r.error_code(), "key_revoked", "round {round}");
        raced.push(id);
    }
    let dir = app.stop();
    let app = TestApp::start_in(dir, |_| {});
    let keys = app.admin_get("/api/v1/keys").json();
    for id in &raced {
        let key = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} missing after restart"));
        assert_eq!(key["status"], "revoked", "after restart: {key}");
    }
}

#[test]
fn rotation_keeps_the_expiry_and_bounds_overlap_and_lifetime() {
    let app = TestApp::start();
    let admin = app.admin_key.clone();
    let day_ms = 86_400_000_i64;
    let (id, _) = app.create_key_with(
        &json!({"name": "ninety", "role": "service", "expires_in_seconds": 90 * 86_400}),
    );
    let expires = |key: &Value| {
        chrono::DateTime::parse_from_rfc3339(key["expires_at"].as_str().unwrap_or_else(|| {
            panic!("no expiry: {key}");
        }))
        .unwrap()
        .timestamp_millis()
    };

    // No expiry given: the successor keeps the old key's.
    let r = post(&app, &format!("/api/v1/keys/{id}/rotate"), &admin, None);
    assert_eq!(r.status, 201, "{}", r.body);
    let successor = r.json()["key"].clone();
    assert_eq!(expires(&successor), START_MS + 90 * day_ms, "{successor}");
    let successor_id = successor["id"].as_str().unwrap().to_string();

    // A new expiry given: the successor takes it.
    let r = post(
        &app,
        &format!("/api/v1/keys/{successor_id}/rotate"),
        &admin,
        Some(&json!({"expires_in_seconds": 7 * 86_400, "overlap_seconds": 0})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let third = r.json()["key"].clone();
    assert_eq!(expires(&third), START_MS + 7 * day_ms);
    let third_id = third["id"].as_str().unwrap().to_string();

    // Out of bounds: refused with 422 naming the field, and nothing written.
    let seq = app.audit_seq();
    for (what, path, body, says) in [
        (
            "overlap of 30 years",
            format!("/api/v1/keys/{third_id}/rotate"),
            json!({"overlap_seconds": 999_999_999_999_u64}),
            "overlap_seconds",
        ),
        (
            "overlap just over 30 days",
            format!("/api/v1/keys/{third_id}/rotate"),
            json!({"overlap_seconds": 30 * 86_400 + 1}),
            "overlap_seconds",
        ),
        (
            "rotation to a lifetime over 5 years",
            format!("/api/v1/keys/{third_id}/rotate"),
            json!({"expires_in_seconds": 1827 * 86_400}),
            "expires_at",
        ),
        (
            "creation with a lifetime over 5 years",
            "/api/v1/keys".to_string(),
            json!({"name": "long", "role": "viewer", "expires_in_seconds": 1827 * 86_400}),
            "expires_at",
        ),
        (
            "creation in the year 9999",
            "/api/v1/keys".to_string(),
            json!({"name": "long", "role": "viewer", "expires_at": "9999-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let r = post(&app, &path, &admin, Some(&body));
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_field", "{what}");
        assert!(r.body.contains(says), "{what}: {}", r.body);
    }
    assert_eq!(
        app.audit_seq(),
        seq,
        "a refused request wrote an audit entry"
    );
    // Exactly 30 days and 5 years are allowed.
    let r = post(
        &app,
        &format!("/api/v1/keys/{third_id}/rotate"),
        &admin,
        Some(&json!({"overlap_seconds": 30 * 86_400, "expires_in_seconds": 1826 * 86_400})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn the_last_active_admin_key_is_revoked_only_when_forced() {
    let app = TestApp::start();
    let admin = app.admin_key.clone();
    let keys = app.admin_get("/api/v1/keys").json();
    let initial = keys["keys"][0]["id"].as_str().unwrap().to_string();

    // Another admin exists: revoking it leaves the initial one, so no confirmation is needed.
    let (second, _) = app.create_key_with(&json!({"name": "second", "role": "admin"}));
    let r = post(&app, &format!("/api/v1/keys/{second}/revoke"), &admin, None);
    assert_eq!(r.status, 200, "{}", r.body);

    // An admin key that has expired does not count as a remaining admin.
    app.create_key_with(&json!({"name": "brief", "role": "admin", "expires_in_seconds": 60}));
    app.clock.advance_ms(61_000);

    let seq = app.audit_seq();
    let r = post(
        &app,
        &format!("/api/v1/keys/{initial}/revoke"),
        &admin,
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.error_code(), "last_admin");
    assert!(r.body.contains("force=true"), "{}", r.body);
    assert_eq!(
        app.audit_seq(),
        seq,
        "a refused revocation wrote an audit entry"
    );
    assert_eq!(app.admin_get("/api/v1/system").status, 200, "still works");

    let r = post(
        &app,
        &format!("/api/v1/keys/{initial}/revoke?force=maybe"),
        &admin,
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let r = post(
        &app,
        &format!("/api/v1/keys/{initial}/revoke?force=true"),
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["key"]["status"], "revoked");
    assert_eq!(app.admin_get("/api/v1/system").error_code(), "key_revoked");
}
