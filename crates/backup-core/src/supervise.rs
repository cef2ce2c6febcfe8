//! One order around every unattended action — `run`, `prune`, `check`, a drill: the start
//! ping, the `before` hooks, the work, the closing hooks, then the notifications and the
//! Pushgateway push. Callers do and render their work; the order and its rules live here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};

use crate::commands::backup::BackupReport;
use crate::commands::check::CheckReport;
use crate::commands::prune::PruneReport;
use crate::error::Result;
use crate::hooks::{HookContext, HookReport, RunHooks};
use crate::metrics::{Metrics, previous_value};
use crate::notify::{MonitorConfig, Outcome, RunSummary};
use crate::progress::{human_bytes, human_duration};

/// How long a push to the Pushgateway may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// An action that hooks, monitors and metrics wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    Prune,
    Check,
    Drill,
}

impl Action {
    /// The prefix of the action's metric names, and its Pushgateway job.
    pub fn job(self) -> &'static str {
        match self {
            Action::Run => "lifeboat_backup",
            Action::Prune => "lifeboat_prune",
            Action::Check => "lifeboat_check",
            Action::Drill => "lifeboat_drill",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Run => "run",
            Action::Prune => "prune",
            Action::Check => "check",
            Action::Drill => "drill",
        })
    }
}

/// How an action ended, as its closing hooks and its monitors are told.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    pub exit_code: u8,
    /// The error, with its hint, when the action failed with one.
    pub error: Option<String>,
    pub snapshot: Option<String>,
    /// Per item (a run's): name, kind, size, stored bytes.
    pub items: Vec<serde_json::Value>,
    /// The action's account of itself (result line, warnings, error): the pings' body.
    pub log: String,
}

/// Hooks, monitors and the Pushgateway of one action.
#[derive(Debug)]
pub struct Supervisor {
    action: Action,
    repository: String,
    host: String,
    hooks: RunHooks,
    monitor: MonitorConfig,
    pushgateway: Option<String>,
    started: DateTime<Utc>,
    t0: Instant,
    warnings: Vec<String>,
}

impl Supervisor {
    pub fn new(
        action: Action,
        repository: &str,
        host: String,
        hooks: RunHooks,
        monitor: MonitorConfig,
        pushgateway: Option<String>,
    ) -> Supervisor {
        Supervisor {
            action,
            repository: repository.to_string(),
            host,
            hooks,
            monitor,
            pushgateway,
            started: Utc::now(),
            t0: Instant::now(),
            warnings: Vec::new(),
        }
    }

    /// Pings the monitor's start URL (before the lock: a run stuck waiting for it shows as
    /// started and not finished).
    pub async fn start(&mut self) {
        let w = self.monitor.started().await;
        self.warnings.extend(w);
    }

    /// The `before` hooks; an error fails the action before it does anything.
    pub async fn before(&mut self) -> Result<()> {
        let ctx = self.context(None);
        self.hooks.before(&ctx).await
    }

    /// The closing hooks for how the action ended; a failed `after` hook is an error (what the
    /// action wrote stays).
    pub async fn end(&mut self, e: &Ending) -> Result<()> {
        let ctx = self.context(Some(e));
        self.hooks.end(&ctx).await
    }

    /// Reports of the hooks run since the last call.
    pub fn drain_hooks(&mut self) -> Vec<HookReport> {
        self.hooks.drain()
    }

    /// Tells the monitors how the action ended and pushes `metrics` (its exposition text) to
    /// the Pushgateway. Returns the warnings of the whole action: nothing here fails it.
    pub async fn finish(&mut self, e: &Ending, metrics: &str) -> Vec<String> {
        if !self.monitor.is_empty() {
            let w = self.monitor.finished(&self.summary(e)).await;
            self.warnings.extend(w);
        }
        if let Some(url) = &self.pushgateway {
            let pushed = push(url, self.action, &self.host, metrics).await;
            self.warnings.extend(pushed.err());
        }
        std::mem::take(&mut self.warnings)
    }

    /// Seconds since the supervisor was made (hooks included).
    pub fn seconds(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn context(&self, e: Option<&Ending>) -> HookContext {
        HookContext {
            action: self.action.to_string(),
            repository: Some(self.repository.clone()),
            outcome: e.map(|e| outcome(e.exit_code).to_string()),
            snapshot: e.and_then(|e| e.snapshot.clone()),
            error: e.and_then(|e| e.error.clone()),
            exit_code: e.map(|e| e.exit_code),
            source: None,
        }
    }

    fn summary(&self, e: &Ending) -> RunSummary {
        RunSummary {
            action: self.action.to_string(),
            outcome: outcome(e.exit_code),
            exit_code: e.exit_code,
            repository: self.repository.clone(),
            host: self.host.clone(),
            snapshot: e.snapshot.clone(),
            error: e.error.clone(),
            started: self.started,
            finished: Utc::now(),
            items: e.items.clone(),
            log: e.log.clone(),
        }
    }
}

fn outcome(exit_code: u8) -> Outcome {
    if exit_code == 0 {
        Outcome::Success
    } else {
        Outcome::Failure
    }
}

/// POSTs `text` to the Pushgateway under `job`, grouped by `instance` (the host). POST, not
/// PUT: only the families pushed are replaced, so a failed run leaves the group's last
/// success time in place, as the textfile carries it over.
async fn push(
    base: &str,
    action: Action,
    host: &str,
    text: &str,
) -> std::result::Result<(), String> {
    // The base64 form takes any host name, '/' included.
    let instance = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(host);
    let url = format!(
        "{}/metrics/job/{}/instance@base64/{instance}",
        base.trim_end_matches('/'),
        action.job()
    );
    let req = crate::notify::Request {
        method: hyper::Method::POST,
        url: &url,
        body: text.as_bytes().to_vec(),
        content_type: "text/plain; version=0.0.4",
        headers: &BTreeMap::new(),
    };
    crate::notify::send(req, PUSH_TIMEOUT).await.map_err(|why| {
        format!(
            "pushing the {action} metrics to the Pushgateway {} failed: {why}",
            crate::notify::redact(base)
        )
    })
}

/// What an action's report tells its supervisor: how it reads to a monitor, whether it counts
/// as a success, and its own metrics.
pub trait Supervised {
    /// The action this report is of.
    const ACTION: Action;

    /// The ending of a finished action that exited with `exit_code`.
    fn ending(&self, exit_code: u8) -> Ending;

    /// Whether it is a success for `…_last_success_timestamp_seconds`.
    fn succeeded(&self, exit_code: u8) -> bool {
        exit_code == 0
    }

    /// Adds the action's own figures.
    fn metrics(&self, m: &mut Metrics, repository: &str);
}

impl Supervised for BackupReport {
    const ACTION: Action = Action::Run;

    fn ending(&self, exit_code: u8) -> Ending {
        let mut log = format!(
            "snapshot {} saved: {} item(s), {} read, {} stored in {}",
            self.snapshot.short(),
            self.items.len(),
            human_bytes(self.size),
            human_bytes(self.stored_bytes),
            human_duration(self.seconds)
        );
        for f in &self.failed {
            log.push_str(&format!("\nfailed: {}: {}", f.source, f.error));
        }
        for w in &self.warnings {
            log.push_str(&format!("\nwarning: {w}"));
        }
        Ending {
            exit_code,
            error: None,
            snapshot: Some(self.snapshot.to_string()),
            items: self
                .items
                .iter()
                .map(|i| serde_json::json!({"name": i.name, "kind": i.kind, "size": i.size, "stored_bytes": i.stored_bytes}))
                .collect(),
            log,
        }
    }

    /// A snapshot with every source: an `after` hook or retention that failed the exit code
    /// does not undo it; an incomplete one (`run --partial`) lacks a source.
    fn succeeded(&self, _exit_code: u8) -> bool {
        self.failed.is_empty()
    }

    fn metrics(&self, m: &mut Metrics, repository: &str) {
        BackupReport::metrics(self, m, repository);
    }
}

impl Supervised for PruneReport {
    const ACTION: Action = Action::Prune;

    fn ending(&self, exit_code: u8) -> Ending {
        let forgotten = self.forget.as_ref().map_or(0, |f| f.forgotten.len());
        let mut log = format!("prune: {forgotten} snapshot(s) forgotten");
        if let Some(g) = &self.gc {
            log.push_str(&format!(
                ", {} chunk(s) and {} pack(s) deleted",
                g.chunks_deleted, g.packs_deleted
            ));
        }
        for d in &self.damaged {
            log.push_str(&format!("\ndamaged: {d}"));
        }
        Ending {
            exit_code,
            log,
            ..Default::default()
        }
    }

    fn metrics(&self, m: &mut Metrics, repository: &str) {
        PruneReport::metrics(self, m, repository);
    }
}

impl Supervised for CheckReport {
    const ACTION: Action = Action::Check;

    fn ending(&self, exit_code: u8) -> Ending {
        let mut log = format!(
            "check{}: {} snapshot(s), {} chunk(s), {} problem(s)",
            if self.read_data { " --read-data" } else { "" },
            self.snapshots,
            self.chunks,
            self.problems.len()
        );
        for p in &self.problems {
            log.push_str(&format!("\nproblem: {}", p.message));
        }
        Ending {
            exit_code,
            log,
            ..Default::default()
        }
    }

    fn metrics(&self, m: &mut Metrics, repository: &str) {
        CheckReport::metrics(self, m, repository);
    }
}

/// The metrics of a finished action: its outcome's and, when it produced a report, the
/// report's own. `previous` is the textfile being replaced.
pub fn action_metrics<T: Supervised>(
    repository: &str,
    report: Option<&T>,
    exit_code: u8,
    seconds: f64,
    previous: Option<&str>,
) -> String {
    let mut m = Metrics::new();
    let f = Finished {
        exit_code,
        seconds,
        at: Utc::now(),
        success: report.is_some_and(|r| r.succeeded(exit_code)),
    };
    outcome_metrics(&mut m, T::ACTION, repository, &f, previous);
    if let Some(r) = report {
        r.metrics(&mut m, repository);
    }
    m.render()
}

/// When and how an action ended, for [`outcome_metrics`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: u8,
    pub seconds: f64,
    pub at: DateTime<Utc>,
    /// Whether this counts as a success (a run's incomplete snapshot does not).
    pub success: bool,
}

/// The figures every action reports, named `{job}_last_run_timestamp_seconds`,
/// `…_last_run_exit_code`, `…_last_run_duration_seconds` and
/// `…_last_success_timestamp_seconds`. A run that did not succeed carries the last success
/// time over from `previous` (the file it replaces), so "no success in 26 h" stays computable.
pub fn outcome_metrics(
    m: &mut Metrics,
    action: Action,
    repository: &str,
    f: &Finished,
    previous: Option<&str>,
) {
    let job = action.job();
    let repo = [("repository", repository)];
    m.gauge(
        &format!("{job}_last_run_timestamp_seconds"),
        &format!("When the last {action} ended."),
        &repo,
        f.at.timestamp() as f64,
    );
    m.gauge(
        &format!("{job}_last_run_exit_code"),
        &format!("Exit code of the last {action} (0: success; see the README's exit codes)."),
        &repo,
        f64::from(f.exit_code),
    );
    m.gauge(
        &format!("{job}_last_run_duration_seconds"),
        &format!("Wall time of the last {action}, hooks included."),
        &repo,
        f.seconds,
    );
    let last_success = format!("{job}_last_success_timestamp_seconds");
    let t = match f.success {
        true => Some(f.at.timestamp() as f64),
        false => previous.and_then(|p| previous_value(p, &last_success, &repo)),
    };
    if let Some(t) = t {
        m.gauge(
            &last_success,
            &format!("When the last successful {action} ended."),
            &repo,
            t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textfiles_of_other_actions_sit_beside_the_runs() {
        let m = crate::config::MetricsConfig {
            textfile: Some("/var/lib/node_exporter/lifeboat.prom".into()),
            pushgateway: None,
        };
        assert_eq!(
            m.textfile_for(Action::Run).unwrap().to_str(),
            Some("/var/lib/node_exporter/lifeboat.prom")
        );
        assert_eq!(
            m.textfile_for(Action::Prune).unwrap().to_str(),
            Some("/var/lib/node_exporter/lifeboat-prune.prom")
        );
    }

    #[test]
    fn a_failed_check_keeps_the_last_success_time() {
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let mut ok = Metrics::new();
        let done = Finished {
            exit_code: 0,
            seconds: 1.0,
            at: at(1000),
            success: true,
        };
        outcome_metrics(&mut ok, Action::Check, "/r", &done, None);
        let before = ok.render();
        let mut failed = Metrics::new();
        let f = Finished {
            exit_code: 4,
            at: at(2000),
            success: false,
            ..done
        };
        outcome_metrics(&mut failed, Action::Check, "/r", &f, Some(&before));
        let text = failed.render();
        assert!(
            text.contains(
                "lifeboat_check_last_success_timestamp_seconds{repository=\"/r\"} 1000\n"
            ),
            "{text}"
        );
        assert!(text.contains("lifeboat_check_last_run_exit_code{repository=\"/r\"} 4\n"));
    }
}
