//! Progress counters shared between a running backup/restore and whoever displays them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Lock-free counters for the item in progress; the binaries render them on a TTY.
#[derive(Debug)]
pub struct Progress {
    item: Mutex<String>,
    done: AtomicU64,
    total: AtomicU64,
    estimated: AtomicBool,
    started: Mutex<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            item: Mutex::new(String::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            estimated: AtomicBool::new(false),
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
    /// `total` is a guess (the item's size last time), not a known length.
    pub estimated: bool,
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
        (self.total > self.done && rate > 0.0).then(|| (self.total - self.done) as f64 / rate)
    }
}

impl Progress {
    /// Starts a new item of `total` bytes (0 = unknown).
    pub fn start_item(&self, name: &str, total: u64) {
        self.start(name, total, false);
    }

    /// Starts a new item whose size is only estimated (0 = no estimate).
    pub fn start_item_estimated(&self, name: &str, estimate: u64) {
        self.start(name, estimate, true);
    }

    fn start(&self, name: &str, total: u64, estimated: bool) {
        *self.item.lock().unwrap() = name.to_string();
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.estimated.store(estimated, Ordering::Relaxed);
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
            estimated: self.estimated.load(Ordering::Relaxed),
            elapsed_secs: self.started.lock().unwrap().elapsed().as_secs_f64(),
        }
    }
}

/// `1.5 GiB`-style size.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2h03m`-style duration.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

impl ProgressView {
    /// One status line: item, bytes, rate, and share and ETA when the total is known or
    /// estimated (`of ~1.2 GiB`: last run's size; past it, no ETA is made up). Empty before
    /// any item has started.
    pub fn line(&self) -> String {
        if self.item.is_empty() {
            return String::new();
        }
        let rate = human_bytes(self.rate() as u64);
        if self.total == 0 {
            return format!("{}: {} ({rate}/s)", self.item, human_bytes(self.done));
        }
        let pct = (self.done as f64 * 100.0 / self.total as f64).min(if self.estimated {
            99.0
        } else {
            100.0
        });
        let mut s = format!(
            "{}: {} of {}{} ({pct:.0}%, {rate}/s",
            self.item,
            human_bytes(self.done),
            if self.estimated { "~" } else { "" },
            human_bytes(self.total),
        );
        if let Some(eta) = self.eta_secs() {
            s.push_str(&format!(", ETA {}", human_duration(eta)));
        }
        s.push(')');
        s
    }
}

/// Redraws the progress line on stderr twice a second until aborted; for TTYs only.
pub fn spawn_ticker(p: std::sync::Arc<Progress>) -> Ticker {
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            let line = p.view().line();
            // Nothing before the first item starts: a line without a name says nothing.
            if !line.is_empty() {
                eprint!("\r\x1b[2K{line}");
            }
        }
    });
    Ticker(handle)
}

/// A running progress display; clears its line when dropped.
#[derive(Debug)]
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
        eprint!("\r\x1b[2K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_duration(59.4), "59s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7260.0), "2h01m");
        let v = ProgressView {
            item: "db".into(),
            done: 50 << 20,
            total: 100 << 20,
            estimated: false,
            elapsed_secs: 10.0,
        };
        assert_eq!(
            v.line(),
            "db: 50.0 MiB of 100.0 MiB (50%, 5.0 MiB/s, ETA 10s)"
        );
        let grown = ProgressView {
            done: 120 << 20,
            estimated: true,
            ..v.clone()
        };
        assert_eq!(
            grown.line(),
            "db: 120.0 MiB of ~100.0 MiB (99%, 12.0 MiB/s)",
            "past an estimate: no made-up ETA, never 100%"
        );
        let idle = ProgressView {
            item: String::new(),
            ..v
        };
        assert_eq!(idle.line(), "", "no line without an item");
    }

    #[test]
    fn a_backup_estimates_from_the_last_size() {
        let p = Progress::default();
        p.start_item_estimated("uploads", 1 << 30);
        p.add(256 << 20);
        let v = p.view();
        assert!(v.estimated && v.total == 1 << 30);
        assert!(v.line().contains("of ~1.0 GiB (25%"), "{}", v.line());
    }
}
