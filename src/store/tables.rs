//! Every redb table keel uses, declared in one place with a version in its name, grouped by the
//! room that owns it: `tables::<room>::NAME` may be named only by that room's table bundle
//! (`src/<room>/tables.rs`; the tidy test checks it).
//!
//! Values are records encoded by [`super::codec`] (`[version][postcard]`); keys are plain redb
//! types chosen so that range scans come out in a useful order (sequence numbers, time-ordered
//! UUIDv7 ids as `u128`).

use redb::TableDefinition;

/// Store-wide facts such as the schema version.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");

/// Key of the schema version in [`META`].
pub const META_SCHEMA_VERSION: &str = "schema_version";

/// A table only the store's own unit tests write.
#[cfg(test)]
pub const BENCH_RECORDS_TEST: TableDefinition<u64, u64> = TableDefinition::new("store_test_v1");

/// The audit room: the hash chain and its signed checkpoints.
pub mod audit {
    use redb::TableDefinition;

    /// The hash-chained audit log: sequence number → audit entry record.
    pub const AUDIT_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_entries_v1");

    /// Signed audit checkpoints: sequence number covered → checkpoint record.
    pub const AUDIT_CHECKPOINTS: TableDefinition<u64, &[u8]> =
        TableDefinition::new("audit_checkpoints_v1");
}

/// The auth room: API keys and dashboard sessions.
pub mod auth {
    use redb::TableDefinition;

    /// API keys: key id (UUIDv7 as `u128`) → key record.
    pub const API_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("api_keys_v1");

    /// Dashboard sign-in sessions: blake3 hash of the session token (32 bytes) → session record.
    pub const ADMIN_SESSIONS: TableDefinition<&[u8], &[u8]> =
        TableDefinition::new("admin_sessions_v1");

    /// Dashboard sessions by key: (key id, token hash) → created at (ms).
    pub const ADMIN_SESSIONS_BY_KEY: TableDefinition<(u128, &[u8]), i64> =
        TableDefinition::new("admin_sessions_by_key_v1");
}

/// The metrics room: persisted histogram snapshots.
pub mod metrics {
    use redb::TableDefinition;

    /// Persisted metric histograms: (series key, interval start in epoch ms) → snapshot record.
    pub const METRIC_SNAPSHOTS: TableDefinition<(&str, i64), &[u8]> =
        TableDefinition::new("metric_snapshots_v1");
}

/// The benchmark harness: its own scratch database.
pub mod bench {
    use redb::TableDefinition;

    /// Scratch records written by `keel bench store` into its own temporary database.
    pub const BENCH_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("bench_records_v1");
}

/// The queue room: tasks, their indexes, idempotency keys and logs.
pub mod queue {
    use redb::TableDefinition;

    /// Tasks: task id (UUIDv7 as `u128`) → task record.
    pub const TASKS: TableDefinition<u128, &[u8]> = TableDefinition::new("tasks_v1");

    /// Tasks ready to run, per type, in the order they are leased:
    /// (task type, priority, due ms, task id). One index per type lets leasing skip a type at its
    /// concurrency limit in O(log n) instead of scanning past its tasks.
    pub const TASKS_READY: TableDefinition<(&str, u32, i64, u128), ()> =
        TableDefinition::new("tasks_ready_v1");

    /// Tasks waiting for a time (a later `run_at`, a retry backoff, an open circuit): (due ms, id).
    pub const TASKS_DELAYED: TableDefinition<(i64, u128), ()> =
        TableDefinition::new("tasks_delayed_v1");

    /// Leased tasks by lease expiry, for the reaper: (expires ms, id).
    pub const TASKS_LEASED: TableDefinition<(i64, u128), ()> =
        TableDefinition::new("tasks_leased_v1");

    /// Tasks by status, for listing: (status code, id).
    pub const TASKS_BY_STATUS: TableDefinition<(u8, u128), ()> =
        TableDefinition::new("tasks_by_status_v1");

    /// Task counts by (status code, task type), kept with every transition.
    pub const TASK_COUNTS: TableDefinition<(u8, &str), u64> =
        TableDefinition::new("task_counts_v1");

    /// Idempotency keys: key → (task id, expires ms).
    pub const IDEMPOTENCY_KEYS: TableDefinition<&str, (u128, i64)> =
        TableDefinition::new("idempotency_keys_v1");

    /// Idempotency keys by expiry, for pruning: (expires ms, key).
    pub const IDEMPOTENCY_EXPIRY: TableDefinition<(i64, &str), ()> =
        TableDefinition::new("idempotency_expiry_v1");

    /// Log lines of tasks: (task id, line number) → line.
    pub const TASK_LOGS: TableDefinition<(u128, u32), &str> = TableDefinition::new("task_logs_v1");

    /// Where each attempt's log lines begin: (task id, first line number) → attempt number.
    pub const TASK_LOG_ATTEMPTS: TableDefinition<(u128, u32), u32> =
        TableDefinition::new("task_log_attempts_v1");

    /// Paused task types: task type → pause record (when, by whom). The dispatcher leases no
    /// task of a paused type.
    pub const TASK_TYPES_PAUSED: TableDefinition<&str, &[u8]> =
        TableDefinition::new("task_types_paused_v1");

    /// Finished attempts per UTC day: day (days since the epoch) → (processed, failed), kept
    /// for 30 days.
    pub const TASK_DAILY: TableDefinition<i64, (u64, u64)> = TableDefinition::new("task_daily_v1");
}

/// The exec room: circuit breakers and workflow step checkpoints.
pub mod exec {
    use redb::TableDefinition;

    /// Circuit breaker state by target name → circuit record.
    pub const CIRCUITS: TableDefinition<&str, &[u8]> = TableDefinition::new("circuits_v1");

    /// Workflow step checkpoints: (task id as `u128`, step index) → step checkpoint record.
    pub const WORKFLOW_STEPS: TableDefinition<(u128, u32), &[u8]> =
        TableDefinition::new("workflow_steps_v1");

    /// Process groups of running commands: task id as `u128` → running command record.
    pub const RUNNING_COMMANDS: TableDefinition<u128, &[u8]> =
        TableDefinition::new("running_commands_v1");
}

/// The inbox room: replay protection and rejections of inbound webhooks.
pub mod inbox {
    use redb::TableDefinition;

    /// Delivery ids seen by the inbox, for replay protection: (source, delivery id) → (task id,
    /// expires ms).
    pub const INBOX_SEEN: TableDefinition<(&str, &str), (u128, i64)> =
        TableDefinition::new("inbox_seen_v1");

    /// Inbox delivery ids by expiry, for pruning: (expires ms, source, delivery id).
    pub const INBOX_SEEN_EXPIRY: TableDefinition<(i64, &str, &str), ()> =
        TableDefinition::new("inbox_seen_expiry_v1");

    /// Recently rejected inbound deliveries: id (UUIDv7 as `u128`) → rejection record.
    pub const INBOX_REJECTIONS: TableDefinition<u128, &[u8]> =
        TableDefinition::new("inbox_rejections_v1");
}

/// The budget room: the LLM cost ledger and budget overrides.
pub mod budget {
    use redb::TableDefinition;

    /// LLM cost ledger: (provider, UTC day as days since the epoch) → ledger day record (tokens,
    /// requests, micro-USD spent).
    pub const LLM_LEDGER: TableDefinition<(&str, i64), &[u8]> =
        TableDefinition::new("llm_ledger_v1");

    /// LLM budget overrides set at runtime: provider → budget override record.
    pub const LLM_BUDGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("llm_budgets_v1");
}

/// The cycles room: runs, checkpoints, records, ledger, telemetry, advice, governance and profiles.
pub mod cycles {
    use redb::TableDefinition;

    /// Cycle runs: cycle id (UUIDv7 as `u128`) → cycle run record.
    pub const CYCLE_RUNS: TableDefinition<u128, &[u8]> = TableDefinition::new("cycle_runs_v1");

    /// Unfinished cycles (resumed at start): cycle id → ().
    pub const CYCLES_ACTIVE: TableDefinition<u128, ()> = TableDefinition::new("cycles_active_v1");

    /// Append-only cycle checkpoints: (cycle id, sequence) → checkpoint record.
    pub const CYCLE_CHECKPOINTS: TableDefinition<(u128, u32), &[u8]> =
        TableDefinition::new("cycle_checkpoints_v1");

    /// Initiations by hash, unique per run profile: (run profile key, initiation hash hex) → cycle
    /// id. Raw cycles use the key `raw:<namespace>`.
    pub const CYCLE_INITIATIONS: TableDefinition<(&str, &str), u128> =
        TableDefinition::new("cycle_initiations_v1");

    /// Schedule slots run, per run profile: (run profile key, slot) → cycle id.
    pub const CYCLE_SLOTS: TableDefinition<(&str, &str), u128> =
        TableDefinition::new("cycle_slots_v1");

    /// Normalized output items, idempotent by (cycle id, index) → item (JSON).
    pub const CYCLE_ITEMS: TableDefinition<(u128, u32), &str> =
        TableDefinition::new("cycle_items_v1");

    /// Dispatches of cycles: (cycle id, endpoint key) → dispatch record.
    pub const CYCLE_DISPATCHES: TableDefinition<(u128, &str), &[u8]> =
        TableDefinition::new("cycle_dispatches_v1");

    /// The last slot each cycle schedule fired (or its baseline): schedule name → epoch ms.
    pub const CYCLE_SCHEDULES: TableDefinition<&str, i64> =
        TableDefinition::new("cycle_schedules_v1");

    /// Append-only execution records: (time ms, record id) → execution record.
    pub const EXECUTION_RECORDS: TableDefinition<(i64, u128), &[u8]> =
        TableDefinition::new("execution_records_v1");

    /// Execution records by cycle: (cycle id, time ms, record id) → ().
    pub const EXECUTION_RECORDS_BY_CYCLE: TableDefinition<(u128, i64, u128), ()> =
        TableDefinition::new("execution_records_by_cycle_v1");

    /// Append-only value ledger: (time ms, entry id) → ledger entry.
    pub const VALUE_LEDGER: TableDefinition<(i64, u128), &[u8]> =
        TableDefinition::new("value_ledger_v1");

    /// The telemetry bus: (time ms, event id) → telemetry event.
    pub const TELEMETRY: TableDefinition<(i64, u128), &[u8]> = TableDefinition::new("telemetry_v1");

    /// Advisory signals: signal id → signal record.
    pub const SIGNALS: TableDefinition<u128, &[u8]> = TableDefinition::new("signals_v1");

    /// Strategy proposals: proposal id → proposal record.
    pub const PROPOSALS: TableDefinition<u128, &[u8]> = TableDefinition::new("proposals_v1");

    /// Governance flags: `global` or `ns:<namespace>` → flag record.
    pub const GOVERNANCE: TableDefinition<&str, &[u8]> = TableDefinition::new("governance_v1");

    /// Current profile versions: profile id → version record.
    pub const PROFILE_VERSIONS: TableDefinition<&str, &[u8]> =
        TableDefinition::new("profile_versions_v1");
}

/// The security room.
pub mod security {
    use redb::TableDefinition;

    /// Automatic blocks of client addresses: address (text) → block record.
    pub const SECURITY_BLOCKS: TableDefinition<&str, &[u8]> =
        TableDefinition::new("security_blocks_v1");

    /// Security events counted per minute: (minute start ms, kind, subject) → event record.
    pub const SECURITY_EVENTS: TableDefinition<(i64, &str, &str), &[u8]> =
        TableDefinition::new("security_events_v1");
}
