//! Handler snapshots: how a task runs, copied from the configuration when it is enqueued so that
//! later configuration changes never alter it. The queue keeps a snapshot as an opaque record
//! in the task ([`crate::queue::Snapshot`]); this room takes it ([`Snapshots`], wired into the
//! queue at assembly), reads it back ([`HandlerSnapshot::of`]) and runs it. Its secrets are
//! stored sealed ([`HandlerSnapshot::sealed`], see [`super::seal`]) and unsealed only for the
//! executor about to use them ([`HandlerSnapshot::unsealed`]).

use std::convert::Infallible;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::seal::Sealer;
use crate::config::{CircuitScope, Config, HandlerConfig};
use crate::queue::{Handlers, Handling, Queue, QueueError, Snapshot, Task};
use crate::store::StoreError;
use crate::store::codec::Record;

/// How a task is executed, as snapshotted at enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandlerSnapshot {
    /// Send the payload over HTTP.
    Http {
        /// Target URL.
        url: String,
        /// Method.
        method: String,
        /// Bearer token.
        token: Option<String>,
        /// Standard Webhooks signing secret.
        signing_secret: Option<String>,
        /// Requests in flight to the host at once.
        target_concurrency: u32,
    },
    /// Run a local program.
    Command {
        /// Program path.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Working directory.
        working_dir: Option<String>,
        /// Environment variables passed through.
        env_allow: Vec<String>,
    },
    /// Ask an OpenAI-compatible chat-completions endpoint, within the provider's daily budget.
    Llm {
        /// Provider name (budget, ledger and circuit target `llm:<provider>`).
        provider: String,
        /// Base URL; the request goes to `<base_url>/chat/completions`.
        base_url: String,
        /// Bearer API key.
        api_key: Option<String>,
        /// Model name.
        model: String,
        /// `max_tokens` when the payload gives none.
        default_max_tokens: u32,
        /// The provider's cap on `max_tokens`.
        max_tokens_cap: u32,
        /// Price of one prompt token, in nano-USD.
        input_nanos_per_token: u64,
        /// Price of one completion token, in nano-USD.
        output_nanos_per_token: u64,
        /// The provider's daily budget at enqueue (micro-USD), used only when the provider is no
        /// longer configured.
        daily_budget_micros: u64,
    },
    /// Run other handlers as ordered steps, checkpointing each finished step.
    Workflow {
        /// The steps, in order.
        steps: Vec<WorkflowStep>,
    },
}

impl Record for HandlerSnapshot {
    const VERSION: u8 = 1;
}

impl HandlerSnapshot {
    /// The handler snapshot stored in `task`.
    pub fn of(task: &Task) -> Result<HandlerSnapshot, StoreError> {
        task.handler.decode().map_err(|reason| StoreError::Corrupt {
            table: "handler snapshot of task".into(),
            key: task.id.to_string(),
            reason,
        })
    }

    /// The snapshot as the queue stores it.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot::encode(self)
    }

    /// The snapshot with every secret sealed by `sealer` (a workflow's steps included), as it
    /// is stored.
    pub fn sealed(&self, sealer: &Sealer) -> HandlerSnapshot {
        match map_secrets(self, &mut |s| Ok::<_, Infallible>(sealer.seal(s))) {
            Ok(sealed) => sealed,
            Err(never) => match never {},
        }
    }

    /// The snapshot with every secret unsealed by `sealer`, for the executor about to use it.
    /// The error names no secret.
    pub fn unsealed(&self, sealer: &Sealer) -> Result<HandlerSnapshot, String> {
        map_secrets(self, &mut |s| sealer.unseal(s)).map_err(|_| {
            "a secret of the task's handler snapshot does not unseal with this keel's snapshot key \
             (the data dir's snapshot-key file was replaced, or the record was altered)"
                .to_string()
        })
    }
}

/// `handler` with `f` applied to each of its secrets.
fn map_secrets<E>(
    handler: &HandlerSnapshot,
    f: &mut impl FnMut(&str) -> Result<String, E>,
) -> Result<HandlerSnapshot, E> {
    let mut mapped = handler.clone();
    match &mut mapped {
        HandlerSnapshot::Http {
            token,
            signing_secret,
            ..
        } => {
            map_secret(token, f)?;
            map_secret(signing_secret, f)?;
        }
        HandlerSnapshot::Llm { api_key, .. } => map_secret(api_key, f)?,
        HandlerSnapshot::Command { .. } => {}
        HandlerSnapshot::Workflow { steps } => {
            for step in steps {
                step.handler = map_secrets(&step.handler, f)?;
            }
        }
    }
    Ok(mapped)
}

/// `value`'s secret, when it holds one, replaced by what `f` makes of it.
fn map_secret<E>(
    value: &mut Option<String>,
    f: &mut impl FnMut(&str) -> Result<String, E>,
) -> Result<(), E> {
    if let Some(secret) = value {
        *secret = f(secret)?;
    }
    Ok(())
}

/// The stored snapshot with its plaintext secrets sealed, or `None` when it holds none (or is
/// not a readable handler snapshot, which the executor reports when it runs).
fn reseal(sealer: &Sealer, stored: &Snapshot) -> Option<Snapshot> {
    let handler: HandlerSnapshot = stored.decode().ok()?;
    let sealed = handler.sealed(sealer);
    (sealed != handler).then(|| sealed.to_snapshot())
}

/// Seals the plaintext secrets that stored task records still hold (records written before
/// snapshots were sealed), so that neither the database nor its backups carry them in clear.
/// Returns how many records were rewritten.
pub async fn reseal_stored_snapshots(
    queue: &Queue,
    sealer: &Arc<Sealer>,
) -> Result<u64, QueueError> {
    let sealer = Arc::clone(sealer);
    queue
        .rewrite_snapshots(
            "seal snapshot secrets",
            Arc::new(move |stored| reseal(&sealer, stored)),
        )
        .await
}

/// One step of a workflow, snapshotted at enqueue like any handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStep {
    /// Step name (`{{steps.<name>.result}}`).
    pub name: String,
    /// The task type whose handler runs it.
    pub handler_type: String,
    /// How it runs (never a workflow).
    pub handler: HandlerSnapshot,
    /// Its circuit breaker target.
    pub target: String,
    /// Time allowed for the step, from its handler.
    pub timeout_ms: u64,
    /// The payload template as JSON text; `None` sends the workflow's payload.
    pub payload_template: Option<String>,
}

/// An HTTP target given by the caller instead of a configured handler (cycle dispatch
/// endpoints); it is snapshotted into the task like any handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Target URL.
    pub url: String,
    /// Method.
    pub method: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Standard Webhooks signing secret.
    pub signing_secret: Option<String>,
    /// Time allowed per attempt, in seconds.
    pub timeout_seconds: u64,
    /// Requests in flight to the host at once.
    pub target_concurrency: u32,
    /// The circuit breaker in front of it (see [`http_circuit_target`]).
    pub circuit_target: String,
}

impl HttpTarget {
    /// How a task sent to this target runs, for [`crate::queue::Queue::prepare`], its
    /// secrets sealed by `sealer`.
    pub fn handling(&self, sealer: &Sealer) -> Handling {
        Handling {
            snapshot: HandlerSnapshot::Http {
                url: self.url.clone(),
                method: self.method.clone(),
                token: self.token.as_deref().map(|t| sealer.seal(t)),
                signing_secret: self.signing_secret.as_deref().map(|s| sealer.seal(s)),
                target_concurrency: self.target_concurrency,
            }
            .to_snapshot(),
            target: self.circuit_target.clone(),
            timeout_s: self.timeout_seconds,
            max_attempts: None,
        }
    }
}

/// The circuit breaker target of an http handler or dispatch endpoint: its own
/// (`<owner_kind>:<owner>`, e.g. `handler:notify`, `dispatch:crm`) or its URL host's
/// (`http:<host>`).
pub fn http_circuit_target(
    scope: CircuitScope,
    owner_kind: &str,
    owner: &str,
    url: &str,
) -> String {
    match scope {
        CircuitScope::PerHandler => format!("{owner_kind}:{owner}"),
        CircuitScope::PerHost => format!("http:{}", url_host(url)),
    }
}

/// The host of an http(s) URL, for circuit and concurrency targets.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_ascii_lowercase()
}

/// A handler snapshot with its circuit target, timeout and attempts, before it is stored.
struct Resolved {
    handler: HandlerSnapshot,
    target: String,
    timeout_s: u64,
    max_attempts: Option<u32>,
}

/// Takes handler snapshots from the configuration for the queue, their secrets sealed.
pub struct Snapshots {
    config: Arc<Config>,
    sealer: Arc<Sealer>,
}

impl Snapshots {
    /// Snapshots of the handlers in `config`, sealed by `sealer`.
    pub fn new(config: Arc<Config>, sealer: Arc<Sealer>) -> Self {
        Snapshots { config, sealer }
    }

    /// The handler snapshot and circuit target for a task type.
    fn resolve_type(&self, task_type: &str) -> Result<Resolved, String> {
        let handler = self.config.handlers.get(task_type).ok_or_else(|| {
            let known: Vec<&str> = self.config.handlers.keys().map(String::as_str).collect();
            format!(
                "type: no handler is configured for task type `{task_type}` (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        Ok(match handler {
            HandlerConfig::Http(h) => Resolved {
                handler: HandlerSnapshot::Http {
                    url: h.url.clone(),
                    method: h.method.clone(),
                    token: h.token.as_ref().map(|t| t.expose().to_string()),
                    signing_secret: h.signing_secret.as_ref().map(|t| t.expose().to_string()),
                    target_concurrency: h.target_concurrency as u32,
                },
                target: http_circuit_target(h.circuit, "handler", task_type, &h.url),
                timeout_s: h.timeout_seconds,
                max_attempts: h.max_attempts,
            },
            HandlerConfig::Command(c) => Resolved {
                handler: HandlerSnapshot::Command {
                    program: c.program.display().to_string(),
                    args: c.args.clone(),
                    working_dir: c.working_dir.as_ref().map(|p| p.display().to_string()),
                    env_allow: c.env_allow.clone(),
                },
                target: format!("command:{task_type}"),
                timeout_s: c.timeout_seconds,
                max_attempts: c.max_attempts,
            },
            HandlerConfig::Llm(l) => {
                let provider = self.config.llm.providers.get(&l.provider).ok_or_else(|| {
                    format!(
                        "type: the handler of `{task_type}` names LLM provider `{}`, which is not configured",
                        l.provider
                    )
                })?;
                Resolved {
                    handler: HandlerSnapshot::Llm {
                        provider: l.provider.clone(),
                        base_url: provider.base_url.trim().trim_end_matches('/').to_string(),
                        api_key: provider.api_key.as_ref().map(|k| k.expose().to_string()),
                        model: provider.model.clone(),
                        default_max_tokens: l
                            .max_tokens
                            .unwrap_or(provider.max_tokens)
                            .min(provider.max_tokens),
                        max_tokens_cap: provider.max_tokens,
                        input_nanos_per_token: provider.input_nanos_per_token(),
                        output_nanos_per_token: provider.output_nanos_per_token(),
                        daily_budget_micros: provider.daily_budget_micros(),
                    },
                    target: format!("llm:{}", l.provider),
                    timeout_s: l.timeout_seconds,
                    max_attempts: l.max_attempts,
                }
            }
            HandlerConfig::Workflow(w) => {
                let mut steps = Vec::with_capacity(w.steps.len());
                for step in &w.steps {
                    let resolved = self.resolve_type(&step.handler)?;
                    if matches!(resolved.handler, HandlerSnapshot::Workflow { .. }) {
                        return Err(format!(
                            "type: step `{}` of `{task_type}` runs another workflow",
                            step.name
                        ));
                    }
                    steps.push(WorkflowStep {
                        name: step.name.clone(),
                        handler_type: step.handler.clone(),
                        handler: resolved.handler,
                        target: resolved.target,
                        timeout_ms: resolved.timeout_s * 1000,
                        payload_template: step.payload.as_ref().map(|v| v.to_string()),
                    });
                }
                Resolved {
                    handler: HandlerSnapshot::Workflow { steps },
                    target: format!("workflow:{task_type}"),
                    timeout_s: w.timeout_seconds,
                    max_attempts: w.max_attempts,
                }
            }
        })
    }
}

impl Handlers for Snapshots {
    fn resolve(&self, task_type: &str) -> Result<Handling, String> {
        let resolved = self.resolve_type(task_type)?;
        Ok(Handling {
            snapshot: resolved.handler.sealed(&self.sealer).to_snapshot(),
            target: resolved.target,
            timeout_s: resolved.timeout_s,
            max_attempts: resolved.max_attempts,
        })
    }

    fn split_inline<'a>(&self, bytes: &'a [u8]) -> Result<(Snapshot, &'a [u8]), String> {
        // Version-1 task records hold the snapshot's postcard body inline, without a version.
        let (handler, rest) =
            postcard::take_from_bytes::<HandlerSnapshot>(bytes).map_err(|e| e.to_string())?;
        Ok((handler.to_snapshot(), rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::seal::is_sealed;

    #[test]
    fn hosts_are_extracted() {
        assert_eq!(
            url_host("https://User:pw@Example.com:8443/x?y"),
            "example.com:8443"
        );
        assert_eq!(url_host("http://127.0.0.1:9/hook"), "127.0.0.1:9");
    }

    #[test]
    fn snapshots_round_trip_through_the_task() {
        let handler = HandlerSnapshot::Command {
            program: "/bin/true".into(),
            args: vec!["a".into()],
            working_dir: None,
            env_allow: Vec::new(),
        };
        let snapshot = handler.to_snapshot();
        assert_eq!(snapshot.decode::<HandlerSnapshot>().unwrap(), handler);
        assert!(
            Snapshot::from_bytes(vec![9, 0])
                .decode::<HandlerSnapshot>()
                .is_err()
        );
    }

    fn http(token: &str, signing_secret: &str) -> HandlerSnapshot {
        HandlerSnapshot::Http {
            url: "http://127.0.0.1:9/hook".into(),
            method: "POST".into(),
            token: Some(token.into()),
            signing_secret: Some(signing_secret.into()),
            target_concurrency: 4,
        }
    }

    fn workflow_with(step: HandlerSnapshot) -> HandlerSnapshot {
        HandlerSnapshot::Workflow {
            steps: vec![WorkflowStep {
                name: "notify".into(),
                handler_type: "hook".into(),
                handler: step,
                target: "http:127.0.0.1:9".into(),
                timeout_ms: 30_000,
                payload_template: None,
            }],
        }
    }

    fn secrets(handler: &HandlerSnapshot) -> Vec<String> {
        match handler {
            HandlerSnapshot::Http {
                token,
                signing_secret,
                ..
            } => token.iter().chain(signing_secret).cloned().collect(),
            HandlerSnapshot::Llm { api_key, .. } => api_key.iter().cloned().collect(),
            HandlerSnapshot::Command { .. } => Vec::new(),
            HandlerSnapshot::Workflow { steps } => {
                steps.iter().flat_map(|s| secrets(&s.handler)).collect()
            }
        }
    }

    #[test]
    fn every_secret_of_a_snapshot_is_sealed_workflow_steps_included() {
        let sealer = Sealer::from_key([2; 32]);
        let plain = workflow_with(http("tok-a", "whsec_b"));
        let sealed = plain.sealed(&sealer);
        let held = secrets(&sealed);
        assert_eq!(held.len(), 2);
        assert!(held.iter().all(|s| is_sealed(s)), "{held:?}");
        assert_eq!(sealed.unsealed(&sealer).unwrap(), plain);
    }

    #[test]
    fn a_stored_plaintext_snapshot_is_resealed_and_a_sealed_one_left_alone() {
        let sealer = Sealer::from_key([3; 32]);
        let plain = http("tok-SECRET-1234567", "whsec_x");
        let resealed =
            reseal(&sealer, &plain.to_snapshot()).expect("a plaintext record is rewritten");
        let handler: HandlerSnapshot = resealed.decode().unwrap();
        assert!(secrets(&handler).iter().all(|s| is_sealed(s)));
        assert_eq!(handler.unsealed(&sealer).unwrap(), plain);
        assert!(reseal(&sealer, &resealed).is_none(), "already sealed");
        let command = HandlerSnapshot::Command {
            program: "/bin/true".into(),
            args: Vec::new(),
            working_dir: None,
            env_allow: Vec::new(),
        };
        assert!(
            reseal(&sealer, &command.to_snapshot()).is_none(),
            "no secrets"
        );
    }

    #[test]
    fn an_unsealable_snapshot_fails_without_naming_the_secret() {
        let sealed = Sealer::from_key([4; 32]).seal("tok-SECRET-1234567");
        let message = http(&sealed, "whsec_plain")
            .unsealed(&Sealer::from_key([5; 32]))
            .unwrap_err();
        assert!(message.contains("snapshot-key"), "{message}");
        assert!(!message.contains("SECRET") && !message.contains("whsec_plain"));
    }
}
