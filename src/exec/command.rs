//! The command executor: runs a local program (argv, no shell) in its own process group with a
//! working dir and an environment allowlist; the payload goes to stdin; exit 0 succeeds with
//! the tail of stdout as the result; stderr lines go to the task's log within its limits
//! ([`stderr`]). The whole process
//! group is killed on timeout, cancellation or shutdown; the program dies with keel, and its
//! group is recorded while it runs so that the next start kills what is left ([`orphans`]).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::orphans;
use super::snapshot::HandlerSnapshot;
use super::stderr::{self, LogLimits};
use crate::clock::SharedClock;
use crate::queue::{Outcome, Queue, Receipt, ResultForm, Task};
use crate::store::Store;

/// Kills a process group when dropped (the task's future was dropped or timed out).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg only sends a signal; a stale group id fails with ESRCH.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Runs tasks as local programs.
pub struct CommandExecutor {
    queue: Arc<Queue>,
    store: Arc<Store>,
    clock: SharedClock,
    result_max: usize,
    log_limits: LogLimits,
}

impl CommandExecutor {
    /// An executor that writes stderr lines through `queue` within `log_limits`, keeps
    /// `result_max` bytes of stdout, and records running process groups in `store`.
    pub fn new(
        queue: Arc<Queue>,
        store: Arc<Store>,
        clock: SharedClock,
        result_max: usize,
        log_limits: LogLimits,
    ) -> Self {
        CommandExecutor {
            queue,
            store,
            clock,
            result_max,
            log_limits,
        }
    }

    /// Runs one attempt of `task`, whose handler is `handler`.
    pub async fn run(&self, task: &Task, handler: &HandlerSnapshot) -> Outcome {
        let HandlerSnapshot::Command {
            program,
            args,
            working_dir,
            env_allow,
        } = handler
        else {
            return Outcome::Fail {
                class: "handler_mismatch".into(),
                message: "the command executor got a task of another kind".into(),
                receipt: None,
            };
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in env_allow {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.env("KEEL_TASK_ID", task.id.to_string());
        command.env("KEEL_TASK_ATTEMPT", task.attempts.len().to_string());
        if let Some(dir) = working_dir {
            command.current_dir(dir);
        }
        let keel = std::process::id() as libc::pid_t;
        // SAFETY: the hook only makes async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || orphans::die_with_parent(keel));
        }
        let started = Instant::now();
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Retry {
                    class: "spawn_failed".into(),
                    message: format!("cannot start {program}: {e}"),
                    retry_after_ms: None,
                    receipt: None,
                };
            }
        };
        let pgid = child.id().map(|pid| pid as i32);
        let _group = GroupGuard(pgid);
        let tracked = match pgid {
            Some(pgid) => match orphans::track(&self.store, &self.clock, task.id, pgid).await {
                Ok(tracked) => Some(tracked),
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "cannot record a running command's process group");
                    None
                }
            },
            None => None,
        };
        let mut stdin = child.stdin.take();
        let payload = task.payload.clone().into_bytes();
        let feed = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A program that does not read its stdin is fine.
                let _ = stdin.write_all(&payload).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let mut stdout = child.stdout.take();
        let result_max = self.result_max;
        let collect_stdout = async move {
            let mut tail: Vec<u8> = Vec::new();
            let mut cut = false;
            if let Some(out) = stdout.as_mut() {
                let mut buf = [0u8; 8192];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > result_max * 2 {
                        tail.drain(..tail.len() - result_max);
                        cut = true;
                    }
                }
            }
            if tail.len() > result_max {
                tail.drain(..tail.len() - result_max);
                cut = true;
            }
            (String::from_utf8_lossy(&tail).into_owned(), cut)
        };
        let stderr = child.stderr.take();
        let queue = Arc::clone(&self.queue);
        let (task_id, limits) = (task.id, self.log_limits);
        let forward_stderr = async move {
            if let Some(err) = stderr {
                stderr::forward(BufReader::new(err), queue, task_id, limits).await;
            }
        };
        let timeout = Duration::from_millis(task.timeout_ms.max(1));
        let run = async {
            let (_, (result, cut), _, status) =
                tokio::join!(feed, collect_stdout, forward_stderr, child.wait());
            (result, cut, status)
        };
        let run = async {
            let Some(tracked) = &tracked else {
                return run.await;
            };
            tokio::select! {
                ended = run => ended,
                never = tracked.keep_seen(&self.clock) => match never {},
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Outcome::Retry {
                class: "timeout".into(),
                message: format!(
                    "{program} ran longer than {}s and was killed",
                    timeout.as_secs()
                ),
                retry_after_ms: None,
                receipt: None,
            },
            Ok((result, _, Err(e))) => Outcome::Retry {
                class: "wait_failed".into(),
                message: format!("waiting for {program} failed: {e}"),
                retry_after_ms: None,
                receipt: Some(receipt(None, started, &result)),
            },
            Ok((result, cut, Ok(status))) if status.success() => Outcome::Succeeded {
                receipt: Some(receipt(Some(0), started, &result)),
                result: Some(result),
                form: ResultForm {
                    truncated: cut,
                    base64: false,
                },
            },
            Ok((result, _, Ok(status))) => Outcome::Retry {
                class: "exit_code".into(),
                message: match status.code() {
                    Some(code) => format!("{program} exited with code {code}"),
                    None => format!("{program} was killed by a signal"),
                },
                retry_after_ms: None,
                receipt: Some(receipt(status.code().map(|c| c as u16), started, &result)),
            },
        }
    }
}

fn receipt(code: Option<u16>, started: Instant, stdout: &str) -> Receipt {
    let mut head = stdout.to_string();
    if head.len() > 1024 {
        let mut end = 1024;
        while !head.is_char_boundary(end) {
            end -= 1;
        }
        head.truncate(end);
    }
    Receipt {
        status: code,
        latency_ms: started.elapsed().as_millis() as u64,
        body_head: head,
    }
}
