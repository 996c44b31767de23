//! The llm executor: one OpenAI-compatible `POST <base_url>/chat/completions` per attempt,
//! through ureq on the blocking pool, inside the provider's daily budget.
//!
//! Before the call the largest possible cost (an upper bound of the prompt's tokens plus
//! `max_tokens`, at the snapshotted prices) is reserved from the provider's budget for today
//! (UTC, keel's clock). When it does not fit the attempt is deferred with error class
//! `budget_exceeded` (no attempt used): until the next UTC day when the budget is spent, or a
//! moment when calls in flight hold the rest. A call that can never fit the daily budget fails
//! with the same class. After the call the reservation is settled with the real cost from the
//! answer's `usage` (prompt tokens × input price + completion tokens × output price) and written
//! to the cost ledger; a failed call releases it and records only usage the provider reported.
//! A successful answer without `usage` is charged its whole reservation.
//!
//! Answers map like the http executor's: 2xx succeeds with the assistant's message as the
//! result; 408, 429, 5xx, timeouts and connection errors retry (honouring `Retry-After`);
//! other 4xx fail at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::answer::cut;
use super::http::retry_after_ms;
use super::snapshot::HandlerSnapshot;
use crate::budget::{Budgets, Refusal, Spend, cost_micros, estimate_prompt_tokens};
use crate::clock::SharedClock;
use crate::config::redact_url;
use crate::queue::{Outcome, Receipt, Task};

/// Bytes of an answer kept in a receipt.
const RECEIPT_BYTES: usize = 1024;

/// Largest answer read from a provider.
const ANSWER_MAX_BYTES: u64 = 16 << 20;

/// A chat request built from a task's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The messages, as given (or one user message made from `prompt`).
    pub messages: Vec<Value>,
    /// `max_tokens`, capped.
    pub max_tokens: u32,
}

/// Reads `{"messages": [...]}` or `{"prompt": "..."}` with an optional `max_tokens` (default
/// `default_max`, never above `cap`). Other fields are ignored.
pub fn parse_payload(payload: &str, default_max: u32, cap: u32) -> Result<ChatRequest, String> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err(
            "the payload must be an object with `prompt` (a string) or `messages` (an array)"
                .into(),
        );
    };
    let messages = match (object.get("messages"), object.get("prompt")) {
        (Some(_), Some(_)) => {
            return Err("give either `messages` or `prompt`, not both".into());
        }
        (Some(Value::Array(messages)), None) => {
            if messages.is_empty() {
                return Err("`messages` must not be empty".into());
            }
            for (i, m) in messages.iter().enumerate() {
                let ok = m.get("role").is_some_and(Value::is_string) && m.get("content").is_some();
                if !ok {
                    return Err(format!(
                        "`messages[{i}]` must be an object with a string `role` and a `content`"
                    ));
                }
            }
            messages.clone()
        }
        (Some(_), None) => return Err("`messages` must be an array".into()),
        (None, Some(Value::String(prompt))) if !prompt.is_empty() => {
            vec![json!({"role": "user", "content": prompt})]
        }
        (None, Some(_)) => return Err("`prompt` must be a non-empty string".into()),
        (None, None) => {
            return Err(
                "the payload needs `prompt` (a string) or `messages` (an array of {role, content})"
                    .into(),
            );
        }
    };
    let max_tokens = match object.get("max_tokens") {
        None | Some(Value::Null) => default_max,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n.min(u64::from(u32::MAX)) as u32,
            _ => return Err(format!("`max_tokens` must be a positive integer, got {v}")),
        },
    };
    Ok(ChatRequest {
        messages,
        max_tokens: max_tokens.min(cap).max(1),
    })
}

/// Token counts from an answer's `usage`, when it has one.
fn usage_of(answer: &Value) -> Option<(u64, u64)> {
    let usage = answer.get("usage")?;
    let prompt = usage.get("prompt_tokens").and_then(Value::as_u64);
    let completion = usage.get("completion_tokens").and_then(Value::as_u64);
    match (prompt, completion) {
        (None, None) => None,
        (p, c) => Some((p.unwrap_or(0), c.unwrap_or(0))),
    }
}

/// The assistant's text from a chat-completions answer (the message's JSON when it has no
/// text content, e.g. a tool call).
fn content_of(answer: &Value) -> Option<String> {
    let message = answer.get("choices")?.get(0)?.get("message")?;
    match message.get("content") {
        Some(Value::String(text)) => Some(text.clone()),
        _ => Some(message.to_string()),
    }
}

/// A provider's error text (`{"error": {"message": ...}}`), shortened.
fn error_text(answer: Option<&Value>, raw: &str) -> String {
    let text = answer
        .and_then(|a| a.get("error"))
        .and_then(|e| e.get("message").and_then(Value::as_str).or(e.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| raw.to_string());
    cut(text.trim(), 300)
}

/// What came back from the blocking call.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    /// The body (empty when it could not be read).
    text: String,
    /// Why the body could not be read (larger than [`ANSWER_MAX_BYTES`], cut off).
    unreadable: Option<String>,
}

/// Runs tasks against LLM providers.
pub struct LlmExecutor {
    agent: ureq::Agent,
    clock: SharedClock,
    budgets: Arc<Budgets>,
    result_max: usize,
}

impl LlmExecutor {
    /// An executor charging `budgets` and keeping results up to `result_max` bytes.
    pub fn new(clock: SharedClock, budgets: Arc<Budgets>, result_max: usize) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        LlmExecutor {
            agent,
            clock,
            budgets,
            result_max,
        }
    }

    /// Runs one attempt of `task`, whose handler is `handler`.
    pub async fn run(&self, task: &Task, handler: &HandlerSnapshot) -> Outcome {
        let HandlerSnapshot::Llm {
            provider,
            base_url,
            api_key,
            model,
            default_max_tokens,
            max_tokens_cap,
            input_nanos_per_token,
            output_nanos_per_token,
            daily_budget_micros,
        } = handler
        else {
            return Outcome::Fail {
                class: "handler_mismatch".into(),
                message: "the llm executor got a task of another kind".into(),
                receipt: None,
            };
        };
        let chat = match parse_payload(&task.payload, *default_max_tokens, *max_tokens_cap) {
            Ok(chat) => chat,
            Err(message) => {
                return Outcome::Fail {
                    class: "bad_payload".into(),
                    message,
                    receipt: None,
                };
            }
        };
        let (in_price, out_price) = (*input_nanos_per_token, *output_nanos_per_token);
        let max_cost = cost_micros(
            estimate_prompt_tokens(&chat.messages),
            u64::from(chat.max_tokens),
            in_price,
            out_price,
        );
        let reservation = match self
            .budgets
            .reserve(provider, max_cost, *daily_budget_micros)
            .await
        {
            Ok(Ok(reservation)) => reservation,
            Ok(Err(Refusal::Tomorrow { until, message }))
            | Ok(Err(Refusal::InFlight { until, message })) => {
                return Outcome::Defer {
                    class: "budget_exceeded".into(),
                    reason: message,
                    until,
                };
            }
            Ok(Err(Refusal::NeverFits { message })) => {
                return Outcome::Fail {
                    class: "budget_exceeded".into(),
                    message,
                    receipt: None,
                };
            }
            Err(e) => {
                return Outcome::Retry {
                    class: "internal".into(),
                    message: format!("cannot read the LLM budget: {e}"),
                    retry_after_ms: None,
                    receipt: None,
                };
            }
        };
        let url = format!("{base_url}/chat/completions");
        let shown = redact_url(&url);
        let body = json!({
            "model": model,
            "messages": chat.messages,
            "max_tokens": chat.max_tokens,
        })
        .to_string();
        let mut builder = ureq::http::Request::builder()
            .method("POST")
            .uri(url.as_str())
            .header("content-type", "application/json")
            .header("accept", "application/json");
        if let Some(key) = api_key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = match builder.body(body.into_bytes()) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Fail {
                    class: "bad_request".into(),
                    message: format!(
                        "cannot build the request to {shown}: {}",
                        e.to_string().replace(url.as_str(), &shown)
                    ),
                    receipt: None,
                };
            }
        };
        let agent = self.agent.clone();
        let timeout = Duration::from_millis(task.timeout_ms.max(1));
        let now_ms = self.clock.now_ms();
        let provider_name = provider.clone();
        // The call and its settlement run together on the blocking thread, so the spend is
        // recorded even when this attempt is cancelled while the request is out.
        let sent = tokio::task::spawn_blocking(move || {
            let request = agent
                .configure_request(request)
                .timeout_global(Some(timeout))
                .build();
            let started = Instant::now();
            let answer = agent.run(request).map(|mut response| {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(ANSWER_MAX_BYTES)
                    .read_to_string();
                let (text, unreadable) = match body {
                    Ok(text) => (text, None),
                    Err(e) => (String::new(), Some(e.to_string())),
                };
                Answer {
                    status: response.status().as_u16(),
                    retry_after: response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after_ms(v, now_ms)),
                    text,
                    unreadable,
                }
            });
            let elapsed = started.elapsed();
            let parsed = answer
                .as_ref()
                .ok()
                .and_then(|a| serde_json::from_str::<Value>(&a.text).ok());
            let reported = parsed.as_ref().and_then(usage_of);
            let succeeded = answer
                .as_ref()
                .is_ok_and(|a| (200..300).contains(&a.status));
            let spend = match reported {
                Some((tokens_in, tokens_out)) => Spend {
                    tokens_in,
                    tokens_out,
                    usd_micros: cost_micros(tokens_in, tokens_out, in_price, out_price),
                },
                // Answered but said nothing of its usage: charge the worst case.
                None if succeeded => Spend {
                    usd_micros: reservation.micros(),
                    ..Spend::default()
                },
                None => Spend::default(),
            };
            if let Err(e) = reservation.settle_blocking(spend) {
                tracing::warn!(provider = %provider_name, error = %e, "cannot write the LLM cost ledger");
            }
            (answer, parsed, elapsed)
        })
        .await;
        let (answer, parsed, latency) = match sent {
            Ok(x) => x,
            Err(e) => {
                return Outcome::Retry {
                    class: "internal".into(),
                    message: format!("the LLM call thread failed: {e}"),
                    retry_after_ms: None,
                    receipt: None,
                };
            }
        };
        let latency_ms = latency.as_millis() as u64;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let class = match &e {
                    ureq::Error::Timeout(_) => "timeout",
                    ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => "connect",
                    ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => "timeout",
                    ureq::Error::Io(_) => "connect",
                    _ => "transport",
                };
                return Outcome::Retry {
                    class: class.into(),
                    message: format!(
                        "POST {shown}: {}",
                        e.to_string().replace(url.as_str(), &shown)
                    ),
                    retry_after_ms: None,
                    receipt: Some(Receipt {
                        status: None,
                        latency_ms,
                        body_head: String::new(),
                    }),
                };
            }
        };
        let status = answer.status;
        let receipt = Some(Receipt {
            status: Some(status),
            latency_ms,
            body_head: cut(&answer.text, RECEIPT_BYTES),
        });
        match status {
            200..=299 => match parsed.as_ref().and_then(content_of) {
                Some(content) => {
                    let (result, form) =
                        super::answer::keep(content.into_bytes(), false, self.result_max);
                    Outcome::Succeeded {
                        result: Some(result),
                        form,
                        receipt,
                    }
                }
                None => Outcome::Retry {
                    class: "bad_response".into(),
                    message: match &answer.unreadable {
                        Some(why) => format!(
                            "POST {shown} answered {status} with a body that cannot be read: {why}"
                        ),
                        None => format!(
                            "POST {shown} answered {status} without choices[0].message: {}",
                            cut(answer.text.trim(), 300)
                        ),
                    },
                    retry_after_ms: None,
                    receipt,
                },
            },
            408 | 429 | 500..=599 => Outcome::Retry {
                class: match status {
                    408 => "http_408".into(),
                    429 => "http_429".into(),
                    _ => "http_5xx".into(),
                },
                message: format!(
                    "POST {shown} answered {status}: {}",
                    error_text(parsed.as_ref(), &answer.text)
                ),
                retry_after_ms: answer.retry_after,
                receipt,
            },
            _ => Outcome::Fail {
                class: if (400..500).contains(&status) {
                    "http_4xx".into()
                } else {
                    format!("http_{status}")
                },
                message: format!(
                    "POST {shown} answered {status}: {}",
                    error_text(parsed.as_ref(), &answer.text)
                ),
                receipt,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_messages_are_accepted_and_max_tokens_capped() {
        let chat = parse_payload(r#"{"prompt": "hi"}"#, 100, 500).unwrap();
        assert_eq!(
            chat.messages,
            vec![json!({"role": "user", "content": "hi"})]
        );
        assert_eq!(chat.max_tokens, 100);
        let chat = parse_payload(
            r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "max_tokens": 9999}"#,
            100,
            500,
        )
        .unwrap();
        assert_eq!(chat.messages.len(), 2);
        assert_eq!(chat.max_tokens, 500, "capped");
        let chat = parse_payload(r#"{"prompt": "hi", "max_tokens": 7}"#, 100, 500).unwrap();
        assert_eq!(chat.max_tokens, 7);
    }

    #[test]
    fn bad_payloads_say_what_is_wrong() {
        for (payload, expected) in [
            ("nope", "not JSON"),
            ("[1]", "must be an object"),
            ("{}", "needs `prompt`"),
            (r#"{"prompt": ""}"#, "non-empty string"),
            (r#"{"prompt": 3}"#, "non-empty string"),
            (r#"{"messages": []}"#, "must not be empty"),
            (r#"{"messages": "x"}"#, "must be an array"),
            (r#"{"messages": [{"content": "x"}]}"#, "messages[0]"),
            (r#"{"prompt": "a", "messages": []}"#, "not both"),
            (r#"{"prompt": "a", "max_tokens": 0}"#, "positive integer"),
            (r#"{"prompt": "a", "max_tokens": "9"}"#, "positive integer"),
        ] {
            let err = parse_payload(payload, 10, 10).unwrap_err();
            assert!(err.contains(expected), "{payload}: {err}");
        }
    }

    #[test]
    fn answers_give_content_usage_and_errors() {
        let answer = json!({
            "choices": [{"message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        });
        assert_eq!(content_of(&answer).as_deref(), Some("hello"));
        assert_eq!(usage_of(&answer), Some((12, 3)));
        assert_eq!(usage_of(&json!({"choices": []})), None);
        assert_eq!(content_of(&json!({"choices": []})), None);
        let tool = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": []}}]});
        assert!(content_of(&tool).unwrap().contains("tool_calls"));
        let err = json!({"error": {"message": "bad model", "type": "invalid_request_error"}});
        assert_eq!(error_text(Some(&err), "raw"), "bad model");
        assert_eq!(error_text(None, " raw text "), "raw text");
    }
}
