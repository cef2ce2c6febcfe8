//! PostgreSQL against real servers started here: round trips, dedup, failures, restore safety
//! and same-snapshot row counts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::Error;
use backup_core::commands::backup::{BackupOptions, BackupReport, backup};
use backup_core::commands::restore::{
    ApplyOptions, RestoreOptions, RestoreReport, TargetState, apply, plan,
};
use backup_core::config::PostgresConfig;
use backup_core::engines::postgres::restore::PgRestoreOptions;
use backup_core::engines::postgres::scratch::{PASSWORD_ROLE, ScratchPostgres, server_bin_dir};
use backup_core::manifest::Snapshot;
use backup_core::repository::Repository;
use common::*;

/// A started server with the fixture loaded into database `app`; a machine without
/// PostgreSQL fails the test (it never skips).
fn server() -> ScratchPostgres {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    let pg = ScratchPostgres::start().expect("scratch PostgreSQL starts");
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/postgres/schema.sql");
    pg.psql_file("app", &fixture).expect("fixture loads");
    pg
}

async fn backup_db(
    repo: &Repository,
    name: &str,
    cfg: &PostgresConfig,
) -> backup_core::Result<BackupReport> {
    let sources = cfg.sources(name).await?;
    backup(repo, sources, &BackupOptions::default()).await
}

async fn restore_to(
    repo: &Repository,
    snap: &Snapshot,
    pg: PgRestoreOptions,
    force: bool,
) -> backup_core::Result<RestoreReport> {
    let opts = RestoreOptions {
        force,
        postgres: pg,
        ..Default::default()
    };
    let p = plan(snap, &opts).await?;
    apply(repo, snap, &p, &ApplyOptions::default()).await
}

fn schema_only(pg: &ScratchPostgres, db: &str) -> String {
    let out = Command::new("pg_dump")
        .args(["--schema-only", "-d", &pg.url(db)])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(pg: &ScratchPostgres, db: &str, table: &str) -> i64 {
    pg.psql(db, &format!("SELECT count(*) FROM {table}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn round_trip_into_a_fresh_database_is_identical() {
    let pg = server();
    let t = new_repo().await;
    let report = backup_db(&t.repo, "db", &PostgresConfig::from_url(&pg.url("app")))
        .await
        .unwrap();
    assert!(
        report.items[0].chunks >= 8,
        "fixture spans many chunks: {}",
        report.items[0].chunks
    );
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let facts = &snap.item("db").unwrap().facts;
    assert_eq!(facts["row_counts"]["sales.orders"], 60000);
    assert_eq!(facts["row_counts"]["public.customers"], 20000);
    assert_eq!(facts["objects"]["large_objects"], 1);
    assert_eq!(facts["database"], "app");

    let restored = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            url: Some(pg.url("copy")),
            ..Default::default()
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        restored.items[0].sink.verified_tables,
        Some(5),
        "every table's count checked"
    );
    assert_eq!(schema_only(&pg, "app"), schema_only(&pg, "copy"));
    for table in [
        "public.customers",
        "sales.orders",
        "sales.attachments",
        "audit.events",
        "audit.documents",
    ] {
        assert_eq!(
            count(&pg, "app", table),
            count(&pg, "copy", table),
            "{table}"
        );
    }
    let lo = pg
        .psql("copy", "SELECT length(lo_get(lo)) FROM audit.documents")
        .unwrap();
    assert_eq!(lo.trim(), "36000", "large object restored");
}

#[tokio::test]
async fn unchanged_database_stores_nothing_and_one_table_changes_little() {
    let pg = server();
    let t = new_repo().await;
    let cfg = PostgresConfig::from_url(&pg.url("app"));
    let first = backup_db(&t.repo, "db", &cfg).await.unwrap();
    let files = t.chunk_files();
    let second = backup_db(&t.repo, "db", &cfg).await.unwrap();
    assert_eq!(
        second.chunks_new, 0,
        "the dump's timestamped header is kept out of the chunks"
    );
    assert_eq!(t.chunk_files(), files);
    // Changes confined to one table (no trigger): the other tables' data is reused.
    pg.psql("app", "INSERT INTO sales.attachments (order_id, blob) SELECT 1, '\\x00' FROM generate_series(1, 200)").unwrap();
    let third = backup_db(&t.repo, "db", &cfg).await.unwrap();
    eprintln!(
        "one-table change: {} of {} chunks new, {} bytes stored of a {} byte dump",
        third.chunks_new, third.items[0].chunks, third.stored_bytes, third.size
    );
    assert!(
        third.chunks_new * 2 < first.items[0].chunks,
        "most chunks reused: {} new of {}",
        third.chunks_new,
        third.items[0].chunks
    );
}

#[tokio::test]
async fn wrong_password_and_missing_database_fail_with_the_cause() {
    let pg = server();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD 'right'"),
    )
    .unwrap();
    let t = new_repo().await;
    let url = format!(
        "postgresql://{PASSWORD_ROLE}:wrong@127.0.0.1:{}/app",
        pg.port()
    );
    let e = backup_db(&t.repo, "db", &PostgresConfig::from_url(&url))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::SourceFailed { item, .. } if item == "db"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("wrong@"),
        "the password is redacted: {e}"
    );
    let mut cfg = PostgresConfig::from_url(&format!(
        "postgresql://{PASSWORD_ROLE}@127.0.0.1:{}/app",
        pg.port()
    ));
    let pwfile = t.dir.path().join("pgpw");
    std::fs::write(&pwfile, "right\n").unwrap();
    cfg.password_file = Some(pwfile);
    backup_db(&t.repo, "db", &cfg)
        .await
        .expect("the password from password_file works");

    let e = backup_db(&t.repo, "db", &PostgresConfig::from_url(&pg.url("nope")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"nope\" does not exist"), "{e}");
    assert_eq!(
        t.repo.snapshots().await.unwrap().len(),
        1,
        "failed runs left no snapshot"
    );
}

/// A bin dir whose pg_dump dies mid-stream, next to the real psql.
fn dying_pg_dump(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = server_bin_dir().unwrap();
    for prog in ["psql", "pg_dumpall", "pg_restore"] {
        std::os::unix::fs::symlink(real.join(prog), bin.join(prog)).unwrap();
    }
    // Streams the first 300 kB of a real dump, then dies as a killed pg_dump would.
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = --version ] && exec {real}/pg_dump --version\n{real}/pg_dump \"$@\" | head -c 300000\nkill -KILL $$\n",
        real = real.display()
    );
    std::fs::write(bin.join("pg_dump"), script).unwrap();
    std::fs::set_permissions(
        bin.join("pg_dump"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    bin
}

#[tokio::test]
async fn killed_pg_dump_or_stopped_server_leaves_no_snapshot() {
    let mut pg = server();
    let t = new_repo().await;
    let mut cfg = PostgresConfig::from_url(&pg.url("app"));
    cfg.bin_dir = Some(dying_pg_dump(t.dir.path()));
    let e = backup_db(&t.repo, "db", &cfg).await.unwrap_err();
    assert!(matches!(e, Error::SourceFailed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("137") || e.to_string().contains("signal"),
        "{e}"
    );
    assert!(t.repo.snapshots().await.unwrap().is_empty());

    // The server goes away while pg_dump waits for a lock it needs.
    let locker = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &pg.url("app"),
            "-c",
            "BEGIN; LOCK TABLE sales.orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30);",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let repo = t.repo.clone();
    let url = pg.url("app");
    let run =
        tokio::spawn(async move { backup_db(&repo, "db", &PostgresConfig::from_url(&url)).await });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    pg.kill().unwrap();
    let e = run.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::SourceFailed { .. }), "{e:?}");
    assert!(
        e.to_string().to_lowercase().contains("connection") || e.to_string().contains("terminat"),
        "names the cause: {e}"
    );
    assert!(t.repo.snapshots().await.unwrap().is_empty());
    drop(locker);
}

#[tokio::test]
async fn restore_safety_clean_jobs_selective_and_version_check() {
    let pg = server();
    let t = new_repo().await;
    backup_db(&t.repo, "db", &PostgresConfig::from_url(&pg.url("app")))
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let into = |db: &str| PgRestoreOptions {
        url: Some(pg.url(db)),
        ..Default::default()
    };

    // The source database itself is occupied: refused, untouched.
    let before = schema_only(&pg, "app");
    let e = restore_to(&t.repo, &snap, into("app"), false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TargetNotEmpty { .. }), "{e:?}");
    assert_eq!(schema_only(&pg, "app"), before);

    // --clean replaces, with parallel jobs through a spool file.
    pg.psql(
        "app",
        "INSERT INTO public.customers (name) VALUES ('added after the backup')",
    )
    .unwrap();
    let r = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            clean: true,
            jobs: 2,
            ..into("app")
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.items[0].sink.verified_tables, Some(5));
    assert_eq!(
        count(&pg, "app", "public.customers"),
        20000,
        "--clean restored the snapshot's rows"
    );

    // Only one table.
    let r = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            tables: vec!["customers".into()],
            ..into("one")
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.items[0].sink.verified_tables, Some(1));
    let tables = pg.psql("one", "SELECT string_agg(relname, ',') FROM pg_class WHERE relkind = 'r' AND relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema'))").unwrap();
    assert_eq!(tables.trim(), "customers");

    // A schema-qualified table, into a new database without that schema: the schema is
    // created, only that table restored, its rows verified.
    let r = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            tables: vec!["audit.events".into()],
            ..into("qualified")
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.items[0].sink.verified_tables, Some(1));
    assert_eq!(
        count(&pg, "qualified", "audit.events"),
        count(&pg, "app", "audit.events")
    );
    // The same with --schema and a bare name, into a live database the table was dropped
    // from: not "occupied" (nothing is overwritten), the table comes back.
    pg.psql(
        "qualified",
        "DROP TABLE audit.events; DROP SCHEMA audit; CREATE TABLE keep (x int)",
    )
    .unwrap();
    restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            tables: vec!["events".into()],
            schemas: vec!["audit".into()],
            ..into("qualified")
        },
        false,
    )
    .await
    .unwrap();
    assert!(count(&pg, "qualified", "audit.events") > 0);
    // A table whose sequence is a separate object fails in pg_restore: the message says
    // why, and the database this restore created is gone again.
    let e = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            tables: vec!["sales.orders".into()],
            ..into("needs_seq")
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("without what they depend on"), "{e}");
    let left = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'needs_seq'",
        )
        .unwrap();
    assert_eq!(left.trim(), "0", "the created database was dropped");
    // Asking for a table the backup lacks is refused before anything is created.
    let e = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            tables: vec!["billing.invoices".into()],
            ..into("nothing_here")
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("no table billing.invoices")
            && e.to_string().contains("sales.orders"),
        "{e}"
    );
    let exists = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'nothing_here'",
        )
        .unwrap();
    assert_eq!(exists.trim(), "0", "no database left behind");

    // A pg_restore older than the dump: refused by the plan, the target never created.
    let old = t.dir.path().join("oldbin");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("pg_restore"),
        "#!/bin/sh\necho 'pg_restore (PostgreSQL) 9.6.24'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        old.join("pg_restore"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(server_bin_dir().unwrap().join("psql"), old.join("psql")).unwrap();
    let mut opts = into("never");
    opts.tools.bin_dir = Some(old);
    let e = restore_to(&t.repo, &snap, opts, false).await.unwrap_err();
    assert!(matches!(&e, Error::Incompatible { .. }), "{e:?}");
    assert!(
        e.to_string().contains("9.6.24") && e.to_string().contains("15."),
        "names both versions: {e}"
    );
    let exists = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'never'",
        )
        .unwrap();
    assert_eq!(exists.trim(), "0", "nothing was touched");
}

#[tokio::test]
async fn row_counts_come_from_the_dumps_snapshot_under_concurrent_writes() {
    let pg = server();
    let t = new_repo().await;
    let before = count(&pg, "app", "audit.events");
    let mut writer = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &pg.url("app"),
            "-c",
            "DO $$ BEGIN FOR i IN 1..1000000 LOOP INSERT INTO audit.events (kind) VALUES ('live'); COMMIT; END LOOP; END $$;",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    backup_db(&t.repo, "db", &PostgresConfig::from_url(&pg.url("app")))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = writer.kill();
    let _ = writer.wait();
    let after = count(&pg, "app", "audit.events");
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let recorded = snap.item("db").unwrap().facts["row_counts"]["audit.events"]
        .as_i64()
        .unwrap();
    assert!(
        before < recorded && recorded < after,
        "writes overlapped the backup: {before} < {recorded} < {after}"
    );
    let r = restore_to(
        &t.repo,
        &snap,
        PgRestoreOptions {
            url: Some(pg.url("snapcopy")),
            ..Default::default()
        },
        false,
    )
    .await
    .expect("restored counts equal the recorded ones");
    assert_eq!(r.items[0].sink.verified_tables, Some(5));
    assert_eq!(count(&pg, "snapcopy", "audit.events"), recorded);
    let plan_again = plan(
        &snap,
        &RestoreOptions {
            postgres: PgRestoreOptions {
                url: Some(pg.url("snapcopy")),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(plan_again.items[0].target_state, TargetState::Occupied);
}

#[tokio::test]
async fn a_locked_table_fails_the_backup_after_the_lock_timeout_naming_it() {
    let pg = server();
    let t = new_repo().await;
    // A migration holding ACCESS EXCLUSIVE on a table for longer than the test runs.
    let mut locker = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &pg.url("app"),
            "-c",
            "BEGIN; LOCK TABLE audit.events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut cfg = PostgresConfig::from_url(&pg.url("app"));
    cfg.lock_timeout = Some("1s".into());
    let t0 = std::time::Instant::now();
    let e = backup_db(&t.repo, "db", &cfg).await.unwrap_err();
    let took = t0.elapsed();
    let _ = locker.kill();
    let _ = locker.wait();
    assert!(
        took.as_secs() < 30,
        "failed after {took:?}, not the lock's 60 s"
    );
    assert!(
        e.to_string().contains("lock timeout") && e.to_string().contains("events"),
        "the cause and the table are named: {e}"
    );
    assert!(t.repo.snapshots().await.unwrap().is_empty(), "no snapshot");
}
