//! Commands a dead keel left running. A command's process group is recorded durably while it
//! runs (refreshed every [`SEEN_EVERY`], so the record says until when it surely ran), and its
//! direct child gets `PR_SET_PDEATHSIG` so it dies with keel. At start, before any task runs
//! again, every recorded group that is still alive (same boot, same leader or no leader left) is
//! killed, and so is every process tagged with the task id of a task that was running (which
//! covers a command keel died too soon after starting to record); each interrupted task
//! learns when its command really stopped.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::model::RunningCommand;
use super::tables::{ReadTables, ReadableTables, Tables};
use crate::clock::{Millis, SharedClock};
use crate::store::{Store, StoreError};

/// How often a running command's record is refreshed.
pub const SEEN_EVERY: Duration = Duration::from_secs(5);

/// The kernel's boot id (empty when it cannot be read).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; the start time is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Makes the calling (just forked) process die when keel's thread that forked it does; for
/// `pre_exec`. A child whose parent is already gone exits at once.
pub fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe system calls with no memory arguments.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            libc::_exit(137);
        }
    }
    Ok(())
}

/// The durable record of one running command, kept from its start until it ends.
pub struct Tracked {
    store: Arc<Store>,
    task: Uuid,
}

/// Records that task `task` runs the process group `pgid`.
pub async fn track(
    store: &Arc<Store>,
    clock: &SharedClock,
    task: Uuid,
    pgid: i32,
) -> Result<Tracked, StoreError> {
    let now = clock.now_ms();
    let record = RunningCommand {
        pgid,
        boot_id: boot_id(),
        leader_start_ticks: start_ticks(pgid).unwrap_or(0),
        started_at: now,
        seen_at: now,
    };
    store
        .write(move |tx| Tables::open(tx)?.put_running_command(task, &record))
        .await?;
    Ok(Tracked {
        store: Arc::clone(store),
        task,
    })
}

impl Tracked {
    /// Refreshes the record's `seen_at` every [`SEEN_EVERY`]; never ends (run it beside the
    /// command, until the command ends).
    pub async fn keep_seen(&self, clock: &SharedClock) -> Infallible {
        loop {
            tokio::time::sleep(SEEN_EVERY).await;
            let (task, now) = (self.task, clock.now_ms());
            let refreshed = self
                .store
                .write(move |tx| -> Result<(), StoreError> {
                    let mut tables = Tables::open(tx)?;
                    if let Some(mut record) = tables.running_command(task)? {
                        record.seen_at = now;
                        tables.put_running_command(task, &record)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = refreshed {
                tracing::warn!(task = %self.task, error = %e, "cannot refresh a running command's record");
            }
        }
    }
}

/// The command has ended (or its attempt was dropped, which kills its group): the record is
/// forgotten in the background. A removal that does not happen is done by [`reap`] at the next
/// start, which finds the group gone.
impl Drop for Tracked {
    fn drop(&mut self) {
        let (store, task) = (Arc::clone(&self.store), self.task);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let removed = store
                .write(move |tx| Tables::open(tx)?.remove_running_command(task))
                .await;
            if let Err(e) = removed {
                tracing::warn!(task = %task, error = %e, "cannot forget a finished command's record");
            }
        });
    }
}

/// Whether the recorded group may still be the one keel started.
fn still_ours(record: &RunningCommand, boot: &str) -> bool {
    if record.boot_id.is_empty() || record.boot_id != boot {
        return false;
    }
    match start_ticks(record.pgid) {
        // The leader lives: it must be the same process, not a later one with its id.
        Some(ticks) => ticks == record.leader_start_ticks,
        // No process has the id; members of its group may still run (an id stays reserved
        // while a group uses it).
        None => true,
    }
}

/// Kills every process that carries `KEEL_TASK_ID=<id>` (which a command and all it starts
/// inherit) for one of `tasks`, the tasks that were running when the last keel stopped: this
/// also finds a command whose group was not recorded yet (keel died just after starting it) and
/// processes that left the group. Processes of other users cannot be read and are skipped.
/// Returns how many were killed.
pub fn kill_tagged(tasks: &HashSet<Uuid>) -> usize {
    if tasks.is_empty() {
        return 0;
    }
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
            .filter(|pid| *pid != me)
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let tagged = environ
            .split(|b| *b == 0)
            .filter_map(|var| var.strip_prefix(b"KEEL_TASK_ID="))
            .filter_map(|id| std::str::from_utf8(id).ok())
            .filter_map(|id| Uuid::parse_str(id).ok())
            .any(|id| tasks.contains(&id));
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: kill only sends a signal; a process that is gone fails with ESRCH.
        if tagged && unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            tracing::warn!(pid, "killed a process of a task the last keel left running");
            killed += 1;
        }
    }
    killed
}

/// Kills the process groups that the last keel's commands left running and forgets every
/// record. Returns, per task, when its attempt stopped: when keel last saw the command running
/// (what the group did after keel died was no part of the attempt).
pub async fn reap(
    store: &Arc<Store>,
    clock: &SharedClock,
) -> Result<HashMap<Uuid, Millis>, StoreError> {
    let records = store
        .read(|tx| ReadTables::open(tx)?.running_command_records())
        .await?;
    if records.is_empty() {
        return Ok(HashMap::new());
    }
    let boot = boot_id();
    let now = clock.now_ms();
    let mut ended = HashMap::new();
    for (task, record) in &records {
        // SAFETY: killpg only sends a signal; a group that is gone fails with ESRCH.
        let killed =
            still_ours(record, &boot) && unsafe { libc::killpg(record.pgid, libc::SIGKILL) } == 0;
        if killed {
            tracing::warn!(task = %task, pgid = record.pgid, "killed a command the last keel left running");
        }
        ended.insert(*task, record.seen_at.min(now));
    }
    let ids: Vec<Uuid> = records.iter().map(|(id, _)| *id).collect();
    store
        .write(move |tx| -> Result<(), StoreError> {
            let mut tables = Tables::open(tx)?;
            for id in &ids {
                tables.remove_running_command(*id)?;
            }
            Ok(())
        })
        .await?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_this_process_are_read_and_stable() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).expect("this process's stat");
        assert_eq!(start_ticks(me), Some(ticks));
        assert!(!boot_id().is_empty());
    }

    #[test]
    fn processes_tagged_with_an_interrupted_task_are_killed_and_others_left_alone() {
        use std::os::unix::process::ExitStatusExt;
        let spawn = |id: Uuid| {
            std::process::Command::new("sleep")
                .arg("1000")
                .env("KEEL_TASK_ID", id.to_string())
                .spawn()
                .expect("sleep")
        };
        let (interrupted, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut tagged = spawn(interrupted);
        let mut untouched = spawn(other);
        let killed = kill_tagged(&HashSet::from([interrupted]));
        assert_eq!(killed, 1);
        let status = tagged.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(
            untouched.try_wait().unwrap().is_none(),
            "another task's process runs on"
        );
        untouched.kill().unwrap();
        untouched.wait().unwrap();
        assert_eq!(kill_tagged(&HashSet::new()), 0);
    }
}
