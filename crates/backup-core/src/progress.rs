//! Progress counters shared between a running backup/restore and whoever displays them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counters shared between a running backup or restore and its display: one lane per item in
/// flight (a backup runs items one after another, a restore several at once).
#[derive(Debug, Default)]
pub struct Progress {
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// Bytes the whole run will move, when known beforehand (a restore plan); 0 otherwise.
    expected: AtomicU64,
    started: Mutex<Option<Instant>>,
}

/// One item's counters; the item's task adds to it without taking a lock.
#[derive(Debug)]
pub struct Lane {
    name: String,
    done: AtomicU64,
    total: u64,
    estimated: bool,
    started: Instant,
    finished: AtomicBool,
}

impl Lane {
    /// Adds processed bytes.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks the item as done (it stays in the display, as done).
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }
}

/// A point-in-time reading of one [`Lane`].
#[derive(Debug, Clone)]
pub struct LaneView {
    pub name: String,
    pub done: u64,
    pub total: u64,
    pub finished: bool,
}

/// A point-in-time reading of [`Progress`]: one item's figures, or the sum over several.
#[derive(Debug, Clone)]
pub struct ProgressView {
    /// The item, or empty when several run at once (see `lanes`).
    pub item: String,
    pub done: u64,
    /// 0 when unknown (a stream of unknown length).
    pub total: u64,
    /// `total` is a guess (the item's size last time), not a known length.
    pub estimated: bool,
    pub elapsed_secs: f64,
    /// Every item of a run that restores several at once (empty for one item at a time).
    pub lanes: Vec<LaneView>,
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
    /// Starts the next item of a run that does one at a time, `total` bytes (0 = unknown).
    pub fn start_item(&self, name: &str, total: u64) {
        self.start(name, total, false);
    }

    /// Starts the next item whose size is only estimated (0 = no estimate).
    pub fn start_item_estimated(&self, name: &str, estimate: u64) {
        self.start(name, estimate, true);
    }

    fn start(&self, name: &str, total: u64, estimated: bool) {
        let lane = new_lane(name, total, estimated);
        *self.lanes.lock().unwrap() = vec![lane];
        *self.started.lock().unwrap() = Some(Instant::now());
    }

    /// Adds processed bytes to the item started last.
    pub fn add(&self, n: u64) {
        if let Some(l) = self.lanes.lock().unwrap().last() {
            l.add(n);
        }
    }

    /// The whole run will move `bytes` (a restore plan's size): the total of the summed view.
    pub fn expect(&self, bytes: u64) {
        self.expected.store(bytes, Ordering::Relaxed);
    }

    /// Adds an item that runs beside the others; the caller adds to the lane it gets.
    pub fn lane(&self, name: &str, total: u64) -> Arc<Lane> {
        let lane = new_lane(name, total, false);
        self.lanes.lock().unwrap().push(lane.clone());
        self.started
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        lane
    }

    /// Current reading: the one item's figures, or the sum once several lanes exist.
    pub fn view(&self) -> ProgressView {
        let lanes = self.lanes.lock().unwrap().clone();
        if let [l] = lanes.as_slice() {
            return ProgressView {
                item: l.name.clone(),
                done: l.done.load(Ordering::Relaxed),
                total: l.total,
                estimated: l.estimated,
                elapsed_secs: l.started.elapsed().as_secs_f64(),
                lanes: Vec::new(),
            };
        }
        let lanes: Vec<LaneView> = lanes.iter().map(|l| l.view()).collect();
        let elapsed = *self.started.lock().unwrap();
        ProgressView {
            item: String::new(),
            done: lanes.iter().map(|l| l.done).sum(),
            total: match self.expected.load(Ordering::Relaxed) {
                0 => lanes.iter().map(|l| l.total).sum(),
                n => n,
            },
            estimated: false,
            elapsed_secs: elapsed.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            lanes,
        }
    }
}

fn new_lane(name: &str, total: u64, estimated: bool) -> Arc<Lane> {
    Arc::new(Lane {
        name: name.to_string(),
        done: AtomicU64::new(0),
        total,
        estimated,
        started: Instant::now(),
        finished: AtomicBool::new(false),
    })
}

impl Lane {
    fn view(&self) -> LaneView {
        LaneView {
            name: self.name.clone(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
            finished: self.finished.load(Ordering::Relaxed),
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
        if !self.lanes.is_empty() {
            return self.lanes_line();
        }
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

    /// Several items at once: the sum, then each item's share (`done` once finished).
    fn lanes_line(&self) -> String {
        let running = self.lanes.iter().filter(|l| !l.finished).count();
        let sum = ProgressView {
            item: format!("{running} of {} items running", self.lanes.len()),
            lanes: Vec::new(),
            ..self.clone()
        };
        let mut s = sum.line();
        for l in &self.lanes {
            let state = match (l.finished, l.total) {
                (true, _) => "done".to_string(),
                (false, 0) => human_bytes(l.done),
                (false, t) => format!("{:.0}%", (l.done as f64 * 100.0 / t as f64).min(100.0)),
            };
            s.push_str(&format!(" · {} {state}", l.name));
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
            let line = p.view().line();
            // Nothing before the first item starts: a line without a name says nothing.
            if !line.is_empty() {
                eprint!("\r\x1b[2K{line}");
            }
        }
    });
    Ticker {
        task: handle,
        clear_line: true,
    }
}

/// Prints a JSON status line on stdout every second while an item runs (restic's
/// `message_type: status`; `percent_done` from 0 to 1 when the total is known).
pub fn spawn_json_status(p: std::sync::Arc<Progress>) -> Ticker {
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let v = p.view();
            if v.item.is_empty() && v.lanes.is_empty() {
                continue;
            }
            println!("{}", serde_json::to_string(&v.status()).expect("json"));
        }
    });
    Ticker {
        task: handle,
        clear_line: false,
    }
}

impl ProgressView {
    /// The JSON status event of this reading.
    pub fn status(&self) -> serde_json::Value {
        let (done, total) = (self.done, self.total);
        let mut v = serde_json::json!({
            "message_type": "status",
            "seconds_elapsed": self.elapsed_secs,
            "bytes_done": done,
            "total_bytes": total,
            "total_estimated": self.estimated,
        });
        if total > 0 {
            v["percent_done"] = (done as f64 / total as f64).min(1.0).into();
        }
        if let Some(eta) = self.eta_secs() {
            v["seconds_remaining"] = eta.into();
        }
        v["items"] = if self.lanes.is_empty() {
            serde_json::json!([{"name": self.item, "bytes_done": done, "total_bytes": total, "done": false}])
        } else {
            self.lanes
                .iter()
                .map(|l| serde_json::json!({"name": l.name, "bytes_done": l.done, "total_bytes": l.total, "done": l.finished}))
                .collect()
        };
        v
    }
}

/// A running progress display; the terminal one clears its line when dropped.
#[derive(Debug)]
pub struct Ticker {
    task: tokio::task::JoinHandle<()>,
    clear_line: bool,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
        if self.clear_line {
            eprint!("\r\x1b[2K");
        }
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
            lanes: Vec::new(),
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

    #[test]
    fn items_at_once_show_the_sum_and_each_item() {
        let p = Progress::default();
        p.expect(300 << 20);
        let db = p.lane("db", 100 << 20);
        let files = p.lane("files", 200 << 20);
        db.add(100 << 20);
        db.finish();
        files.add(50 << 20);
        let v = p.view();
        assert_eq!((v.done, v.total), (150 << 20, 300 << 20));
        let line = v.line();
        assert!(
            line.starts_with("1 of 2 items running: 150.0 MiB of 300.0 MiB (50%"),
            "{line}"
        );
        assert!(line.ends_with(" · db done · files 25%"), "{line}");
    }
}
