//! Slots for Server-Sent Event streams: at most `security.max_streams_per_key` open streams per
//! API key and `security.max_streams` in all. A [`StreamPermit`] holds one slot and frees it
//! when dropped, however the stream ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

/// Why no stream may be opened now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefusal {
    /// The key has this many streams open already.
    #[error("this key already has {0} open streams; close one first")]
    PerKey(usize),
    /// The server has this many streams open already.
    #[error("the server already serves {0} streams; try again later")]
    Total(usize),
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_key: HashMap<Uuid, usize>,
}

/// The open streams, counted.
pub struct StreamSlots {
    per_key: usize,
    total: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One open stream's slot; freed on drop.
pub struct StreamPermit {
    key: Uuid,
    counts: Arc<Mutex<Counts>>,
}

impl StreamSlots {
    /// Slots for `per_key` streams per key and `total` in all.
    pub fn new(per_key: usize, total: usize) -> Self {
        StreamSlots {
            per_key,
            total,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// Takes a slot for a stream of key `key`.
    pub fn acquire(&self, key: Uuid) -> Result<StreamPermit, StreamRefusal> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.total {
            return Err(StreamRefusal::Total(counts.total));
        }
        let of_key = counts.by_key.get(&key).copied().unwrap_or(0);
        if of_key >= self.per_key {
            return Err(StreamRefusal::PerKey(of_key));
        }
        counts.total += 1;
        counts.by_key.insert(key, of_key + 1);
        Ok(StreamPermit {
            key,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_in_all_and_freed_on_drop() {
        let slots = StreamSlots::new(2, 3);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(a).err(), Some(StreamRefusal::PerKey(2)));
        let _b1 = slots.acquire(b).unwrap();
        assert_eq!(slots.acquire(b).err(), Some(StreamRefusal::Total(3)));
        drop(a1);
        assert_eq!(slots.open(), 2);
        assert!(slots.acquire(b).is_ok());
    }
}
