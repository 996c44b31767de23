//! The store: one redb file, one writer thread with group commit, versioned records, migrations.
//!
//! Reads run on the blocking pool (or the caller's thread in the CLI); every write goes to the
//! writer thread (see [`writer`]). No transaction is ever held across an `.await`.

pub mod codec;
pub mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};
use tokio::sync::oneshot;

pub use writer::{CommitObserver, TransactionHook};

/// The schema version this keel writes. Files with a higher version are refused untouched.
pub const SCHEMA_VERSION: u64 = 12;

/// Errors of the store room.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database file.
    #[error("{path} is in use by another keel process (is `keel serve` running on this data dir?)")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file was written by a newer keel.
    #[error(
        "{path} has schema version {found}, newer than this keel supports ({supported}); upgrade keel (the file was left untouched)"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
        /// Highest version this build knows.
        supported: u64,
    },
    /// The file is a redb database that keel did not create.
    #[error("{path} is not a keel database (it has tables but no schema version)")]
    Foreign {
        /// The database file.
        path: PathBuf,
    },
    /// Opening the file failed.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table} at key {key}: {reason}")]
    Corrupt {
        /// Table name.
        table: String,
        /// Key of the bad record.
        key: String,
        /// Why decoding failed.
        reason: String,
    },
    /// redb reported an error.
    #[error("storage error: {0}")]
    Storage(String),
    /// A write request panicked; its writes were undone.
    #[error("write request panicked: {0}")]
    Panicked(String),
    /// The writer thread has stopped (the store is closing).
    #[error("the store is closed")]
    WriterGone,
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

/// Options for [`Store::open`].
#[derive(Default)]
pub struct StoreOptions {
    /// Most write requests in one group commit (at least 1).
    pub max_batch: usize,
    /// Told about every commit (batch size and commit time), e.g. for metrics.
    pub commit_observer: Option<CommitObserver>,
    /// Told when each write transaction begins and when it committed.
    pub hooks: Vec<Arc<dyn TransactionHook>>,
}

/// The open database and its writer thread.
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    sender: mpsc::Sender<writer::Message>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the database at `path`, migrating it to [`SCHEMA_VERSION`].
    ///
    /// A file held by another process fails at once with [`StoreError::Locked`]; a file from a
    /// newer keel fails with [`StoreError::NewerSchema`] and is not modified.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        match std::fs::metadata(path) {
            // An empty file is one created here before a crash: redb initialises it.
            Ok(meta) if meta.len() == 0 => {}
            Ok(_) => check_schema_read_only(path)?,
            // redb initialises an empty file; creating it first gives it mode 0600.
            Err(_) => {
                crate::fsutil::create_private_file(path).map_err(|e| StoreError::Open {
                    path: path.to_path_buf(),
                    reason: format!("cannot create the file: {e}"),
                })?;
            }
        }
        let db = Database::create(path).map_err(|e| open_error(path, e))?;
        migrate(&db, path)?;
        let db = Arc::new(db);
        let (sender, receiver) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        let max_batch = options.max_batch.max(1);
        let observer = options.commit_observer;
        let hooks = options.hooks;
        let writer = std::thread::Builder::new()
            .name("keel-store-writer".into())
            .spawn(move || writer::run(&writer_db, receiver, max_batch, observer, hooks))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
            sender,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file's size in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Whether the writer thread is running.
    pub fn is_writable(&self) -> bool {
        self.writer
            .lock()
            .map(|w| w.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    fn submit<T, E, F>(&self, work: F) -> oneshot::Receiver<Result<T, E>>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        let job = writer::Job {
            work,
            outcome: None,
            reply,
        };
        if let Err(mpsc::SendError(writer::Message::Write(job))) =
            self.sender.send(writer::Message::Write(Box::new(job)))
        {
            job.finish(Err(StoreError::WriterGone));
        }
        receiver
    }

    /// Runs `work` in a group-committed write transaction and returns its result once the
    /// commit is durable.
    ///
    /// `work` may run more than once (when another request in its batch fails, the batch is
    /// re-run without the failed ones), so it must only touch the transaction.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        self.submit(work)
            .await
            .unwrap_or_else(|_| Err(E::from(StoreError::WriterGone)))
    }

    /// [`Store::write`] for synchronous callers (CLI, benchmarks, the blocking pool).
    pub fn write_blocking<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        self.submit(work)
            .blocking_recv()
            .unwrap_or_else(|_| Err(E::from(StoreError::WriterGone)))
    }

    /// Runs `work` in a read transaction on the blocking pool.
    pub async fn read<T, E, F>(self: &Arc<Self>, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, E> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.read_blocking(work))
            .await
            .unwrap_or_else(|e| Err(E::from(StoreError::Panicked(e.to_string()))))
    }

    /// Runs `work` in a read transaction on the calling thread.
    pub fn read_blocking<T, E, F>(&self, work: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&ReadTransaction) -> Result<T, E>,
    {
        let tx = self.db.begin_read().map_err(StoreError::from)?;
        work(&tx)
    }

    /// Finishes queued writes and stops the writer thread. Later writes fail with
    /// [`StoreError::WriterGone`]. The file is closed when the last handle is dropped.
    pub fn close(&self) {
        let (reply, done) = mpsc::channel();
        if self.sender.send(writer::Message::Stop(reply)).is_ok() {
            let _ = done.recv();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        other => StoreError::Open {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Reads the schema version without writing to the file, so a newer file stays untouched.
fn check_schema_read_only(path: &Path) -> Result<(), StoreError> {
    let db = match ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        // The file needs crash recovery, which only a writable open does; check after it.
        Err(redb::DatabaseError::RepairAborted) => return Ok(()),
        Err(e) => return Err(open_error(path, e)),
    };
    let tx = db.begin_read()?;
    check_version(path, read_version(&tx, path)?)
}

fn check_version(path: &Path, found: Option<u64>) -> Result<(), StoreError> {
    match found {
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// The schema version in the file; `None` for an empty file; an error for a foreign one.
fn read_version(tx: &ReadTransaction, path: &Path) -> Result<Option<u64>, StoreError> {
    match tx.open_table(tables::META) {
        Ok(meta) => Ok(meta.get(tables::META_SCHEMA_VERSION)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => {
            if tx.list_tables()?.next().is_some() {
                Err(StoreError::Foreign {
                    path: path.to_path_buf(),
                })
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// One step of the schema: migrates a file from version `n` to `n + 1`.
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// `MIGRATIONS[n]` upgrades version `n` to `n + 1`; the last one reaches [`SCHEMA_VERSION`].
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [
    create_initial_tables,
    create_queue_tables,
    create_inbox_tables,
    create_llm_and_workflow_tables,
    create_admin_session_tables,
    create_cycles_tables,
    create_task_type_and_daily_tables,
    create_running_commands_table,
    upgrade_circuit_records,
    separate_idempotency_namespaces,
    create_security_tables,
    create_log_attempts_table,
];

fn create_initial_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::META)?;
    tx.open_table(tables::audit::AUDIT_ENTRIES)?;
    tx.open_table(tables::audit::AUDIT_CHECKPOINTS)?;
    tx.open_table(tables::auth::API_KEYS)?;
    tx.open_table(tables::metrics::METRIC_SNAPSHOTS)?;
    Ok(())
}

fn create_queue_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::queue::TASKS)?;
    tx.open_table(tables::queue::TASKS_READY)?;
    tx.open_table(tables::queue::TASKS_DELAYED)?;
    tx.open_table(tables::queue::TASKS_LEASED)?;
    tx.open_table(tables::queue::TASKS_BY_STATUS)?;
    tx.open_table(tables::queue::TASK_COUNTS)?;
    tx.open_table(tables::queue::IDEMPOTENCY_KEYS)?;
    tx.open_table(tables::queue::IDEMPOTENCY_EXPIRY)?;
    tx.open_table(tables::queue::TASK_LOGS)?;
    tx.open_table(tables::exec::CIRCUITS)?;
    Ok(())
}

fn create_inbox_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::inbox::INBOX_SEEN)?;
    tx.open_table(tables::inbox::INBOX_SEEN_EXPIRY)?;
    tx.open_table(tables::inbox::INBOX_REJECTIONS)?;
    Ok(())
}

fn create_llm_and_workflow_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::budget::LLM_LEDGER)?;
    tx.open_table(tables::budget::LLM_BUDGETS)?;
    tx.open_table(tables::exec::WORKFLOW_STEPS)?;
    Ok(())
}

fn create_admin_session_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::auth::ADMIN_SESSIONS)?;
    Ok(())
}

fn create_task_type_and_daily_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::queue::TASK_TYPES_PAUSED)?;
    tx.open_table(tables::queue::TASK_DAILY)?;
    Ok(())
}

fn create_running_commands_table(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::exec::RUNNING_COMMANDS)?;
    Ok(())
}

fn create_cycles_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::cycles::CYCLE_RUNS)?;
    tx.open_table(tables::cycles::CYCLES_ACTIVE)?;
    tx.open_table(tables::cycles::CYCLE_CHECKPOINTS)?;
    tx.open_table(tables::cycles::CYCLE_INITIATIONS)?;
    tx.open_table(tables::cycles::CYCLE_SLOTS)?;
    tx.open_table(tables::cycles::CYCLE_ITEMS)?;
    tx.open_table(tables::cycles::CYCLE_DISPATCHES)?;
    tx.open_table(tables::cycles::CYCLE_SCHEDULES)?;
    tx.open_table(tables::cycles::EXECUTION_RECORDS)?;
    tx.open_table(tables::cycles::EXECUTION_RECORDS_BY_CYCLE)?;
    tx.open_table(tables::cycles::VALUE_LEDGER)?;
    tx.open_table(tables::cycles::TELEMETRY)?;
    tx.open_table(tables::cycles::SIGNALS)?;
    tx.open_table(tables::cycles::PROPOSALS)?;
    tx.open_table(tables::cycles::GOVERNANCE)?;
    tx.open_table(tables::cycles::PROFILE_VERSIONS)?;
    Ok(())
}

/// Rewrites version-1 circuit records as version 2, which adds the outcomes that opened the
/// circuit (none known for an old record) and the window's volume and failures then (0).
fn upgrade_circuit_records(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut table = tx.open_table(tables::exec::CIRCUITS)?;
    let mut upgraded = Vec::new();
    for row in table.iter()? {
        let (name, bytes) = row?;
        if let Some(v2) = upgrade_circuit_record_v1(bytes.value()) {
            upgraded.push((name.value().to_string(), v2));
        }
    }
    for (name, bytes) in upgraded {
        table.insert(name.as_str(), bytes.as_slice())?;
    }
    Ok(())
}

/// Idempotency keys move into namespaces: the inbox's `hook:<source>:<id>` keys become
/// `inbox:<key>` and every other key (chosen by an API caller) `api:<key>`, in both the key
/// table and its expiry index. An API key that began with `hook:` is taken as the inbox's,
/// which keeps every genuine delivery a duplicate of itself.
fn separate_idempotency_namespaces(tx: &WriteTransaction) -> Result<(), StoreError> {
    use redb::ReadableTable;
    fn namespaced(key: &str) -> String {
        if key.starts_with("hook:") {
            format!("inbox:{key}")
        } else {
            format!("api:{key}")
        }
    }
    let mut keys = tx.open_table(tables::queue::IDEMPOTENCY_KEYS)?;
    let entries: Vec<(String, (u128, i64))> = keys
        .iter()?
        .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value())))
        .collect::<Result<_, _>>()?;
    for (key, value) in &entries {
        keys.remove(key.as_str())?;
        keys.insert(namespaced(key).as_str(), *value)?;
    }
    let mut expiry = tx.open_table(tables::queue::IDEMPOTENCY_EXPIRY)?;
    let entries: Vec<(i64, String)> = expiry
        .iter()?
        .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
        .collect::<Result<_, _>>()?;
    for (at, key) in &entries {
        expiry.remove((*at, key.as_str()))?;
        expiry.insert((*at, namespaced(key).as_str()), ())?;
    }
    Ok(())
}

/// A version-1 circuit record re-encoded as version 2; `None` for any other version. postcard
/// writes a struct as its fields in order, so version 2 is the version-1 body followed by an
/// empty outcome list (length 0), a zero volume and zero failures, each one varint byte.
pub fn upgrade_circuit_record_v1(bytes: &[u8]) -> Option<Vec<u8>> {
    let (&version, body) = bytes.split_first()?;
    (version == 1).then(|| {
        let mut v2 = Vec::with_capacity(bytes.len() + 3);
        v2.push(2);
        v2.extend_from_slice(body);
        v2.extend_from_slice(&[0, 0, 0]);
        v2
    })
}

/// The security room's tables, and the index of dashboard sessions by key. Sessions signed in
/// before this version are not in the index: they keep working and end by themselves (an ended
/// session is deleted when it is next presented).
fn create_security_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::security::SECURITY_BLOCKS)?;
    tx.open_table(tables::security::SECURITY_EVENTS)?;
    tx.open_table(tables::auth::ADMIN_SESSIONS_BY_KEY)?;
    Ok(())
}

/// Where each attempt's log lines begin. Lines written before this version belong to no
/// attempt and are shown as one group.
fn create_log_attempts_table(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(tables::queue::TASK_LOG_ATTEMPTS)?;
    Ok(())
}

fn migrate(db: &Database, path: &Path) -> Result<(), StoreError> {
    let found = read_version(&db.begin_read()?, path)?;
    check_version(path, found)?;
    let mut version = found.unwrap_or(0);
    while version < SCHEMA_VERSION {
        let tx = db.begin_write()?;
        MIGRATIONS[version as usize](&tx)?;
        tx.open_table(tables::META)?
            .insert(tables::META_SCHEMA_VERSION, version + 1)?;
        tx.commit()?;
        if found.is_some() {
            tracing::info!(from = version, to = version + 1, "migrated store schema");
        }
        version += 1;
    }
    if found.is_none() {
        tracing::info!(path = %path.display(), schema = SCHEMA_VERSION, "created store");
    }
    Ok(())
}

/// Sets the stored schema version; only for tests that need a file from a "newer" keel.
#[cfg(feature = "test-hooks")]
pub fn force_schema_version(path: &Path, version: u64) -> Result<(), StoreError> {
    let db = Database::create(path).map_err(|e| open_error(path, e))?;
    let tx = db.begin_write()?;
    tx.open_table(tables::META)?
        .insert(tables::META_SCHEMA_VERSION, version)?;
    tx.commit()?;
    Ok(())
}

/// Reads the schema version of a store that is not open elsewhere (for `keel doctor`-style
/// reporting and tests).
pub fn schema_version_of(path: &Path) -> Result<Option<u64>, StoreError> {
    let db = ReadOnlyDatabase::open(path).map_err(|e| open_error(path, e))?;
    let tx = db.begin_read()?;
    read_version(&tx, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        Store::open(
            &dir.join("keel.redb"),
            StoreOptions {
                max_batch: 64,
                commit_observer: None,
                ..Default::default()
            },
        )
        .unwrap()
    }

    const T: redb::TableDefinition<u64, u64> = tables::BENCH_RECORDS_TEST;

    #[test]
    fn a_failing_request_does_not_undo_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let handles: Vec<_> = (0..200u64)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    store.write_blocking(move |tx| -> Result<u64, StoreError> {
                        tx.open_table(T)?.insert(i, i * 10)?;
                        if i % 7 == 0 {
                            return Err(StoreError::Storage(format!("request {i} refused")));
                        }
                        Ok(i)
                    })
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let result = h.join().unwrap();
            assert_eq!(result.is_err(), i % 7 == 0, "request {i}: {result:?}");
        }
        store
            .read_blocking(|tx| -> Result<(), StoreError> {
                let t = tx.open_table(T)?;
                for i in 0..200u64 {
                    let got = t.get(i)?.map(|v| v.value());
                    let want = (i % 7 != 0).then_some(i * 10);
                    assert_eq!(got, want, "key {i}");
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_batch_with_failures_runs_at_most_twice() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        // Hold the writer in a request of its own until the batch under test is queued.
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let blocker = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                store.write_blocking(move |_| -> Result<(), StoreError> {
                    let _ = started.send(());
                    let _ = held.lock().unwrap().recv();
                    Ok(())
                })
            })
        };
        running.recv().unwrap();
        let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..64).map(|_| AtomicUsize::new(0)).collect());
        let answers: Vec<_> = (0..63u64)
            .map(|i| {
                let runs = Arc::clone(&runs);
                store.submit(move |tx| -> Result<u64, StoreError> {
                    runs[i as usize].fetch_add(1, Ordering::SeqCst);
                    tx.open_table(T)?.insert(i, i)?;
                    if i % 4 == 0 {
                        return Err(StoreError::Storage(format!("request {i} refused")));
                    }
                    Ok(i)
                })
            })
            .collect();
        release.send(()).unwrap();
        blocker.join().unwrap().unwrap();
        for (i, answer) in answers.into_iter().enumerate() {
            let result = answer.blocking_recv().unwrap();
            assert_eq!(result.is_err(), i % 4 == 0, "request {i}: {result:?}");
        }
        for (i, count) in runs.iter().take(63).enumerate() {
            let n = count.load(Ordering::SeqCst);
            assert!((1..=2).contains(&n), "request {i} ran {n} times");
        }
        let total: usize = runs.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        assert!(
            total <= 63 + 47,
            "{total} runs for 63 requests with 16 failures"
        );
        store
            .read_blocking(|tx| -> Result<(), StoreError> {
                let t = tx.open_table(T)?;
                for i in 0..63u64 {
                    assert_eq!(t.get(i)?.map(|v| v.value()), (i % 4 != 0).then_some(i));
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn idempotency_keys_move_into_their_namespaces() {
        use redb::ReadableTable;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.redb");
        {
            let db = Database::create(&path).unwrap();
            migrate(&db, &path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut keys = tx.open_table(tables::queue::IDEMPOTENCY_KEYS).unwrap();
                let mut expiry = tx.open_table(tables::queue::IDEMPOTENCY_EXPIRY).unwrap();
                for (n, key) in ["order-1", "hook:sw:msg_1"].iter().enumerate() {
                    keys.insert(*key, (n as u128, 1000 + n as i64)).unwrap();
                    expiry.insert((1000 + n as i64, *key), ()).unwrap();
                }
                // The version the namespace migration upgrades from.
                let before = MIGRATIONS
                    .iter()
                    .position(|m| {
                        std::ptr::fn_addr_eq(*m, separate_idempotency_namespaces as Migration)
                    })
                    .unwrap() as u64;
                tx.open_table(tables::META)
                    .unwrap()
                    .insert(tables::META_SCHEMA_VERSION, before)
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = open(dir.path());
        store
            .read_blocking(|tx| -> Result<(), StoreError> {
                let keys = tx.open_table(tables::queue::IDEMPOTENCY_KEYS)?;
                let all: Vec<(String, (u128, i64))> = keys
                    .iter()?
                    .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value())))
                    .collect::<Result<_, _>>()?;
                assert_eq!(
                    all,
                    vec![
                        ("api:order-1".to_string(), (0, 1000)),
                        ("inbox:hook:sw:msg_1".to_string(), (1, 1001)),
                    ]
                );
                let expiry = tx.open_table(tables::queue::IDEMPOTENCY_EXPIRY)?;
                let all: Vec<(i64, String)> = expiry
                    .iter()?
                    .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
                    .collect::<Result<_, _>>()?;
                assert_eq!(
                    all,
                    vec![
                        (1000, "api:order-1".to_string()),
                        (1001, "inbox:hook:sw:msg_1".to_string()),
                    ]
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_panicking_request_is_an_error_and_the_writer_survives() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let r: Result<(), StoreError> = store.write_blocking(|_tx| panic!("boom"));
        assert!(matches!(r, Err(StoreError::Panicked(m)) if m.contains("boom")));
        let r: Result<u64, StoreError> = store.write_blocking(|tx| {
            tx.open_table(T)?.insert(1, 2)?;
            Ok(1)
        });
        assert_eq!(r.unwrap(), 1);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let second = Store::open(&dir.path().join("keel.redb"), StoreOptions::default());
        assert!(matches!(second, Err(StoreError::Locked { .. })));
    }

    #[test]
    fn newer_schema_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.redb");
        drop(open(dir.path()));
        force_schema_version(&path, SCHEMA_VERSION + 1).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path, StoreOptions::default()).err().unwrap();
        assert!(
            matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1)
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn writes_after_close_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.close();
        let r: Result<(), StoreError> = store.write_blocking(|_| Ok(()));
        assert!(matches!(r, Err(StoreError::WriterGone)));
    }
}
