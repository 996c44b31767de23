//! The admin dashboard over real HTTP: sign-in and sessions (cookie flags, expiry, sign-out, a
//! revoked or expired key), every page for its role and refused below it, CSRF on every form,
//! no secret in any page, dashboard writes audited with the signed-in key, static assets, charts
//! from persisted metric history, and the live JSON.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use keel::auth::Role;
use keel::clock::Clock;
use keel::config::{
    Config, HandlerConfig, HttpHandlerConfig, InboxSourceConfig, LlmProviderConfig, Secret,
};
use keel::http::{Access, routes};
use serde_json::{Value, json};

use crate::receiver::{Receiver, closed_port_url};
use crate::support::{Resp, TestApp, poll_until};

// ---------------------------------------------------------------------------------------------
// A small browser: a cookie jar, no redirects followed, the session's CSRF token.

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .proxy(None)
        .build()
        .into()
}

/// A dashboard client: keeps cookies like a browser, never follows redirects.
pub struct Client {
    pub base: String,
    cookies: Mutex<BTreeMap<String, String>>,
    /// The CSRF token of the signed-in session (empty before sign-in).
    pub csrf: String,
}

/// The value of the first `name="csrf" value="…"` in a page.
pub fn csrf_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let end = html[at..].find('"')?;
    Some(html[at..at + end].to_string())
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_string(),
            cookies: Mutex::new(BTreeMap::new()),
            csrf: String::new(),
        }
    }

    /// Signs in with `key`; panics unless the dashboard accepts it.
    pub fn sign_in(base: &str, key: &str) -> Client {
        let mut c = Client::new(base);
        let r = c.try_sign_in(key);
        assert_eq!(r.status, 303, "sign-in: {}", r.body);
        assert_eq!(r.header("location"), Some("/admin"));
        let page = c.get("/admin");
        assert_eq!(page.status, 200, "{}", page.body);
        c.csrf = csrf_in(&page.body).expect("a CSRF token on the overview");
        c
    }

    /// Loads the sign-in form and posts `key` with its token; returns the answer.
    pub fn try_sign_in(&self, key: &str) -> Resp {
        let form = self.get("/admin/login");
        assert_eq!(form.status, 200, "{}", form.body);
        let token = csrf_in(&form.body).expect("a CSRF token on the sign-in form");
        self.post_form("/admin/login", &[("csrf", &token), ("key", key)])
    }

    /// The session cookie's value, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.cookies.lock().unwrap().get("keel_session").cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies
            .lock()
            .unwrap()
            .insert(name.to_string(), value.to_string());
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Resp {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        let jar = self
            .cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        if !jar.is_empty() {
            builder = builder.header("cookie", jar);
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some((ct, _)) = &body {
            builder = builder.header("content-type", *ct);
        }
        let req = builder
            .body(body.map(|(_, b)| b).unwrap_or_default())
            .expect("request");
        let mut response = agent()
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        for (n, v) in &headers {
            if n.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap_or("");
                if let Some((name, value)) = pair.split_once('=') {
                    let mut jar = self.cookies.lock().unwrap();
                    if value.is_empty() || v.contains("Max-Age=0") {
                        jar.remove(name);
                    } else {
                        jar.insert(name.to_string(), value.to_string());
                    }
                }
            }
        }
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Resp {
            status,
            body,
            headers,
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    /// POSTs a URL-encoded form (fields as given; add the CSRF token yourself).
    pub fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        self.post_form_with(path, fields, &[])
    }

    pub fn post_form_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Resp {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.request(
            "POST",
            path,
            headers,
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
    }

    /// POSTs a form with this session's CSRF token first.
    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_form(path, &all)
    }
}

/// Form encoding of one value.
pub fn enc(s: &str) -> String {
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

/// Signs in a fresh key of each role; returns (role, key, client).
pub fn clients(app: &TestApp) -> Vec<(Role, String, Client)> {
    Role::ALL
        .iter()
        .map(|r| {
            let key = app.create_key(r.as_str());
            let client = Client::sign_in(&app.base, &key);
            (*r, key, client)
        })
        .collect()
}

/// Every audit entry, oldest first.
pub fn audit_entries(app: &TestApp) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0u64;
    loop {
        let r = app.admin_get(&format!("/api/v1/audit?after={after}&limit=1000"));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let page = v["entries"].as_array().unwrap().clone();
        entries.extend(page);
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => return entries,
        }
    }
}

/// The key id inside a `keel_<id>_<secret>` key.
pub fn key_id_of(token: &str) -> String {
    uuid::Uuid::parse_str(&token[5..37]).unwrap().to_string()
}

fn http_handler(url: &str) -> HttpHandlerConfig {
    HttpHandlerConfig {
        url: url.to_string(),
        method: "POST".into(),
        token: None,
        signing_secret: None,
        timeout_seconds: 5,
        target_concurrency: 8,
        circuit: Default::default(),
        concurrency: None,
        max_attempts: Some(1),
    }
}

/// An app with a `hook` type to a receiver, a `doomed` type to a closed port (one attempt) and
/// an LLM provider with a budget.
fn dashboard_app(receiver: &Receiver) -> TestApp {
    let url = receiver.url();
    TestApp::start_with(move |c: &mut Config| {
        c.handlers
            .insert("hook".into(), HandlerConfig::Http(http_handler(&url)));
        c.handlers.insert(
            "doomed".into(),
            HandlerConfig::Http(http_handler(&closed_port_url())),
        );
        c.llm.providers.insert("acme".into(), llm_provider(None));
    })
}

fn llm_provider(api_key: Option<&str>) -> LlmProviderConfig {
    let mut p: LlmProviderConfig = toml::from_str(
        r#"base_url = "http://127.0.0.1:9/v1"
model = "m"
daily_budget_usd = 5.0
input_usd_per_1k_tokens = 0.001
output_usd_per_1k_tokens = 0.002"#,
    )
    .expect("an LLM provider");
    p.api_key = api_key.map(Secret::new);
    p
}

/// Enqueues a `doomed` task through the API and waits until it is dead; returns its id.
fn dead_letter(app: &TestApp) -> String {
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "doomed", "payload": {"n": 1}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    poll_until(&format!("task {id} to be dead"), || {
        let t = app.admin_get(&format!("/api/v1/tasks/{id}")).json();
        if t["task"]["status"] == "dead" {
            Ok(())
        } else {
            Err(t["task"]["status"].to_string())
        }
    });
    id
}

/// The GET pages and their paths with `{id}` filled in.
fn pages(task_id: &str) -> Vec<(String, Role)> {
    routes()
        .into_iter()
        // A cycle's page needs a cycle: `cycles_page_shows_state_and_operator_actions` opens it.
        // A new key's page shows once: `a_new_key_is_shown_once_and_a_refresh_repeats_nothing`.
        .filter(|s| {
            s.method == "GET"
                && !s.path.starts_with("/admin/live")
                && !s.path.contains("{*rest}")
                && s.path != "/admin/cycles/{id}"
                && s.path != "/admin/keys/{id}/created"
        })
        .filter_map(|s| match s.access {
            Access::Session(role) => Some((s.path.replace("{id}", task_id), role)),
            _ => None,
        })
        .collect()
}

fn is_html(r: &Resp) -> bool {
    r.header("content-type")
        .is_some_and(|t| t.starts_with("text/html"))
}

// ---------------------------------------------------------------------------------------------
// Sign-in, sessions, sign-out

/// Without a session a page redirects to sign-in (remembering where to go); a wrong key is
/// refused; a right key gets an HttpOnly, SameSite=Strict cookie (no Secure over plain HTTP);
/// sign-in and sign-out are audited with the key as actor; after sign-out the old cookie opens
/// nothing.
#[test]
fn sign_in_and_sign_out() {
    let app = TestApp::start();
    let anon = Client::new(&app.base);
    let r = anon.get("/admin/tasks?status=dead");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/admin/login?reason=required&next=%2Fadmin%2Ftasks%3Fstatus%3Ddead")
    );
    let r = anon.get("/admin/live/overview");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "session_required");

    let form = anon.get("/admin/login?reason=expired");
    assert_eq!(form.status, 200);
    assert!(form.body.contains("Your session expired"), "{}", form.body);
    let login_cookie = form
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("keel_login="))
        .map(|(_, v)| v.clone())
        .expect("a sign-in form cookie");
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));

    let wrong = anon.try_sign_in(
        "keel_0123456789abcdef0123456789abcdef_wrongwrongwrongwrongwrongwrongwrongwrong",
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("This key is not valid"));
    assert!(anon.session_cookie().is_none());

    let operator = app.create_key("operator");
    let r = anon.try_sign_in(&operator);
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("keel_session="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(flag), "{flag} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let token = anon.session_cookie().unwrap();
    assert!(!cookie.contains(&operator) && !token.contains(&operator[10..40]));

    // The session's key is the actor of its sign-in.
    let id = key_id_of(&operator);
    let entries = audit_entries(&app);
    let sign_in = entries.last().unwrap();
    assert_eq!(sign_in["action"], "admin.sign_in");
    assert_eq!(sign_in["actor"], id);
    assert_eq!(sign_in["detail"]["role"], "operator");

    // Signed in, the form page goes straight on; a page answers, with no caching.
    let r = anon.get("/admin/login?next=/admin/circuits");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/admin/circuits"));
    let page = anon.get("/admin");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csrf = csrf_in(&page.body).unwrap();

    // Sign-out needs the token too, then ends the session for good.
    assert_eq!(anon.post_form("/admin/logout", &[]).status, 403);
    let r = anon.post_form("/admin/logout", &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin/login?reason=signed_out"));
    assert!(anon.session_cookie().is_none(), "the cookie is cleared");
    let last = audit_entries(&app).pop().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["actor"].as_str()),
        (Some("admin.sign_out"), Some(id.as_str()))
    );
    let replay = Client::new(&app.base);
    replay.set_cookie("keel_session", &token);
    let r = replay.get("/admin");
    assert_eq!(r.status, 303, "a signed-out session opens nothing");
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/admin/login?reason=required")
    );

    // `next` never leaves the dashboard.
    let c = Client::new(&app.base);
    let form = c.get("/admin/login");
    let t = csrf_in(&form.body).unwrap();
    let r = c.post_form(
        "/admin/login",
        &[
            ("csrf", &t),
            ("key", &operator),
            ("next", "//evil.example/"),
        ],
    );
    assert_eq!(r.header("location"), Some("/admin"));
}

/// The sign-in form has its own CSRF token bound to a cookie: without the cookie, or with a
/// token of another browser, or from another site, a right key is refused and no session made.
#[test]
fn sign_in_form_is_csrf_protected() {
    let app = TestApp::start();
    let before = app.audit_seq();
    let a = Client::new(&app.base);
    let b = Client::new(&app.base);
    let a_token = csrf_in(&a.get("/admin/login").body).unwrap();
    b.get("/admin/login");
    let r = b.post_form(
        "/admin/login",
        &[("csrf", &a_token), ("key", &app.admin_key)],
    );
    assert_eq!(r.status, 403, "another browser's token: {}", r.body);
    let fresh = Client::new(&app.base);
    let r = fresh.post_form(
        "/admin/login",
        &[("csrf", &a_token), ("key", &app.admin_key)],
    );
    assert_eq!(r.status, 403, "no cookie: {}", r.body);
    let r = a.post_form_with(
        "/admin/login",
        &[("csrf", &a_token), ("key", &app.admin_key)],
        &[("origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403, "cross-site: {}", r.body);
    assert!(a.session_cookie().is_none() && b.session_cookie().is_none());
    assert_eq!(app.audit_seq(), before, "no session was made");
    let r = a.post_form(
        "/admin/login",
        &[("csrf", &a_token), ("key", &app.admin_key)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
}

/// Sessions live in the store: a signed-in browser stays signed in across a restart of keel,
/// and a signed-out one stays out.
#[test]
fn sessions_survive_a_restart() {
    let app = TestApp::start();
    let kept = Client::sign_in(&app.base, &app.admin_key);
    let left = Client::sign_in(&app.base, &app.admin_key);
    let left_cookie = left.session_cookie().unwrap();
    assert_eq!(left.post("/admin/logout", &[]).status, 303);
    let kept_cookie = kept.session_cookie().unwrap();
    let kept_csrf = kept.csrf.clone();
    let dir = app.stop();

    let again = TestApp::start_in(dir, |_| {});
    let mut kept = Client::new(&again.base);
    kept.set_cookie("keel_session", &kept_cookie);
    let r = kept.get("/admin/keys");
    assert_eq!(r.status, 200, "{}", r.body);
    // The same session, so the same CSRF token: a form loaded before the restart still posts.
    assert_eq!(csrf_in(&r.body).unwrap(), kept_csrf);
    kept.csrf = kept_csrf;
    assert_eq!(kept.post("/admin/audit/verify", &[]).status, 303);
    let left = Client::new(&again.base);
    left.set_cookie("keel_session", &left_cookie);
    assert_eq!(left.get("/admin").status, 303, "signed out stays out");
}

/// Behind HSTS (served over HTTPS) or a proxy saying HTTPS, the cookies carry `Secure`.
#[test]
fn cookies_are_secure_over_https() {
    let app = TestApp::start_with(|c| c.server.hsts_max_age_seconds = 3600);
    let c = Client::new(&app.base);
    let r = c.try_sign_in(&app.admin_key);
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.starts_with("keel_session=") && cookie.contains("; Secure"),
        "{cookie}"
    );

    let plain = TestApp::start();
    let c = Client::new(&plain.base);
    let form = c.request(
        "GET",
        "/admin/login",
        &[("x-forwarded-proto", "https")],
        None,
    );
    assert!(form.header("set-cookie").unwrap().contains("; Secure"));
    let t = csrf_in(&form.body).unwrap();
    let r = c.post_form_with(
        "/admin/login",
        &[("csrf", &t), ("key", &plain.admin_key)],
        &[("x-forwarded-proto", "https")],
    );
    assert!(
        r.header("set-cookie").unwrap().contains("; Secure"),
        "{r:?}"
    );
}

/// A session ends after an hour without requests, twelve hours after sign-in however busy, at
/// once when its key is revoked, and when its key expires; the live JSON then answers 401.
#[test]
fn sessions_expire_and_end_with_their_key() {
    let app = TestApp::start();
    let minute = 60_000;

    let idle = Client::sign_in(&app.base, &app.create_key("viewer"));
    app.clock.advance_ms(59 * minute);
    assert_eq!(idle.get("/admin").status, 200, "59 minutes idle is fine");
    app.clock.advance_ms(59 * minute);
    assert_eq!(idle.get("/admin").status, 200, "the last request counted");
    app.clock.advance_ms(60 * minute);
    let r = idle.get("/admin");
    assert_eq!(r.status, 303);
    assert!(
        r.header("location").unwrap().contains("reason=expired"),
        "{r:?}"
    );
    assert!(
        idle.session_cookie().is_none(),
        "the dead cookie is cleared"
    );
    assert_eq!(idle.get("/admin/live/overview").status, 401);

    let busy = Client::sign_in(&app.base, &app.create_key("viewer"));
    for _ in 0..14 {
        app.clock.advance_ms(50 * minute);
        assert_eq!(busy.get("/admin/tasks").status, 200);
    }
    app.clock.advance_ms(20 * minute);
    let r = busy.get("/admin/tasks");
    assert_eq!(r.status, 303, "12 h after sign-in");
    assert!(r.header("location").unwrap().contains("reason=expired"));

    let (id, token) = app
        .create_key_with(&json!({"name": "short", "role": "operator", "expires_in_seconds": 120}));
    let revoked = Client::sign_in(&app.base, &token);
    let expiring = Client::sign_in(&app.base, &token);
    let r = app.request(
        "POST",
        &format!("/api/v1/keys/{id}/revoke"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 200);
    let r = revoked.get("/admin/tasks");
    assert_eq!(r.status, 303);
    assert!(
        r.header("location").unwrap().contains("reason=revoked"),
        "{r:?}"
    );
    assert!(expiring.get("/admin/live/tasks").status == 401);

    let (_, token) = app
        .create_key_with(&json!({"name": "short2", "role": "viewer", "expires_in_seconds": 120}));
    let expiring = Client::sign_in(&app.base, &token);
    app.clock.advance_ms(121_000);
    let r = expiring.get("/admin");
    assert_eq!(r.status, 303);
    assert!(
        r.header("location").unwrap().contains("reason=key_expired"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Pages and roles

/// Every page renders as HTML for its role and above, under the strict CSP, and answers 403
/// (an HTML page, nothing else) to a lower role; the live JSON answers every role.
#[test]
fn every_page_renders_for_its_role_and_is_refused_below() {
    let receiver = Receiver::start();
    let app = dashboard_app(&receiver);
    let task = dead_letter(&app);
    let clients = clients(&app);
    let table = pages(&task);
    assert_eq!(table.len(), 15, "{table:?}");
    for (path, needed) in &table {
        for (role, _, c) in &clients {
            let r = c.get(path);
            if role < needed {
                assert_eq!(r.status, 403, "{path} as {role}: {}", r.body);
                assert!(
                    is_html(&r) && r.body.contains("403 Forbidden"),
                    "{path}: {}",
                    r.body
                );
                assert!(
                    r.body.contains(needed.as_str()),
                    "{path}: says what it needs"
                );
            } else {
                assert_eq!(r.status, 200, "{path} as {role}: {}", r.body);
                assert!(is_html(&r), "{path}: {:?}", r.headers);
                assert!(r.body.contains("<main id=\"main\""), "{path}");
                let csp = r.header("content-security-policy").unwrap_or("");
                assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
                assert!(!csp.contains("unsafe-inline"));
                assert_no_inline_code(path, &r.body);
            }
        }
    }
    for (role, _, c) in &clients {
        for path in [
            "/admin/live/overview",
            "/admin/live/tasks",
            "/admin/live/tasks?status=dead",
        ] {
            let r = c.get(path);
            assert_eq!(r.status, 200, "{path} as {role}: {}", r.body);
            r.json();
        }
    }
    // A path that is no page: the dashboard's own 404 page (a trailing slash goes to the page).
    let r = clients[0].2.get("/admin/nothing/here");
    assert_eq!(r.status, 404);
    assert!(is_html(&r) && r.body.contains("no dashboard page at /admin/nothing/here"));
    let r = clients[0].2.get("/admin/tasks/");
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/admin/tasks"))
    );
    let detail = clients[0].2.get(&format!("/admin/tasks/{task}"));
    assert!(detail.body.contains("doomed") && detail.body.contains("dead"));
    assert!(
        detail.body.contains("connect"),
        "the attempt's error: {}",
        detail.body
    );
}

/// No inline script, inline style, style attribute or event handler: the CSP would block them.
fn assert_no_inline_code(path: &str, html: &str) {
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<style"), "{path}: inline <style>");
    assert!(!lower.contains(" style="), "{path}: a style attribute");
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').unwrap()];
        assert!(tag.contains(" src="), "{path}: inline script {tag}");
    }
    for handler in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " onerror=",
        "javascript:",
    ] {
        assert!(!lower.contains(handler), "{path}: {handler}");
    }
}

/// What a role cannot do it does not see: viewers get no forms but sign-out, operators get the
/// operator forms but no key management, admins everything.
#[test]
fn pages_show_only_the_actions_of_the_role() {
    let receiver = Receiver::start();
    let app = dashboard_app(&receiver);
    let task = dead_letter(&app);
    // An open question for the circuits page: the doomed target now has a circuit.
    let clients = clients(&app);
    let posts_on = |c: &Client, path: &str| -> Vec<String> {
        let body = c.get(path).body;
        body.match_indices("<form method=\"post\" action=\"")
            .map(|(at, m)| {
                let rest = &body[at + m.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .filter(|a| a != "/admin/logout")
            .collect()
    };
    let viewer = &clients[0].2;
    let operator = &clients[2].2;
    let admin = &clients[3].2;
    for path in [
        "/admin",
        "/admin/tasks",
        "/admin/dlq",
        "/admin/circuits",
        "/admin/cycles",
        "/admin/budgets",
        "/admin/audit",
    ] {
        assert_eq!(
            posts_on(viewer, path),
            Vec::<String>::new(),
            "viewer on {path}"
        );
    }
    assert_eq!(
        posts_on(viewer, &format!("/admin/tasks/{task}")),
        Vec::<String>::new()
    );
    let nav = viewer.get("/admin").body;
    assert!(!nav.contains("href=\"/admin/keys\"") && !nav.contains("href=\"/admin/settings\""));

    // A service key may enqueue tasks and trigger cycles through the API: the dashboard offers
    // it those forms, and only those.
    let service = &clients[1].2;
    assert_eq!(clients[1].0, Role::Service);
    assert_eq!(posts_on(service, "/admin/tasks"), ["/admin/tasks"]);
    assert_eq!(
        posts_on(service, "/admin/cycles"),
        [
            "/admin/cycles/trigger",
            "/admin/cycles/run-profiles/trigger"
        ]
    );
    for path in [
        "/admin",
        "/admin/dlq",
        "/admin/circuits",
        "/admin/budgets",
        "/admin/audit",
    ] {
        assert_eq!(
            posts_on(service, path),
            Vec::<String>::new(),
            "service on {path}"
        );
    }
    assert_eq!(
        posts_on(service, &format!("/admin/tasks/{task}")),
        Vec::<String>::new()
    );

    let forms = posts_on(operator, "/admin/dlq");
    // The drain starts with its dry run, a GET form; the drain itself is posted from there.
    assert!(
        operator
            .get("/admin/dlq")
            .body
            .contains("id=\"drain-preview\"")
    );
    assert!(
        !viewer
            .get("/admin/dlq")
            .body
            .contains("id=\"drain-preview\"")
    );
    assert!(
        forms.contains(&format!("/admin/dlq/{task}/delete")),
        "{forms:?}"
    );
    assert!(posts_on(operator, "/admin/tasks").contains(&"/admin/tasks".to_string()));
    assert!(posts_on(operator, "/admin/audit").contains(&"/admin/audit/verify".to_string()));
    assert!(posts_on(operator, "/admin/budgets").contains(&"/admin/budgets/acme".to_string()));
    let circuits = posts_on(operator, "/admin/circuits");
    assert_eq!(circuits.len(), 1, "{circuits:?}");
    assert!(
        circuits[0].starts_with("/admin/circuits/handler%3A"),
        "{circuits:?}"
    );
    let nav = operator.get("/admin").body;
    assert!(!nav.contains("href=\"/admin/keys\"") && nav.contains("href=\"/admin/settings\""));

    let nav = admin.get("/admin").body;
    assert!(nav.contains("href=\"/admin/keys\""));
    let forms = posts_on(admin, "/admin/keys");
    assert!(forms.contains(&"/admin/keys".to_string()), "{forms:?}");
    assert!(
        forms.iter().any(|f| f.ends_with("/rotate"))
            && forms.iter().any(|f| f.ends_with("/revoke"))
    );
}

// ---------------------------------------------------------------------------------------------
// CSRF

/// Every POST route of the dashboard refuses a form without the session's token, with a wrong
/// one, with another session's, and from another site (403, nothing written); every form on
/// every page carries the token.
#[test]
fn every_form_post_needs_the_session_csrf_token() {
    let receiver = Receiver::start();
    let app = dashboard_app(&receiver);
    let task = dead_letter(&app);
    let admin = Client::sign_in(&app.base, &app.admin_key);
    let other = Client::sign_in(&app.base, &app.create_key("admin"));
    let (key_id, _) = app.create_key_with(&json!({"name": "target", "role": "viewer"}));
    let posts: Vec<String> = routes()
        .into_iter()
        .filter(|s| s.method == "POST" && matches!(s.access, Access::Session(_)))
        .map(|s| {
            s.path
                .replace(
                    "{id}",
                    if s.path.starts_with("/admin/keys") {
                        &key_id
                    } else {
                        &task
                    },
                )
                .replace("{name}", "nothing")
                .replace("{provider}", "acme")
                .replace("{ns}", "nothing")
                .replace("{type}", "hook")
                .replace("{ip}", "203.0.113.9")
        })
        .collect();
    assert!(posts.len() >= 10, "{posts:?}");
    let fields = [
        ("name", "x"),
        ("role", "viewer"),
        ("max", "5"),
        ("type", "hook"),
    ];
    let before = app.audit_seq();
    for path in &posts {
        let with = |csrf: Option<&str>, headers: &[(&str, &str)], who: &Client| {
            let mut f: Vec<(&str, &str)> = fields.to_vec();
            if let Some(t) = csrf {
                f.push(("csrf", t));
            }
            who.post_form_with(path, &f, headers)
        };
        for (what, r) in [
            ("no token", with(None, &[], &admin)),
            ("a wrong token", with(Some("00ff"), &[], &admin)),
            (
                "another session's token",
                with(Some(&other.csrf), &[], &admin),
            ),
            (
                "another site",
                with(
                    Some(&admin.csrf),
                    &[("origin", "http://evil.example")],
                    &admin,
                ),
            ),
            (
                "a cross-site fetch",
                with(
                    Some(&admin.csrf),
                    &[("sec-fetch-site", "cross-site")],
                    &admin,
                ),
            ),
        ] {
            assert_eq!(r.status, 403, "{path} with {what}: {}", r.body);
            assert!(is_html(&r), "{path}: an error page");
        }
        assert_eq!(app.audit_seq(), before, "{path}: a refused form wrote");
    }
    assert_eq!(
        app.app.auth.get(key_id.parse().unwrap()).unwrap().status,
        "active"
    );
    let r = app.admin_get(&format!("/api/v1/tasks/{task}"));
    assert_eq!(r.json()["task"]["status"], "dead");

    // Every form on every page carries the token.
    let mut checked = 0;
    for (path, _) in pages(&task) {
        let body = admin.get(&path).body;
        for (at, _) in body.match_indices("<form method=\"post\"") {
            let form = &body[at..at + body[at..].find("</form>").unwrap()];
            assert!(
                form.contains(&format!("name=\"csrf\" value=\"{}\"", admin.csrf)),
                "{path}: a form without the token: {form}"
            );
            checked += 1;
        }
    }
    assert!(checked > 15, "only {checked} forms seen");
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// No API key and no configured secret (handler token and signing secret, LLM key, inbox
/// secret, key-hash secret) appears in any page or live JSON; a new key is shown once, on the
/// page that made it, and never again.
#[test]
fn no_secret_reaches_any_page() {
    let receiver = Receiver::start();
    let url = receiver.url();
    let secrets = [
        "handler-token-5d1e8a",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "llm-api-key-77c1f0",
        "inbox-secret-39ab02",
        "key-hash-secret-a1b2c3",
    ];
    let app = TestApp::start_with(move |c: &mut Config| {
        let mut h = http_handler(&url);
        h.token = Some(Secret::new(secrets[0]));
        h.signing_secret = Some(Secret::new(secrets[1]));
        c.handlers.insert("hook".into(), HandlerConfig::Http(h));
        c.llm
            .providers
            .insert("acme".into(), llm_provider(Some(secrets[2])));
        let source: InboxSourceConfig = toml::from_str(&format!(
            "scheme = \"github\"\nsecret = \"{}\"\ntask_type = \"hook\"",
            secrets[3]
        ))
        .expect("an inbox source");
        c.inbox.sources.insert("github".into(), source);
        c.auth.key_hash_secret = Some(Secret::new(secrets[4]));
    });
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "hook", "payload": {"x": 1}}),
    );
    let task = r.json()["id"].as_str().unwrap().to_string();
    poll_until("the delivery", || {
        (receiver.count() > 0)
            .then_some(())
            .ok_or_else(|| "none yet".to_string())
    });
    assert_eq!(
        receiver.deliveries()[0].header("authorization"),
        Some(format!("Bearer {}", secrets[0]).as_str()),
        "the handler really holds the token"
    );
    let admin = Client::sign_in(&app.base, &app.admin_key);
    let made = admin.post("/admin/keys", &[("name", "fresh"), ("role", "service")]);
    assert_eq!(made.status, 303, "{}", made.body);
    let created = admin.get(made.header("location").unwrap());
    assert_eq!(created.status, 200, "{}", created.body);
    let at = created
        .body
        .find("id=\"new-key\"")
        .expect("the new key field");
    let value = &created.body[at..];
    let value = &value[value.find("value=\"").unwrap() + 7..];
    let token = value[..value.find('"').unwrap()].to_string();
    assert!(token.starts_with("keel_") && token.len() > 60, "{token}");
    assert_eq!(
        app.get("/api/v1/system", Some(&token)).status,
        200,
        "the shown key works"
    );
    assert_eq!(created.header("cache-control"), Some("no-store"));

    let mut forbidden: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    forbidden.push(app.admin_key.clone());
    forbidden.push(token.clone());
    // The secret parts alone, too.
    forbidden.push(app.admin_key[38..].to_string());
    forbidden.push(token[38..].to_string());
    let mut seen = 0;
    for (path, _) in pages(&task)
        .into_iter()
        .chain([("/admin/live/overview".to_string(), Role::Viewer)])
        .chain([("/admin/live/tasks".to_string(), Role::Viewer)])
    {
        let r = admin.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        for s in &forbidden {
            assert!(!r.body.contains(s.as_str()), "{path} shows a secret");
        }
        seen += 1;
    }
    assert_eq!(seen, 17);
    let settings = admin.get("/admin/settings").body;
    assert!(
        settings.contains("***") && settings.contains("[handlers.hook]"),
        "{settings}"
    );
}

// ---------------------------------------------------------------------------------------------
// Writes

/// Each dashboard write goes through the room's own function and is audited with the signed-in
/// key as actor: enqueue, cancel, the drain after its dry run (which writes nothing), purge,
/// circuit reset, budget change, key create / rotate / revoke; verify reports the chain.
#[test]
fn dashboard_writes_are_audited_with_the_signed_in_key() {
    let receiver = Receiver::start();
    let app = dashboard_app(&receiver);
    let operator_key = app.create_key("operator");
    let operator_id = key_id_of(&operator_key);
    let op = Client::sign_in(&app.base, &operator_key);
    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    let last = |app: &TestApp| audit_entries(app).pop().unwrap();

    // Enqueue, with a bad payload first (shown again with the problem, nothing written).
    let before = app.audit_seq();
    let r = op.post(
        "/admin/tasks",
        &[("type", "hook"), ("payload", "{not json")],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("payload: not JSON") && r.body.contains("{not json"));
    assert_eq!(app.audit_seq(), before);
    let r = op.post(
        "/admin/tasks",
        &[
            ("type", "hook"),
            ("payload", r#"{"hello": "dash"}"#),
            ("run_at", "2026-06-01T00:00:00Z"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let loc = r.header("location").unwrap().to_string();
    let task = loc["/admin/tasks/".len()..loc.find('?').unwrap()].to_string();
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("task.enqueue"), Some(operator_id.as_str()))
    );
    let page = op.get(&loc);
    assert!(
        page.body.contains("Task enqueued.")
            && page.body.contains("&#34;hello&#34;: &#34;dash&#34;"),
        "{}",
        page.body
    );

    // Cancel it (it waits for 2030).
    let r = op.post(&format!("/admin/tasks/{task}/cancel"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["target"].as_str()),
        (Some("task.cancel"), Some(task.as_str()))
    );
    assert_eq!(e["actor"], operator_id.as_str());
    assert_eq!(
        app.admin_get(&format!("/api/v1/tasks/{task}")).json()["task"]["status"],
        "cancelled"
    );
    let r = op.post(&format!("/admin/tasks/{task}/cancel"), &[]);
    assert_eq!(r.status, 409, "cancelled already: {}", r.body);
    assert!(is_html(&r) && r.body.contains("already cancelled"));

    // Drain: the dry run lists the dead letter and writes nothing; the drain moves it.
    let dead = dead_letter(&app);
    let before = app.audit_seq();
    let posted = op.post(
        "/admin/dlq/drain",
        &[("dry_run", "1"), ("filter_type", "doomed"), ("max", "10")],
    );
    assert_eq!(
        posted.status, 303,
        "a dry run redirects to its page: {}",
        posted.body
    );
    let location = posted.header("location").unwrap().to_string();
    assert_eq!(
        location,
        "/admin/dlq?preview=1&filter_type=doomed&max=10#preview"
    );
    let preview = op.get(location.trim_end_matches("#preview"));
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(
        viewer.get(location.trim_end_matches("#preview")).status,
        403,
        "a dry run needs an operator"
    );
    assert!(
        preview.body.contains("Dry run: 1 task would move"),
        "{}",
        preview.body
    );
    assert!(preview.body.contains(&dead));
    assert_eq!(app.audit_seq(), before, "a dry run writes nothing");
    let r = op.post(
        "/admin/dlq/drain",
        &[("filter_type", "doomed"), ("max", "10")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin/dlq?msg=drained"));
    let e = audit_entries(&app)
        .into_iter()
        .find(|e| e["action"] == "dlq.drain")
        .expect("dlq.drain audited");
    assert_eq!(e["actor"], operator_id.as_str());
    assert_eq!(e["detail"]["tasks"], json!([dead]));
    // It runs again, dies again (the port is still closed); purge it.
    poll_until("the drained task to die again", || {
        let s = app.admin_get(&format!("/api/v1/tasks/{dead}")).json()["task"]["status"].clone();
        (s == "dead"
            && app.admin_get(&format!("/api/v1/tasks/{dead}")).json()["task"]["attempts"]
                .as_array()
                .unwrap()
                .len()
                == 2)
            .then_some(())
            .ok_or(s.to_string())
    });
    let r = op.post(&format!("/admin/dlq/{dead}/delete"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("dlq.delete"), Some(operator_id.as_str()))
    );
    assert_eq!(app.admin_get(&format!("/api/v1/tasks/{dead}")).status, 404);

    // Circuit reset (the doomed target's circuit exists now).
    let name = app.admin_get("/api/v1/circuits").json()["circuits"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let r = op.post(&format!("/admin/circuits/{}/reset", enc(&name)), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["target"].as_str()),
        (Some("circuit.reset"), Some(name.as_str()))
    );
    assert_eq!(e["actor"], operator_id.as_str());
    let r = op.post("/admin/circuits/nothing/reset", &[]);
    assert_eq!(r.status, 404);
    assert!(is_html(&r) && r.body.contains("no circuit named"));

    // Budget.
    let r = op.post(
        "/admin/budgets/acme",
        &[("daily_budget_usd", "2.5"), ("today_budget_usd", "")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("budget.set"), Some(operator_id.as_str()))
    );
    assert_eq!(e["detail"]["daily_budget_usd"], 2.5);
    let budgets = app.admin_get("/api/v1/budgets").json();
    assert_eq!(budgets["budgets"][0]["budget_usd"], 2.5);
    let r = op.post("/admin/budgets/acme", &[("daily_budget_usd", "lots")]);
    assert_eq!(r.status, 422, "{}", r.body);

    // Verify reports the chain.
    let r = op.post("/admin/audit/verify", &[]);
    assert_eq!(r.status, 303);
    let seq = app.audit_seq();
    let r = op.get(r.header("location").unwrap());
    assert_eq!(r.status, 200);
    assert_eq!(app.audit_seq(), seq, "verifying writes nothing");
    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    assert_eq!(viewer.get("/admin/audit?verify=true").status, 403);
    assert!(
        r.body.contains("Verified.") && r.body.contains("OK: "),
        "{}",
        r.body
    );

    // Keys, as an admin: create, rotate (old key keeps working for the overlap), revoke.
    let admin = Client::sign_in(&app.base, &app.admin_key);
    let admin_id = key_id_of(&app.admin_key);
    let r = admin.post(
        "/admin/keys",
        &[
            ("name", "made-here"),
            ("role", "viewer"),
            ("expires_in_days", "30"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("key.create"), Some(admin_id.as_str()))
    );
    let made = e["target"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/admin/keys/{made}/created").as_str())
    );
    let r = admin.post(
        &format!("/admin/keys/{made}/rotate"),
        &[("overlap_seconds", "60")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = admin.get(r.header("location").unwrap());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("keeps working for 1 min"), "{}", r.body);
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["target"].as_str()),
        (Some("key.rotate"), Some(made.as_str()))
    );
    let rotated = e["detail"]["new_key_id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/admin/keys/{rotated}/revoke"), &[]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/admin/keys?msg=revoked"));
    let e = last(&app);
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("key.revoke"), Some(admin_id.as_str()))
    );
    let keys = admin.get("/admin/keys?msg=revoked").body;
    assert!(keys.contains("Key revoked.") && keys.contains("revoked</span>"));

    // The audit page shows the writes with the key's name.
    let audit = op.get("/admin/audit").body;
    for action in [
        "key.revoke",
        "key.rotate",
        "budget.set",
        "circuit.reset",
        "dlq.delete",
        "dlq.drain",
    ] {
        assert!(audit.contains(action), "{action} not on the audit page");
    }
    assert!(audit.contains("test-operator"), "actor names are shown");
}

// ---------------------------------------------------------------------------------------------
// Task pages, live JSON, charts

/// The task page shows the attempt with its receipt and the result; the list filters by status
/// and type; the live JSON carries the counts and rows.
#[test]
fn task_pages_show_attempts_receipts_and_filters() {
    let receiver = Receiver::start();
    let app = dashboard_app(&receiver);
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "hook", "payload": {"order": 42}}),
    );
    let ok = r.json()["id"].as_str().unwrap().to_string();
    poll_until("the task to succeed", || {
        let t = app.admin_get(&format!("/api/v1/tasks/{ok}")).json();
        (t["task"]["status"] == "succeeded")
            .then_some(())
            .ok_or(t.to_string())
    });
    let dead = dead_letter(&app);
    let v = Client::sign_in(&app.base, &app.create_key("viewer"));
    let page = v.get(&format!("/admin/tasks/{ok}")).body;
    assert!(
        page.contains("succeeded") && page.contains("<strong>HTTP 200</strong>"),
        "{page}"
    );
    assert!(page.contains("received"), "the receipt's body: {page}");
    assert!(
        !page.contains("data-stream"),
        "no live stream for a finished task"
    );

    let list = v.get("/admin/tasks?status=dead").body;
    assert!(list.contains(&dead[dead.len() - 12..]) && !list.contains(&ok[ok.len() - 12..]));
    let list = v.get("/admin/tasks?type=hook").body;
    assert!(list.contains(&ok[ok.len() - 12..]) && !list.contains(&dead[dead.len() - 12..]));
    assert_eq!(v.get("/admin/tasks?status=bogus").status, 400);

    let live = v.get("/admin/live/tasks?status=dead").json();
    assert_eq!(live["counts"]["dead"], "1");
    assert_eq!(live["counts"]["succeeded"], "1");
    assert!(live["html"]["rows"].as_str().unwrap().contains(&dead));
    let live = v.get("/admin/live/overview").json();
    assert_eq!(live["cards"]["dlq"]["value"], "1");
    assert_eq!(live["cards"]["dlq"]["tone"], "warn");
    assert!(
        live["html"]["api_chart"]
            .as_str()
            .unwrap()
            .starts_with("<svg")
    );
    assert!(
        live["html"]["workers"]
            .as_str()
            .unwrap()
            .contains("dispatcher")
    );
}

/// A running command's page streams (status and log lines) over the session: the admin stream
/// answers Server-Sent Events to the cookie.
#[test]
fn a_running_task_streams_its_log_to_the_session() {
    let app = TestApp::start_with(|c: &mut Config| {
        c.handlers.insert(
            "slow".into(),
            HandlerConfig::Command(keel::config::CommandHandlerConfig {
                program: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "echo started >&2; sleep 1; echo finished >&2; echo done".into(),
                ],
                working_dir: None,
                env_allow: vec!["PATH".into()],
                timeout_seconds: 30,
                concurrency: None,
                max_attempts: None,
            }),
        );
    });
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "slow"}),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let v = Client::sign_in(&app.base, &app.create_key("viewer"));
    let page = v.get(&format!("/admin/tasks/{id}")).body;
    let stream = v.get(&format!("/admin/live/tasks/{id}/stream"));
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        stream.body.contains("event: log\ndata: started"),
        "{}",
        stream.body
    );
    assert!(stream.body.contains("data: finished") && stream.body.contains("event: end"));
    if page.contains("running") || page.contains("queued") {
        assert!(page.contains(&format!("data-stream=\"/admin/live/tasks/{id}/stream\"")));
    }
    let done = v.get(&format!("/admin/tasks/{id}")).body;
    assert!(
        done.contains("<span class=\"line\" data-n=\"1\">finished</span>"),
        "{done}"
    );
    assert!(
        done.contains("<strong>exit 0</strong>"),
        "a command's receipt shows its exit code: {done}"
    );
    assert_eq!(
        Client::new(&app.base)
            .get(&format!("/admin/live/tasks/{id}/stream"))
            .status,
        401
    );
}

/// Charts are drawn from the persisted histogram snapshots (the data of
/// `/api/v1/metrics/history`): p50/p95/p99 paths over the window, the same after the cache has
/// settled buckets; a window with no history says so.
#[test]
fn charts_come_from_persisted_metric_history() {
    let app = TestApp::start();
    let v = Client::sign_in(&app.base, &app.admin_key);
    let empty = v.get("/admin?window=24h").body;
    assert!(empty.contains("No data in this window yet"));
    assert!(empty.contains("Nothing recorded in this window yet."));

    // Ten minutes of API latency and task durations, one snapshot a minute.
    let metrics = keel::metrics::Metrics::new("test");
    let now = app.clock.now_ms();
    for minute in 0..10i64 {
        let api = metrics.histogram(
            "keel_http_request_duration_seconds",
            "h",
            keel::metrics::Unit::Micros,
            &[("method", "GET"), ("route", "/api/v1/system")],
        );
        let tasks = metrics.histogram(
            "keel_task_duration_seconds",
            "h",
            keel::metrics::Unit::Micros,
            &[("type", "hook")],
        );
        for i in 0..100u64 {
            api.record(1000 + i * 10 * (minute as u64 + 1));
            tasks.record(50_000 + i * 100);
        }
        let snaps = metrics.take_interval_snapshots();
        let start = now - (10 - minute) * 60_000;
        app.block_on(app.app.store.write(move |tx| {
            keel::metrics::history::persist(tx, snaps.clone(), start, start + 60_000)
        }))
        .unwrap();
    }
    let page = v.get("/admin?window=1h").body;
    let chart = |page: &str, id: &str| -> String {
        let at = page.find(&format!("data-html=\"{id}\"")).unwrap();
        let at = at + page[at..].find("<svg").unwrap();
        page[at..at + page[at..].find("</svg>").unwrap() + 6].to_string()
    };
    let api = chart(&page, "api_chart");
    for class in ["series s1", "series s2", "series s3"] {
        assert!(api.contains(class), "{class}: {api}");
    }
    assert!(!api.contains("No data"));
    assert!(
        page.contains("1\u{202f}000 requests in 1h"),
        "the card counts the window: {page}"
    );
    let throughput = chart(&page, "throughput_chart");
    assert!(throughput.contains("100/min"), "{throughput}");
    // Recording began ten minutes ago, inside the hour: the page and the charts say so, and
    // the rates before it are not drawn as zeros.
    assert!(page.contains("Recording began at"), "{page}");
    assert!(throughput.contains("collecting since"), "{throughput}");
    // Rendered again (settled buckets now come from the cache): the same charts.
    let again = v.get("/admin?window=1h").body;
    assert_eq!(chart(&again, "api_chart"), api);
    assert_eq!(chart(&again, "task_chart"), chart(&page, "task_chart"));
    let live = v.get("/admin/live/overview?window=1h").json();
    assert_eq!(live["html"]["api_chart"].as_str().unwrap(), api);
    let week = v.get("/admin?window=7d").body;
    assert!(chart(&week, "api_chart").contains("series s2"));
}

// ---------------------------------------------------------------------------------------------
// Static assets

/// Assets answer with their content type and an ETag; the hashed names the pages use are cached
/// for a year, plain names revalidate, a matching ETag answers 304, unknown files 404.
#[test]
fn assets_have_types_etags_and_long_cache_for_hashed_names() {
    let app = TestApp::start();
    let c = Client::new(&app.base);
    let login = c.get("/admin/login").body;
    let href = |prefix: &str, ext: &str| -> String {
        let at = login.find(prefix).unwrap() + prefix.len();
        let url = &login[at..at + login[at..].find('"').unwrap()];
        assert!(url.ends_with(ext), "{url}");
        url.to_string()
    };
    let css = href("<link rel=\"stylesheet\" href=\"", ".css");
    let js = href("<script src=\"", ".js");
    let icon = href("<link rel=\"icon\" href=\"", ".svg");
    assert!(
        css.starts_with("/admin/assets/admin.") && css.len() > "/admin/assets/admin.css".len() + 5
    );
    for (url, ty) in [
        (&css, "text/css"),
        (&js, "javascript"),
        (&icon, "image/svg+xml"),
    ] {
        let r = c.get(url);
        assert_eq!(r.status, 200, "{url}");
        assert!(
            r.header("content-type").unwrap().contains(ty),
            "{url}: {:?}",
            r.headers
        );
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        let etag = r.header("etag").unwrap().to_string();
        let again = c.request("GET", url, &[("if-none-match", &etag)], None);
        assert_eq!(again.status, 304, "{url}");
        assert!(again.body.is_empty());
    }
    let plain = c.get("/admin/assets/admin.css");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("cache-control"), Some("no-cache"));
    assert!(plain.body.contains("prefers-color-scheme: dark"));
    let old = c.get("/admin/assets/admin.0123456789.css");
    assert_eq!(old.status, 200, "an outdated hash still gets the file");
    assert_eq!(old.header("cache-control"), Some("no-cache"));
    assert_eq!(c.get("/admin/assets/nope.css").status, 404);
    assert_eq!(c.get("/admin/assets/..%2FCargo.toml").status, 404);
}

// ---------------------------------------------------------------------------------------------
// Cycles

/// The cycles page shows recent cycles, profiles and run profiles with their state and the
/// governance state to a viewer without any form; an operator gets the trigger, pause and halt
/// forms; a form without the CSRF token changes nothing; an operator's trigger starts a cycle
/// (audited with the signed-in key) whose page shows its stage timeline; pause, halt and their
/// resumes show up on the page.
#[test]
fn cycles_page_shows_state_and_operator_actions() {
    let profiles = tempfile::tempdir().unwrap();
    crate::cycles::write_profiles(
        profiles.path(),
        &json!([{"profile_id": "p1", "label": "Profile one", "state": "enabled",
                 "execution_rules": {}}]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                 "namespace": "green"},
                {"run_profile_id": "r2", "profile_id": "p1", "state": "disabled",
                 "namespace": "green"}]),
    );
    let dir = profiles.path().to_path_buf();
    let app = TestApp::start_with(move |c: &mut Config| {
        c.cycles.profiles_dir = dir;
        c.cycles.schedule = String::new().into();
        c.cycles.namespaces = vec!["blue".into()];
    });
    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    let operator_key = app.create_key("operator");
    let operator_id = key_id_of(&operator_key);
    let op = Client::sign_in(&app.base, &operator_key);
    let posts_on = |body: &str| -> Vec<String> {
        body.match_indices("<form method=\"post\" action=\"")
            .map(|(at, m)| {
                let rest = &body[at + m.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .filter(|a| a != "/admin/logout")
            .collect()
    };

    // A viewer sees the page, the state and no form.
    let r = viewer.get("/admin/cycles");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_no_inline_code("/admin/cycles", &r.body);
    assert!(
        r.body
            .contains("href=\"/admin/cycles\" aria-current=\"page\"")
    );
    for text in [
        "Profile one",
        "r1",
        "r2",
        "enabled",
        "disabled",
        "No cycle has run yet.",
    ] {
        assert!(r.body.contains(text), "{text}: {}", r.body);
    }
    assert!(r.body.contains("id=\"governance-state\">running<"));
    assert_eq!(posts_on(&r.body), Vec::<String>::new());

    // An operator gets the forms.
    let forms = posts_on(&op.get("/admin/cycles").body);
    for f in [
        "/admin/cycles/trigger",
        "/admin/cycles/run-profiles/trigger",
        "/admin/cycles/pause",
        "/admin/cycles/halt",
    ] {
        assert!(forms.contains(&f.to_string()), "{f}: {forms:?}");
    }

    // Without the token: 403, nothing written, nothing paused or started.
    let before = app.audit_seq();
    for path in ["/admin/cycles/trigger", "/admin/cycles/pause"] {
        let r = op.post_form(path, &[("namespace", "blue")]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(app.audit_seq(), before);
    let g = app.admin_get("/api/v1/governance").json();
    assert_eq!(g["governance"]["paused"], false);
    let recent = app.admin_get("/api/v1/cycles/recent").json();
    assert_eq!(recent["cycles"].as_array().unwrap().len(), 0);

    // A viewer is refused by the server, too.
    let r = viewer.post("/admin/cycles/trigger", &[("namespace", "blue")]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.audit_seq(), before);

    // The operator triggers a cycle in `blue`: audited with the operator's key, on its page.
    let r = op.post("/admin/cycles/trigger", &[("namespace", "blue")]);
    assert_eq!(r.status, 303, "{}", r.body);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with("/admin/cycles/") && loc.ends_with("?msg=cycle_started"),
        "{loc}"
    );
    let cycle = loc["/admin/cycles/".len()..loc.find('?').unwrap()].to_string();
    let e = audit_entries(&app).pop().unwrap();
    assert_eq!(e["actor"], operator_id.as_str(), "{e}");
    let recent = app.admin_get("/api/v1/cycles/recent").json();
    assert_eq!(recent["cycles"][0]["id"], cycle.as_str());
    assert_eq!(recent["cycles"][0]["namespace"], "blue");
    let page = op.get(&loc);
    assert!(page.body.contains("Cycle started."), "{}", page.body);
    let detail = poll_until("the cycle's timeline", || {
        let r = viewer.get(&format!("/admin/cycles/{cycle}"));
        if r.status == 200 && r.body.contains("cycle_started") {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body.len()))
        }
    });
    assert_no_inline_code("/admin/cycles/{id}", &detail.body);
    assert!(detail.body.contains("Stage timeline") && detail.body.contains("Dispatches"));
    assert!(detail.body.contains(&cycle) && detail.body.contains("blue"));
    assert_eq!(posts_on(&detail.body), Vec::<String>::new());
    let list = viewer.get("/admin/cycles").body;
    assert!(
        list.contains(&format!("href=\"/admin/cycles/{cycle}\"")),
        "{list}"
    );

    // A cycle that does not exist, and an id that is none.
    let r = viewer.get(&format!("/admin/cycles/{}", uuid::Uuid::now_v7()));
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(is_html(&r));
    assert_eq!(viewer.get("/admin/cycles/nope").status, 400);

    // Run profiles: one cycle for the enabled one.
    let r = op.post("/admin/cycles/run-profiles/trigger", &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let recent = app.admin_get("/api/v1/cycles/recent").json();
    let cycles = recent["cycles"].as_array().unwrap();
    assert!(
        cycles.iter().any(|c| c["run_profile_id"] == "r1"),
        "{recent}"
    );
    assert!(
        !cycles.iter().any(|c| c["run_profile_id"] == "r2"),
        "{recent}"
    );
    assert_eq!(
        audit_entries(&app).pop().unwrap()["actor"],
        operator_id.as_str()
    );

    // Pause and resume.
    let r = op.post("/admin/cycles/pause", &[("reason", "maintenance")]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        audit_entries(&app).pop().unwrap()["actor"],
        operator_id.as_str()
    );
    let body = op.get("/admin/cycles").body;
    assert!(body.contains("id=\"governance-state\">paused<") && body.contains("maintenance"));
    assert!(posts_on(&body).contains(&"/admin/cycles/resume".to_string()));
    assert!(
        viewer
            .get("/admin/cycles")
            .body
            .contains("id=\"governance-state\">paused<")
    );
    assert_eq!(op.post("/admin/cycles/resume", &[]).status, 303);
    assert_eq!(
        app.admin_get("/api/v1/governance").json()["governance"]["paused"],
        false
    );

    // Halt and resume a namespace.
    let r = op.post(
        "/admin/cycles/halt",
        &[("namespace", "green"), ("reason", "incident")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        audit_entries(&app).pop().unwrap()["actor"],
        operator_id.as_str()
    );
    let body = op.get("/admin/cycles").body;
    assert!(
        body.contains("incident") && body.contains("badge halted"),
        "{body}"
    );
    assert!(posts_on(&body).contains(&"/admin/cycles/namespaces/green/resume".to_string()));
    let g = app.admin_get("/api/v1/governance").json();
    assert_eq!(g["governance"]["halted_namespaces"], json!(["green"]));
    let r = op.post("/admin/cycles/halt", &[("namespace", "not valid!")]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        op.post("/admin/cycles/namespaces/green/resume", &[]).status,
        303
    );
    let g = app.admin_get("/api/v1/governance").json();
    assert_eq!(g["governance"]["halted_namespaces"], json!([]));
}

/// `/admin/api`: the API reference for any signed-in role, linked from the navigation, listing
/// every route of the API with its method, roles, parameters, bodies and examples, rendered from
/// the same document `GET /api/v1/openapi.json` serves.
#[test]
fn the_api_reference_page_lists_every_api_route() {
    let app = TestApp::start();
    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    assert!(viewer.get("/admin").body.contains("href=\"/admin/api\""));
    let r = viewer.get("/admin/api");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(is_html(&r), "{:?}", r.headers);
    assert_no_inline_code("/admin/api", &r.body);
    let api: Vec<_> = routes()
        .into_iter()
        .filter(|s| !s.path.starts_with("/admin") && s.path != "/")
        .collect();
    assert!(api.len() > 50, "{api:?}");
    for spec in &api {
        let method = spec.method.as_str();
        let heading = format!(
            "<span class=\"method {}\">{method}</span> <code class=\"path\">{}</code>",
            method.to_ascii_lowercase(),
            spec.path
        );
        assert!(
            r.body.contains(&heading),
            "no {method} {} on the page",
            spec.path
        );
    }
    // The document's operations and schemas, with roles, parameters, bodies and examples.
    let doc = app.get("/api/v1/openapi.json", Some(&app.admin_key)).json();
    for op in doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
    {
        let id = op["operationId"].as_str().unwrap();
        assert!(r.body.contains(&format!("id=\"op-{id}\"")), "{id}");
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(r.body.contains(&format!("id=\"schema-{name}\"")), "{name}");
    }
    let rotate = &r.body[r.body.find("id=\"op-keys_rotate\"").unwrap()..];
    let rotate = &rotate[..rotate.find("</article>").unwrap()];
    for expected in [
        "<span class=\"role\">admin</span>",
        "<th scope=\"row\" class=\"mono\">id</th>",
        "href=\"#schema-RotateKey\"",
        "Example request body",
        "overlap_seconds",
        "href=\"#schema-KeyCreated\"",
        "401 Unauthorized",
    ] {
        assert!(
            rotate.contains(expected),
            "keys_rotate lacks {expected}: {rotate}"
        );
    }
    let health = &r.body[r.body.find("id=\"op-health\"").unwrap()..];
    assert!(health[..health.find("</article>").unwrap()].contains("public: no key"));
}

/// Creating a key on the dashboard answers 303 to a page that shows the key once: a refresh of
/// that page answers 410 and makes no second key; nobody else's session sees it.
#[test]
fn a_new_key_is_shown_once_and_a_refresh_repeats_nothing() {
    let app = TestApp::start();
    let admin = Client::sign_in(&app.base, &app.admin_key);
    let other = Client::sign_in(&app.base, &app.create_key("admin"));
    let keys_before = app.admin_get("/api/v1/keys").json()["keys"]
        .as_array()
        .unwrap()
        .len();
    let r = admin.post("/admin/keys", &[("name", "once"), ("role", "service")]);
    assert_eq!(r.status, 303, "{}", r.body);
    let page = r.header("location").unwrap().to_string();
    assert!(page.ends_with("/created"), "{page}");
    let seq = app.audit_seq();

    assert_eq!(other.get(&page).status, 410, "another admin sees it");
    let shown = admin.get(&page);
    assert_eq!(shown.status, 200, "{}", shown.body);
    let field = &shown.body[shown
        .body
        .find("id=\"new-key\"")
        .expect("the new key field")..];
    let field = &field[field.find("value=\"").unwrap() + 7..];
    let token = field[..field.find('"').unwrap()].to_string();
    assert!(token.starts_with("keel_"), "{token}");
    assert_eq!(app.get("/api/v1/tasks", Some(&token)).status, 200);

    for _ in 0..2 {
        let again = admin.get(&page);
        assert_eq!(again.status, 410, "{}", again.body);
        assert!(!again.body.contains(&token), "shown twice");
        assert!(again.body.contains("shown once"), "{}", again.body);
    }
    assert_eq!(app.audit_seq(), seq, "a refresh wrote something");
    let keys_after = app.admin_get("/api/v1/keys").json()["keys"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(keys_after, keys_before + 1, "exactly one key was made");

    let id = page.split('/').nth(3).unwrap().to_string();
    let r = admin.post(&format!("/admin/keys/{id}/rotate"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let rotated_page = r.header("location").unwrap().to_string();
    assert_ne!(rotated_page, page);
    assert_eq!(admin.get(&rotated_page).status, 200);
    assert_eq!(admin.get(&rotated_page).status, 410);
}

/// The forms a service session is offered work when posted: the enqueue and the cycle trigger
/// are accepted (303, audited with the service key), an operator's action is refused (403).
#[test]
fn a_service_session_enqueues_and_triggers_but_does_not_operate() {
    let receiver = Receiver::start();
    let app = dashboard_app(&receiver);
    let task = dead_letter(&app);
    let key = app.create_key("service");
    let service_id = key_id_of(&key);
    let service = Client::sign_in(&app.base, &key);
    let task_type = app.app.config.handlers.keys().next().unwrap().clone();
    let r = service.post(
        "/admin/tasks",
        &[("type", task_type.as_str()), ("payload", "{}")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let e = audit_entries(&app).pop().unwrap();
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("task.enqueue"), Some(service_id.as_str())),
        "{e}"
    );
    let r = service.post("/admin/cycles/trigger", &[("namespace", "")]);
    assert_ne!(r.status, 403, "{}", r.body);
    let r = service.post("/admin/cycles/run-profiles/trigger", &[]);
    assert_ne!(r.status, 403, "{}", r.body);
    let seq = app.audit_seq();
    for path in [
        format!("/admin/tasks/{task}/cancel"),
        "/admin/cycles/pause".to_string(),
        "/admin/dlq/drain".to_string(),
    ] {
        let r = service.post(&path, &[("max", "1"), ("reason", "x")]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(app.audit_seq(), seq, "a refused post wrote something");
}
