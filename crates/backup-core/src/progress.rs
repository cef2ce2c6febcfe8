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
    /// One status line: item, bytes, rate and ETA when the total is known.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {} ({}/s)",
            self.item,
            human_bytes(self.done),
            human_bytes(self.rate() as u64)
        );
        if self.total > 0 {
            let pct = self.done as f64 * 100.0 / self.total as f64;
            s = format!(
                "{}: {} of {} ({pct:.0}%, {}/s",
                self.item,
                human_bytes(self.done),
                human_bytes(self.total),
                human_bytes(self.rate() as u64)
            );
            if let Some(eta) = self.eta_secs() {
                s.push_str(&format!(", ETA {}", human_duration(eta)));
            }
            s.push(')');
        }
        s
    }
}

/// Redraws the progress line on stderr twice a second until aborted; for TTYs only.
pub fn spawn_ticker(p: std::sync::Arc<Progress>) -> Ticker {
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            eprint!("\r\x1b[2K{}", p.view().line());
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
            elapsed_secs: 10.0,
        };
        assert_eq!(
            v.line(),
            "db: 50.0 MiB of 100.0 MiB (50%, 5.0 MiB/s, ETA 10s)"
        );
    }
}
