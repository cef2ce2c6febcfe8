//! `[hooks]` and `[sources.NAME.hooks]` around `lifeboat-backup run`: order, environment,
//! failures before and after, timeouts; and `run --partial`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A repository and a config with a volume `www` and a command source `db` whose command
    /// is `db_command`, plus the hook sections given.
    fn new(db_command: &str, hooks: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/index.html"), "<h1>hi</h1>").unwrap();
        let e = Env { dir };
        let cfg = format!(
            "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n\n{hooks}\n\n[sources.www]\ntype = \"volume\"\npath = \"{}\"\n\n[sources.db]\ntype = \"command\"\ncommand = \"{db_command}\"\n",
            e.p("repo").display(),
            e.p("pw").display(),
            e.p("www").display(),
        );
        std::fs::write(e.p("lifeboat.toml"), cfg).unwrap();
        let init = e.run(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
        assert!(init.status.success(), "{}", stderr(&init));
        e
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        let cfg = self.p("lifeboat.toml");
        Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .env("LOG", self.p("log"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.p("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let out = self.run(&["snapshots", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every phase at run and source scope logs `scope phase outcome snapshot exit error`.
fn logging_hooks(timeout: &str, extra_before: &str) -> String {
    let line = |scope: &str| {
        format!(
            "echo \\\"{scope} $LIFEBOAT_HOOK $LIFEBOAT_ACTION ${{LIFEBOAT_SOURCE:--}} ${{LIFEBOAT_OUTCOME:--}} ${{LIFEBOAT_SNAPSHOT:--}} ${{LIFEBOAT_EXIT_CODE:--}} ${{LIFEBOAT_ERROR:+error}}\\\" >> \\\"$LOG\\\""
        )
    };
    let all = |scope: &str, before_extra: &str| {
        let l = line(scope);
        let before = if before_extra.is_empty() {
            format!("[\"{l}\"]")
        } else {
            format!("[\"{l}\", \"{before_extra}\"]")
        };
        format!(
            "before = {before}\nafter = [\"{l}\"]\non_failure = [\"{l}\"]\nfinally = [\"{l}\"]\n"
        )
    };
    format!(
        "[hooks]\ntimeout = \"{timeout}\"\n{}\n[sources.db.hooks]\n{}",
        all("run", extra_before),
        all("db", "")
    )
}

#[test]
fn hooks_run_in_order_with_the_outcome_in_their_environment() {
    let e = Env::new("printf dump-bytes", &logging_hooks("1m", ""));
    let out = e.run(&["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = e.snapshot_ids();
    assert_eq!(ids.len(), 1);
    let snap = &ids[0];
    assert_eq!(
        e.log(),
        [
            "run before run - - - - ".to_string(),
            "db before run db - - - ".to_string(),
            format!("db after run db success {snap} 0 "),
            format!("db finally run db success {snap} 0 "),
            format!("run after run - success {snap} 0 "),
            format!("run finally run - success {snap} 0 "),
        ]
    );
}

#[test]
fn a_failing_before_hook_leaves_no_snapshot_and_the_closing_hooks_still_run() {
    let e = Env::new(
        "printf dump-bytes",
        &logging_hooks("1m", "echo cannot flush; exit 4"),
    );
    let out = e.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("before hook `echo cannot flush; exit 4` failed (exit status: 4)")
            && err.contains("the run was not started"),
        "{err}"
    );
    assert!(
        err.contains("  | cannot flush"),
        "its output is shown: {err}"
    );
    assert!(e.snapshot_ids().is_empty(), "no snapshot");
    assert_eq!(
        e.log(),
        [
            "run before run - - - - ",
            "run on_failure run - failure - 1 error",
            "run finally run - failure - 1 error",
        ],
        "source hooks never started, so their closing hooks do not run"
    );
}

#[test]
fn a_failed_backup_runs_on_failure_and_finally_hooks_with_the_error() {
    let e = Env::new("echo dump failed >&2; exit 3", &logging_hooks("1m", ""));
    let out = e.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(e.snapshot_ids().is_empty());
    assert_eq!(
        e.log(),
        [
            "run before run - - - - ",
            "db before run db - - - ",
            "db on_failure run db failure - 1 error",
            "db finally run db failure - 1 error",
            "run on_failure run - failure - 1 error",
            "run finally run - failure - 1 error",
        ]
    );
}

#[test]
fn a_failing_after_hook_keeps_the_snapshot_and_fails_the_exit_code() {
    let e = Env::new(
        "printf dump-bytes",
        "[hooks]\nafter = [\"echo notify failed; exit 1\"]\nfinally = [\"echo done >> \\\"$LOG\\\"\"]\n",
    );
    let out = e.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the snapshot was kept"), "{err}");
    assert_eq!(e.snapshot_ids().len(), 1, "the snapshot stays");
    assert_eq!(e.log(), ["done"], "finally still ran");
}

#[test]
fn a_hook_that_hangs_is_killed_at_its_timeout_with_its_children() {
    let e = Env::new(
        "printf dump-bytes",
        "[hooks]\ntimeout = \"1s\"\nbefore = [\"(sleep 4; touch \\\"$LOG.late\\\") & sleep 30\"]\n",
    );
    let t0 = Instant::now();
    let out = e.run(&["run"]);
    let took = t0.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was killed after 1s"), "{err}");
    assert!(
        took < Duration::from_secs(4),
        "returned at the timeout: {took:?}"
    );
    assert!(e.snapshot_ids().is_empty());
    std::thread::sleep(Duration::from_millis(5500).saturating_sub(t0.elapsed()));
    assert!(
        !e.p("log.late").exists(),
        "the hook's background child was killed with it"
    );
}

#[test]
fn a_bad_hook_timeout_is_a_config_error_naming_the_section() {
    let e = Env::new("printf x", "");
    let cfg = std::fs::read_to_string(e.p("lifeboat.toml")).unwrap();
    std::fs::write(
        e.p("lifeboat.toml"),
        format!("{cfg}\n[sources.db.hooks]\ntimeout = \"soon\"\n"),
    )
    .unwrap();
    let out = e.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[sources.db.hooks]") && stderr(&out).contains("\"soon\""),
        "{}",
        stderr(&out)
    );
}

/// `run --partial`: the healthy source is committed in a snapshot marked incomplete, exit 8,
/// retention not applied; `latest` passes the incomplete snapshot over unless the items asked
/// for are in it.
#[test]
fn a_partial_run_commits_the_healthy_sources_in_an_incomplete_snapshot() {
    let e = Env::new("echo no database >&2; exit 3", "");
    let cfg = std::fs::read_to_string(e.p("lifeboat.toml")).unwrap();
    std::fs::write(
        e.p("lifeboat.toml"),
        format!("{cfg}\n[retention]\nkeep_last = 1\n"),
    )
    .unwrap();
    let all_or_nothing = e.run(&["run"]);
    assert_eq!(
        all_or_nothing.status.code(),
        Some(1),
        "{}",
        stderr(&all_or_nothing)
    );
    assert!(e.snapshot_ids().is_empty(), "the default writes nothing");

    let out = e.run(&["run", "--partial", "--json"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(
        err.contains("source db FAILED and is not in snapshot"),
        "{err}"
    );
    assert!(err.contains("retention was not applied"), "{err}");
    let report = common::summary(&out);
    assert_eq!(report["failed"][0]["source"], "db");
    assert_eq!(report["items"].as_array().unwrap().len(), 1);
    let restore = |args: &[&str]| {
        Command::new(
            env!("CARGO_MANIFEST_DIR").to_string() + "/../../target/debug/lifeboat-restore",
        )
        .arg("--config")
        .arg(e.p("lifeboat.toml"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LIFEBOAT_CACHE_DIR", e.p("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    let shown = restore(&["show", report["snapshot"].as_str().unwrap(), "--json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let s: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(s["incomplete"][0]["source"], "db", "{s}");
    let latest_all = restore(&["plan", "latest", "--to", e.p("out").to_str().unwrap()]);
    assert!(
        !latest_all.status.success(),
        "latest of every source is not the incomplete one"
    );
    let latest_www = restore(&[
        "plan",
        "latest",
        "--only",
        "www",
        "--to",
        e.p("out").to_str().unwrap(),
    ]);
    assert!(latest_www.status.success(), "{}", stderr(&latest_www));
}
