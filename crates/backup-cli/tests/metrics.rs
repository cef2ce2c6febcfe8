//! `run --prometheus FILE` / `[metrics] textfile`: values that match the run, valid for
//! `promtool check metrics` (Debian package `prometheus`), the last success carried over a
//! failed run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::scratch::pushgateway::ScratchPushgateway;

use common::{Local as Env, stderr};

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
    let last = String::from_utf8_lossy(&ok.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let report: serde_json::Value = serde_json::from_str(&last).unwrap();
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
    let missing = backup_core::scratch::promtool::deployed_names_missing("lifeboat_backup_", &text);
    assert!(
        missing.is_empty(),
        "deploy/ queries {missing:?}, not in\n{text}"
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

/// `prune` and `check` run their `[hooks.ACTION]` and `--hook-*` flags, write their own
/// textfiles beside the run's, and every action pushes to a real Pushgateway; a failed check
/// keeps its last success time in both.
#[test]
fn prune_and_check_have_hooks_textfiles_and_push_to_a_pushgateway() {
    let pgw = ScratchPushgateway::start().expect("a scratch Pushgateway");
    let e = Env::new();
    let repo = e.p("repo").display().to_string();
    let (prom, log, cfg) = (e.p("lifeboat.prom"), e.p("hooks.log"), e.p("lifeboat.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"[repository]
url = "{repo}"
password_file = "{pw}"
[backup]
host = "db-1/blue"
[sources.db]
type = "command"
command = "head -c 200000 /dev/urandom"
[metrics]
textfile = "{prom}"
pushgateway = "{url}"
[hooks.prune]
before = ["echo prune-before $LIFEBOAT_ACTION >> {log}"]
[hooks.check]
finally = ["echo check-finally $LIFEBOAT_OUTCOME $LIFEBOAT_EXIT_CODE >> {log}"]
"#,
            pw = e.p("pw").display(),
            prom = prom.display(),
            url = pgw.url(),
            log = log.display(),
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    for _ in 0..2 {
        let run = e.run(&["-c", c, "run"]);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let after_flag = format!("echo prune-after-flag >> {}", log.display());
    let pruned = e.run(&[
        "-c",
        c,
        "prune",
        "--keep-last",
        "1",
        "--hook-after",
        &after_flag,
    ]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    let checked = e.run(&["-c", c, "check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));

    let r = format!("{{repository=\"{repo}\"}}");
    let prune_file = e.p("lifeboat-prune.prom");
    let check_file = e.p("lifeboat-check.prom");
    promtool_check(&prune_file);
    promtool_check(&check_file);
    let pruned = std::fs::read_to_string(&prune_file).unwrap();
    assert_eq!(
        sample(
            &pruned,
            &format!("lifeboat_prune_last_snapshots_forgotten{r}")
        ),
        1.0
    );
    assert_eq!(
        sample(&pruned, &format!("lifeboat_prune_last_snapshots_kept{r}")),
        1.0
    );
    let checked = std::fs::read_to_string(&check_file).unwrap();
    assert_eq!(
        sample(&checked, &format!("lifeboat_check_last_problems{r}")),
        0.0
    );
    assert_eq!(
        sample(&checked, &format!("lifeboat_check_last_read_data{r}")),
        1.0
    );
    for (prefix, text) in [("lifeboat_check_", &checked), ("lifeboat_prune_", &pruned)] {
        let missing = backup_core::scratch::promtool::deployed_names_missing(prefix, text);
        assert!(
            missing.is_empty(),
            "deploy/ queries {missing:?}, not in\n{text}"
        );
    }
    let check_success = sample(
        &checked,
        &format!("lifeboat_check_last_success_timestamp_seconds{r}"),
    );

    // Grouped by job and instance (the host, '/' and all).
    let pushed =
        |job: &str| format!("{{instance=\"db-1/blue\",job=\"{job}\",repository=\"{repo}\"}}");
    let scraped = pgw.scrape().unwrap();
    assert_eq!(
        sample(
            &scraped,
            &format!(
                "lifeboat_backup_last_run_exit_code{}",
                pushed("lifeboat_backup")
            )
        ),
        0.0
    );
    assert_eq!(
        sample(
            &scraped,
            &format!("lifeboat_backup_last_items{}", pushed("lifeboat_backup"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scraped,
            &format!(
                "lifeboat_prune_last_snapshots_forgotten{}",
                pushed("lifeboat_prune")
            )
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scraped,
            &format!("lifeboat_check_last_problems{}", pushed("lifeboat_check"))
        ),
        0.0
    );

    // A pack gone: check fails, and both the textfile and the Pushgateway keep the time of
    // the last good check next to the failure.
    let pack = largest_file(&e.p("repo"));
    std::fs::remove_file(&pack).unwrap();
    let damaged = e.run(&["-c", c, "check"]);
    let code = damaged.status.code().unwrap();
    assert_eq!(code, 6, "integrity exit code; {}", stderr(&damaged));
    let checked = std::fs::read_to_string(&check_file).unwrap();
    promtool_check(&check_file);
    assert_eq!(
        sample(&checked, &format!("lifeboat_check_last_run_exit_code{r}")),
        6.0
    );
    assert!(sample(&checked, &format!("lifeboat_check_last_problems{r}")) > 0.0);
    assert_eq!(
        sample(
            &checked,
            &format!("lifeboat_check_last_success_timestamp_seconds{r}")
        ),
        check_success
    );
    let scraped = pgw.scrape().unwrap();
    let job = pushed("lifeboat_check");
    assert_eq!(
        sample(&scraped, &format!("lifeboat_check_last_run_exit_code{job}")),
        6.0
    );
    assert_eq!(
        sample(
            &scraped,
            &format!("lifeboat_check_last_success_timestamp_seconds{job}")
        ),
        check_success
    );

    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "prune-before prune",
            "prune-after-flag",
            "check-finally success 0",
            "check-finally failure 6"
        ],
    );
}

/// The biggest file under `dir` (a pack, in a repository).
fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if best.as_ref().is_none_or(|(n, _)| m.len() > *n) {
                best = Some((m.len(), e.path()));
            }
        }
    }
    best.unwrap().1
}
