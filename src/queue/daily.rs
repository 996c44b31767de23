//! Processed and failed attempts per UTC day, for the last [`DAILY_DAYS`] days: counted in the
//! transaction that records how an attempt ended, and days older than that are deleted when a
//! new day starts.

use redb::ReadableTable;

use super::model::{DayCount, Outcome};
use super::tables::{ReadableTables, Tables};
use super::{Queue, QueueError};
use crate::clock::Millis;

/// Days of counts kept and answered, today included.
pub const DAILY_DAYS: i64 = 30;

const DAY_MS: i64 = 86_400_000;

/// Counts the attempt that ended with `outcome` at `now`: succeeded and failed attempts are
/// processed, failed ones also failed; attempts that were deferred, interrupted or cancelled do
/// not count.
pub(super) fn record(t: &mut Tables<'_>, outcome: &Outcome, now: Millis) -> Result<(), QueueError> {
    let failed = match outcome {
        Outcome::Succeeded { .. } => 0,
        Outcome::Retry { .. } | Outcome::Fail { .. } => 1,
        Outcome::Defer { .. } | Outcome::Cancelled | Outcome::Interrupted => return Ok(()),
    };
    let day = now.div_euclid(DAY_MS);
    let current = t.daily()?.get(day)?.map(|v| v.value());
    if current.is_none() {
        let expired: Vec<i64> = t
            .daily()?
            .range(..=day - DAILY_DAYS)?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for old in expired {
            t.daily_mut()?.remove(old)?;
        }
    }
    let (processed, failures) = current.unwrap_or((0, 0));
    t.daily_mut()?
        .insert(day, (processed + 1, failures + failed))?;
    Ok(())
}

impl Queue {
    /// The counts of the last [`DAILY_DAYS`] days, oldest first, days without attempts as 0.
    pub async fn daily_counts(&self) -> Result<Vec<DayCount>, QueueError> {
        let today = self.clock.now_ms().div_euclid(DAY_MS);
        self.read(move |t| {
            let first = today - DAILY_DAYS + 1;
            let mut days: Vec<DayCount> = (first..=today)
                .map(|day| DayCount {
                    day_start: day * DAY_MS,
                    processed: 0,
                    failed: 0,
                })
                .collect();
            for row in t.daily()?.range(first..=today)? {
                let (k, v) = row?;
                let (processed, failed) = v.value();
                let slot = &mut days[(k.value() - first) as usize];
                slot.processed = processed;
                slot.failed = failed;
            }
            Ok(days)
        })
        .await
    }
}
