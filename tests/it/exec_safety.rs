//! Executor safety through the real app: a command's stderr kept within its limits whatever
//! bytes it writes, paged logs in the API and on the task page, large http and llm answers kept
//! in part and marked truncated.

use keel::config::{CommandHandlerConfig, Config, HandlerConfig};
use serde_json::{Value, json};

use crate::admin::Client;
use crate::support::{TestApp, poll_until};

/// `/bin/sh -c <script>` with PATH passed through.
fn shell(script: &str) -> CommandHandlerConfig {
    CommandHandlerConfig {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        working_dir: None,
        env_allow: vec!["PATH".into()],
        timeout_seconds: 30,
        concurrency: None,
        max_attempts: Some(1),
    }
}

fn add_command(c: &mut Config, task_type: &str, h: CommandHandlerConfig) {
    c.handlers
        .insert(task_type.into(), HandlerConfig::Command(h));
}

/// Submits a task of `task_type` and waits until it is finished; the task.
fn run_to_end(app: &TestApp, task_type: &str) -> Value {
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": task_type, "payload": {}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    poll_until(&format!("task {id} to finish"), || {
        let t = app.admin_get(&format!("/api/v1/tasks/{id}")).json()["task"].clone();
        match t["status"].as_str() {
            Some("succeeded" | "dead" | "cancelled") => Ok(t),
            _ => Err(t.to_string()),
        }
    })
}

/// One page of a task's log: the (number, line) pairs and `next_from`.
fn log_page(app: &TestApp, id: &str, query: &str) -> (Vec<(u64, String)>, Value) {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}/logs{query}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let lines = v["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["n"].as_u64().expect("n"),
                l["line"].as_str().expect("line").to_string(),
            )
        })
        .collect();
    (lines, v["next_from"].clone())
}

/// An invalid UTF-8 byte on stderr neither ends the reader nor kills the program with SIGPIPE:
/// the task succeeds, the byte reads as U+FFFD, a long line is cut at `log_line_max_bytes`, the
/// lines past `log_max_lines_per_task` are dropped, and a last line counts what was cut. The
/// logs API pages with `limit` and `next_from`, and so does the task page.
#[test]
fn stderr_is_decoded_lossily_capped_counted_and_paged() {
    let app = TestApp::start_with(|c| {
        c.exec.log_max_lines_per_task = 10;
        c.exec.log_line_max_bytes = 100;
        add_command(
            c,
            "noisy",
            shell(
                r#"printf 'bad \377 byte\n' >&2
head -c 300 /dev/zero | tr '\0' y >&2; echo >&2
i=0; while [ $i -lt 30 ]; do echo "line $i" >&2; i=$((i+1)); done
echo done"#,
            ),
        );
    });
    let t = run_to_end(&app, "noisy");
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["result"], "done\n");
    let id = t["id"].as_str().unwrap();

    let (all, next) = log_page(&app, id, "");
    assert!(next.is_null(), "{next}");
    let texts: Vec<&str> = all.iter().map(|(_, l)| l.as_str()).collect();
    let mut expected = vec!["bad \u{fffd} byte".to_string(), "y".repeat(100)];
    expected.extend((0..8).map(|i| format!("line {i}")));
    // Cut: 200 bytes of the long line, and the 22 lines "line 8" to "line 29" (152 bytes).
    expected.push(
        "[keel] 22 lines / 352 bytes of stderr cut (exec.log_max_lines_per_task = 10, \
         exec.log_line_max_bytes = 100)"
            .to_string(),
    );
    assert_eq!(texts, expected);
    let numbers: Vec<u64> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..11).collect::<Vec<u64>>());

    let (first, next) = log_page(&app, id, "?limit=4");
    assert_eq!(first, all[..4].to_vec());
    assert_eq!(next, 4);
    let (second, next) = log_page(&app, id, "?from=4&limit=4");
    assert_eq!(second, all[4..8].to_vec());
    assert_eq!(next, 8);
    let (last, next) = log_page(&app, id, "?from=8&limit=4");
    assert_eq!(last, all[8..].to_vec());
    assert!(next.is_null(), "{next}");
    let (one, _) = log_page(&app, id, "?limit=0");
    assert_eq!(one.len(), 1, "limit is clamped to at least 1");
    let bad = app.admin_get(&format!("/api/v1/tasks/{id}/logs?limit=many"));
    assert_eq!(bad.status, 400, "{}", bad.body);

    let admin = Client::sign_in(&app.base, &app.admin_key);
    let page = admin.get(&format!("/admin/tasks/{id}?log_from=8"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("data-n=\"8\""), "{}", page.body);
    assert!(!page.body.contains("data-n=\"7\""), "{}", page.body);
    assert!(
        page.body
            .contains(&format!("href=\"/admin/tasks/{id}?log_from=0\"")),
        "a link to the earlier lines: {}",
        page.body
    );
}

/// A local HTTP server that answers every request with 200 and the body its path names
/// (`/text`: 2,000 bytes of "é"; `/binary`: 50 bytes 0xff), then closes the connection.
fn answer_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Read, Write};
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let answer: Vec<u8> = if request_line.contains("/binary") {
                    vec![0xff; 50]
                } else {
                    "é".repeat(1000).into_bytes()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&answer);
            });
        }
    });
    format!("http://{addr}")
}

/// An http answer over `queue.result_max_bytes` keeps its first bytes, cut on a character
/// boundary, and the task says `result_truncated`; a binary answer is kept as base64. Both
/// before this were an empty result.
#[test]
fn large_and_binary_http_answers_are_kept_in_part_and_marked() {
    let base = answer_server();
    let app = TestApp::start_with(|c| {
        c.queue.result_max_bytes = 1001;
        for (task_type, path) in [("text", "/text"), ("binary", "/binary")] {
            let handler: HandlerConfig = toml::from_str(&format!(
                "kind = \"http\"\nurl = \"{base}{path}\"\nmax_attempts = 1"
            ))
            .expect("an http handler");
            c.handlers.insert(task_type.into(), handler);
        }
    });
    let t = run_to_end(&app, "text");
    assert_eq!(t["status"], "succeeded", "{t}");
    // 1001 bytes would split the 501st "é": 500 of them are kept.
    assert_eq!(t["result"], "é".repeat(500));
    assert_eq!(t["result_truncated"], true, "{t}");
    assert_eq!(t["result_base64"], false, "{t}");

    let t = run_to_end(&app, "binary");
    assert_eq!(t["status"], "succeeded", "{t}");
    let expected = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xff; 50]);
    assert_eq!(t["result"], expected.as_str());
    assert_eq!(t["result_truncated"], false, "{t}");
    assert_eq!(t["result_base64"], true, "{t}");

    let admin = Client::sign_in(&app.base, &app.admin_key);
    let listed = app.admin_get("/api/v1/tasks?type=text");
    let id = listed.json()["tasks"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = admin.get(&format!("/admin/tasks/{id}"));
    assert!(
        page.body.contains("data-result-note>Truncated"),
        "{}",
        page.body
    );
}

/// A handler URL with userinfo and a query token is shown redacted everywhere: the task API
/// and the task page for a viewer, the attempt's error message, and the settings page.
#[test]
fn secrets_in_handler_urls_are_never_shown() {
    let closed = crate::receiver::closed_port_url();
    let url =
        closed.replacen("http://", "http://hook-user:hook-pass-8c1e@", 1) + "?token=tok-4f2a9b&v=1";
    let app = TestApp::start_with(|c| {
        let handler: HandlerConfig = toml::from_str(&format!(
            "kind = \"http\"\nurl = \"{url}\"\nmax_attempts = 1"
        ))
        .expect("an http handler");
        c.handlers.insert("hook".into(), handler);
    });
    let t = run_to_end(&app, "hook");
    assert_eq!(t["status"], "dead", "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let secrets = ["hook-user", "hook-pass-8c1e", "tok-4f2a9b"];

    let viewer = app.create_key("viewer");
    let r = app.get(&format!("/api/v1/tasks/{id}"), Some(&viewer));
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = r.json()["task"]["handler"]["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert!(
        shown.contains("://***@127.0.0.1:") && shown.ends_with("/hook?token=***&v=***"),
        "{shown}"
    );
    let message = r.json()["task"]["attempts"][0]["error_message"]
        .as_str()
        .expect("an error message")
        .to_string();
    assert!(message.contains(&shown), "{message}");

    let viewer_page = Client::sign_in(&app.base, &viewer).get(&format!("/admin/tasks/{id}"));
    assert_eq!(viewer_page.status, 200, "{}", viewer_page.body);
    let settings = Client::sign_in(&app.base, &app.admin_key).get("/admin/settings");
    assert_eq!(settings.status, 200, "{}", settings.body);
    let list = app.get("/api/v1/tasks", Some(&viewer));
    for (what, body) in [
        ("task", &r.body),
        ("task page", &viewer_page.body),
        ("settings", &settings.body),
        ("task list", &list.body),
    ] {
        for secret in secrets {
            assert!(!body.contains(secret), "the {what} shows {secret}: {body}");
        }
    }
}

/// An llm answer whose content is over `queue.result_max_bytes` keeps its first bytes and the
/// task says `result_truncated` (before this it was cut silently).
#[test]
fn a_long_llm_answer_is_kept_in_part_and_marked() {
    use crate::llm::{Usage, add_fake_provider, fake_llm, submit, wait_status};
    let server = fake_llm(Usage::Fixed(10, 5), std::time::Duration::ZERO);
    let app = TestApp::start_with(|c| {
        add_fake_provider(c, &server, 1.0);
        c.queue.result_max_bytes = 10;
    });
    let short = submit(&app, "ask", json!({"prompt": "hi"}));
    let t = wait_status(&app, &short, "succeeded");
    assert_eq!(t["result"], "echo: hi");
    assert_eq!(t["result_truncated"], false, "{t}");
    let long = submit(&app, "ask", json!({"prompt": "hello world"}));
    let t = wait_status(&app, &long, "succeeded");
    assert_eq!(t["result"], "echo: hell");
    assert_eq!(t["result_truncated"], true, "{t}");
    assert_eq!(t["result_base64"], false, "{t}");
}
