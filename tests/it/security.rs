//! The security engine through the real router: rate limits per key, per address without a
//! valid key and per webhook source, the client address behind trusted proxies, and the
//! brute-force auto-block with its durable, listed, liftable and doubling blocks.

use keel::config::{
    CommandHandlerConfig, Config, HandlerConfig, InboxScheme, InboxSourceConfig, RateLimitConfig,
    Secret,
};
use serde_json::Value;

use crate::admin::{Client, audit_entries, key_id_of};
use crate::support::{Resp, TestApp, request_with_headers};

const ATTACKER: &str = "203.0.113.7";
const BYSTANDER: &str = "198.51.100.2";

fn limit(requests: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        requests,
        per_seconds: 3600,
        burst,
    }
}

/// A GET with a bearer key (or none) sent through a local proxy for `client`.
fn get_as(app: &TestApp, client: Option<&str>, path: &str, key: Option<&str>) -> Resp {
    send_as(app, client, "GET", path, key)
}

fn send_as(
    app: &TestApp,
    client: Option<&str>,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> Resp {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = Vec::new();
    if let Some(client) = client {
        headers.push(("x-forwarded-for", client));
    }
    if let Some(bearer) = bearer.as_deref() {
        headers.push(("authorization", bearer));
    }
    request_with_headers(&app.base, method, path, &headers, None)
}

const BAD_KEY: &str = "keel_00000000000000000000000000000000_wrongwrongwrongwrong";

fn blocks(app: &TestApp) -> Vec<Value> {
    let r = get_as(
        app,
        Some(BYSTANDER),
        "/api/v1/security/blocks",
        Some(&app.admin_key),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["blocks"].as_array().unwrap().clone()
}

fn assert_limited(r: &Resp, burst: &str) {
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-limit"), Some(burst));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("ratelimit-reset"),
        Some(retry.to_string().as_str())
    );
}

#[test]
fn a_key_over_its_limit_gets_429_and_other_keys_go_on() {
    let app = TestApp::start_with(|c| {
        c.security.allowlist.clear();
        c.security.key_limit = limit(1, 4);
    });
    let viewer = app.create_key("viewer");
    for _ in 0..3 {
        let r = get_as(&app, None, "/api/v1/system", Some(&app.admin_key));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = get_as(&app, None, "/api/v1/system", Some(&app.admin_key));
    assert_limited(&r, "4");
    let r = get_as(&app, None, "/metrics", Some(&viewer));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("keel_rate_limited_total{route=\"/api/v1/system\"} 1"),
        "{}",
        r.body
    );
}

#[test]
fn the_allowlist_is_never_limited_or_blocked() {
    let app = TestApp::start_with(|c| {
        c.security.key_limit = limit(1, 2);
    });
    for _ in 0..5 {
        let r = get_as(&app, None, "/api/v1/system", Some(&app.admin_key));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for _ in 0..8 {
        let r = get_as(&app, None, "/api/v1/system", Some(BAD_KEY));
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert!(blocks(&app).is_empty());
}

#[test]
fn requests_without_a_valid_key_are_limited_per_address() {
    let app = TestApp::start_with(|c| c.security.unauthenticated_limit = limit(1, 3));
    for _ in 0..3 {
        let r = get_as(&app, Some(ATTACKER), "/api/v1/system", None);
        assert_eq!(r.error_code(), "missing_key");
    }
    assert_limited(&get_as(&app, Some(ATTACKER), "/api/v1/system", None), "3");
    // A valid key from the same address is not such a request; other addresses go on.
    let r = get_as(&app, Some(ATTACKER), "/api/v1/system", Some(&app.admin_key));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get_as(&app, Some(BYSTANDER), "/api/v1/system", None);
    assert_eq!(r.error_code(), "missing_key");
    // Missing keys are no authentication attempt: nothing was blocked.
    assert!(blocks(&app).is_empty());
}

#[test]
fn failed_authentications_block_the_address_durably_until_an_admin_lifts_it() {
    let app = TestApp::start();
    for i in 0..5 {
        let r = get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.body);
    }
    let r = get_as(&app, Some(ATTACKER), "/api/v1/system", Some(&app.admin_key));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "ip_blocked");
    assert_eq!(r.header("retry-after"), Some("600"));
    // Public routes are refused too; other clients are not.
    assert_eq!(get_as(&app, Some(ATTACKER), "/health", None).status, 403);
    assert_eq!(get_as(&app, Some(BYSTANDER), "/health", None).status, 200);

    let listed = blocks(&app);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["ip"], ATTACKER);
    assert_eq!(listed[0]["source"], "auto");
    assert_eq!(listed[0]["strikes"], 1);
    assert_eq!(listed[0]["failures"], 5);
    let entries = audit_entries(&app);
    let block = entries
        .iter()
        .find(|e| e["action"] == "security.block")
        .expect("the block is audited");
    assert_eq!(block["target"], ATTACKER);
    assert_eq!(block["actor"], "system");

    let r = get_as(&app, Some(BYSTANDER), "/metrics", Some(&app.admin_key));
    assert!(
        r.body.contains("keel_security_blocks_active 1"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("keel_auth_failures_total{reason=\"invalid_key\"} 5"),
        "{}",
        r.body
    );

    // The block survives a restart.
    let admin_key = app.admin_key.clone();
    let dir = app.stop();
    let mut app = TestApp::start_in(dir, |_| {});
    app.admin_key = admin_key;
    let r = get_as(&app, Some(ATTACKER), "/api/v1/system", Some(&app.admin_key));
    assert_eq!(r.error_code(), "ip_blocked");

    // Lifting needs admin, is audited with the caller's key, and lets the address in at once.
    let viewer = app.create_key("viewer");
    let path = format!("/api/v1/security/blocks/{ATTACKER}");
    assert_eq!(
        send_as(&app, None, "DELETE", &path, Some(&viewer)).status,
        403
    );
    let r = send_as(&app, None, "DELETE", &path, Some(&app.admin_key));
    assert_eq!(r.status, 204, "{}", r.body);
    let lift = audit_entries(&app)
        .into_iter()
        .find(|e| e["action"] == "security.unblock")
        .expect("the lift is audited");
    assert_eq!(lift["actor"], key_id_of(&app.admin_key));
    assert_eq!(lift["target"], ATTACKER);
    let r = get_as(&app, Some(ATTACKER), "/api/v1/system", Some(&app.admin_key));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(blocks(&app).is_empty());

    let r = send_as(&app, None, "DELETE", &path, Some(&app.admin_key));
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = send_as(
        &app,
        None,
        "DELETE",
        "/api/v1/security/blocks/not-an-ip",
        Some(&app.admin_key),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn a_repeated_block_lasts_twice_as_long() {
    let app = TestApp::start();
    let fail_five = || {
        for _ in 0..5 {
            get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
        }
    };
    fail_five();
    let r = get_as(&app, Some(ATTACKER), "/health", None);
    assert_eq!(r.header("retry-after"), Some("600"));
    app.clock.advance_ms(600_000);
    assert_eq!(get_as(&app, Some(ATTACKER), "/health", None).status, 200);
    fail_five();
    let r = get_as(&app, Some(ATTACKER), "/health", None);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("retry-after"), Some("1200"));
    assert_eq!(blocks(&app)[0]["strikes"], 2);
}

#[test]
fn failures_outside_the_window_do_not_add_up() {
    let app = TestApp::start();
    for _ in 0..4 {
        get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
    }
    app.clock.advance_ms(601_000);
    for _ in 0..4 {
        get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
    }
    assert_eq!(get_as(&app, Some(ATTACKER), "/health", None).status, 200);
}

#[test]
fn a_local_client_without_forwarded_for_is_its_own_client_and_untrusted_headers_are_ignored() {
    let app = TestApp::start_with(|c| c.security.allowlist.clear());
    for _ in 0..5 {
        get_as(&app, None, "/api/v1/system", Some(BAD_KEY));
    }
    let r = get_as(&app, None, "/api/v1/system", Some(&app.admin_key));
    assert_eq!(r.error_code(), "ip_blocked");
    // Behind the local proxy, another client is not this one.
    let r = get_as(
        &app,
        Some(BYSTANDER),
        "/api/v1/system",
        Some(&app.admin_key),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(blocks(&app)[0]["ip"], "127.0.0.1");

    // Without trusted proxies, X-Forwarded-For names nobody: the peer is the client.
    let other = TestApp::start_with(|c| {
        c.security.allowlist.clear();
        c.security.trusted_proxies.clear();
    });
    for i in 0..5 {
        let spoofed = format!("192.0.2.{i}");
        get_as(&other, Some(&spoofed), "/api/v1/system", Some(BAD_KEY));
    }
    let r = get_as(
        &other,
        Some(BYSTANDER),
        "/api/v1/system",
        Some(&other.admin_key),
    );
    assert_eq!(r.error_code(), "ip_blocked");
}

#[test]
fn configured_blocks_are_listed_and_cannot_be_lifted_through_the_api() {
    let app = TestApp::start_with(|c| c.security.blocked_ips = vec!["203.0.113.0/24".into()]);
    let r = get_as(&app, Some(ATTACKER), "/api/v1/system", Some(&app.admin_key));
    assert_eq!(r.error_code(), "ip_blocked");
    assert!(r.header("retry-after").is_none());
    let listed = blocks(&app);
    assert_eq!(listed[0]["ip"], "203.0.113.0/24");
    assert_eq!(listed[0]["source"], "config");
    let path = format!("/api/v1/security/blocks/{ATTACKER}");
    let r = send_as(&app, None, "DELETE", &path, Some(&app.admin_key));
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
}

#[test]
fn failed_dashboard_sign_ins_block_the_address() {
    let app = TestApp::start_with(|c| c.security.allowlist.clear());
    let browser = Client::new(&app.base);
    for i in 0..5 {
        let r = browser.try_sign_in(BAD_KEY);
        assert_eq!(r.status, 401, "attempt {i}: {}", r.body);
    }
    let r = browser.get("/admin/login");
    assert_eq!(r.status, 403, "{}", r.body);
    let listed = blocks(&app);
    assert_eq!(listed[0]["ip"], "127.0.0.1");
    assert_eq!(listed[0]["failures"], 5);
}

#[test]
fn sign_in_attempts_are_limited_per_address() {
    let app = TestApp::start_with(|c| {
        c.security.allowlist.clear();
        c.security.unauthenticated_limit = limit(1, 2);
    });
    let signed_in = Client::new(&app.base).try_sign_in(&app.admin_key);
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(Client::new(&app.base).try_sign_in(BAD_KEY).status, 401);
    let r = Client::new(&app.base).try_sign_in(&app.admin_key);
    assert_limited(&r, "2");
}

fn hook_app(configure: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::start_with(|c| {
        c.handlers.insert(
            "hook-event".into(),
            HandlerConfig::Command(CommandHandlerConfig {
                program: "/bin/true".into(),
                args: Vec::new(),
                working_dir: None,
                env_allow: Vec::new(),
                timeout_seconds: 10,
                concurrency: None,
                max_attempts: None,
            }),
        );
        c.inbox.sources.insert(
            "token".into(),
            InboxSourceConfig {
                scheme: InboxScheme::Bearer,
                secret: Some(Secret::new("inbound-bearer-token-0123456789")),
                task_type: "hook-event".into(),
                delivery_id_header: None,
            },
        );
        configure(c);
    })
}

fn deliver(app: &TestApp, client: &str, source: &str) -> Resp {
    request_with_headers(
        &app.base,
        "POST",
        &format!("/hooks/{source}"),
        &[
            ("x-forwarded-for", client),
            ("authorization", "Bearer not-the-token"),
            ("content-type", "application/json"),
        ],
        Some(b"{}"),
    )
}

#[test]
fn webhook_deliveries_are_limited_per_source_and_per_sender() {
    let app = hook_app(|c| c.security.hook_source_limit = limit(1, 2));
    assert_eq!(deliver(&app, ATTACKER, "token").status, 401);
    assert_eq!(deliver(&app, BYSTANDER, "token").status, 401);
    assert_limited(&deliver(&app, "192.0.2.1", "token"), "2");

    let app = hook_app(|c| c.security.hook_ip_limit = limit(1, 2));
    assert_eq!(deliver(&app, ATTACKER, "token").status, 401);
    assert_eq!(deliver(&app, ATTACKER, "token").status, 401);
    assert_limited(&deliver(&app, ATTACKER, "token"), "2");
    assert_eq!(deliver(&app, BYSTANDER, "token").status, 401);
}

#[test]
fn refused_deliveries_use_up_the_senders_unauthenticated_limit() {
    let app = hook_app(|c| c.security.unauthenticated_limit = limit(1, 2));
    for _ in 0..3 {
        assert_eq!(deliver(&app, ATTACKER, "token").status, 401);
    }
    assert_limited(&deliver(&app, ATTACKER, "token"), "2");
    let refused = app
        .admin_get("/api/v1/inbox/rejections?source=token")
        .json();
    assert_eq!(
        refused["rejections"].as_array().unwrap().len(),
        3,
        "{refused}"
    );
    assert_eq!(deliver(&app, BYSTANDER, "token").status, 401);
}

fn events(app: &TestApp, query: &str) -> Vec<Value> {
    let r = get_as(
        app,
        Some(BYSTANDER),
        &format!("/api/v1/security/events{query}"),
        Some(&app.admin_key),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["events"].as_array().unwrap().clone()
}

#[test]
fn security_events_are_counted_per_minute_kind_and_subject() {
    let app = hook_app(|c| c.security.key_limit = limit(1, 30));
    for _ in 0..3 {
        get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
    }
    let failures = events(&app, "?kind=auth_failure");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["subject"], ATTACKER);
    assert_eq!(failures[0]["count"], 3);
    assert_eq!(failures[0]["detail"], "invalid_key");
    assert_eq!(failures[0]["minute"], "2026-01-01T00:00:00.000Z");

    // Two more: the block, and the failures of the same minute added to the stored row.
    for _ in 0..2 {
        get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
    }
    assert_eq!(events(&app, "?kind=auth_failure")[0]["count"], 5);
    let blocked = events(&app, "?kind=block");
    assert_eq!(blocked[0]["subject"], ATTACKER);
    assert!(
        blocked[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("blocked for 600 s after 5 failed authentications"),
        "{blocked:?}"
    );

    assert_eq!(deliver(&app, BYSTANDER, "token").status, 401);
    let rejected = events(&app, "?kind=signature_rejected");
    assert_eq!(rejected[0]["subject"], BYSTANDER);
    assert_eq!(rejected[0]["detail"], "token");

    // A new minute is a new row; the rate limit's refusals name their route.
    app.clock.advance_ms(60_000);
    let viewer = app.create_key("viewer");
    let limited = (0..40)
        .map(|_| get_as(&app, Some("192.0.2.50"), "/api/v1/system", Some(&viewer)))
        .filter(|r| r.status == 429)
        .count();
    assert!(limited > 0);
    let rows = events(&app, "?kind=rate_limited");
    assert_eq!(rows[0]["subject"], "192.0.2.50");
    assert_eq!(rows[0]["count"], limited as u64);
    assert_eq!(rows[0]["detail"], "/api/v1/system");
    assert_eq!(rows[0]["minute"], "2026-01-01T00:01:00.000Z");
    assert_eq!(events(&app, "?limit=1").len(), 1);

    for bad in ["?kind=nope", "?limit=0", "?limit=1001", "?colour=red"] {
        let r = get_as(
            &app,
            Some(BYSTANDER),
            &format!("/api/v1/security/events{bad}"),
            Some(&app.admin_key),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // Rows older than the retention are pruned.
    app.clock.advance_ms(31 * 86_400_000);
    get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
    let left = events(&app, "");
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn keys_expiring_within_14_days_are_announced_once() {
    let app = TestApp::start();
    let (soon, _) = app.create_key_with(&serde_json::json!({
        "name": "soon", "role": "viewer", "expires_in_seconds": 13 * 86_400
    }));
    app.create_key_with(&serde_json::json!({
        "name": "later", "role": "viewer", "expires_in_seconds": 15 * 86_400
    }));
    let rows = crate::support::poll_until("the expiry notice", || {
        let rows = events(&app, "?kind=key_expiring");
        if rows.is_empty() {
            Err("no notice yet".to_string())
        } else {
            Ok(rows)
        }
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["subject"], soon);
    assert_eq!(rows[0]["count"], 1);
    assert!(
        rows[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("key \"soon\" expires at"),
        "{rows:?}"
    );
}

#[test]
fn the_security_page_lists_blocks_and_lifts_one_through_its_form() {
    let app = TestApp::start();
    for _ in 0..5 {
        get_as(&app, Some(ATTACKER), "/api/v1/system", Some(BAD_KEY));
    }
    let admin = Client::sign_in(&app.base, &app.admin_key);
    let page = admin.get("/admin/security");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(ATTACKER), "{}", page.body);
    assert!(page.body.contains("auth_failure"), "{}", page.body);
    let action = format!("/admin/security/blocks/{ATTACKER}/lift");
    assert!(page.body.contains(&action), "{}", page.body);

    let operator = Client::sign_in(&app.base, &app.create_key("operator"));
    assert_eq!(operator.get("/admin/security").status, 403);
    assert_eq!(operator.post(&action, &[]).status, 403);
    assert_eq!(blocks(&app).len(), 1);

    let r = admin.post(&action, &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin/security?msg=unblocked"));
    assert!(blocks(&app).is_empty());
    let lift = audit_entries(&app)
        .into_iter()
        .find(|e| e["action"] == "security.unblock")
        .expect("audited");
    assert_eq!(lift["actor"], key_id_of(&app.admin_key));
    let page = admin.get("/admin/security?msg=unblocked");
    assert!(page.body.contains("Block lifted."), "{}", page.body);
    assert!(
        page.body.contains("No address is blocked."),
        "{}",
        page.body
    );
}

#[test]
fn sign_ins_are_limited_per_key() {
    let app = TestApp::start_with(|c| c.security.session_limit = limit(1, 2));
    let other = app.create_key("viewer");
    for _ in 0..2 {
        let r = Client::new(&app.base).try_sign_in(&app.admin_key);
        assert_eq!(r.status, 303, "{}", r.body);
    }
    let r = Client::new(&app.base).try_sign_in(&app.admin_key);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("signed in too often"), "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert!(Client::new(&app.base).try_sign_in(&app.admin_key).status == 429);
    assert_eq!(Client::new(&app.base).try_sign_in(&other).status, 303);
}

#[test]
fn a_key_keeps_at_most_16_sessions_and_the_oldest_ends() {
    let app = TestApp::start();
    let first = Client::sign_in(&app.base, &app.admin_key);
    let mut later = Vec::new();
    for _ in 0..15 {
        app.clock.advance_ms(1000);
        later.push(Client::sign_in(&app.base, &app.admin_key));
    }
    assert_eq!(first.get("/admin").status, 200);
    app.clock.advance_ms(1000);
    let newest = Client::sign_in(&app.base, &app.admin_key);
    let r = first.get("/admin");
    assert_eq!(r.status, 303, "the oldest session ended: {}", r.body);
    for c in later.iter().chain([&newest]) {
        assert_eq!(c.get("/admin").status, 200);
    }
    // After the idle timeout every session has ended, and signing in again works.
    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    app.clock.advance_ms(9 * 3600 * 1000);
    let fresh = Client::sign_in(&app.base, &app.admin_key);
    assert_eq!(fresh.get("/admin").status, 200);
    assert_eq!(later[0].get("/admin").status, 303);
    assert_eq!(viewer.get("/admin").status, 303);
}

fn waiting_task(app: &TestApp) -> String {
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &serde_json::json!({"type": "hook-event", "payload": {}, "run_at": "2026-01-02T00:00:00Z"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

fn open_stream(app: &TestApp, task: &str, key: &str) -> ureq::http::Response<ureq::Body> {
    let req = ureq::http::Request::builder()
        .uri(format!("{}/api/v1/stream/{task}", app.base))
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .unwrap();
    crate::support::agent().run(req).expect("stream request")
}

#[test]
fn streams_are_capped_per_key_and_in_all() {
    let app = hook_app(|c| {
        c.security.max_streams_per_key = 2;
        c.security.max_streams = 3;
    });
    let task = waiting_task(&app);
    let viewer = app.create_key("viewer");
    let other = app.create_key("viewer");
    let first = open_stream(&app, &task, &app.admin_key);
    let _second = open_stream(&app, &task, &app.admin_key);
    assert_eq!(first.status(), 200);
    let r = app.get(&format!("/api/v1/stream/{task}"), Some(&app.admin_key));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (429, "too_many_streams")
    );
    let _third = open_stream(&app, &task, &viewer);
    let r = app.get(&format!("/api/v1/stream/{task}"), Some(&other));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "streams_exhausted")
    );
    // A closed stream frees its slot.
    drop(first);
    let reopened = crate::support::poll_until("a freed stream slot", || {
        let r = open_stream(&app, &task, &other);
        if r.status() == 200 {
            Ok(r)
        } else {
            Err(format!("status {}", r.status()))
        }
    });
    assert_eq!(reopened.status(), 200);
}

#[test]
fn a_stream_of_a_task_that_keeps_waiting_ends_with_idle() {
    let app = hook_app(|c| c.security.stream_waiting_timeout_seconds = 1);
    let task = waiting_task(&app);
    let mut stream = open_stream(&app, &task, &app.admin_key);
    assert_eq!(stream.status(), 200);
    let body = stream.body_mut().read_to_string().expect("the stream ends");
    assert!(body.contains("event: status"), "{body}");
    assert!(body.contains("event: idle"), "{body}");
    assert!(body.contains("\"status\":\"queued\""), "{body}");
}
