//! The single writer thread: group commit of every waiting write request.
//!
//! Requests queue in a channel. The writer takes all that are waiting (up to `max_batch`), runs
//! them one after another in one write transaction, commits once with `Durability::Immediate`,
//! then answers each caller. Requests that fail have their writes undone without undoing the
//! others: the transaction is aborted, every failed request is answered with its error, and the
//! rest of the batch is re-run once without them. A batch with k failures therefore costs two
//! runs, not k. (A request that succeeded only because of a failed one's partial writes fails on
//! the re-run and is answered then; the batch shrinks with every run, so this ends.)

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use super::StoreError;

/// Called after every commit with the batch size and the time the commit took.
pub type CommitObserver = Box<dyn Fn(usize, Duration) + Send + Sync>;

/// Told when the writer begins a write transaction and when one committed durably, on the
/// writer thread. A room that learns something inside transactions (such as the audit chain's
/// newest sequence number) keeps it as tentative at `begun` and announces it at `committed`;
/// a transaction that is aborted and re-run begins again.
pub trait TransactionHook: Send + Sync {
    /// A write transaction began (possibly a re-run of an aborted batch).
    fn begun(&self);
    /// The transaction begun last committed durably.
    fn committed(&self);
}

/// A write request type-erased for the writer's queue.
pub(super) trait WriteJob: Send {
    /// Runs the request inside `tx`; `false` means it failed and its writes must be undone.
    fn run(&mut self, tx: &WriteTransaction) -> bool;
    /// Answers the caller: with its own result when `commit` is `Ok`, else with the commit error.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

/// One closure and the channel its caller waits on.
pub(super) struct Job<T, E, F> {
    pub(super) work: F,
    pub(super) outcome: Option<Result<T, E>>,
    pub(super) reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> WriteJob for Job<T, E, F>
where
    T: Send,
    E: From<StoreError> + Send,
    F: FnMut(&WriteTransaction) -> Result<T, E> + Send,
{
    fn run(&mut self, tx: &WriteTransaction) -> bool {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (self.work)(tx)))
            .unwrap_or_else(|panic| Err(E::from(StoreError::Panicked(panic_message(&panic)))));
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Err(e), Some(Err(own))) => {
                // The request failed on its own; the commit of the others does not concern it.
                drop(e);
                Err(own)
            }
            (Err(e), _) => Err(E::from(e)),
            (Ok(()), None) => Err(E::from(StoreError::WriterGone)),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.reply.send(answer);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "write request panicked".to_string())
}

/// Messages to the writer thread.
pub(super) enum Message {
    Write(Box<dyn WriteJob>),
    /// Finish what is queued, then stop and say so.
    Stop(std::sync::mpsc::Sender<()>),
}

/// The writer loop; runs on its own thread until told to stop or every sender is gone.
pub(super) fn run(
    db: &Database,
    rx: mpsc::Receiver<Message>,
    max_batch: usize,
    observer: Option<CommitObserver>,
    hooks: Vec<std::sync::Arc<dyn TransactionHook>>,
) {
    let mut stop_reply = None;
    while stop_reply.is_none() {
        let first = match rx.recv() {
            Ok(Message::Write(job)) => job,
            Ok(Message::Stop(reply)) => {
                stop_reply = Some(reply);
                break;
            }
            Err(_) => break,
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Message::Write(job)) => batch.push(job),
                Ok(Message::Stop(reply)) => {
                    stop_reply = Some(reply);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(db, batch, observer.as_ref(), &hooks);
    }
    // Requests that raced the stop message still get their answer.
    while let Ok(message) = rx.try_recv() {
        match message {
            Message::Write(job) => commit_batch(db, vec![job], observer.as_ref(), &hooks),
            Message::Stop(reply) => {
                let _ = reply.send(());
            }
        }
    }
    if let Some(reply) = stop_reply {
        let _ = reply.send(());
    }
}

fn commit_batch(
    db: &Database,
    mut batch: Vec<Box<dyn WriteJob>>,
    observer: Option<&CommitObserver>,
    hooks: &[std::sync::Arc<dyn TransactionHook>],
) {
    loop {
        let tx = match begin(db) {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin write transaction");
                for job in batch {
                    job.finish(Err(e.clone()));
                }
                return;
            }
        };
        for hook in hooks {
            hook.begun();
        }
        let succeeded: Vec<bool> = batch.iter_mut().map(|job| job.run(&tx)).collect();
        match succeeded.iter().any(|ok| !ok) {
            true => {
                if let Err(e) = tx.abort() {
                    tracing::error!(error = %e, "aborting write transaction failed");
                }
                let (rest, failed): (Vec<_>, Vec<_>) =
                    batch.into_iter().zip(succeeded).partition(|(_, ok)| *ok);
                for (job, _) in failed {
                    job.finish(Ok(()));
                }
                batch = rest.into_iter().map(|(job, _)| job).collect();
                if batch.is_empty() {
                    return;
                }
            }
            false => {
                let started = Instant::now();
                let committed = tx.commit().map_err(StoreError::from);
                if let Some(observe) = observer {
                    observe(batch.len(), started.elapsed());
                }
                match &committed {
                    Ok(()) => hooks.iter().for_each(|hook| hook.committed()),
                    Err(e) => tracing::error!(error = %e, batch = batch.len(), "commit failed"),
                }
                for job in batch {
                    job.finish(committed.clone());
                }
                return;
            }
        }
    }
}

fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Storage(e.to_string()))?;
    Ok(tx)
}
