//! The drill report and its renderings: JSON for machines, Markdown for auditors, a Prometheus
//! textfile for alerting.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The item checked (empty for drill-wide checks).
    pub item: String,
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub seconds: f64,
}

/// One restored item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub target: String,
    /// Fetch, decrypt, decompress and load (streamed together).
    pub restore_seconds: f64,
    pub checks_seconds: f64,
}

/// One point-in-time restore (`[[pitr]]`).
#[derive(Debug, Clone, Serialize)]
pub struct PitrResult {
    pub item: String,
    pub target: String,
    pub timeline: Option<u32>,
    /// The snapshot whose base backup was restored.
    pub base_snapshot: Option<String>,
    pub replay_segments: usize,
    /// How old the newest archived WAL was when the drill started: what losing the primary
    /// then would have cost.
    pub rpo_seconds: Option<f64>,
    /// Unpacking the base backup.
    pub restore_seconds: f64,
    /// Starting the server until recovery ended and it was promoted.
    pub replay_seconds: f64,
    pub rto_seconds: f64,
    pub recovery: Option<backup_core::engines::postgres::recovery::RecoveryReport>,
    pub markers: Option<crate::pitr::Markers>,
    pub max_rpo_seconds: Option<f64>,
    pub max_rto_seconds: Option<f64>,
}

impl PitrResult {
    /// Both budgets held (a missing RPO figure does not hold a budget).
    pub fn budgets_held(&self) -> bool {
        self.max_rpo_seconds
            .is_none_or(|b| self.rpo_seconds.is_some_and(|r| r <= b))
            && self.max_rto_seconds.is_none_or(|b| self.rto_seconds <= b)
    }
}

/// Everything a drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub repository: String,
    pub snapshot: String,
    pub snapshot_time: DateTime<Utc>,
    pub host: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Now minus snapshot time.
    pub rpo_seconds: f64,
    /// Start of the drill to everything restored and checked.
    pub rto_seconds: f64,
    pub max_snapshot_age_seconds: Option<f64>,
    pub max_restore_time_seconds: Option<f64>,
    pub items: Vec<ItemResult>,
    /// Point-in-time restores.
    pub pitr: Vec<PitrResult>,
    pub checks: Vec<CheckResult>,
    /// Server and tool versions involved.
    pub versions: BTreeMap<String, String>,
    pub checks_passed: bool,
    pub budgets_held: bool,
}

/// HELP and TYPE of the last-success metric (also written when it is carried over).
pub const LAST_SUCCESS_HEAD: &str = "# HELP lifeboat_drill_last_success_timestamp_seconds When a drill last passed.\n# TYPE lifeboat_drill_last_success_timestamp_seconds gauge";

/// The textfile of a drill that could not run at all (repository unreachable, bad drill
/// file): not a success, whatever the last file said.
pub fn prometheus_not_run() -> String {
    "# HELP lifeboat_drill_success 1 if the last drill passed every check and budget.\n# TYPE lifeboat_drill_success gauge\nlifeboat_drill_success 0\n".to_string()
}

impl DrillReport {
    /// Every check passed and every budget held.
    pub fn success(&self) -> bool {
        self.checks_passed && self.budgets_held
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let verdict = if self.success() {
            "PASSED"
        } else if !self.checks_passed {
            "FAILED (restore or check)"
        } else {
            "FAILED (budget exceeded)"
        };
        let _ = writeln!(m, "# Restore drill: {verdict}\n");
        let _ = writeln!(m, "| | |\n|---|---|");
        let _ = writeln!(m, "| repository | `{}` |", self.repository);
        let _ = writeln!(
            m,
            "| snapshot | `{}` of {} UTC from {} |",
            self.snapshot,
            self.snapshot_time.format("%Y-%m-%d %H:%M:%S"),
            self.host
        );
        let _ = writeln!(
            m,
            "| drill | {} → {} UTC |",
            self.started.format("%Y-%m-%d %H:%M:%S"),
            self.finished.format("%H:%M:%S")
        );
        let budget = |v: f64, b: Option<f64>| match b {
            Some(b) => format!(
                "{v:.1} s (budget {b:.0} s: {})",
                if v <= b { "held" } else { "EXCEEDED" }
            ),
            None => format!("{v:.1} s (no budget)"),
        };
        let _ = writeln!(
            m,
            "| RPO (snapshot age) | {} |",
            budget(self.rpo_seconds, self.max_snapshot_age_seconds)
        );
        let _ = writeln!(
            m,
            "| RTO (restore + checks) | {} |",
            budget(self.rto_seconds, self.max_restore_time_seconds)
        );
        for (k, v) in &self.versions {
            let _ = writeln!(m, "| {k} | {v} |");
        }
        let _ = writeln!(
            m,
            "\n## Items\n\n| item | kind | size | restored to | restore s | checks s |\n|---|---|---|---|---|---|"
        );
        for i in &self.items {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.2} | {:.2} |",
                i.name, i.kind, i.size, i.target, i.restore_seconds, i.checks_seconds
            );
        }
        self.pitr_markdown(&mut m);
        let _ = writeln!(
            m,
            "\n## Checks\n\n| item | check | result | detail | s |\n|---|---|---|---|---|"
        );
        for c in &self.checks {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.2} |",
                c.item,
                c.name,
                if c.passed { "pass" } else { "**FAIL**" },
                c.detail.replace('|', "\\|").replace('\n', " "),
                c.seconds
            );
        }
        m
    }

    fn pitr_markdown(&self, m: &mut String) {
        if self.pitr.is_empty() {
            return;
        }
        let _ = writeln!(
            m,
            "\n## Point in time\n\n| item | target | timeline | base snapshot | segments | RPO (archive lag) | RTO (unpack + replay) |\n|---|---|---|---|---|---|---|"
        );
        let budget = |v: Option<f64>, b: Option<f64>| match (v, b) {
            (Some(v), Some(b)) => format!(
                "{v:.1} s (budget {b:.0} s: {})",
                if v <= b { "held" } else { "EXCEEDED" }
            ),
            (Some(v), None) => format!("{v:.1} s"),
            (None, Some(b)) => format!("unknown (budget {b:.0} s: EXCEEDED)"),
            (None, None) => "unknown".into(),
        };
        for p in &self.pitr {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} ({:.1} + {:.1}) |",
                p.item,
                p.target,
                p.timeline.map(|t| t.to_string()).unwrap_or_default(),
                p.base_snapshot
                    .as_deref()
                    .map(|s| &s[..s.len().min(8)])
                    .unwrap_or(""),
                p.replay_segments,
                budget(p.rpo_seconds, p.max_rpo_seconds),
                budget(Some(p.rto_seconds), p.max_rto_seconds),
                p.restore_seconds,
                p.replay_seconds
            );
        }
    }

    /// Prometheus textfile-collector metrics.
    pub fn prometheus(&self) -> String {
        let mut p = String::new();
        let ok = u8::from(self.success());
        let _ = writeln!(
            p,
            "# HELP lifeboat_drill_success 1 if the last drill passed every check and budget.\n# TYPE lifeboat_drill_success gauge\nlifeboat_drill_success {ok}"
        );
        let _ = writeln!(
            p,
            "# HELP lifeboat_drill_rto_seconds Restore and check time of the last drill.\n# TYPE lifeboat_drill_rto_seconds gauge\nlifeboat_drill_rto_seconds {:.3}",
            self.rto_seconds
        );
        let _ = writeln!(
            p,
            "# HELP lifeboat_drill_rpo_seconds Age of the drilled snapshot.\n# TYPE lifeboat_drill_rpo_seconds gauge\nlifeboat_drill_rpo_seconds {:.3}",
            self.rpo_seconds
        );
        if self.success() {
            let _ = writeln!(
                p,
                "{LAST_SUCCESS_HEAD}\nlifeboat_drill_last_success_timestamp_seconds {}",
                self.finished.timestamp()
            );
        }
        if !self.pitr.is_empty() {
            let _ = writeln!(
                p,
                "# HELP lifeboat_drill_pitr_rto_seconds Unpack and replay time of the last point-in-time drill.\n# TYPE lifeboat_drill_pitr_rto_seconds gauge"
            );
            for r in &self.pitr {
                let _ = writeln!(
                    p,
                    "lifeboat_drill_pitr_rto_seconds{{item=\"{}\"}} {:.3}",
                    esc(&r.item),
                    r.rto_seconds
                );
            }
            let _ = writeln!(
                p,
                "# HELP lifeboat_drill_pitr_rpo_seconds Age of the newest archived WAL when the last point-in-time drill started.\n# TYPE lifeboat_drill_pitr_rpo_seconds gauge"
            );
            for r in self.pitr.iter().filter(|r| r.rpo_seconds.is_some()) {
                let _ = writeln!(
                    p,
                    "lifeboat_drill_pitr_rpo_seconds{{item=\"{}\"}} {:.3}",
                    esc(&r.item),
                    r.rpo_seconds.unwrap_or_default()
                );
            }
        }
        let _ = writeln!(
            p,
            "# HELP lifeboat_drill_check_passed 1 if the check passed.\n# TYPE lifeboat_drill_check_passed gauge"
        );
        for c in &self.checks {
            let _ = writeln!(
                p,
                "lifeboat_drill_check_passed{{item=\"{}\",check=\"{}\"}} {}",
                esc(&c.item),
                esc(&c.name),
                u8::from(c.passed)
            );
        }
        p
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}
