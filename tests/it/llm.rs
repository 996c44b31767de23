//! The llm executor and LLM budgets through the real API, against a local fake
//! OpenAI-compatible server: the request sent (model, messages, capped max_tokens, bearer key),
//! cost from usage × prices, the ledger and `GET /api/v1/budgets`, budget exhaustion and the
//! next-day reset on the manual clock, runtime budget changes (audited, persisted, operator
//! only), reservations under concurrency, and the error mapping (429/500 retried, 400 dead).
//!
//! `FakeServer` here is a small scripted HTTP server on its own threads; the workflow tests use
//! it as their receiver too.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::budget::{DAY_MS, cost_micros, estimate_prompt_tokens};
use keel::config::{Config, HandlerConfig, LlmHandlerConfig, LlmProviderConfig, Secret};
use serde_json::{Value, json};

use crate::support::{START_MS, TestApp, poll_until};

// ---------------------------------------------------------------------------------------------
// A scripted HTTP server

/// One request the fake server received.
#[derive(Debug, Clone)]
pub(crate) struct FakeRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.body))
    }
}

/// An answer of the fake server.
#[derive(Debug, Clone)]
pub(crate) struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl FakeResponse {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        FakeResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&FakeRequest) -> FakeResponse + Send + Sync;

/// A local HTTP/1.1 server: answers scripted responses first (in order), then what `fallback`
/// says; records every request.
pub(crate) struct FakeServer {
    pub base: String,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
    script: Arc<Mutex<VecDeque<FakeResponse>>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    pub fn start(fallback: impl Fn(&FakeRequest) -> FakeResponse + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let fallback: Arc<Handler> = Arc::new(fallback);
        {
            let (requests, script, stop) = (
                Arc::clone(&requests),
                Arc::clone(&script),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, script, fallback) = (
                        Arc::clone(&requests),
                        Arc::clone(&script),
                        Arc::clone(&fallback),
                    );
                    std::thread::spawn(move || serve(stream, &requests, &script, &*fallback));
                }
            });
        }
        FakeServer {
            base,
            requests,
            script,
            stop,
        }
    }

    /// Answers these first, one per request, before falling back.
    pub fn push(&self, response: FakeResponse) {
        self.script.lock().unwrap().push_back(response);
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
    }
}

fn serve(
    stream: TcpStream,
    requests: &Mutex<Vec<FakeRequest>>,
    script: &Mutex<VecDeque<FakeResponse>>,
    fallback: &Handler,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = FakeRequest {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    requests.lock().unwrap().push(request.clone());
    let scripted = script.lock().unwrap().pop_front();
    let response = scripted.unwrap_or_else(|| fallback(&request));
    std::thread::sleep(response.delay);
    let mut out = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&response.body);
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------------------------
// A fake OpenAI-compatible provider

/// What usage the fake provider reports for a successful call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Usage {
    /// These prompt and completion token counts.
    Fixed(u64, u64),
    /// The most the call could use: keel's prompt bound and the request's max_tokens (so the
    /// real cost equals the reservation).
    Max,
}

/// A chat completion answering "echo: <last message content>".
pub(crate) fn chat_answer(request: &FakeRequest, usage: Usage, delay: Duration) -> FakeResponse {
    let body = request.json();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let (prompt, completion) = match usage {
        Usage::Fixed(p, c) => (p, c),
        Usage::Max => (
            estimate_prompt_tokens(&messages),
            body["max_tokens"].as_u64().unwrap_or(0),
        ),
    };
    FakeResponse::new(
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": format!("echo: {last}")}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion},
        })
        .to_string(),
    )
    .delayed(delay)
}

pub(crate) fn fake_llm(usage: Usage, delay: Duration) -> FakeServer {
    FakeServer::start(move |r| chat_answer(r, usage, delay))
}

/// Prices of the fake provider: 1 USD per 1K prompt tokens, 2 USD per 1K completion tokens
/// (1,000 and 2,000 µUSD per token).
pub(crate) const IN_NANOS: u64 = 1_000_000;
pub(crate) const OUT_NANOS: u64 = 2_000_000;

/// Provider `fake` at `server` with a `max_tokens` cap of 50 and the given daily budget, and an
/// llm handler `ask` using it.
pub(crate) fn add_fake_provider(c: &mut Config, server: &FakeServer, daily_budget_usd: f64) {
    c.llm.providers.insert(
        "fake".into(),
        LlmProviderConfig {
            base_url: format!("{}/v1/", server.base),
            api_key: Some(Secret::new("sk-test-key")),
            model: "fake-model-1".into(),
            input_usd_per_1k_tokens: 1.0,
            output_usd_per_1k_tokens: 2.0,
            max_tokens: 50,
            daily_budget_usd,
        },
    );
    c.handlers.insert(
        "ask".into(),
        HandlerConfig::Llm(LlmHandlerConfig {
            provider: "fake".into(),
            max_tokens: None,
            timeout_seconds: 30,
            concurrency: None,
            max_attempts: Some(5),
        }),
    );
}

/// The largest cost of `{"prompt": prompt}` with `max_tokens`, as keel reserves it.
fn reservation(prompt: &str, max_tokens: u64) -> u64 {
    let messages = [json!({"role": "user", "content": prompt})];
    cost_micros(
        estimate_prompt_tokens(&messages),
        max_tokens,
        IN_NANOS,
        OUT_NANOS,
    )
}

// ---------------------------------------------------------------------------------------------
// Task helpers (shared with the workflow tests)

/// Submits as the admin and returns the new task's id.
pub(crate) fn submit(app: &TestApp, task_type: &str, payload: Value) -> String {
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": task_type, "payload": payload}),
    );
    assert_eq!(r.status, 201, "submit {task_type}: {}", r.body);
    r.json()["id"].as_str().expect("id").to_string()
}

/// The task as the API shows it.
pub(crate) fn task(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.status, 200, "GET task {id}: {}", r.body);
    r.json()["task"].clone()
}

/// Polls the task until `ok` holds.
pub(crate) fn wait_task(app: &TestApp, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll_until(&format!("task {id} to be {what}"), || {
        let t = task(app, id);
        if ok(&t) { Ok(t) } else { Err(t.to_string()) }
    })
}

pub(crate) fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    wait_task(app, id, status, |t| t["status"] == status)
}

/// The last attempt of a task.
pub(crate) fn last_attempt(t: &Value) -> Value {
    t["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null)
}

/// The one provider in `GET /api/v1/budgets` (as `key`).
fn budget(app: &TestApp, key: &str) -> Value {
    let r = app.get("/api/v1/budgets?days=7", Some(key));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["budgets"].as_array().map(Vec::len), Some(1), "{v}");
    v["budgets"][0].clone()
}

fn put_budget(app: &TestApp, key: &str, body: &Value) -> crate::support::Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    app.request(
        "PUT",
        "/api/v1/budgets/fake",
        Some(key),
        Some(("application/json", &bytes)),
    )
}

/// Whether nothing is due: the dispatcher itself finds no task to start.
fn nothing_due(app: &TestApp) -> bool {
    app.block_on(app.app.dispatcher.dispatch_ready())
        .expect("dispatch")
        == 0
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The request carries the model, the messages (a prompt becomes one user message),
/// max_tokens capped by the provider and the bearer key; the result is the answer's text; the
/// cost is usage × prices, in the ledger, the budgets API and the metrics.
#[test]
fn a_call_sends_the_chat_request_and_charges_usage_times_prices() {
    let server = fake_llm(Usage::Fixed(10, 5), Duration::ZERO);
    let app = TestApp::start_with(|c| add_fake_provider(c, &server, 1.0));
    let viewer = app.create_key("viewer");

    let first = submit(&app, "ask", json!({"prompt": "hello", "max_tokens": 500}));
    let t = wait_status(&app, &first, "succeeded");
    assert_eq!(t["result"], "echo: hello");
    assert_eq!(t["target"], "llm:fake");
    assert_eq!(
        t["handler"],
        json!({"kind": "llm", "provider": "fake", "model": "fake-model-1"})
    );
    assert_eq!(last_attempt(&t)["receipt"]["status"], 200);

    let messages = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "and again"},
    ]);
    let second = submit(&app, "ask", json!({"messages": messages}));
    assert_eq!(
        wait_status(&app, &second, "succeeded")["result"],
        "echo: and again"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(r.header("authorization"), Some("Bearer sk-test-key"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(
        requests[0].json(),
        json!({"model": "fake-model-1", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello"}]}),
        "500 is capped to the provider's 50"
    );
    assert_eq!(
        requests[1].json(),
        json!({"model": "fake-model-1", "max_tokens": 50, "messages": messages})
    );

    // 10 prompt tokens × 1,000 µUSD + 5 completion tokens × 2,000 µUSD = 20,000 µUSD a call.
    let b = budget(&app, &viewer);
    assert_eq!(b["provider"], "fake");
    assert_eq!(b["day"], "2026-01-01");
    assert_eq!(b["budget_usd_micros"], 1_000_000);
    assert_eq!(b["budget_source"], "config");
    assert_eq!(b["spent_usd_micros"], 40_000);
    assert_eq!(b["spent_usd"], 0.04);
    assert_eq!(b["reserved_usd_micros"], 0);
    assert_eq!(b["in_flight"], 0);
    assert_eq!(b["remaining_usd_micros"], 960_000);
    assert_eq!(
        b["history"],
        json!([{"day": "2026-01-01", "tokens_in": 20, "tokens_out": 10, "requests": 2,
            "spent_usd": 0.04, "spent_usd_micros": 40_000}])
    );

    let metrics = app.get("/metrics", Some(&viewer)).body;
    for expected in [
        "keel_budget_spent_usd{provider=\"fake\"} 0.04",
        "keel_budget_remaining_usd{provider=\"fake\"} 0.96",
        "keel_llm_tokens_total{kind=\"prompt\",provider=\"fake\"} 20",
        "keel_llm_tokens_total{kind=\"completion\",provider=\"fake\"} 10",
        "keel_llm_requests_total{provider=\"fake\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == expected),
            "{expected} missing from:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("budget") || l.contains("llm"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A call that would overrun the day's budget waits for the next UTC day without using an
/// attempt (class `budget_exceeded`), then runs; budget changes need an operator, are audited
/// and survive a restart, as does the ledger.
#[test]
fn an_exhausted_budget_waits_for_the_next_utc_day() {
    let server = fake_llm(Usage::Fixed(10, 5), Duration::ZERO);
    // One call reserves 40 prompt tokens (keel's bound for "hello") and 50 completion tokens:
    // 140,000 µUSD; it really costs 20,000. After it, a second reservation does not fit 150,000.
    let per_call = reservation("hello", 50);
    assert_eq!(per_call, 140_000);
    let configure = |c: &mut Config| add_fake_provider(c, &server, 0.15);
    let app = TestApp::start_with(configure);
    let operator = app.create_key("operator");
    let viewer = app.create_key("viewer");

    let first = submit(&app, "ask", json!({"prompt": "hello"}));
    wait_status(&app, &first, "succeeded");
    let second = submit(&app, "ask", json!({"prompt": "hello"}));
    let t = wait_task(&app, &second, "deferred by the budget", |t| {
        last_attempt(t)["outcome"] == "deferred"
    });
    let attempt = last_attempt(&t);
    assert_eq!(attempt["error_class"], "budget_exceeded", "{t}");
    assert_eq!(attempt["counted"], false);
    let message = attempt["error_message"].as_str().unwrap();
    assert!(message.contains("next UTC day"), "{message}");
    assert_eq!(t["status"], "queued");
    assert_eq!(t["attempts_used"], 0);
    assert_eq!(t["due_at"], "2026-01-02T00:00:00.000Z");
    assert_eq!(
        server.count(),
        1,
        "the deferred call never reached the provider"
    );
    let b = budget(&app, &viewer);
    assert_eq!(
        (
            b["spent_usd_micros"].clone(),
            b["reserved_usd_micros"].clone()
        ),
        (json!(20_000), json!(0))
    );

    // Later the same day it still waits.
    app.clock.advance_ms(6 * 3_600_000);
    assert!(nothing_due(&app));
    assert_eq!(server.count(), 1);

    // The next UTC day has a fresh budget: it runs, without having used an attempt.
    app.clock.set_ms(START_MS + DAY_MS);
    let t = wait_status(&app, &second, "succeeded");
    assert_eq!(t["attempts_used"], 1);
    assert_eq!(server.count(), 2);
    let b = budget(&app, &viewer);
    assert_eq!(b["day"], "2026-01-02");
    assert_eq!(b["spent_usd_micros"], 20_000);
    let days: Vec<&str> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["day"].as_str().unwrap())
        .collect();
    assert_eq!(days, ["2026-01-02", "2026-01-01"]);

    // Changing budgets: operators only, audited.
    let before = app.audit_seq();
    let r = put_budget(&app, &viewer, &json!({"daily_budget_usd": 5.0}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.audit_seq(), before);
    let r = put_budget(&app, &operator, &json!({"daily_budget_usd": "lots"}));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = put_budget(&app, &operator, &json!({"daily_budget_usd": -1}));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = put_budget(&app, &operator, &json!({"weekly_budget_usd": 1}));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = app.request(
        "PUT",
        "/api/v1/budgets/nope",
        Some(&operator),
        Some(("application/json", b"{\"daily_budget_usd\": 1}")),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(app.audit_seq(), before, "refused changes write nothing");

    let r = put_budget(
        &app,
        &operator,
        &json!({"daily_budget_usd": 0.5, "today_budget_usd": 0.3}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let b = &r.json()["budget"];
    assert_eq!(b["budget_usd_micros"], 300_000);
    assert_eq!(b["budget_source"], "today_override");
    assert_eq!(b["daily_budget_override_usd"], 0.5);
    assert_eq!(b["remaining_usd_micros"], 280_000);
    assert_eq!(app.audit_seq(), before + 1);
    let entries = app
        .admin_get(&format!("/api/v1/audit?after={before}"))
        .json();
    let entry = &entries["entries"][0];
    assert_eq!(entry["action"], "budget.set", "{entry}");
    assert_eq!(entry["target"], "fake");
    assert!(entry.to_string().contains("0.3"), "{entry}");
    // A new call fits the raised budget at once.
    let third = submit(&app, "ask", json!({"prompt": "hello"}));
    wait_status(&app, &third, "succeeded");

    // The override and the ledger survive a restart (the new app's clock is back at day 1).
    let dir = app.stop();
    let app = TestApp::start_in(dir, configure);
    let b = budget(&app, &app.admin_key);
    assert_eq!(b["day"], "2026-01-01");
    assert_eq!(b["daily_budget_override_usd"], 0.5);
    assert_eq!(b["budget_source"], "daily_override");
    assert_eq!(b["spent_usd_micros"], 20_000);
    assert_eq!(b["budget_usd_micros"], 500_000);
}

/// Many calls at once against a budget that fits exactly three of them (each really costs
/// what it reserved): three reach the provider that day, the others wait for the next.
#[test]
fn concurrent_calls_never_overrun_the_budget() {
    let server = fake_llm(Usage::Max, Duration::from_millis(300));
    let per_call = reservation("q", 10);
    let budget_usd = (3 * per_call) as f64 / 1e6;
    let app = TestApp::start_with(|c| add_fake_provider(c, &server, budget_usd));
    let ids: Vec<String> = (0..8)
        .map(|_| submit(&app, "ask", json!({"prompt": "q", "max_tokens": 10})))
        .collect();

    let count = |app: &TestApp, status: &str| {
        ids.iter()
            .map(|id| task(app, id))
            .filter(|t| t["status"] == status)
            .count()
    };
    // Every call either ran or was deferred by the budget, and those deferred wait for
    // `next_day`: calls refused while others were in flight look again shortly (the clock is
    // moved past that), find the day spent and wait for the next.
    let settle = |app: &TestApp, succeeded: usize, next_day: &str| {
        poll_until(&format!("{succeeded} calls to run"), || {
            let n = count(app, "succeeded");
            if n == succeeded {
                Ok(())
            } else {
                Err(format!("{n} succeeded"))
            }
        });
        app.clock.advance_ms(10_000);
        poll_until("the other calls to wait for the next day", || {
            let tasks: Vec<Value> = ids.iter().map(|id| task(app, id)).collect();
            let waiting: Vec<&Value> = tasks
                .iter()
                .filter(|t| t["status"] != "succeeded")
                .collect();
            let all = waiting.iter().all(|t| {
                t["status"] == "queued"
                    && t["due_at"] == next_day
                    && last_attempt(t)["error_class"] == "budget_exceeded"
            });
            if all && waiting.len() == tasks.len() - succeeded {
                Ok(())
            } else {
                Err(format!("{waiting:?}"))
            }
        });
    };
    settle(&app, 3, "2026-01-02T00:00:00.000Z");
    assert_eq!(server.count(), 3);
    let b = budget(&app, &app.admin_key);
    assert_eq!(b["spent_usd_micros"], 3 * per_call);
    assert_eq!(b["remaining_usd_micros"], 0);
    assert_eq!(b["in_flight"], 0);
    for t in ids.iter().map(|id| task(&app, id)) {
        let used = if t["status"] == "succeeded" { 1 } else { 0 };
        assert_eq!(t["attempts_used"], used, "deferrals use no attempt: {t}");
    }

    // The next day three more fit.
    app.clock.set_ms(START_MS + DAY_MS);
    settle(&app, 6, "2026-01-03T00:00:00.000Z");
    assert_eq!(server.count(), 6);
    assert_eq!(count(&app, "queued"), 2);
}

/// 429 (with Retry-After) and 500 retry, recording any usage the provider reported; 400 and a
/// bad payload are dead at once; every call's reservation is given back.
#[test]
fn provider_errors_retry_or_fail() {
    let server = fake_llm(Usage::Fixed(10, 5), Duration::ZERO);
    let app = TestApp::start_with(|c| add_fake_provider(c, &server, 1.0));

    server.push(
        FakeResponse::new(429, r#"{"error": {"message": "slow down"}}"#)
            .header("retry-after", "30"),
    );
    server.push(FakeResponse::new(
        500,
        r#"{"error": {"message": "overloaded"}, "usage": {"prompt_tokens": 3, "completion_tokens": 0}}"#,
    ));
    let id = submit(&app, "ask", json!({"prompt": "hello"}));
    let t = wait_task(&app, &id, "retrying after a 429", |t| {
        t["status"] == "retrying" && t["attempts_used"] == 1
    });
    let attempt = last_attempt(&t);
    assert_eq!(attempt["error_class"], "http_429");
    assert!(
        attempt["error_message"]
            .as_str()
            .unwrap()
            .contains("slow down"),
        "{attempt}"
    );
    assert!(
        t["due_at"].as_str().unwrap() >= "2026-01-01T00:00:30.000Z",
        "Retry-After is honoured: {t}"
    );
    app.clock.advance_ms(31_000);
    let t = wait_task(&app, &id, "retrying after a 500", |t| {
        t["status"] == "retrying" && t["attempts_used"] == 2
    });
    assert_eq!(last_attempt(&t)["error_class"], "http_5xx");
    app.clock.advance_ms(120_000);
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(t["result"], "echo: hello");
    assert_eq!(server.count(), 3);

    server.push(FakeResponse::new(
        400,
        r#"{"error": {"message": "unknown model"}}"#,
    ));
    let bad = submit(&app, "ask", json!({"prompt": "hello"}));
    let t = wait_status(&app, &bad, "dead");
    let attempt = last_attempt(&t);
    assert_eq!(attempt["error_class"], "http_4xx");
    assert!(
        attempt["error_message"]
            .as_str()
            .unwrap()
            .contains("unknown model"),
        "{attempt}"
    );
    assert_eq!(t["attempts_used"], 1);

    let malformed = submit(&app, "ask", json!({"text": "no prompt"}));
    let t = wait_status(&app, &malformed, "dead");
    assert_eq!(last_attempt(&t)["error_class"], "bad_payload");
    assert_eq!(
        server.count(),
        4,
        "a bad payload never reaches the provider"
    );

    // Four calls: one success (10 + 5 tokens), the 500's reported 3 prompt tokens.
    let b = budget(&app, &app.admin_key);
    assert_eq!(b["reserved_usd_micros"], 0);
    assert_eq!(b["in_flight"], 0);
    assert_eq!(b["spent_usd_micros"], 20_000 + 3_000);
    assert_eq!(
        (
            b["history"][0]["requests"].clone(),
            b["history"][0]["tokens_in"].clone()
        ),
        (json!(4), json!(13))
    );
}
