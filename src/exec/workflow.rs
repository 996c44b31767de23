//! The workflow executor: runs a workflow task's steps in order, each with the same executor
//! code a standalone task of the step's handler uses (http, command, llm), and checkpoints every
//! finished step's result durably before the next step starts, so a retry of the task (after a
//! failure or a crash) resumes at the step that did not finish and never repeats a finished one.
//!
//! - A step's `Retry` retries the workflow task (which then resumes at that step); its `Fail`
//!   fails the workflow (dead); a `Defer` (open circuit, spent LLM budget) defers it; the
//!   workflow's result is the last step's result.
//! - The task's timeout covers one run of the whole workflow (steps restored from checkpoints
//!   take no time); past it the task fails with error class `timeout` (dead, not retried).
//! - Each step's handler was snapshotted at enqueue (see [`super::WorkflowStep`]), so
//!   configuration changes never alter a queued workflow.
//! - A task's checkpoints are deleted with the task ([`CheckpointCleanup`], told by the queue in
//!   the transaction that deletes it).
//! - An http step is delivered with its own `webhook-id`, derived from the task id and the step
//!   index: stable across retries, distinct between steps.
//!
//! Payload templates are JSON; placeholders are substituted in string values only, after
//! parsing, so a substituted value can never break the JSON:
//! - a string that is exactly one placeholder (`"{{steps.fetch.result}}"`) becomes that value
//!   as JSON: `{{payload...}}` as it is in the payload; a step result that parses as JSON as
//!   that JSON, any other result as a string (trailing newlines removed), an empty result as
//!   `null`;
//! - inside a longer string the value is inserted as text (strings as they are, other JSON
//!   compact).
//!
//! Placeholders: `{{payload}}`, `{{payload.<field>[.<field>…]}}` (array elements by index) and
//! `{{steps.<name>.result}}` of an earlier step. A step without a template gets the workflow's
//! payload.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redb::WriteTransaction;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

pub use super::model::StepCheckpoint;
use super::snapshot::{HandlerSnapshot, WorkflowStep};
use super::tables::{ReadTables, ReadableTables, Tables};
use crate::clock::SharedClock;
use crate::queue::{Outcome, Queue, ResultForm, Task, TaskRemoval};
use crate::store::{Store, StoreError};
use crate::template::{Piece, pieces};
pub use crate::template::{Placeholder, template_placeholders};

fn trim_result(text: &str) -> &str {
    text.trim_end_matches(['\n', '\r'])
}

fn lookup<'a>(payload: &'a Value, path: &[String]) -> Result<&'a Value, String> {
    let mut at = payload;
    for (i, field) in path.iter().enumerate() {
        let next = match at {
            Value::Object(map) => map.get(field),
            Value::Array(items) => field.parse::<usize>().ok().and_then(|n| items.get(n)),
            _ => None,
        };
        at = next.ok_or_else(|| format!("the payload has no field `{}`", path[..=i].join(".")))?;
    }
    Ok(at)
}

fn value_of(
    hole: &Placeholder,
    payload: &Value,
    results: &HashMap<String, Option<String>>,
) -> Result<Value, String> {
    match hole {
        Placeholder::Payload(path) => lookup(payload, path).cloned(),
        Placeholder::StepResult(name) => match results.get(name) {
            None => Err(format!("no result of step `{name}` yet")),
            Some(None) => Ok(Value::Null),
            Some(Some(text)) => {
                let text = trim_result(text);
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
            }
        },
    }
}

fn text_of(
    hole: &Placeholder,
    payload: &Value,
    results: &HashMap<String, Option<String>>,
) -> Result<String, String> {
    match hole {
        Placeholder::Payload(path) => Ok(match lookup(payload, path)? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        Placeholder::StepResult(name) => match results.get(name) {
            None => Err(format!("no result of step `{name}` yet")),
            Some(result) => Ok(trim_result(result.as_deref().unwrap_or("")).to_string()),
        },
    }
}

/// Fills a payload template with the workflow's payload and earlier steps' results.
pub fn render(
    template: &Value,
    payload: &Value,
    results: &HashMap<String, Option<String>>,
) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => {
            let parts = pieces(s)?;
            match parts.as_slice() {
                [Piece::Hole(hole)] => value_of(hole, payload, results)?,
                _ => {
                    let mut out = String::with_capacity(s.len());
                    for part in &parts {
                        match part {
                            Piece::Text(t) => out.push_str(t),
                            Piece::Hole(h) => out.push_str(&text_of(h, payload, results)?),
                        }
                    }
                    Value::String(out)
                }
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, payload, results))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, payload, results)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The checkpointed steps of a workflow task, by step index.
pub async fn checkpoints(
    store: &Arc<Store>,
    task: Uuid,
) -> Result<BTreeMap<u32, StepCheckpoint>, StoreError> {
    store
        .read(move |tx| ReadTables::open(tx)?.step_checkpoints(task))
        .await
}

/// Deletes the step checkpoints of tasks the queue deletes, in the same transaction.
pub struct CheckpointCleanup;

impl TaskRemoval for CheckpointCleanup {
    fn tasks_removed(&self, tx: &WriteTransaction, ids: &[Uuid]) -> Result<(), StoreError> {
        Tables::open(tx)?.remove_checkpoints(ids)
    }
}

/// The stable id an http step is delivered under (its `webhook-id`).
pub fn step_delivery_id(task: Uuid, index: usize) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"keel workflow step\0");
    hasher.update(task.as_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Runs one step the way a standalone task of its handler runs (behind its circuit breaker).
pub trait StepRunner: Send + Sync {
    /// Runs `step` (a view of the workflow task with the step's target and payload) with the
    /// step's `handler`.
    fn run_step<'a>(
        &'a self,
        step: &'a Task,
        handler: &'a HandlerSnapshot,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
}

/// Runs workflow tasks.
pub struct WorkflowExecutor {
    store: Arc<Store>,
    queue: Arc<Queue>,
    clock: SharedClock,
}

fn prefixed(label: &str, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Retry {
            class,
            message,
            retry_after_ms,
            receipt,
        } => Outcome::Retry {
            class,
            message: format!("{label}: {message}"),
            retry_after_ms,
            receipt,
        },
        Outcome::Fail {
            class,
            message,
            receipt,
        } => Outcome::Fail {
            class,
            message: format!("{label}: {message}"),
            receipt,
        },
        Outcome::Defer {
            class,
            reason,
            until,
        } => Outcome::Defer {
            class,
            reason: format!("{label}: {reason}"),
            until,
        },
        other => other,
    }
}

impl WorkflowExecutor {
    /// An executor checkpointing into `store` and logging to the tasks' logs through `queue`.
    pub fn new(store: Arc<Store>, queue: Arc<Queue>, clock: SharedClock) -> Self {
        WorkflowExecutor {
            store,
            queue,
            clock,
        }
    }

    async fn log(&self, task: Uuid, line: String) {
        if let Err(e) = self.queue.append_logs(task, vec![line]).await {
            tracing::debug!(task = %task, error = %e, "cannot append a workflow log line");
        }
    }

    /// Runs one attempt of workflow `task` (whose handler is `handler`), its steps through
    /// `runner`.
    pub async fn run(
        &self,
        task: &Task,
        handler: &HandlerSnapshot,
        runner: &dyn StepRunner,
    ) -> Outcome {
        let HandlerSnapshot::Workflow { steps } = handler else {
            return Outcome::Fail {
                class: "handler_mismatch".into(),
                message: "the workflow executor got a task of another kind".into(),
                receipt: None,
            };
        };
        let timeout = Duration::from_millis(task.timeout_ms.max(1));
        let deadline = Instant::now() + timeout;
        let current = AtomicUsize::new(0);
        match tokio::time::timeout(
            timeout,
            self.run_steps(task, steps, runner, deadline, &current),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => {
                let i = current.load(Ordering::SeqCst);
                let name = steps.get(i).map_or("?", |s| s.name.as_str());
                let message = format!(
                    "the workflow ran longer than its timeout of {}s; step {}/{} ({name}) was stopped",
                    timeout.as_secs_f64(),
                    i + 1,
                    steps.len()
                );
                self.log(task.id, message.clone()).await;
                Outcome::Fail {
                    class: "timeout".into(),
                    message,
                    receipt: None,
                }
            }
        }
    }

    async fn run_steps(
        &self,
        task: &Task,
        steps: &[WorkflowStep],
        runner: &dyn StepRunner,
        deadline: Instant,
        current: &AtomicUsize,
    ) -> Outcome {
        let payload: Value = serde_json::from_str(&task.payload).unwrap_or(Value::Null);
        let done = match checkpoints(&self.store, task.id).await {
            Ok(done) => done,
            Err(e) => {
                return Outcome::Retry {
                    class: "internal".into(),
                    message: format!("cannot read the workflow's checkpoints: {e}"),
                    retry_after_ms: None,
                    receipt: None,
                };
            }
        };
        let attempt = task.attempts.len() as u32;
        let mut results: HashMap<String, Option<String>> = HashMap::new();
        let mut last = (None, None, ResultForm::default());
        for (i, step) in steps.iter().enumerate() {
            current.store(i, Ordering::SeqCst);
            let label = format!("step {}/{} ({})", i + 1, steps.len(), step.name);
            if let Some(checkpoint) = done.get(&(i as u32)) {
                self.log(
                    task.id,
                    format!(
                        "{label}: finished in attempt {}; not run again",
                        checkpoint.attempt
                    ),
                )
                .await;
                results.insert(step.name.clone(), checkpoint.result.clone());
                last = (checkpoint.result.clone(), None, ResultForm::default());
                continue;
            }
            let step_payload = match &step.payload_template {
                None => task.payload.clone(),
                Some(template) => match serde_json::from_str::<Value>(template)
                    .map_err(|e| format!("the payload template is not JSON: {e}"))
                    .and_then(|t| render(&t, &payload, &results))
                {
                    Ok(value) => value.to_string(),
                    Err(message) => {
                        return Outcome::Fail {
                            class: "template".into(),
                            message: format!("{label}: {message}"),
                            receipt: None,
                        };
                    }
                },
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let view = step_view(task, i, step, step_payload, remaining);
            self.log(task.id, format!("{label}: running ({})", step.handler_type))
                .await;
            match runner.run_step(&view, &step.handler).await {
                Outcome::Succeeded {
                    result,
                    form,
                    receipt,
                } => {
                    let checkpoint = StepCheckpoint {
                        name: step.name.clone(),
                        result: result.clone(),
                        finished_at: self.clock.now_ms(),
                        attempt,
                    };
                    let (id, index) = (task.id, i as u32);
                    let saved = self
                        .store
                        .write(move |tx| Tables::open(tx)?.put_checkpoint(id, index, &checkpoint))
                        .await;
                    if let Err(e) = saved {
                        return Outcome::Retry {
                            class: "internal".into(),
                            message: format!("{label}: cannot checkpoint its result: {e}"),
                            retry_after_ms: None,
                            receipt,
                        };
                    }
                    self.log(task.id, format!("{label}: succeeded")).await;
                    results.insert(step.name.clone(), result.clone());
                    last = (result, receipt, form);
                }
                other => {
                    let outcome = prefixed(&label, other);
                    let line = match &outcome {
                        Outcome::Retry { class, message, .. }
                        | Outcome::Fail { class, message, .. } => format!("{class}: {message}"),
                        Outcome::Defer { reason, .. } => format!("deferred: {reason}"),
                        Outcome::Cancelled => format!("{label}: cancelled"),
                        _ => format!("{label}: interrupted"),
                    };
                    self.log(task.id, line).await;
                    return outcome;
                }
            }
        }
        Outcome::Succeeded {
            result: last.0,
            receipt: last.1,
            form: last.2,
        }
    }
}

/// The workflow task as step `index` sees it: the step's handler, target and payload, a
/// timeout within what is left of the workflow's, and for http steps their own delivery id.
fn step_view(
    task: &Task,
    index: usize,
    step: &WorkflowStep,
    payload: String,
    remaining: Duration,
) -> Task {
    let mut view = task.clone();
    if matches!(step.handler, HandlerSnapshot::Http { .. }) {
        view.id = step_delivery_id(task.id, index);
    }
    view.task_type = step.handler_type.clone();
    view.handler = step.handler.to_snapshot();
    view.target = step.target.clone();
    view.payload = payload;
    // A little past the workflow's deadline, so the workflow's own timeout fires first.
    let left = remaining.as_millis() as u64 + 1000;
    view.timeout_ms = step.timeout_ms.min(left).max(1);
    view.idempotency_key = task
        .idempotency_key
        .as_ref()
        .map(|key| format!("{key}:{}", step.name));
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn placeholders_are_parsed_and_checked() {
        let t = json!({"a": "{{payload}}", "b": ["x {{ payload.user.name }} y"], "c": "{{steps.fetch.result}}", "d": 3});
        assert_eq!(
            template_placeholders(&t).unwrap(),
            vec![
                Placeholder::Payload(vec![]),
                Placeholder::Payload(vec!["user".into(), "name".into()]),
                Placeholder::StepResult("fetch".into()),
            ]
        );
        for (bad, expected) in [
            (json!("{{steps.fetch}}"), "unknown placeholder"),
            (json!("{{env.HOME}}"), "unknown placeholder"),
            (json!("{{payload..x}}"), "unknown placeholder"),
            (json!("{{payload"), "unclosed"),
            (json!({"{{payload}}": 1}), "not in the key"),
        ] {
            let err = template_placeholders(&bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn whole_string_placeholders_become_json_values() {
        let payload = json!({"n": 7, "user": {"name": "ada"}, "tags": ["a", "b"]});
        let r = results(&[
            ("json", Some("{\"ok\": true}\n")),
            ("text", Some("hello \"world\"\n")),
            ("empty", None),
        ]);
        let t = json!({
            "all": "{{payload}}", "n": "{{payload.n}}", "tag": "{{payload.tags.1}}",
            "json": "{{steps.json.result}}", "text": "{{steps.text.result}}",
            "empty": "{{steps.empty.result}}",
        });
        assert_eq!(
            render(&t, &payload, &r).unwrap(),
            json!({
                "all": payload, "n": 7, "tag": "b", "json": {"ok": true},
                "text": "hello \"world\"", "empty": null,
            })
        );
    }

    #[test]
    fn embedded_placeholders_are_text_and_stay_valid_json() {
        let payload = json!({"user": {"name": "a\"da"}, "n": 7});
        let r = results(&[("s", Some("line1\n\"quoted\"\\\n"))]);
        let t = json!({"msg": "hi {{payload.user.name}} #{{payload.n}}: {{steps.s.result}}!", "obj": "u={{payload.user}}"});
        let out = render(&t, &payload, &r).unwrap();
        assert_eq!(out["msg"], "hi a\"da #7: line1\n\"quoted\"\\!");
        assert_eq!(out["obj"], "u={\"name\":\"a\\\"da\"}");
        // Whatever went in, the output is JSON that parses back to the same value.
        let text = out.to_string();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), out);
    }

    #[test]
    fn missing_fields_and_steps_are_errors() {
        let err = render(&json!("{{payload.nope}}"), &json!({"a": 1}), &results(&[])).unwrap_err();
        assert!(err.contains("no field `nope`"), "{err}");
        let err = render(
            &json!("x {{steps.later.result}}"),
            &json!({}),
            &results(&[]),
        )
        .unwrap_err();
        assert!(err.contains("later"), "{err}");
    }

    #[test]
    fn step_delivery_ids_are_stable_and_distinct() {
        let id = Uuid::now_v7();
        assert_eq!(step_delivery_id(id, 1), step_delivery_id(id, 1));
        assert_ne!(step_delivery_id(id, 1), step_delivery_id(id, 2));
        assert_ne!(step_delivery_id(id, 0), id);
    }
}
