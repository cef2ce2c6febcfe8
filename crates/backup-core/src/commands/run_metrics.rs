//! Prometheus metrics of a `run`'s snapshot, named like the exporters people run
//! (`lifeboat_backup_last_success_timestamp_seconds{repository}` …), for node_exporter's
//! textfile collector.

use crate::commands::backup::BackupReport;
use crate::metrics::Metrics;

impl BackupReport {
    /// What the snapshot holds and cost: totals and one series per source.
    pub fn metrics(&self, m: &mut Metrics, repository: &str) {
        report_metrics(m, repository, self);
    }
}

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
            "lifeboat_backup_source_anomalies",
            "How many ways the source's item differs from its last one (rows, keys, files, size); 0: alike.",
            &labels,
            i.anomalies.len() as f64,
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
    use crate::commands::backup::BackupReport;
    use crate::supervise::action_metrics;

    const LAST_SUCCESS: &str = "lifeboat_backup_last_success_timestamp_seconds";

    #[test]
    fn a_failed_run_keeps_the_last_success_time() {
        let before = format!(
            "# HELP {LAST_SUCCESS} x\n# TYPE {LAST_SUCCESS} gauge\n{LAST_SUCCESS}{{repository=\"/srv/repo\"}} 1000\n"
        );
        let text = action_metrics::<BackupReport>("/srv/repo", None, 1, 2.0, Some(&before));
        assert!(
            text.contains(&format!(
                "{LAST_SUCCESS}{{repository=\"/srv/repo\"}} 1000\n"
            )),
            "{text}"
        );
        assert!(text.contains("lifeboat_backup_last_run_exit_code{repository=\"/srv/repo\"} 1\n"));
        assert!(
            !action_metrics::<BackupReport>("/srv/repo", None, 1, 2.0, None).contains(LAST_SUCCESS),
            "no success known"
        );
    }
}
