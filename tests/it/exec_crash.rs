//! Crash test of the command executor with the real `keel` binary: keel is SIGKILLed while a
//! command runs. The command's shell dies with keel; the `sleep` it left in its process group is
//! killed by the next start before the task runs again; the interrupted attempt ends when the
//! command last ran, not at the restart.

use std::path::Path;

use serde_json::json;

use crate::support::{KeelProcess, agent, call, poll_until, send};

/// Whether `pid` runs (a zombie waiting for its new parent to reap it does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_gone(what: &str, pid: i32) {
    poll_until(&format!("{what} (pid {pid}) to be gone"), || {
        if alive(pid) {
            Err("still alive".to_string())
        } else {
            Ok(())
        }
    });
}

/// The pids (background sleep, shell) an attempt wrote to `<dir>/pids.<attempt>`.
fn pids_of(dir: &Path, attempt: u32) -> (i32, i32) {
    let path = dir.join(format!("pids.{attempt}"));
    poll_until(&format!("{} to be written", path.display()), || {
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let pids: Vec<i32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
        match pids[..] {
            [sleep, shell] => Ok((sleep, shell)),
            _ => Err(format!("{pids:?}")),
        }
    })
}

fn spawn(data_dir: &Path, config: &Path) -> KeelProcess {
    KeelProcess::spawn(data_dir, &[("KEEL_CONFIG", config.to_str().unwrap())])
        .unwrap_or_else(|log| panic!("keel did not start:\n{log}"))
}

#[test]
fn kill9_during_a_command_leaves_nothing_running_and_the_task_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("keel.toml");
    // The shell starts a background sleep (same process group, no death signal of its own),
    // writes both pids, and waits.
    let script = r#"sleep 1000 & echo $! > "$0/pids.tmp"; echo $$ >> "$0/pids.tmp"; mv "$0/pids.tmp" "$0/pids.$KEEL_TASK_ATTEMPT"; wait"#;
    std::fs::write(
        &config,
        format!(
            "[shutdown]\ndrain_seconds = 1\n\n[handlers.sleeper]\nkind = \"command\"\n\
             program = \"/bin/sh\"\nargs = [\"-c\", {}, {}]\ntimeout_seconds = 600\n",
            toml::Value::from(script),
            toml::Value::from(work.to_str().unwrap()),
        ),
    )
    .unwrap();

    let first = spawn(&data_dir, &config);
    let admin = first.admin_key();
    let agent = agent();
    let r = send(
        &agent,
        &first.base,
        "POST",
        "/api/v1/tasks",
        &admin,
        Some(&json!({"type": "sleeper", "payload": {}})),
    )
    .expect("keel answers");
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (sleep, shell) = pids_of(&work, 1);
    assert!(alive(sleep) && alive(shell));

    first.kill9();
    wait_gone("the shell keel started, which dies with keel", shell);
    assert!(
        alive(sleep),
        "the sleep in its group outlives keel until the next start"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let restarted_at_ms = chrono::Utc::now().timestamp_millis();

    let second = spawn(&data_dir, &config);
    wait_gone("the orphaned sleep, killed by the next start", sleep);
    let (sleep2, shell2) = pids_of(&work, 2);
    assert!(alive(sleep2) && alive(shell2), "the task runs again");
    assert!(
        !work.join("pids.3").exists(),
        "it runs once more, not twice"
    );

    let t = call(
        &agent,
        &second.base,
        "GET",
        &format!("/api/v1/tasks/{id}"),
        &admin,
    )
    .json()["task"]
        .clone();
    let attempts = t["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{t}");
    assert_eq!(attempts[0]["outcome"], "interrupted", "{t}");
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
            .expect("RFC 3339")
            .timestamp_millis()
    };
    let (started, finished) = (
        ms(&attempts[0]["started_at"]),
        ms(&attempts[0]["finished_at"]),
    );
    assert!(
        started <= finished && finished < restarted_at_ms,
        "the interrupted attempt ends when its command last ran, before the restart: {t}"
    );

    let r = call(
        &agent,
        &second.base,
        "POST",
        &format!("/api/v1/tasks/{id}/cancel"),
        &admin,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_gone("the second attempt's sleep, after cancel", sleep2);
    assert_eq!(second.terminate(), 0);
}
