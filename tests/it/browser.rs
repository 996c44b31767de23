//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver, a
//! few raw W3C WebDriver calls with ureq). Signs in, opens every page with no console error (CSP
//! violations included), sees a live update land, drains a dead letter after its dry run and
//! finds `dlq.drain` on the audit page, signs out. Screenshots of every page (light, dark, phone
//! width) go to `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without
//! `/usr/bin/chromedriver` the test says so and passes, except in CI (`CI` set), where it fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use keel::config::{Config, HandlerConfig, HttpHandlerConfig};
use serde_json::{Value, json};

use crate::receiver::{Receiver, closed_port_url};
use crate::support::{TestApp, poll_until};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .proxy(None)
        .build()
        .into()
}

/// chromedriver on a free loopback port; killed (by its pid) when dropped.
struct Driver {
    child: Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ask chromedriver to quit (it closes its browsers), then make sure it is gone.
        let _ = agent().get(format!("{}/shutdown", self.base)).call();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
struct Browser {
    driver: Driver,
    session: String,
    agent: ureq::Agent,
    shots: PathBuf,
}

impl Browser {
    fn start(shots: PathBuf) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let agent = agent();
        poll_until("chromedriver to be ready", || {
            agent
                .get(format!("{}/status", driver.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
                .map(|_| ())
                .ok_or_else(|| "not yet".to_string())
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", driver._profile.path().display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut r = agent
            .post(format!("{}/session", driver.base))
            .send_json(&caps)
            .expect("new session");
        let v: Value = r.body_mut().read_json().expect("session answer");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            driver,
            session,
            agent,
            shots,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.session);
        let mut r = match body {
            Some(b) => self
                .agent
                .post(&url)
                .send_json(&b)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}")),
            None if method == "GET" => self
                .agent
                .get(&url)
                .call()
                .unwrap_or_else(|e| panic!("{method} {path}: {e}")),
            None => self
                .agent
                .delete(&url)
                .call()
                .unwrap_or_else(|e| panic!("{method} {path}: {e}")),
        };
        let status = r.status().as_u16();
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        assert!(status < 400, "WebDriver {method} {path}: {status} {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        poll_until("the page to load", || {
            (self.script("return document.readyState", json!([])) == "complete")
                .then_some(())
                .ok_or_else(|| "loading".to_string())
        });
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks an element that loads another page, and waits for that page.
    fn click(&self, css: &str) {
        let id = self.find(css);
        self.script("window.__before_click = true", json!([]));
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
        poll_until(&format!("the page after clicking {css}"), || {
            let v = self.script(
                "return [window.__before_click === true, document.readyState]",
                json!([]),
            );
            (v[0] == false && v[1] == "complete")
                .then_some(())
                .ok_or_else(|| v.to_string())
        });
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn source(&self) -> String {
        self.script("return document.documentElement.outerHTML", json!([]))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    fn dark(&self, on: bool) {
        let value = if on { "dark" } else { "light" };
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{"name": "prefers-color-scheme", "value": value}],
            }})),
        );
    }

    /// Saves a screenshot of the whole page as `<name>.png`.
    fn shot(&self, name: &str) {
        let v = self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Page.captureScreenshot", "params": {
                "format": "png", "captureBeyondViewport": true,
            }})),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap_or(""))
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Console messages since the last call: (level, message).
    fn console(&self) -> Vec<(String, String)> {
        self.call("POST", "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Fails on any console warning or error (CSP violations and failed loads are errors).
    fn assert_clean_console(&self, page: &str) {
        let bad: Vec<_> = self
            .console()
            .into_iter()
            .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
            .collect();
        assert!(bad.is_empty(), "{page}: console: {bad:?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.driver.base, self.session);
        let _ = self.agent.delete(&url).call();
    }
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

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

#[test]
fn the_dashboard_works_in_headless_chromium() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        let why = format!(
            "{CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser test must run in CI: {why}"
        );
        eprintln!("SKIPPED the_dashboard_works_in_headless_chromium: {why}");
        return;
    }
    let receiver = Receiver::start();
    let hook = receiver.url();
    let app = TestApp::start_with(move |c: &mut Config| {
        c.handlers
            .insert("hook".into(), HandlerConfig::Http(http_handler(&hook)));
        c.handlers.insert(
            "doomed".into(),
            HandlerConfig::Http(http_handler(&closed_port_url())),
        );
        c.llm.providers.insert(
            "acme".into(),
            toml::from_str(
                "base_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\ndaily_budget_usd = 5.0\n\
                 input_usd_per_1k_tokens = 0.001\noutput_usd_per_1k_tokens = 0.002",
            )
            .expect("an LLM provider"),
        );
    });
    // Something to look at: a delivered task and a dead letter.
    let submit = |task_type: &str| -> String {
        let r = app.post_json(
            "/api/v1/tasks",
            Some(&app.admin_key),
            &json!({"type": task_type, "payload": {"from": "browser test"}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    };
    let ok = submit("hook");
    let dead = submit("doomed");
    for (id, want) in [(&ok, "succeeded"), (&dead, "dead")] {
        poll_until(&format!("task {id} to be {want}"), || {
            let s = app.admin_get(&format!("/api/v1/tasks/{id}")).json()["task"]["status"].clone();
            (s == want).then_some(()).ok_or_else(|| s.to_string())
        });
    }

    // And a cycle, for the cycles pages.
    let r = app.post_json("/api/v1/cycles/trigger", Some(&app.admin_key), &json!({}));
    assert_eq!(r.status, 201, "{}", r.body);
    let cycle = r.json()["cycle_run_id"].as_str().unwrap().to_string();

    let shots = screenshots_dir();
    let b = Browser::start(shots.clone());
    let started = Instant::now();

    // Sign in: a page without a session lands on the form.
    b.goto(&format!("{}/admin/dlq", app.base));
    assert!(
        b.url().contains("/admin/login?reason=required"),
        "{}",
        b.url()
    );
    b.assert_clean_console("sign-in");
    b.shot("01-sign-in");
    b.type_into("#key", &app.admin_key);
    b.click("form[action='/admin/login'] button[type=submit]");
    assert!(
        b.url().ends_with("/admin/dlq"),
        "back where it started: {}",
        b.url()
    );

    // Every page, with its stylesheet applied and a clean console.
    let pages = [
        ("02-overview", "/admin".to_string(), "Overview"),
        ("03-tasks", "/admin/tasks".to_string(), "Tasks"),
        ("04-task", format!("/admin/tasks/{ok}"), "Task"),
        ("05-dead-letters", "/admin/dlq".to_string(), "Dead letters"),
        ("06-circuits", "/admin/circuits".to_string(), "Circuits"),
        ("07-budgets", "/admin/budgets".to_string(), "Budgets"),
        ("08-audit", "/admin/audit".to_string(), "Audit log"),
        ("09-keys", "/admin/keys".to_string(), "API keys"),
        ("10-settings", "/admin/settings".to_string(), "Settings"),
        ("10a-cycles", "/admin/cycles".to_string(), "Cycles"),
        ("10b-cycle", format!("/admin/cycles/{cycle}"), "Cycle"),
    ];
    for (name, path, heading) in &pages {
        b.goto(&format!("{}{path}", app.base));
        assert!(b.url().ends_with(path.as_str()), "{path}: at {}", b.url());
        assert!(
            b.text("h1").starts_with(heading),
            "{path}: {}",
            b.text("h1")
        );
        let styled = b.script(
            "return getComputedStyle(document.querySelector('header.top')).position",
            json!([]),
        );
        assert_eq!(styled, "sticky", "{path}: the stylesheet is not applied");
        // Every form control has a label a screen reader announces.
        let unlabelled = b.script(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))\
             .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.outerHTML)",
            json!([]),
        );
        assert_eq!(unlabelled, json!([]), "{path}: controls without a label");
        b.assert_clean_console(path);
        b.shot(name);
    }

    // Live: the overview's cards are refreshed by admin.js without a reload.
    b.goto(&format!("{}/admin", app.base));
    b.script(
        "document.querySelector('[data-card=dlq] [data-field=value]').textContent = 'stale'; \
         window.__marker = 1;",
        json!([]),
    );
    poll_until("a live update of the overview", || {
        let v = b.script(
            "return [window.__marker, document.querySelector('[data-card=dlq] [data-field=value]').textContent]",
            json!([]),
        );
        (v[0] == 1 && v[1] == "1")
            .then_some(())
            .ok_or_else(|| v.to_string())
    });
    b.assert_clean_console("overview (live)");

    // Dark theme and phone width.
    b.dark(true);
    b.shot("11-overview-dark");
    b.goto(&format!("{}/admin/tasks/{dead}", app.base));
    b.shot("12-task-dark");
    b.dark(false);
    b.size(390, 844);
    b.goto(&format!("{}/admin", app.base));
    let overflow = b.script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        json!([]),
    );
    assert!(
        overflow.as_i64().unwrap_or(99) <= 1,
        "the overview scrolls sideways on a phone: {overflow}"
    );
    // Every chart fits its box, so the newest data (at the right) is on screen.
    let clipped = b.script(
        "return Array.from(document.querySelectorAll('.chartbox')).filter(function (box) {
           var svg = box.querySelector('svg');
           return svg && svg.getBoundingClientRect().right > box.getBoundingClientRect().right + 1;
         }).length",
        json!([]),
    );
    assert_eq!(clipped, json!(0), "charts wider than their box on a phone");
    b.shot("13-overview-phone");
    for (path, name) in [
        ("/admin/dlq".to_string(), "14-dead-letters-phone"),
        (format!("/admin/tasks/{dead}"), "14-task-phone"),
        ("/admin/tasks".to_string(), "14-tasks-phone"),
        ("/admin/keys".to_string(), "14-keys-phone"),
    ] {
        b.goto(&format!("{}{path}", app.base));
        // The sideways overflow, and the elements that reach past the screen's edge (for the
        // message).
        let overflow = b.script(
            "var width = document.documentElement.clientWidth;
             var wide = Array.from(document.querySelectorAll('body *')).filter(function (el) {
               return el.getBoundingClientRect().right > width + 1;
             }).reverse().map(function (el) {
               return el.tagName + '.' + el.className + ' ' + el.textContent.trim().slice(0, 40);
             });
             return [document.documentElement.scrollWidth - width, wide.slice(0, 5)]",
            json!([]),
        );
        b.shot(name);
        assert!(
            overflow[0].as_i64().unwrap_or(99) <= 1,
            "{path} scrolls sideways on a phone: {overflow}"
        );
    }
    b.size(1280, 900);

    // One write end to end: the drain's dry run, then the drain; then the audit page shows it.
    b.goto(&format!("{}/admin/dlq", app.base));
    b.click("#drain-preview");
    assert!(
        b.text("#preview-title")
            .starts_with("Dry run: 1 task would move"),
        "{}",
        b.text("#preview-title")
    );
    assert!(
        b.source().contains(&dead),
        "the preview lists the dead letter"
    );
    b.assert_clean_console("drain preview");
    b.shot("15-drain-preview");
    let status = app.admin_get(&format!("/api/v1/tasks/{dead}")).json()["task"]["status"].clone();
    assert_eq!(status, "dead", "the dry run moved nothing");
    b.click("#drain-confirm");
    assert!(b.url().ends_with("/admin/dlq?msg=drained"), "{}", b.url());
    assert!(b.text(".flash").contains("moved back to the queue"));
    b.shot("16-drained");
    b.goto(&format!("{}/admin/audit", app.base));
    let audit = b.source();
    assert!(
        audit.contains("dlq.drain"),
        "the drain is on the audit page"
    );
    assert!(
        audit.contains("initial-admin"),
        "with the signed-in key as actor"
    );
    b.click("#verify");
    assert!(
        b.text("#verify-result").starts_with("Verified."),
        "{}",
        b.text("#verify-result")
    );
    b.assert_clean_console("audit");
    b.shot("17-audit-after-drain");

    // Sign out: back to the form, and the dashboard is closed again.
    b.click("form[action='/admin/logout'] button");
    assert!(
        b.url().ends_with("/admin/login?reason=signed_out"),
        "{}",
        b.url()
    );
    assert!(b.text(".notice").contains("signed out"));
    b.goto(&format!("{}/admin", app.base));
    assert!(
        b.url().contains("/admin/login?reason=required"),
        "{}",
        b.url()
    );
    b.assert_clean_console("signed out");
    eprintln!(
        "browser test: {} pages, screenshots in {} ({:.1} s)",
        pages.len() + 2,
        shots.display(),
        started.elapsed().as_secs_f64()
    );
}
