//! The queue's table bundle: every table of the queue room opened together inside one
//! transaction ([`Tables`] for writes, [`ReadTables`] for reads), and the reads both share through
//! [`ReadableTables`]. This is the only code of the room that names `tables::queue::…`.

use redb::{ReadTransaction, ReadableTable, TableError, TableHandle, WriteTransaction};
use uuid::Uuid;

use super::model::{Status, Task, TaskV1};
use super::{Handlers, QueueError};
use crate::clock::Millis;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::queue::{
    IDEMPOTENCY_EXPIRY, IDEMPOTENCY_KEYS, TASK_COUNTS, TASK_LOGS, TASKS, TASKS_BY_STATUS,
    TASKS_DELAYED, TASKS_LEASED, TASKS_READY,
};

/// Key of the ready index: (task type, priority, due ms, task id).
pub(super) type ReadyKey = (&'static str, u32, i64, u128);

/// The queue's tables, readable in a read or a write transaction.
pub(super) trait ReadableTables {
    /// Tasks by id.
    fn tasks(&self) -> &impl ReadableTable<u128, &'static [u8]>;
    /// The ready index.
    fn ready(&self) -> &impl ReadableTable<ReadyKey, ()>;
    /// The delayed index: (due ms, id).
    fn delayed(&self) -> &impl ReadableTable<(i64, u128), ()>;
    /// The leased index: (lease expiry ms, id).
    fn leased(&self) -> &impl ReadableTable<(i64, u128), ()>;
    /// The status index: (status code, id).
    fn by_status(&self) -> &impl ReadableTable<(u8, u128), ()>;
    /// Counts by (status code, type).
    fn counts(&self) -> &impl ReadableTable<(u8, &'static str), u64>;
    /// Idempotency keys: key → (task id, expires ms).
    fn idempotency_keys(&self) -> &impl ReadableTable<&'static str, (u128, i64)>;
    /// Task log lines: (task id, line number) → line.
    fn logs(&self) -> &impl ReadableTable<(u128, u32), &'static str>;
    /// Reads handler snapshots that old task records hold inline.
    fn handlers(&self) -> &dyn Handlers;

    /// One task.
    fn task(&self, id: Uuid) -> Result<Option<Task>, QueueError> {
        match self.tasks().get(id.as_u128())? {
            Some(value) => Ok(Some(decode_task(self.handlers(), id, value.value())?)),
            None => Ok(None),
        }
    }

    /// Tasks with ids below `before`, newest first, decoded one by one while `visit` says to
    /// go on; returns the id of the last task visited.
    fn tasks_newest_first(
        &self,
        before: u128,
        mut visit: impl FnMut(Task) -> bool,
    ) -> Result<Option<u128>, QueueError> {
        let mut last = None;
        for row in self.tasks().range(..before)?.rev() {
            let (k, v) = row?;
            let raw = k.value();
            last = Some(raw);
            if !visit(decode_task(
                self.handlers(),
                Uuid::from_u128(raw),
                v.value(),
            )?) {
                break;
            }
        }
        Ok(last)
    }

    /// Ids of tasks in `status`, oldest first.
    fn ids_with_status(&self, status: Status) -> Result<Vec<u128>, QueueError> {
        let ids = self
            .by_status()
            .range((status.code(), 0)..=(status.code(), u128::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Ids of tasks in `status` below `before`, newest first, while `visit` says to go on;
    /// returns the last id visited.
    fn ids_with_status_newest_first(
        &self,
        status: Status,
        before: u128,
        mut visit: impl FnMut(u128) -> Result<bool, QueueError>,
    ) -> Result<Option<u128>, QueueError> {
        let mut last = None;
        for row in self
            .by_status()
            .range((status.code(), 0)..(status.code(), before))?
            .rev()
        {
            let raw = row?.0.value().1;
            last = Some(raw);
            if !visit(raw)? {
                break;
            }
        }
        Ok(last)
    }

    /// The task a live idempotency key names.
    fn idempotent_task(&self, key: &str, now: Millis) -> Result<Option<Task>, QueueError> {
        let entry = self.idempotency_keys().get(key)?.map(|v| v.value());
        match entry {
            Some((raw, expires)) if expires > now => self.task(Uuid::from_u128(raw)),
            _ => Ok(None),
        }
    }

    /// Log lines of a task from line `from` on.
    fn log_lines(&self, id: Uuid, from: u32) -> Result<Vec<(u32, String)>, QueueError> {
        let mut out = Vec::new();
        for row in self
            .logs()
            .range((id.as_u128(), from)..=(id.as_u128(), u32::MAX))?
        {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_string()));
        }
        Ok(out)
    }

    /// The number after a task's last log line.
    fn next_log_line(&self, id: Uuid) -> Result<u32, QueueError> {
        Ok(
            match self
                .logs()
                .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
                .next_back()
            {
                Some(row) => row?.0.value().1 + 1,
                None => 0,
            },
        )
    }
}

/// Decodes a task record, upgrading a version-1 record.
fn decode_task(handlers: &dyn Handlers, id: Uuid, bytes: &[u8]) -> Result<Task, StoreError> {
    match bytes.split_first() {
        Some((&TaskV1::VERSION, body)) => TaskV1::upgrade(body, |rest| handlers.split_inline(rest))
            .map_err(|reason| StoreError::Corrupt {
                table: TASKS.name().to_string(),
                key: id.to_string(),
                reason,
            }),
        _ => codec::decode(TASKS.name(), id, bytes),
    }
}

/// The queue's tables opened for writing in one transaction.
pub(super) struct Tables<'tx> {
    pub(super) tasks: redb::Table<'tx, u128, &'static [u8]>,
    pub(super) ready: redb::Table<'tx, ReadyKey, ()>,
    pub(super) delayed: redb::Table<'tx, (i64, u128), ()>,
    pub(super) leased: redb::Table<'tx, (i64, u128), ()>,
    pub(super) by_status: redb::Table<'tx, (u8, u128), ()>,
    pub(super) counts: redb::Table<'tx, (u8, &'static str), u64>,
    pub(super) idempotency_keys: redb::Table<'tx, &'static str, (u128, i64)>,
    pub(super) idempotency_expiry: redb::Table<'tx, (i64, &'static str), ()>,
    pub(super) logs: redb::Table<'tx, (u128, u32), &'static str>,
    handlers: &'tx dyn Handlers,
}

impl<'tx> Tables<'tx> {
    /// Opens every queue table in `tx`.
    pub(super) fn open(
        tx: &'tx WriteTransaction,
        handlers: &'tx dyn Handlers,
    ) -> Result<Self, TableError> {
        Ok(Tables {
            tasks: tx.open_table(TASKS)?,
            ready: tx.open_table(TASKS_READY)?,
            delayed: tx.open_table(TASKS_DELAYED)?,
            leased: tx.open_table(TASKS_LEASED)?,
            by_status: tx.open_table(TASKS_BY_STATUS)?,
            counts: tx.open_table(TASK_COUNTS)?,
            idempotency_keys: tx.open_table(IDEMPOTENCY_KEYS)?,
            idempotency_expiry: tx.open_table(IDEMPOTENCY_EXPIRY)?,
            logs: tx.open_table(TASK_LOGS)?,
            handlers,
        })
    }

    /// Stores a task record (its indexes are the caller's).
    pub(super) fn save(&mut self, task: &Task) -> Result<(), QueueError> {
        self.tasks
            .insert(task.id.as_u128(), codec::encode(task).as_slice())?;
        Ok(())
    }
}

impl ReadableTables for Tables<'_> {
    fn tasks(&self) -> &impl ReadableTable<u128, &'static [u8]> {
        &self.tasks
    }
    fn ready(&self) -> &impl ReadableTable<ReadyKey, ()> {
        &self.ready
    }
    fn delayed(&self) -> &impl ReadableTable<(i64, u128), ()> {
        &self.delayed
    }
    fn leased(&self) -> &impl ReadableTable<(i64, u128), ()> {
        &self.leased
    }
    fn by_status(&self) -> &impl ReadableTable<(u8, u128), ()> {
        &self.by_status
    }
    fn counts(&self) -> &impl ReadableTable<(u8, &'static str), u64> {
        &self.counts
    }
    fn idempotency_keys(&self) -> &impl ReadableTable<&'static str, (u128, i64)> {
        &self.idempotency_keys
    }
    fn logs(&self) -> &impl ReadableTable<(u128, u32), &'static str> {
        &self.logs
    }
    fn handlers(&self) -> &dyn Handlers {
        self.handlers
    }
}

/// The queue's tables opened for reading in one transaction (the idempotency expiry index is
/// only ever read by the purge, which writes).
pub(super) struct ReadTables<'h> {
    tasks: redb::ReadOnlyTable<u128, &'static [u8]>,
    ready: redb::ReadOnlyTable<ReadyKey, ()>,
    delayed: redb::ReadOnlyTable<(i64, u128), ()>,
    leased: redb::ReadOnlyTable<(i64, u128), ()>,
    by_status: redb::ReadOnlyTable<(u8, u128), ()>,
    counts: redb::ReadOnlyTable<(u8, &'static str), u64>,
    idempotency_keys: redb::ReadOnlyTable<&'static str, (u128, i64)>,
    logs: redb::ReadOnlyTable<(u128, u32), &'static str>,
    handlers: &'h dyn Handlers,
}

impl<'h> ReadTables<'h> {
    /// Opens every queue table in `tx`.
    pub(super) fn open(
        tx: &ReadTransaction,
        handlers: &'h dyn Handlers,
    ) -> Result<Self, TableError> {
        Ok(ReadTables {
            tasks: tx.open_table(TASKS)?,
            ready: tx.open_table(TASKS_READY)?,
            delayed: tx.open_table(TASKS_DELAYED)?,
            leased: tx.open_table(TASKS_LEASED)?,
            by_status: tx.open_table(TASKS_BY_STATUS)?,
            counts: tx.open_table(TASK_COUNTS)?,
            idempotency_keys: tx.open_table(IDEMPOTENCY_KEYS)?,
            logs: tx.open_table(TASK_LOGS)?,
            handlers,
        })
    }
}

impl ReadableTables for ReadTables<'_> {
    fn tasks(&self) -> &impl ReadableTable<u128, &'static [u8]> {
        &self.tasks
    }
    fn ready(&self) -> &impl ReadableTable<ReadyKey, ()> {
        &self.ready
    }
    fn delayed(&self) -> &impl ReadableTable<(i64, u128), ()> {
        &self.delayed
    }
    fn leased(&self) -> &impl ReadableTable<(i64, u128), ()> {
        &self.leased
    }
    fn by_status(&self) -> &impl ReadableTable<(u8, u128), ()> {
        &self.by_status
    }
    fn counts(&self) -> &impl ReadableTable<(u8, &'static str), u64> {
        &self.counts
    }
    fn idempotency_keys(&self) -> &impl ReadableTable<&'static str, (u128, i64)> {
        &self.idempotency_keys
    }
    fn logs(&self) -> &impl ReadableTable<(u128, u32), &'static str> {
        &self.logs
    }
    fn handlers(&self) -> &dyn Handlers {
        self.handlers
    }
}
