//! The http executor: POSTs a task's payload as JSON through ureq on the blocking pool, with a
//! per-host concurrency cap, a bearer token, Standard Webhooks signature headers (`webhook-id`
//! stable across retries), a timeout and no redirects; classifies the answer and keeps a
//! receipt of it, and of a 2xx answer at most `queue.result_max_bytes` ([`answer`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::answer;
use super::snapshot::{HandlerSnapshot, url_host};
use crate::clock::SharedClock;
use crate::config::redact_url;
use crate::queue::{Outcome, Receipt, ResultForm, Task};

/// Bytes of an answer kept in a receipt.
const RECEIPT_BYTES: usize = 1024;

/// Signs `id.timestamp.body` with a Standard Webhooks secret (`whsec_` + base64 key):
/// `v1,<base64 HMAC-SHA256>`.
pub fn standard_webhooks_signature(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Sends tasks over HTTP.
pub struct HttpExecutor {
    agent: ureq::Agent,
    clock: SharedClock,
    result_max: usize,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Parses `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.timestamp_millis() - now_ms).max(0) as u64)
}

impl HttpExecutor {
    /// An executor keeping results up to `result_max` bytes.
    pub fn new(clock: SharedClock, result_max: usize) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpExecutor {
            agent,
            clock,
            result_max,
            per_host: Mutex::new(HashMap::new()),
        }
    }

    fn host_permits(&self, host: &str, cap: u32) -> Arc<Semaphore> {
        let mut map = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(cap.max(1) as usize))),
        )
    }

    /// Delivers one attempt of `task`, whose handler is `handler`.
    pub async fn run(&self, task: &Task, handler: &HandlerSnapshot) -> Outcome {
        let HandlerSnapshot::Http {
            url,
            method,
            token,
            signing_secret,
            target_concurrency,
        } = handler
        else {
            return Outcome::Fail {
                class: "handler_mismatch".into(),
                message: "the http executor got a task of another kind".into(),
                receipt: None,
            };
        };
        let permits = self.host_permits(&url_host(url), *target_concurrency);
        let Ok(_permit) = permits.acquire_owned().await else {
            return Outcome::Interrupted;
        };
        let webhook_id = task.webhook_id();
        let timestamp = self.clock.now_ms() / 1000;
        let body = task.payload.clone().into_bytes();
        let mut builder = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(url.as_str())
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "idempotency-key",
                task.idempotency_key.as_deref().unwrap_or(&webhook_id),
            );
        if let Some(secret) = signing_secret
            && let Some(signature) =
                standard_webhooks_signature(secret, &webhook_id, timestamp, &body)
        {
            builder = builder.header("webhook-signature", signature);
        }
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = match builder.body(body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Fail {
                    class: "bad_request".into(),
                    message: format!("cannot build the request: {e}"),
                    receipt: None,
                };
            }
        };
        let agent = self.agent.clone();
        let timeout = Duration::from_millis(task.timeout_ms.max(1));
        let now_ms = self.clock.now_ms();
        let result_max = self.result_max;
        let sent = tokio::task::spawn_blocking(move || {
            let request = agent
                .configure_request(request)
                .timeout_global(Some(timeout))
                .build();
            let started = Instant::now();
            let answer = agent.run(request).map(|mut response| {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after_ms(v, now_ms));
                let (body, partial) =
                    answer::read_capped(response.body_mut().as_reader(), result_max);
                (status, retry_after, body, partial)
            });
            (answer, started.elapsed())
        })
        .await;
        let (answer, latency) = match sent {
            Ok(x) => x,
            Err(e) => {
                return Outcome::Retry {
                    class: "internal".into(),
                    message: format!("the delivery thread failed: {e}"),
                    retry_after_ms: None,
                    receipt: None,
                };
            }
        };
        let latency_ms = latency.as_millis() as u64;
        let shown = redact_url(url);
        match answer {
            Ok((status, retry_after, body, partial)) => {
                let receipt = Some(Receipt {
                    status: Some(status),
                    latency_ms,
                    body_head: answer::cut(&String::from_utf8_lossy(&body), RECEIPT_BYTES),
                });
                match status {
                    200..=299 if body.is_empty() => Outcome::Succeeded {
                        result: None,
                        form: ResultForm::default(),
                        receipt,
                    },
                    200..=299 => {
                        let (result, form) = answer::keep(body, partial, result_max);
                        Outcome::Succeeded {
                            result: Some(result),
                            form,
                            receipt,
                        }
                    }
                    408 | 429 | 500..=599 => Outcome::Retry {
                        class: match status {
                            408 => "http_408".into(),
                            429 => "http_429".into(),
                            _ => "http_5xx".into(),
                        },
                        message: format!("{method} {shown} answered {status}"),
                        retry_after_ms: retry_after,
                        receipt,
                    },
                    _ => Outcome::Fail {
                        class: if (400..500).contains(&status) {
                            "http_4xx".into()
                        } else {
                            format!("http_{status}")
                        },
                        message: format!("{method} {shown} answered {status}"),
                        receipt,
                    },
                }
            }
            Err(e) => {
                let class = match &e {
                    ureq::Error::Timeout(_) => "timeout",
                    ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => "connect",
                    ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => "timeout",
                    ureq::Error::Io(_) => "connect",
                    _ => "transport",
                };
                Outcome::Retry {
                    class: class.into(),
                    message: format!(
                        "{method} {shown}: {}",
                        e.to_string().replace(url.as_str(), &shown)
                    ),
                    retry_after_ms: None,
                    receipt: Some(Receipt {
                        status: None,
                        latency_ms,
                        body_head: String::new(),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vectors() {
        assert_eq!(
            standard_webhooks_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            standard_webhooks_signature(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            )
            .unwrap(),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(retry_after_ms("120", 0), Some(120_000));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(retry_after_ms("soon", now), None);
    }
}
