//! Facts about the running keel process that every layer may read: its version, when it
//! started, how long it has been up, and whether it is shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::clock::Millis;

/// keel's version, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The process's start time and shutdown flag.
#[derive(Debug)]
pub struct Process {
    /// When this process started (epoch ms, from the app's clock).
    pub started_at_ms: Millis,
    started: Instant,
    shutting_down: AtomicBool,
}

impl Process {
    /// A process that starts now: `started_at_ms` from the app's clock, uptime from the
    /// monotonic clock.
    pub fn new(started_at_ms: Millis) -> Process {
        Process {
            started_at_ms,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// How long this process has been up (monotonic, unaffected by clock changes).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Marks the process as shutting down (it stops being ready).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_flag_and_uptime() {
        let p = Process::new(1_000);
        assert_eq!(p.started_at_ms, 1_000);
        assert!(!p.is_shutting_down());
        p.begin_shutdown();
        assert!(p.is_shutting_down());
        assert!(p.uptime() < Duration::from_secs(60));
    }
}
