//! `lifeboat-drill` end to end: a passing demo, failures named in the report, budgets, cleanup
//! after success, failure and SIGINT, and an S3 repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::config::PostgresConfig;
use backup_core::engines::command::CommandSource;
use backup_core::engines::postgres::scratch::{ScratchPostgres, server_bin_dir};
use backup_core::engines::volume::{VolumeOptions, VolumeSource};
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::secret::SecretSource;
use backup_core::source::Source;
use backup_core::store::{LocalStore, Store};

fn drill(args: &[&str], tmp: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeboat-drill"))
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The drills need PostgreSQL and redis-server; a machine without them fails the test.
fn need_servers() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    assert!(
        backup_core::scratch::find_program("redis-server", &[]).is_some(),
        "redis-server not found (apt-get install redis-server)"
    );
}

/// Processes whose working directory or command line lies under `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        if !e
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let cwd = std::fs::read_link(p.join("cwd"))
            .map(|c| c.display().to_string())
            .unwrap_or_default();
        let cmd = std::fs::read(p.join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(&d) || cmd.contains(&d) {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}

fn assert_clean(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temporary directories left: {left:?}");
    let procs = processes_under(tmp);
    assert!(procs.is_empty(), "scratch processes left: {procs:?}");
}

#[test]
fn demo_drill_passes_and_its_report_shows_every_item_and_check() {
    need_servers();
    let tmp = tempfile::tempdir().unwrap();
    // Installed outside the checkout and run from elsewhere: the fixtures travel with it.
    let install = tempfile::tempdir().unwrap();
    let bin = install.path().join("lifeboat-drill");
    std::fs::copy(env!("CARGO_BIN_EXE_lifeboat-drill"), &bin).unwrap();
    let out = Command::new(&bin)
        .arg("demo")
        .current_dir(install.path())
        .env("TMPDIR", tmp.path())
        // Exported for another repository: the demo must not pick them up.
        .env("LIFEBOAT_REPOSITORY", install.path().join("elsewhere"))
        .env("LIFEBOAT_PASSWORD", "not the demo's")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{md}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(md.contains("# Restore drill: PASSED"), "{md}");
    for needle in [
        "| sample | volume",
        "| app | postgres",
        "## Point in time",
        "| cluster | the end of the base backup | 1 |",
        "recovery reached the target and the server was promoted",
        "the restored cluster has the orders",
        "| cache | redis",
        "row counts equal the backup's facts",
        "keys per db equal",
        "schema object counts",
        "RTO",
        "RPO",
        "restore s",
        "restored config file is there",
        "orders with an amount exist",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    assert!(!md.contains("FAIL"), "{md}");
    assert_clean(tmp.path());
}

struct Setup {
    dir: tempfile::TempDir,
    repo: Repository,
    _pg: Option<ScratchPostgres>,
}

impl Setup {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn drill_file(&self, extra: &str) -> PathBuf {
        let f = self.p("drill.toml");
        std::fs::write(
            &f,
            format!(
                "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n\n[reports]\njson = \"{}\"\nmarkdown = \"{}\"\nprometheus = \"{}\"\n\n{extra}",
                self.p("repo").display(),
                self.p("pw").display(),
                self.p("report.json").display(),
                self.p("report.md").display(),
                self.p("drill.prom").display()
            ),
        )
        .unwrap();
        f
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.p("report.json")).unwrap()).unwrap()
    }
}

async fn setup(with_pg: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "pw\n").unwrap();
    std::fs::create_dir_all(dir.path().join("vol/sub")).unwrap();
    std::fs::write(dir.path().join("vol/sub/a.txt"), "alpha").unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
    let secret = SecretSource::PasswordFile(dir.path().join("pw"))
        .resolve()
        .unwrap();
    let init = InitOptions {
        kdf: backup_core::codec::keys::KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        cache: CacheOptions {
            disabled: true,
            dir: None,
        },
        ..Default::default()
    };
    let repo = Repository::init(store, &secret, init).await.unwrap();
    let mut sources: Vec<Box<dyn Source>> = vec![
        Box::new(VolumeSource::new(
            "files",
            dir.path().join("vol"),
            VolumeOptions::default(),
        )),
        Box::new(CommandSource::new("dump", "head -c 3000000 /dev/urandom")),
    ];
    let pg = if with_pg {
        let pg = ScratchPostgres::start().unwrap();
        pg.psql("postgres", "CREATE DATABASE shop").unwrap();
        pg.psql("shop", "CREATE TABLE orders (id int PRIMARY KEY, amount int); INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g").unwrap();
        sources.extend(
            PostgresConfig::from_url(&pg.url("shop"))
                .sources("shop")
                .await
                .unwrap(),
        );
        Some(pg)
    } else {
        None
    };
    backup(&repo, sources, &BackupOptions::default())
        .await
        .unwrap();
    Setup { dir, repo, _pg: pg }
}

#[tokio::test]
async fn failing_checks_and_budgets_are_named_and_exit_distinctly() {
    need_servers();
    let s = setup(true).await;
    let tmp = tempfile::tempdir().unwrap();

    // A custom SQL assertion that does not hold: exit 8, check named.
    let f = s.drill_file("[[checks.sql]]\nitem = \"shop\"\nname = \"big orders exist\"\nsql = \"select count(*) from orders where amount > 1000\"\nexpect = \"> 0\"\n");
    let out = drill(&["run", f.to_str().unwrap()], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.report();
    let failed: Vec<_> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["name"], "big orders exist");
    assert_eq!(failed[0]["item"], "shop");
    assert!(
        std::fs::read_to_string(s.p("report.md"))
            .unwrap()
            .contains("| shop | big orders exist | **FAIL** |")
    );
    let prom = std::fs::read_to_string(s.p("drill.prom")).unwrap();
    backup_core::scratch::promtool::check_metrics(&prom).unwrap();
    assert!(
        prom.contains("lifeboat_drill_success 0") && prom.contains("check=\"big orders exist\"} 0"),
        "{prom}"
    );
    assert_clean(tmp.path());

    // Budgets: the snapshot is older than allowed, the restore slower than allowed: exit 9.
    let f = s.drill_file("[budgets]\nmax_snapshot_age = \"0s\"\nmax_restore_time = \"0s\"\n");
    let out = drill(&["run", f.to_str().unwrap()], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.report();
    assert_eq!(
        (r["checks_passed"].as_bool(), r["budgets_held"].as_bool()),
        (Some(true), Some(false))
    );
    let md = std::fs::read_to_string(s.p("report.md")).unwrap();
    assert!(
        md.contains("FAILED (budget exceeded)") && md.contains("EXCEEDED"),
        "{md}"
    );
    let f = s.drill_file("[budgets]\nmax_snapshot_age = \"1d\"\nmax_restore_time = \"1h\"\n");
    let out = drill(&["run", f.to_str().unwrap()], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let prom = std::fs::read_to_string(s.p("drill.prom")).unwrap();
    backup_core::scratch::promtool::check_metrics(&prom).unwrap();
    assert!(
        prom.contains("lifeboat_drill_last_success_timestamp_seconds "),
        "{prom}"
    );

    // A check naming an item the snapshot lacks is refused before anything is restored.
    std::fs::remove_file(s.p("report.json")).unwrap();
    let typo = s.drill_file("[[checks.sql]]\nitem = \"app\"\nsql = \"select 1\"\nexpect = \"1\"\n");
    let out = drill(&["run", typo.to_str().unwrap()], tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("item app") && err.contains("shop"), "{err}");
    assert!(
        !s.p("report.json").exists(),
        "nothing was restored or reported"
    );
    assert_clean(tmp.path());
    let f = s.drill_file("[budgets]\nmax_snapshot_age = \"1d\"\nmax_restore_time = \"1h\"\n");

    // A corrupted chunk: the restore of that item fails and is named.
    let snap = s.repo.find_snapshot("latest").await.unwrap();
    let chunk = snap.item("dump").unwrap().chunks[1];
    // Loose, or (when the dump's chunking made it small) inside a pack.
    let (path, at) = match s.repo.reload_packs().await.unwrap().get(&chunk) {
        Some(p) => (
            s.p("repo").join(p.pack.object_key()),
            (p.offset + u64::from(p.length) / 2) as usize,
        ),
        None => (s.p("repo").join(chunk.object_key()), 40),
    };
    let mut b = std::fs::read(&path).unwrap();
    b[at] ^= 1;
    std::fs::write(&path, b).unwrap();
    let out = drill(&["run", f.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(8));
    let r = s.report();
    let failed: Vec<_> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["item"], "dump");
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&chunk.to_hex()),
        "{failed:?}"
    );
    assert_clean(tmp.path());
}

#[tokio::test]
async fn sigint_mid_drill_leaves_no_scratch_process_or_directory() {
    need_servers();
    let s = setup(true).await;
    let tmp = tempfile::tempdir().unwrap();
    let f = s.drill_file("[[checks.shell]]\ncommand = \"sleep 30\"\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeboat-drill"))
        .args(["run", f.to_str().unwrap()])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the drill's scratch PostgreSQL runs and the slow check has started.
    let t0 = Instant::now();
    while !processes_under(tmp.path())
        .iter()
        .any(|p| p.contains("sleep 30") || p.contains("postgres"))
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !processes_under(tmp.path()).is_empty(),
        "scratch servers were running"
    );
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_clean(tmp.path());
}

#[tokio::test]
async fn drill_against_an_s3_repository() {
    let s3 = backup_core::scratch::s3::ScratchS3::start().unwrap_or_else(|e| panic!("{e}"));
    let mut o = backup_core::store::S3Options::from_url("s3://drills/prod").unwrap();
    o.endpoint = Some(s3.endpoint());
    o.path_style = true;
    o.access_key_id = Some("k".into());
    o.secret_access_key = Some("s".into());
    let st = backup_core::store::S3Store::new(o).await.unwrap();
    st.create_bucket(false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "pw\n").unwrap();
    std::fs::write(dir.path().join("secret"), "s\n").unwrap();
    std::fs::create_dir_all(dir.path().join("vol")).unwrap();
    std::fs::write(dir.path().join("vol/x"), "from s3").unwrap();
    let store: Arc<dyn Store> = Arc::new(st);
    let secret = SecretSource::PasswordFile(dir.path().join("pw"))
        .resolve()
        .unwrap();
    let repo = Repository::init(
        store,
        &secret,
        InitOptions {
            cache: CacheOptions {
                disabled: true,
                dir: None,
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    backup(
        &repo,
        vec![Box::new(VolumeSource::new(
            "files",
            dir.path().join("vol"),
            VolumeOptions::default(),
        ))],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    let f = dir.path().join("drill.toml");
    std::fs::write(
        &f,
        format!(
            "[repository]\nurl = \"s3://drills/prod\"\npassword_file = \"{}\"\n\n[repository.s3]\nendpoint = \"{}\"\npath_style = true\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\n\n[[checks.shell]]\ncommand = \"grep -q 'from s3' $LIFEBOAT_DRILL_DIR/restored/files/x\"\n",
            dir.path().join("pw").display(),
            s3.endpoint(),
            dir.path().join("secret").display()
        ),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(&["run", f.to_str().unwrap(), "--json"], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["repository"]
            .as_str()
            .unwrap()
            .starts_with("s3://drills/prod")
    );
    assert_clean(tmp.path());
}

/// `lifeboat-backup`, built next to the drill binary by `cargo test --workspace`.
fn backup_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_lifeboat-drill")).with_file_name("lifeboat-backup");
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace` (the primary's archive_command runs it)",
        p.display()
    );
    p
}

#[tokio::test]
async fn a_point_in_time_drill_proves_its_markers_and_reports_rpo_and_rto() {
    need_servers();
    let s = setup(false).await;
    backup_core::engines::postgres::scratch::give_to_postgres(s.dir.path()).unwrap();
    let cfg = s.p("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            s.p("repo").display(),
            s.p("pw").display()
        ),
    )
    .unwrap();
    let archive = format!(
        "LIFEBOAT_CACHE_DIR={} {} --config {} --quiet wal push %p",
        s.p("pg-cache").display(),
        backup_bin().display(),
        cfg.display()
    );
    let primary = ScratchPostgres::start_with(&format!(
        "archive_mode = on\narchive_command = '{archive}'\n"
    ))
    .unwrap();
    primary
        .psql(
            "postgres",
            "CREATE TABLE orders AS SELECT generate_series(1, 1000) AS id",
        )
        .unwrap();
    let base = Command::new(backup_bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--no-cache",
            "run",
            "--pg-base",
        ])
        .arg(format!("cluster={}", primary.url("postgres")))
        .output()
        .unwrap();
    assert!(
        base.status.success(),
        "{}",
        String::from_utf8_lossy(&base.stderr)
    );
    backup_core::engines::postgres::scratch::give_to_postgres(s.dir.path()).unwrap();
    let pitr = format!(
        "[[pitr]]\nitem = \"cluster\"\nmarker_url = \"{}\"\nmax_rpo = \"1h\"\nmax_rto = \"5m\"\n\n[[checks.sql]]\nitem = \"cluster\"\nsql = \"select count(*) from orders\"\nexpect = \"= 1000\"\n",
        primary.url("postgres")
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(&["run", s.drill_file(&pitr).to_str().unwrap()], tmp.path());
    let md = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{md}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "markers committed in the primary and their WAL archived",
        "| cluster | the marker committed before the target is there | pass",
        "| cluster | the marker committed after the target is not | pass",
        "recovery stopping before commit",
        "select count(*) from orders",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    let r = s.report();
    let p = &r["pitr"][0];
    assert!(p["rpo_seconds"].as_f64().unwrap() < 3600.0, "{p}");
    assert!(p["rto_seconds"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(p["timeline"], 1, "{p}");
    assert!(
        p["markers"]["before"]
            .as_str()
            .unwrap()
            .starts_with("before-"),
        "{p}"
    );
    let prom = std::fs::read_to_string(s.p("drill.prom")).unwrap();
    backup_core::scratch::promtool::check_metrics(&prom).unwrap();
    assert!(
        prom.contains("lifeboat_drill_pitr_rto_seconds{item=\"cluster\"}"),
        "{prom}"
    );
    let missing = backup_core::scratch::promtool::deployed_names_missing("lifeboat_drill_", &prom);
    assert!(
        missing.is_empty(),
        "deploy/ queries {missing:?}, not in\n{prom}"
    );
    assert_clean(tmp.path());

    // The same drill with an RTO budget nobody can meet: the checks pass, the budget fails.
    let tight = pitr.replace("max_rto = \"5m\"", "max_rto = \"0s\"");
    let out = drill(&["run", s.drill_file(&tight).to_str().unwrap()], tmp.path());
    let md = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(9), "{md}");
    assert!(md.contains("EXCEEDED"), "{md}");
    assert_clean(tmp.path());
}

/// A drill file's `[hooks]` and `[monitor]` run around the drill as around a backup, and its
/// metrics reach a real Pushgateway; a failed drill keeps its last success time there.
#[tokio::test]
async fn a_drill_runs_its_hooks_tells_its_monitor_and_pushes_its_metrics() {
    let pgw = backup_core::scratch::pushgateway::ScratchPushgateway::start()
        .expect("a scratch Pushgateway");
    let s = setup(false).await;
    let tmp = tempfile::tempdir().unwrap();
    let (log, notified) = (s.p("hooks.log"), s.p("notified.json"));
    let file = |extra: &str| {
        s.drill_file(&format!(
            "pushgateway = \"{}\"\n{extra}\n[hooks]\nbefore = [\"echo before $LIFEBOAT_ACTION >> {log}\"]\nfinally = [\"echo finally $LIFEBOAT_OUTCOME $LIFEBOAT_EXIT_CODE >> {log}\"]\n\n[[monitor.command]]\ncommand = \"cat > {notified}\"\n",
            pgw.url(),
            log = log.display(),
            notified = notified.display()
        ))
    };
    let told = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&notified).unwrap()).unwrap()
    };
    let series = |name: &str| {
        let want = format!(
            "{name}{{instance=\"{}\",job=\"lifeboat_drill\"}} ",
            backup_core::hostname()
        );
        let text = pgw.scrape().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .unwrap_or_else(|| panic!("no {want} in\n{text}"))
            .parse::<f64>()
            .unwrap()
    };

    let out = drill(&["run", file("").to_str().unwrap()], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = told();
    assert_eq!(
        (n["action"].as_str(), n["outcome"].as_str()),
        (Some("drill"), Some("success"))
    );
    assert_eq!(n["snapshot"], s.report()["snapshot"]);
    assert_eq!(series("lifeboat_drill_success"), 1.0);
    let success = series("lifeboat_drill_last_success_timestamp_seconds");

    // A budget exceeded: exit 9, the monitor told why, the last success stays pushed.
    let budget = file("\n[budgets]\nmax_restore_time = \"0s\"\n");
    let out = drill(&["run", budget.to_str().unwrap()], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = told();
    assert_eq!(
        (n["outcome"].as_str(), n["exit_code"].as_u64()),
        (Some("failure"), Some(9))
    );
    assert!(n["error"].as_str().unwrap().contains("budget"), "{n}");
    assert_eq!(series("lifeboat_drill_success"), 0.0);
    assert_eq!(
        series("lifeboat_drill_last_success_timestamp_seconds"),
        success
    );

    // A failing `before` hook: no drill at all, and the monitor hears of it.
    std::fs::remove_file(s.p("report.json")).unwrap();
    let refused = file("").to_str().unwrap().to_string();
    let text = std::fs::read_to_string(&refused).unwrap();
    std::fs::write(
        &refused,
        text.replace("before = [\"echo", "before = [\"false\", \"echo"),
    )
    .unwrap();
    let out = drill(&["run", &refused], tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("before hook `false` failed"), "{err}");
    assert!(!s.p("report.json").exists(), "the drill did not run");
    assert_eq!(told()["outcome"], "failure");
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [
            "before drill",
            "finally success 0",
            "before drill",
            "finally failure 9",
            "finally failure 1",
        ]
    );
    assert_clean(tmp.path());
}
