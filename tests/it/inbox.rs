//! Inbound webhooks through the real router: Standard Webhooks, GitHub and bearer sources,
//! refusals (401/400/404/413) that create nothing, replay protection over the manual clock,
//! the recorded rejections and the source list.

use hmac::{Hmac, KeyInit, Mac};
use keel::config::{
    CommandHandlerConfig, Config, HandlerConfig, InboxScheme, InboxSourceConfig, Secret,
};
use keel::exec::http::standard_webhooks_signature;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{Resp, START_MS, TestApp, request_with_headers};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const GH_SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "inbound-bearer-token-0123456789";

fn source(scheme: InboxScheme, secret: &str) -> InboxSourceConfig {
    InboxSourceConfig {
        scheme,
        secret: Some(Secret::new(secret)),
        task_type: "hook-event".into(),
        delivery_id_header: None,
    }
}

/// A handler for the inbox's task type and one source of each scheme.
fn inbox_config(config: &mut Config) {
    config.handlers.insert(
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
    let sources = &mut config.inbox.sources;
    sources.insert(
        "sw".into(),
        source(InboxScheme::StandardWebhooks, SW_SECRET),
    );
    sources.insert("gh".into(), source(InboxScheme::Github, GH_SECRET));
    sources.insert("token".into(), source(InboxScheme::Bearer, TOKEN));
}

fn start() -> TestApp {
    TestApp::start_with(inbox_config)
}

/// Seconds on the app's clock.
fn now_s(app: &TestApp) -> i64 {
    use keel::clock::Clock;
    app.clock.now_ms() / 1000
}

fn post(app: &TestApp, source: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request_with_headers(
        &app.base,
        "POST",
        &format!("/hooks/{source}"),
        &all,
        Some(body),
    )
}

/// A Standard Webhooks delivery signed with `secret` at `ts`, with `signature` overriding the
/// real one when given.
fn post_sw(
    app: &TestApp,
    secret: &str,
    id: &str,
    ts: i64,
    body: &str,
    signature: Option<&str>,
) -> Resp {
    let real = standard_webhooks_signature(secret, id, ts, body.as_bytes()).expect("signs");
    let ts = ts.to_string();
    post(
        app,
        "sw",
        &[
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", signature.unwrap_or(&real)),
        ],
        body.as_bytes(),
    )
}

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("sha256={}", keel::audit::hex(&bytes))
}

fn post_gh(app: &TestApp, delivery: &str, signature: Option<&str>, body: &str) -> Resp {
    let mut headers = vec![("x-github-delivery", delivery), ("x-github-event", "push")];
    if let Some(sig) = signature {
        headers.push(("x-hub-signature-256", sig));
    }
    post(app, "gh", &headers, body.as_bytes())
}

fn task_count(app: &TestApp) -> usize {
    let r = app.admin_get("/api/v1/tasks?limit=1000");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["tasks"].as_array().expect("tasks").len()
}

/// The value of the counter `name` whose labels include every pair of `labels` (0 if absent).
fn counter(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = app.admin_get("/metrics").body;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn accepted_task(r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "accepted", "{v}");
    v["task_id"].as_str().expect("task id").to_string()
}

fn assert_refused(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(r.error_code(), code, "{what}: {}", r.body);
}

#[test]
fn a_standard_webhooks_delivery_becomes_an_audited_task() {
    let app = start();
    let body = r#"{"event":"invoice.paid","amount":42}"#;
    let r = post_sw(&app, SW_SECRET, "msg_1", now_s(&app), body, None);
    let id = accepted_task(&r);

    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let task = &r.json()["task"];
    assert_eq!(task["type"], "hook-event");
    assert_eq!(task["created_by"], "hook:sw");
    assert_eq!(task["idempotency_key"], "hook:sw:msg_1");
    assert_eq!(
        task["payload"],
        serde_json::from_str::<Value>(body).unwrap()
    );
    assert_eq!(task_count(&app), 1);
    assert_eq!(
        counter(&app, "keel_inbox_accepted_total", &[("source", "sw")]),
        1
    );

    // The queue's enqueue entry audits it, under the source's actor.
    let r = app.admin_get("/api/v1/audit?limit=1000");
    let entries = r.json()["entries"].as_array().unwrap().clone();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "task.enqueue" && e["actor"] == "hook:sw" && e["target"] == id),
        "no task.enqueue entry by hook:sw: {entries:?}"
    );
}

#[test]
fn standard_webhooks_refusals_answer_401_and_create_nothing() {
    let app = start();
    let body = r#"{"n":1}"#;
    let now = now_s(&app);
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let short = format!("v1,{}", b64(&[1u8; 16]));
    let wrong = format!("v1,{}", b64(&[1u8; 32]));
    let cases: Vec<(&str, Resp, &str)> = vec![
        (
            "empty signature",
            post_sw(&app, SW_SECRET, "m1", now, body, Some("v1,")),
            "malformed_signature",
        ),
        (
            "short signature",
            post_sw(&app, SW_SECRET, "m2", now, body, Some(&short)),
            "malformed_signature",
        ),
        (
            "wrong signature",
            post_sw(&app, SW_SECRET, "m3", now, body, Some(&wrong)),
            "invalid_signature",
        ),
        (
            "wrong secret",
            post_sw(&app, OTHER_SW_SECRET, "m4", now, body, None),
            "invalid_signature",
        ),
        (
            "too old",
            post_sw(&app, SW_SECRET, "m5", now - 301, body, None),
            "timestamp_out_of_tolerance",
        ),
        (
            "too far in the future",
            post_sw(&app, SW_SECRET, "m6", now + 301, body, None),
            "timestamp_out_of_tolerance",
        ),
        (
            "no headers",
            post(&app, "sw", &[], body.as_bytes()),
            "missing_header",
        ),
        (
            "no signature",
            post(
                &app,
                "sw",
                &[
                    ("webhook-id", "m7"),
                    ("webhook-timestamp", &now.to_string()),
                ],
                body.as_bytes(),
            ),
            "missing_signature",
        ),
    ];
    for (what, r, code) in &cases {
        assert_refused(r, 401, code, what);
    }
    assert_eq!(task_count(&app), 0, "a refused delivery created a task");
    assert_eq!(
        counter(&app, "keel_inbox_accepted_total", &[("source", "sw")]),
        0
    );
    assert_eq!(
        counter(
            &app,
            "keel_inbox_rejected_total",
            &[("source", "sw"), ("reason", "timestamp_out_of_tolerance")]
        ),
        2
    );

    // At the edge of the tolerance, and with the good signature second in the list: accepted.
    let r = post_sw(&app, SW_SECRET, "m8", now - 300, body, None);
    accepted_task(&r);
    let good = standard_webhooks_signature(SW_SECRET, "m9", now, body.as_bytes()).unwrap();
    let r = post_sw(
        &app,
        SW_SECRET,
        "m9",
        now,
        body,
        Some(&format!("{wrong} {good}")),
    );
    accepted_task(&r);
    assert_eq!(task_count(&app), 2);
}

#[test]
fn github_deliveries_are_verified_over_the_raw_body() {
    let app = start();
    let body = r#"{"zen": "Keep it logically awesome.",  "hook_id": 1}"#;
    let sig = github_signature(GH_SECRET, body.as_bytes());
    let id = accepted_task(&post_gh(&app, "gh-1", Some(&sig), body));
    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.json()["task"]["created_by"], "hook:gh");

    // Upper-case hex is accepted: the decoded bytes are compared.
    let other_body = r#"{"zen": "Design for failure.", "hook_id": 2}"#;
    let other_sig = github_signature(GH_SECRET, other_body.as_bytes());
    let upper = format!(
        "sha256={}",
        other_sig["sha256=".len()..].to_ascii_uppercase()
    );
    accepted_task(&post_gh(&app, "gh-2", Some(&upper), other_body));

    // The same JSON re-serialized is another body: its signature does not match.
    let reformatted = serde_json::to_string(&serde_json::from_str::<Value>(body).unwrap()).unwrap();
    let r = post_gh(&app, "gh-3", Some(&sig), &reformatted);
    assert_refused(&r, 401, "invalid_signature", "re-serialized body");

    let wrong = github_signature("not the secret", body.as_bytes());
    for (what, sig, code) in [
        ("empty", Some("sha256="), "malformed_signature"),
        ("short", Some(&sig[..40]), "malformed_signature"),
        ("wrong", Some(wrong.as_str()), "invalid_signature"),
        ("missing", None, "missing_signature"),
    ] {
        let r = post_gh(&app, "gh-4", sig, body);
        assert_refused(&r, 401, code, what);
    }
    let r = post(
        &app,
        "gh",
        &[("x-hub-signature-256", &sig)],
        body.as_bytes(),
    );
    assert_refused(&r, 401, "missing_header", "no X-GitHub-Delivery");
    assert_eq!(task_count(&app), 2);
}

#[test]
fn bearer_deliveries_need_the_token() {
    let app = start();
    let auth = format!("Bearer {TOKEN}");
    let r = post(
        &app,
        "token",
        &[("authorization", &auth), ("idempotency-key", "deploy-7")],
        br#"{"ref":"main"}"#,
    );
    let id = accepted_task(&r);
    let task = app.admin_get(&format!("/api/v1/tasks/{id}")).json();
    assert_eq!(task["task"]["idempotency_key"], "hook:token:deploy-7");

    let wrong = format!("Bearer {TOKEN}x");
    let r = post(&app, "token", &[("authorization", &wrong)], b"{}");
    assert_refused(&r, 401, "invalid_token", "wrong token");
    // An API key is not the source's token.
    let r = post(
        &app,
        "token",
        &[("authorization", &format!("Bearer {}", app.admin_key))],
        b"{}",
    );
    assert_refused(&r, 401, "invalid_token", "an API key");
    let r = post(&app, "token", &[], b"{}");
    assert_refused(&r, 401, "missing_token", "no token");
    assert_eq!(task_count(&app), 1);

    // Without a delivery id header the body's hash is the id: the same body is a duplicate.
    let r = post(&app, "token", &[("authorization", &auth)], br#"{"a":1}"#);
    accepted_task(&r);
    let r = post(&app, "token", &[("authorization", &auth)], br#"{"a":1}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "duplicate");
    assert_eq!(task_count(&app), 2);
}

#[test]
fn a_replayed_delivery_is_refused_until_its_retention_passes() {
    let app = TestApp::start_with(|c| {
        inbox_config(c);
        c.inbox.replay_retention_seconds = 600;
        c.queue.idempotency_retention_seconds = 1200;
    });
    let body = r#"{"order":1}"#;
    let first = accepted_task(&post_sw(
        &app,
        SW_SECRET,
        "msg_replay",
        now_s(&app),
        body,
        None,
    ));

    let r = post_sw(&app, SW_SECRET, "msg_replay", now_s(&app), body, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"status": "duplicate", "task_id": first}));
    assert_eq!(task_count(&app), 1);
    assert_eq!(
        counter(&app, "keel_inbox_replay_blocked_total", &[("source", "sw")]),
        1
    );
    // A delivery id is per source: the same id at another source is another delivery.
    let sig = github_signature(GH_SECRET, body.as_bytes());
    accepted_task(&post_gh(&app, "msg_replay", Some(&sig), body));
    assert_eq!(task_count(&app), 2);

    // Past the inbox's retention the mark is pruned; the task's idempotency key still holds
    // (queue.idempotency_retention_seconds), so the sender's retry is still a duplicate.
    // (The GitHub delivery left two marks: its id and its body's hash.)
    app.clock.advance_ms(601_000);
    assert_eq!(app.block_on(app.app.inbox.seen_count()).unwrap(), 3);
    assert_eq!(app.block_on(app.app.inbox.prune()).unwrap(), 3);
    assert_eq!(app.block_on(app.app.inbox.seen_count()).unwrap(), 0);
    let r = post_sw(&app, SW_SECRET, "msg_replay", now_s(&app), body, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["task_id"], first.as_str());
    assert_eq!(
        counter(&app, "keel_inbox_replay_blocked_total", &[("source", "sw")]),
        2
    );
    assert_eq!(app.block_on(app.app.inbox.seen_count()).unwrap(), 1);

    // Once both have passed, the id is a new delivery, pruned or not: the retry's mark (made at
    // +601 s) has expired too.
    app.clock.set_ms(START_MS + 1_201_000);
    let again = accepted_task(&post_sw(
        &app,
        SW_SECRET,
        "msg_replay",
        now_s(&app),
        body,
        None,
    ));
    assert_ne!(again, first);
    assert_eq!(task_count(&app), 3);
    // Its new mark replaced the expired one, so there is nothing to prune.
    assert_eq!(app.block_on(app.app.inbox.prune()).unwrap(), 0);
    assert_eq!(app.block_on(app.app.inbox.seen_count()).unwrap(), 1);
    let r = post_sw(&app, SW_SECRET, "msg_replay", now_s(&app), body, None);
    assert_eq!(r.json()["task_id"], again.as_str(), "{}", r.body);
}

#[test]
fn rejections_are_recorded_without_body_or_secret() {
    let app = TestApp::start_with(|c| {
        inbox_config(c);
        c.inbox.max_rejections = 3;
    });
    let operator = app.create_key("operator");
    let marker = "BODY-MARKER-never-stored";
    let body = format!(r#"{{"card":"{marker}"}}"#);
    let wrong = format!("v1,{}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([3u8; 32])
    });
    let r = post_sw(&app, SW_SECRET, "msg_bad", now_s(&app), &body, Some(&wrong));
    assert_refused(&r, 401, "invalid_signature", "bad signature");
    assert!(!r.body.contains(marker));

    let r = app.get("/api/v1/inbox/rejections", Some(&operator));
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json()["rejections"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["source"], "sw");
    assert_eq!(list[0]["reason"], "invalid_signature");
    assert_eq!(list[0]["delivery_id"], "msg_bad");
    assert!(
        list[0]["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{list:?}"
    );
    for secret in [
        marker,
        SW_SECRET,
        &SW_SECRET["whsec_".len()..],
        GH_SECRET,
        TOKEN,
    ] {
        assert!(
            !r.body.contains(secret),
            "the list shows {secret:?}: {}",
            r.body
        );
    }

    // Newest first, filtered by source, bounded to inbox.max_rejections.
    post_gh(&app, "g1", None, "{}");
    post(&app, "token", &[], b"{}");
    post(&app, "token", &[("authorization", "Bearer nope")], b"{}");
    let all = app.get("/api/v1/inbox/rejections", Some(&operator)).json();
    let reasons: Vec<&str> = all["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["invalid_token", "missing_token", "missing_signature"]
    );
    let gh = app
        .get("/api/v1/inbox/rejections?source=gh", Some(&operator))
        .json();
    assert_eq!(gh["rejections"].as_array().unwrap().len(), 1);
    assert_eq!(gh["rejections"][0]["source"], "gh");
    let one = app
        .get("/api/v1/inbox/rejections?limit=1", Some(&operator))
        .json();
    assert_eq!(one["rejections"][0]["reason"], "invalid_token");
    let r = app.get("/api/v1/inbox/rejections?limit=0", Some(&operator));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(task_count(&app), 0);
}

#[test]
fn unknown_sources_oversize_and_non_json_bodies_create_nothing() {
    let app = TestApp::start_with(|c| {
        inbox_config(c);
        c.server.max_body_bytes = 1024;
    });
    let r = post(&app, "nope", &[], b"{}");
    assert_refused(&r, 404, "unknown_source", "unknown source");

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let r = post_sw(&app, SW_SECRET, "msg_big", now_s(&app), &big, None);
    assert_refused(&r, 413, "payload_too_large", "oversize body");

    let r = post_sw(
        &app,
        SW_SECRET,
        "msg_text",
        now_s(&app),
        "plain text, signed",
        None,
    );
    assert_refused(&r, 400, "invalid_payload", "non-JSON body");
    assert_eq!(task_count(&app), 0);

    let reasons: Vec<String> = app.admin_get("/api/v1/inbox/rejections").json()["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons, ["invalid_payload", "payload_too_large"]);
    // The refused non-JSON delivery did not use up its id.
    let r = post_sw(
        &app,
        SW_SECRET,
        "msg_text",
        now_s(&app),
        r#"{"ok":true}"#,
        None,
    );
    accepted_task(&r);
}

#[test]
fn sources_are_listed_without_secrets() {
    let app = start();
    let viewer = app.create_key("viewer");
    let r = app.get("/api/v1/inbox/sources", Some(&viewer));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let sources = v["sources"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = sources
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["scheme"].as_str().unwrap(),
                s["task_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("gh", "github", "hook-event"),
            ("sw", "standard-webhooks", "hook-event"),
            ("token", "bearer", "hook-event"),
        ]
    );
    assert_eq!(sources[1]["path"], "/hooks/sw");
    assert_eq!(v["timestamp_tolerance_seconds"], 300);
    for secret in [SW_SECRET, &SW_SECRET["whsec_".len()..], GH_SECRET, TOKEN] {
        assert!(!r.body.contains(secret), "{}", r.body);
    }
    // The rejections list needs an operator.
    let r = app.get("/api/v1/inbox/rejections", Some(&viewer));
    assert_eq!(r.status, 403, "{}", r.body);
}

/// An API caller's idempotency key cannot swallow an inbound delivery: a task submitted with
/// the key the inbox derives for a delivery (`hook:<source>:<id>`) and a far `run_at` leaves
/// the genuine signed delivery to be accepted as new (not answered `duplicate`), and the
/// delivery's own replay is still a duplicate of the delivery's task.
#[test]
fn an_api_idempotency_key_cannot_name_an_inbound_delivery() {
    let app = start();
    let body = r#"{"release":42}"#;
    let planted = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "hook-event", "payload": {}, "idempotency_key": "hook:sw:release-42",
            "run_at": "2026-06-01T00:00:00Z"}),
    );
    assert_eq!(planted.status, 201, "{}", planted.body);
    let planted = planted.json()["id"].as_str().unwrap().to_string();

    let delivered = accepted_task(&post_sw(
        &app,
        SW_SECRET,
        "release-42",
        now_s(&app),
        body,
        None,
    ));
    assert_ne!(delivered, planted);
    assert_eq!(task_count(&app), 2);

    // Both namespaces still work on their own.
    let again = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "hook-event", "payload": {}, "idempotency_key": "hook:sw:release-42",
            "run_at": "2026-06-01T00:00:00Z"}),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], planted.as_str());
    // Past the inbox's replay window only the delivery's idempotency key names its task.
    app.clock.advance_ms(601_000);
    let replay = post_sw(&app, SW_SECRET, "release-42", now_s(&app), body, None);
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(
        replay.json(),
        json!({"status": "duplicate", "task_id": delivered})
    );
}

#[test]
fn a_github_body_resent_under_a_new_delivery_id_is_a_duplicate_within_the_replay_window() {
    let app = start();
    let body = r#"{"action": "opened", "number": 7}"#;
    let sig = github_signature(GH_SECRET, body.as_bytes());
    let id = accepted_task(&post_gh(&app, "gh-original", Some(&sig), body));
    let r = post_gh(&app, "gh-captured-and-resent", Some(&sig), body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "duplicate");
    assert_eq!(r.json()["task_id"], id.as_str());
    assert_eq!(task_count(&app), 1);

    // After the replay window the same body is a new delivery again.
    let window = app.app.config.inbox.replay_retention_seconds as i64 * 1000;
    app.clock.advance_ms(window + 1000);
    let again = accepted_task(&post_gh(&app, "gh-next-week", Some(&sig), body));
    assert_ne!(again, id);
}
