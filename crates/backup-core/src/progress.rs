//! Progress counters shared between a running backup/restore and whoever displays them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lock-free counters for the item in progress; the binaries render them on a TTY.
#[derive(Debug)]
pub struct Progress {
    item: Mutex<String>,
    done: AtomicU64,
    total: AtomicU64,
    started: Mutex<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            item: Mutex::new(String::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started: Mutex::new(Instant::now()),
        }
    }
}

/// A point-in-time reading of [`Progress`].
#[derive(Debug, Clone)]
pub struct ProgressView {
    pub item: String,
    pub done: u64,
    /// 0 when unknown (a stream of unknown length).
    pub total: u64,
    pub elapsed_secs: f64,
}

impl ProgressView {
    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.done as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    /// Seconds left, when the total is known.
    pub fn eta_secs(&self) -> Option<f64> {
        let rate = self.rate();
        (self.total > 0 && rate > 0.0).then(|| self.total.saturating_sub(self.done) as f64 / rate)
    }
}

impl Progress {
    /// Starts a new item of `total` bytes (0 = unknown).
    pub fn start_item(&self, name: &str, total: u64) {
        *self.item.lock().unwrap() = name.to_string();
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        *self.started.lock().unwrap() = Instant::now();
    }

    /// Adds processed bytes.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Current reading.
    pub fn view(&self) -> ProgressView {
        ProgressView {
            item: self.item.lock().unwrap().clone(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            elapsed_secs: self.started.lock().unwrap().elapsed().as_secs_f64(),
        }
    }
}
