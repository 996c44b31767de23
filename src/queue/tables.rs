//! The queue's table bundle: every table of the queue room, for one transaction ([`Tables`] for
//! writes, [`ReadTables`] for reads), and the reads both share through [`ReadableTables`]. This
//! is the only code of the room that names `tables::queue::…`.
//!
//! The queue is the hot path, so a bundle opens each table the first time it is used in its
//! transaction (at most once): an enqueue or a `get` pays only for the tables it touches.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use redb::{
    Key, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, TableHandle, Value,
    WriteTransaction,
};
use uuid::Uuid;

use super::model::{Status, Task, TaskV1, TypePause};
use super::{Handlers, QueueError};
use crate::clock::Millis;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::queue::{
    IDEMPOTENCY_EXPIRY, IDEMPOTENCY_KEYS, TASK_COUNTS, TASK_DAILY, TASK_LOG_ATTEMPTS, TASK_LOGS,
    TASK_TYPES_PAUSED, TASKS, TASKS_BY_STATUS, TASKS_DELAYED, TASKS_LEASED, TASKS_READY,
};

/// Key of the ready index: (task type, priority, due ms, task id).
pub(super) type ReadyKey = (&'static str, u32, i64, u128);

/// The queue's tables, readable in a read or a write transaction.
pub(super) trait ReadableTables {
    /// Tasks by id.
    fn tasks(&self) -> Result<&impl ReadableTable<u128, &'static [u8]>, QueueError>;
    /// The ready index.
    fn ready(&self) -> Result<&impl ReadableTable<ReadyKey, ()>, QueueError>;
    /// The delayed index: (due ms, id).
    fn delayed(&self) -> Result<&impl ReadableTable<(i64, u128), ()>, QueueError>;
    /// The leased index: (lease expiry ms, id).
    fn leased(&self) -> Result<&impl ReadableTable<(i64, u128), ()>, QueueError>;
    /// The status index: (status code, id).
    fn by_status(&self) -> Result<&impl ReadableTable<(u8, u128), ()>, QueueError>;
    /// Counts by (status code, type).
    fn counts(&self) -> Result<&impl ReadableTable<(u8, &'static str), u64>, QueueError>;
    /// Idempotency keys: key → (task id, expires ms).
    fn idempotency_keys(
        &self,
    ) -> Result<&impl ReadableTable<&'static str, (u128, i64)>, QueueError>;
    /// Task log lines: (task id, line number) → line.
    fn logs(&self) -> Result<&impl ReadableTable<(u128, u32), &'static str>, QueueError>;
    /// Where each attempt's log lines begin: (task id, first line) → attempt number.
    fn log_attempts(&self) -> Result<&impl ReadableTable<(u128, u32), u32>, QueueError>;
    /// Paused task types: type → pause record.
    fn paused(&self) -> Result<&impl ReadableTable<&'static str, &'static [u8]>, QueueError>;
    /// Finished attempts per day: day → (processed, failed).
    fn daily(&self) -> Result<&impl ReadableTable<i64, (u64, u64)>, QueueError>;
    /// Reads handler snapshots that old task records hold inline.
    fn handlers(&self) -> &dyn Handlers;

    /// One task.
    fn task(&self, id: Uuid) -> Result<Option<Task>, QueueError> {
        match self.tasks()?.get(id.as_u128())? {
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
        for row in self.tasks()?.range(..before)?.rev() {
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
            .by_status()?
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
            .by_status()?
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
        let entry = self.idempotency_keys()?.get(key)?.map(|v| v.value());
        match entry {
            Some((raw, expires)) if expires > now => self.task(Uuid::from_u128(raw)),
            _ => Ok(None),
        }
    }

    /// At most `limit` log lines of a task, from line `from` on.
    fn log_lines(
        &self,
        id: Uuid,
        from: u32,
        limit: usize,
    ) -> Result<Vec<(u32, String)>, QueueError> {
        let mut out = Vec::new();
        for row in self
            .logs()?
            .range((id.as_u128(), from)..=(id.as_u128(), u32::MAX))?
            .take(limit)
        {
            let (k, v) = row?;
            out.push((k.value().1, v.value().to_string()));
        }
        Ok(out)
    }

    /// Where each attempt's log lines begin: (first line, attempt number), in line order.
    fn log_attempt_starts(&self, id: Uuid) -> Result<Vec<(u32, u32)>, QueueError> {
        let mut out = Vec::new();
        for row in self
            .log_attempts()?
            .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
        {
            let (k, v) = row?;
            out.push((k.value().1, v.value()));
        }
        Ok(out)
    }

    /// Every paused task type with its pause.
    fn pauses(&self) -> Result<BTreeMap<String, TypePause>, QueueError> {
        let mut out = BTreeMap::new();
        for row in self.paused()?.iter()? {
            let (k, v) = row?;
            let pause = codec::decode(TASK_TYPES_PAUSED.name(), k.value(), v.value())?;
            out.insert(k.value().to_string(), pause);
        }
        Ok(out)
    }

    /// The number after a task's last log line.
    fn next_log_line(&self, id: Uuid) -> Result<u32, QueueError> {
        Ok(
            match self
                .logs()?
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

/// A table of a write bundle, opened in its transaction when first used.
struct LazyTable<'tx, K: Key + 'static, V: Value + 'static> {
    tx: &'tx WriteTransaction,
    definition: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'tx, K, V>>,
}

impl<'tx, K: Key + 'static, V: Value + 'static> LazyTable<'tx, K, V> {
    fn new(tx: &'tx WriteTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        LazyTable {
            tx,
            definition,
            table: OnceCell::new(),
        }
    }

    fn get(&self) -> Result<&Table<'tx, K, V>, QueueError> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let table = self.tx.open_table(self.definition)?;
        Ok(self.table.get_or_init(|| table))
    }

    fn get_mut(&mut self) -> Result<&mut Table<'tx, K, V>, QueueError> {
        if self.table.get().is_none() {
            self.table = OnceCell::from(self.tx.open_table(self.definition)?);
        }
        Ok(self.table.get_mut().expect("the table was opened above"))
    }
}

/// A table of a read bundle, opened in its transaction when first used.
struct LazyReadTable<'tx, K: Key + 'static, V: Value + 'static> {
    tx: &'tx ReadTransaction,
    definition: TableDefinition<'static, K, V>,
    table: OnceCell<ReadOnlyTable<K, V>>,
}

impl<'tx, K: Key + 'static, V: Value + 'static> LazyReadTable<'tx, K, V> {
    fn new(tx: &'tx ReadTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        LazyReadTable {
            tx,
            definition,
            table: OnceCell::new(),
        }
    }

    fn get(&self) -> Result<&ReadOnlyTable<K, V>, QueueError> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let table = self.tx.open_table(self.definition)?;
        Ok(self.table.get_or_init(|| table))
    }
}

/// The queue's tables for writing in one transaction.
pub(super) struct Tables<'tx> {
    tasks: LazyTable<'tx, u128, &'static [u8]>,
    ready: LazyTable<'tx, ReadyKey, ()>,
    delayed: LazyTable<'tx, (i64, u128), ()>,
    leased: LazyTable<'tx, (i64, u128), ()>,
    by_status: LazyTable<'tx, (u8, u128), ()>,
    counts: LazyTable<'tx, (u8, &'static str), u64>,
    idempotency_keys: LazyTable<'tx, &'static str, (u128, i64)>,
    idempotency_expiry: LazyTable<'tx, (i64, &'static str), ()>,
    logs: LazyTable<'tx, (u128, u32), &'static str>,
    log_attempts: LazyTable<'tx, (u128, u32), u32>,
    paused: LazyTable<'tx, &'static str, &'static [u8]>,
    daily: LazyTable<'tx, i64, (u64, u64)>,
    handlers: &'tx dyn Handlers,
}

impl<'tx> Tables<'tx> {
    /// The queue tables of `tx`.
    pub(super) fn open(tx: &'tx WriteTransaction, handlers: &'tx dyn Handlers) -> Self {
        Tables {
            tasks: LazyTable::new(tx, TASKS),
            ready: LazyTable::new(tx, TASKS_READY),
            delayed: LazyTable::new(tx, TASKS_DELAYED),
            leased: LazyTable::new(tx, TASKS_LEASED),
            by_status: LazyTable::new(tx, TASKS_BY_STATUS),
            counts: LazyTable::new(tx, TASK_COUNTS),
            idempotency_keys: LazyTable::new(tx, IDEMPOTENCY_KEYS),
            idempotency_expiry: LazyTable::new(tx, IDEMPOTENCY_EXPIRY),
            logs: LazyTable::new(tx, TASK_LOGS),
            log_attempts: LazyTable::new(tx, TASK_LOG_ATTEMPTS),
            paused: LazyTable::new(tx, TASK_TYPES_PAUSED),
            daily: LazyTable::new(tx, TASK_DAILY),
            handlers,
        }
    }

    /// Stores a task record (its indexes are the caller's).
    pub(super) fn save(&mut self, task: &Task) -> Result<(), QueueError> {
        self.tasks_mut()?
            .insert(task.id.as_u128(), codec::encode(task).as_slice())?;
        Ok(())
    }

    /// Pauses `task_type` (its pause record replaces any before).
    pub(super) fn save_pause(
        &mut self,
        task_type: &str,
        pause: &TypePause,
    ) -> Result<(), QueueError> {
        self.paused_mut()?
            .insert(task_type, codec::encode(pause).as_slice())?;
        Ok(())
    }

    /// Tasks by id, for writing.
    pub(super) fn tasks_mut(&mut self) -> Result<&mut Table<'tx, u128, &'static [u8]>, QueueError> {
        self.tasks.get_mut()
    }
    /// The ready index, for writing.
    pub(super) fn ready_mut(&mut self) -> Result<&mut Table<'tx, ReadyKey, ()>, QueueError> {
        self.ready.get_mut()
    }
    /// The delayed index, for writing.
    pub(super) fn delayed_mut(&mut self) -> Result<&mut Table<'tx, (i64, u128), ()>, QueueError> {
        self.delayed.get_mut()
    }
    /// The leased index, for writing.
    pub(super) fn leased_mut(&mut self) -> Result<&mut Table<'tx, (i64, u128), ()>, QueueError> {
        self.leased.get_mut()
    }
    /// The status index, for writing.
    pub(super) fn by_status_mut(&mut self) -> Result<&mut Table<'tx, (u8, u128), ()>, QueueError> {
        self.by_status.get_mut()
    }
    /// The counts, for writing.
    pub(super) fn counts_mut(
        &mut self,
    ) -> Result<&mut Table<'tx, (u8, &'static str), u64>, QueueError> {
        self.counts.get_mut()
    }
    /// Idempotency keys, for writing.
    pub(super) fn idempotency_keys_mut(
        &mut self,
    ) -> Result<&mut Table<'tx, &'static str, (u128, i64)>, QueueError> {
        self.idempotency_keys.get_mut()
    }
    /// Idempotency keys by expiry, for writing.
    pub(super) fn idempotency_expiry_mut(
        &mut self,
    ) -> Result<&mut Table<'tx, (i64, &'static str), ()>, QueueError> {
        self.idempotency_expiry.get_mut()
    }
    /// Task log lines, for writing.
    pub(super) fn logs_mut(
        &mut self,
    ) -> Result<&mut Table<'tx, (u128, u32), &'static str>, QueueError> {
        self.logs.get_mut()
    }
    /// Where each attempt's log lines begin, for writing.
    pub(super) fn log_attempts_mut(
        &mut self,
    ) -> Result<&mut Table<'tx, (u128, u32), u32>, QueueError> {
        self.log_attempts.get_mut()
    }
    /// Paused task types, for writing.
    pub(super) fn paused_mut(
        &mut self,
    ) -> Result<&mut Table<'tx, &'static str, &'static [u8]>, QueueError> {
        self.paused.get_mut()
    }
    /// Finished attempts per day, for writing.
    pub(super) fn daily_mut(&mut self) -> Result<&mut Table<'tx, i64, (u64, u64)>, QueueError> {
        self.daily.get_mut()
    }
}

/// Implements [`ReadableTables`] for a bundle whose lazily opened tables have the trait's names
/// (the write and the read bundle share it).
macro_rules! readable_tables {
    ($bundle:ty) => {
        impl ReadableTables for $bundle {
            fn tasks(&self) -> Result<&impl ReadableTable<u128, &'static [u8]>, QueueError> {
                self.tasks.get()
            }
            fn ready(&self) -> Result<&impl ReadableTable<ReadyKey, ()>, QueueError> {
                self.ready.get()
            }
            fn delayed(&self) -> Result<&impl ReadableTable<(i64, u128), ()>, QueueError> {
                self.delayed.get()
            }
            fn leased(&self) -> Result<&impl ReadableTable<(i64, u128), ()>, QueueError> {
                self.leased.get()
            }
            fn by_status(&self) -> Result<&impl ReadableTable<(u8, u128), ()>, QueueError> {
                self.by_status.get()
            }
            fn counts(&self) -> Result<&impl ReadableTable<(u8, &'static str), u64>, QueueError> {
                self.counts.get()
            }
            fn idempotency_keys(
                &self,
            ) -> Result<&impl ReadableTable<&'static str, (u128, i64)>, QueueError> {
                self.idempotency_keys.get()
            }
            fn logs(&self) -> Result<&impl ReadableTable<(u128, u32), &'static str>, QueueError> {
                self.logs.get()
            }
            fn log_attempts(&self) -> Result<&impl ReadableTable<(u128, u32), u32>, QueueError> {
                self.log_attempts.get()
            }
            fn paused(
                &self,
            ) -> Result<&impl ReadableTable<&'static str, &'static [u8]>, QueueError> {
                self.paused.get()
            }
            fn daily(&self) -> Result<&impl ReadableTable<i64, (u64, u64)>, QueueError> {
                self.daily.get()
            }
            fn handlers(&self) -> &dyn Handlers {
                self.handlers
            }
        }
    };
}

readable_tables!(Tables<'_>);

/// The queue's tables for reading in one transaction (the idempotency expiry index is only ever
/// read by the purge, which writes).
pub(super) struct ReadTables<'tx> {
    tasks: LazyReadTable<'tx, u128, &'static [u8]>,
    ready: LazyReadTable<'tx, ReadyKey, ()>,
    delayed: LazyReadTable<'tx, (i64, u128), ()>,
    leased: LazyReadTable<'tx, (i64, u128), ()>,
    by_status: LazyReadTable<'tx, (u8, u128), ()>,
    counts: LazyReadTable<'tx, (u8, &'static str), u64>,
    idempotency_keys: LazyReadTable<'tx, &'static str, (u128, i64)>,
    logs: LazyReadTable<'tx, (u128, u32), &'static str>,
    log_attempts: LazyReadTable<'tx, (u128, u32), u32>,
    paused: LazyReadTable<'tx, &'static str, &'static [u8]>,
    daily: LazyReadTable<'tx, i64, (u64, u64)>,
    handlers: &'tx dyn Handlers,
}

impl<'tx> ReadTables<'tx> {
    /// The queue tables of `tx`.
    pub(super) fn open(tx: &'tx ReadTransaction, handlers: &'tx dyn Handlers) -> Self {
        ReadTables {
            tasks: LazyReadTable::new(tx, TASKS),
            ready: LazyReadTable::new(tx, TASKS_READY),
            delayed: LazyReadTable::new(tx, TASKS_DELAYED),
            leased: LazyReadTable::new(tx, TASKS_LEASED),
            by_status: LazyReadTable::new(tx, TASKS_BY_STATUS),
            counts: LazyReadTable::new(tx, TASK_COUNTS),
            idempotency_keys: LazyReadTable::new(tx, IDEMPOTENCY_KEYS),
            logs: LazyReadTable::new(tx, TASK_LOGS),
            log_attempts: LazyReadTable::new(tx, TASK_LOG_ATTEMPTS),
            paused: LazyReadTable::new(tx, TASK_TYPES_PAUSED),
            daily: LazyReadTable::new(tx, TASK_DAILY),
            handlers,
        }
    }
}

readable_tables!(ReadTables<'_>);
