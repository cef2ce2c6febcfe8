//! `run --prometheus FILE` / `[metrics] textfile`: values that match the run, valid for
//! `promtool check metrics` (Debian package `prometheus`), the last success carried over a
//! failed run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        let e = Env { dir };
        let init = e.run(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
        assert!(init.status.success(), "{}", stderr(&init));
        e
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_REPOSITORY", self.p("repo"))
            .env("LIFEBOAT_PASSWORD_FILE", self.p("pw"))
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// `promtool check metrics` on the file; a machine without promtool fails the test.
fn promtool_check(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    if let Err(e) = backup_core::scratch::promtool::check_metrics(&text) {
        panic!("{e}");
    }
}

/// The sample `name{labels}` in a textfile.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn run_metrics_match_the_run_and_a_failure_keeps_the_last_success() {
    let e = Env::new();
    let prom = e.p("lifeboat.prom");
    let repo = e.p("repo").display().to_string();
    let ok = e.run(&[
        "run",
        "--json",
        "--command",
        "db=head -c 300000 /dev/urandom",
        "--prometheus",
        prom.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    promtool_check(&prom);
    let text = std::fs::read_to_string(&prom).unwrap();
    let r = format!("{{repository=\"{repo}\"}}");
    assert_eq!(
        sample(&text, &format!("lifeboat_backup_last_run_exit_code{r}")),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "lifeboat_backup_source_size_bytes{{repository=\"{repo}\",source=\"db\",kind=\"command\"}}"
            )
        ),
        300000.0
    );
    assert_eq!(
        sample(&text, &format!("lifeboat_backup_last_stored_bytes{r}")),
        report["stored_bytes"].as_f64().unwrap()
    );
    let success = sample(
        &text,
        &format!("lifeboat_backup_last_success_timestamp_seconds{r}"),
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - success).abs() < 60.0, "{success} vs {now}");

    let failed = e.run(&[
        "run",
        "--command",
        "db=exit 3",
        "--prometheus",
        prom.to_str().unwrap(),
    ]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    promtool_check(&prom);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        sample(&text, &format!("lifeboat_backup_last_run_exit_code{r}")),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("lifeboat_backup_last_success_timestamp_seconds{r}")
        ),
        success,
        "the last success is carried over"
    );
    assert!(
        !text.contains("lifeboat_backup_source_size_bytes"),
        "no per-source figures for a run without a snapshot:\n{text}"
    );
}

/// The alert rules shipped in deploy/prometheus are valid and fire when their unit tests say.
#[test]
fn the_shipped_alert_rules_pass_their_promtool_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [
        vec!["check", "rules", "lifeboat-alerts.yml"],
        vec!["test", "rules", "lifeboat-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool not found: install the Debian package `prometheus` (.ci/run does)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
}
