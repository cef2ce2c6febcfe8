//! Prometheus metrics of a `run`, named like the exporters people run
//! (`lifeboat_backup_last_success_timestamp_seconds{repository}` …), for node_exporter's
//! textfile collector.

use chrono::{DateTime, Utc};

use crate::commands::backup::BackupReport;
use crate::metrics::{Metrics, previous_value};

/// How a `run` ended.
#[derive(Debug, Clone)]
pub struct RunOutcome<'a> {
    pub repository: &'a str,
    /// The backup's report, when it wrote a snapshot (an `after` hook or retention may still
    /// have failed the exit code, and a partial run's snapshot may be incomplete).
    pub report: Option<&'a BackupReport>,
    pub exit_code: u8,
    pub seconds: f64,
    pub finished: DateTime<Utc>,
}

const LAST_SUCCESS: &str = "lifeboat_backup_last_success_timestamp_seconds";

/// The textfile for `outcome`. A run that wrote no snapshot carries over the last success
/// time from `previous` (the file it replaces), so "no success in 26 h" stays computable.
pub fn run_metrics(o: &RunOutcome<'_>, previous: Option<&str>) -> String {
    let mut m = Metrics::new();
    let repo = [("repository", o.repository)];
    m.gauge(
        "lifeboat_backup_last_run_timestamp_seconds",
        "When the last run ended.",
        &repo,
        o.finished.timestamp() as f64,
    );
    m.gauge(
        "lifeboat_backup_last_run_exit_code",
        "Exit code of the last run (0: success; see the README's exit codes).",
        &repo,
        f64::from(o.exit_code),
    );
    m.gauge(
        "lifeboat_backup_last_run_duration_seconds",
        "Wall time of the last run, hooks and retention included.",
        &repo,
        o.seconds,
    );
    // An incomplete snapshot (`run --partial`) is not a success: a source is missing from it.
    let last_success = match o.report {
        Some(r) if r.failed.is_empty() => Some(o.finished.timestamp() as f64),
        _ => previous.and_then(|p| previous_value(p, LAST_SUCCESS, &repo)),
    };
    if let Some(t) = last_success {
        m.gauge(LAST_SUCCESS, "When a run last wrote a snapshot.", &repo, t);
    }
    if let Some(r) = o.report {
        report_metrics(&mut m, o.repository, r);
    }
    m.render()
}

/// What the last snapshot holds and cost: totals and one series per source.
fn report_metrics(m: &mut Metrics, repository: &str, r: &BackupReport) {
    let repo = [("repository", repository)];
    let totals = [
        (
            "lifeboat_backup_last_size_bytes",
            "Bytes read by the last successful run.",
            r.size as f64,
        ),
        (
            "lifeboat_backup_last_stored_bytes",
            "Bytes the last successful run wrote to the repository (new, compressed, encrypted).",
            r.stored_bytes as f64,
        ),
        (
            "lifeboat_backup_last_new_chunks",
            "Chunks the last successful run wrote.",
            r.chunks_new as f64,
        ),
        (
            "lifeboat_backup_last_store_retries",
            "Store requests the last successful run retried.",
            r.store_retries as f64,
        ),
        (
            "lifeboat_backup_last_items",
            "Items in the last snapshot.",
            r.items.len() as f64,
        ),
        (
            "lifeboat_backup_last_warnings",
            "Warnings of the last successful run.",
            r.warnings.len() as f64,
        ),
    ];
    for (name, help, v) in totals {
        m.gauge(name, help, &repo, v);
    }
    for i in &r.items {
        let kind = i.kind.to_string();
        let labels = [
            ("repository", repository),
            ("source", i.name.as_str()),
            ("kind", kind.as_str()),
        ];
        m.gauge(
            "lifeboat_backup_source_size_bytes",
            "Size of the source's item in the last snapshot.",
            &labels,
            i.size as f64,
        );
        m.gauge(
            "lifeboat_backup_source_stored_bytes",
            "Bytes the last run wrote for the source.",
            &labels,
            i.stored_bytes as f64,
        );
        m.gauge(
            "lifeboat_backup_source_duration_seconds",
            "Time the last run took for the source.",
            &labels,
            i.seconds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_keeps_the_last_success_time() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        let failed = RunOutcome {
            repository: "/srv/repo",
            report: None,
            exit_code: 1,
            seconds: 2.0,
            finished: t(2000),
        };
        let before = format!(
            "# HELP {LAST_SUCCESS} x\n# TYPE {LAST_SUCCESS} gauge\n{LAST_SUCCESS}{{repository=\"/srv/repo\"}} 1000\n"
        );
        let text = run_metrics(&failed, Some(&before));
        assert!(
            text.contains(&format!(
                "{LAST_SUCCESS}{{repository=\"/srv/repo\"}} 1000\n"
            )),
            "{text}"
        );
        assert!(text.contains("lifeboat_backup_last_run_exit_code{repository=\"/srv/repo\"} 1\n"));
        assert!(
            !run_metrics(&failed, None).contains(LAST_SUCCESS),
            "no success known"
        );
    }
}
