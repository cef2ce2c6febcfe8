//! `lifeboat-backup wal push` as a real PostgreSQL server's archive_command, and the push
//! contract: durable before exit 0, identical re-push succeeds, a different one is refused and
//! overwrites nothing, ready segments are pushed ahead and acknowledged.

mod common;
use common::random_file;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_core::engines::postgres::scratch::{ScratchPostgres, give_to_postgres, server_bin_dir};
use backup_core::engines::postgres::wal::{self, WalName};
use backup_core::repository::{CacheOptions, Repository};
use backup_core::secret::Secret;
use backup_core::store::LocalStore;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A repository, its config file and password, all usable by the postgres user.
    fn new() -> Env {
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(e.p("pw"), "wal secret\n").unwrap();
        std::fs::write(
            e.p("c.toml"),
            format!(
                "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n",
                e.p("repo").display(),
                e.p("pw").display()
            ),
        )
        .unwrap();
        e.init();
        e
    }

    fn init(&self) {
        let out = self.run(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        give_to_postgres(self.dir.path()).unwrap();
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        let cfg = self.p("c.toml");
        Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A server whose archive_command is this binary pushing into this repository.
    fn archiving_server(&self) -> ScratchPostgres {
        let archive = format!(
            "LIFEBOAT_CACHE_DIR={} {} --config {} --quiet wal push %p",
            self.p("cache").display(),
            env!("CARGO_BIN_EXE_lifeboat-backup"),
            self.p("c.toml").display()
        );
        ScratchPostgres::start_with(&format!(
            "archive_mode = on\narchive_command = '{archive}'\n"
        ))
        .unwrap()
    }

    async fn repo(&self) -> Repository {
        Repository::open(
            Arc::new(LocalStore::new(self.p("repo"))),
            &Secret::Passphrase(b"wal secret".to_vec().into()),
            CacheOptions {
                disabled: true,
                dir: None,
            },
        )
        .await
        .unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test]
async fn a_real_server_archives_into_the_repository_and_the_archive_refuses_a_different_file() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    let e = Env::new();
    let pg = e.archiving_server();
    for i in 0..3 {
        pg.psql(
            "postgres",
            &format!("CREATE TABLE t{i} AS SELECT generate_series(1, 50000) AS n; SELECT pg_switch_wal();"),
        )
        .unwrap();
    }
    let t0 = Instant::now();
    let last = loop {
        let row = pg
            .psql(
                "postgres",
                "SELECT archived_count || ' ' || failed_count || ' ' || coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            )
            .unwrap();
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(f.get(1), Some(&"0"), "archive_command failed: {row}");
        if f[0].parse::<u32>().unwrap() >= 3 {
            break f[2].to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not archived: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let st = json(&e.run(&["--json", "wal", "status"]));
    let tl = &st["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert!(tl["segments"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(tl["newest"], last.as_str(), "{st}");
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{st}");

    // What PostgreSQL archived comes back byte for byte (the server's own copy is still in
    // pg_wal: nothing checkpointed since).
    let repo = e.repo().await;
    let name = WalName::parse(&last).unwrap();
    let fetched = e.p("fetched");
    let n = wal::fetch(&repo, &name, &fetched).await.unwrap();
    let original = pg.data_dir().join("pg_wal").join(&last);
    assert_eq!(n, 16 << 20);
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&original).unwrap());

    // An identical re-push succeeds; a different file under that name is refused (exit 6)
    // and the archived one stays as it was.
    let again = e.p(&format!("again/{last}"));
    std::fs::create_dir_all(again.parent().unwrap()).unwrap();
    std::fs::copy(&original, &again).unwrap();
    let same = json(&e.run(&[
        "--json",
        "wal",
        "push",
        again.to_str().unwrap(),
        "--lookahead",
        "0",
    ]));
    assert_eq!(same["already_archived"], true, "{same}");
    let mut bytes = std::fs::read(&again).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&again, &bytes).unwrap();
    let different = e.run(&["wal", "push", again.to_str().unwrap(), "--lookahead", "0"]);
    assert_eq!(different.status.code(), Some(6), "{}", stderr(&different));
    assert!(
        stderr(&different).contains("different content"),
        "{}",
        stderr(&different)
    );
    let after = e.p("after");
    wal::fetch(&repo, &name, &after).await.unwrap();
    assert!(std::fs::read(&after).unwrap() == std::fs::read(&original).unwrap());
    let missing = wal::fetch(
        &repo,
        &WalName::parse("00000001000000FF000000FF").unwrap(),
        &after,
    )
    .await;
    assert!(
        matches!(missing, Err(backup_core::Error::NotFound { .. })),
        "{missing:?}"
    );
}

/// A `pg_wal` with `n` segments of distinct content, all marked ready.
fn fake_pg_wal(dir: &Path, n: u8) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("archive_status")).unwrap();
    (1..=n)
        .map(|i| {
            let name = format!("0000000100000000000000{i:02X}");
            std::fs::write(dir.join(&name), vec![i; 64 << 10]).unwrap();
            std::fs::write(dir.join("archive_status").join(format!("{name}.ready")), "").unwrap();
            dir.join(name)
        })
        .collect()
}

#[tokio::test]
async fn ready_segments_are_pushed_ahead_and_later_calls_answer_from_the_acknowledgement() {
    let e = Env::new();
    let segs = fake_pg_wal(&e.p("pg_wal"), 4);
    let first = json(&e.run(&["--json", "wal", "push", segs[0].to_str().unwrap()]));
    assert_eq!(first["already_archived"], false);
    assert_eq!(
        first["pushed_ahead"].as_array().unwrap().len(),
        3,
        "{first}"
    );
    // The next call finds the acknowledgement: no key, no push.
    let second = e.run(&["wal", "push", segs[1].to_str().unwrap()]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("archived ahead by an earlier call"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    // A file changed since it was pushed ahead is not taken for the acknowledged one.
    std::fs::write(&segs[2], vec![0u8; 64 << 10]).unwrap();
    let changed = e.run(&["wal", "push", segs[2].to_str().unwrap()]);
    assert_eq!(changed.status.code(), Some(6), "{}", stderr(&changed));
    // A repository re-created at the same place does not inherit acknowledgements.
    std::fs::remove_dir_all(e.p("repo")).unwrap();
    e.init();
    let fresh = json(&e.run(&[
        "--json",
        "wal",
        "push",
        segs[3].to_str().unwrap(),
        "--lookahead",
        "0",
    ]));
    assert_eq!(fresh["already_archived"], false, "{fresh}");

    // check names a gap (segment 5 is skipped) and, with --read-data, a WAL object that does
    // not open.
    let seg6 = e.p("pg_wal/000000010000000000000006");
    std::fs::write(&seg6, vec![6u8; 64 << 10]).unwrap();
    let pushed = e.run(&["wal", "push", seg6.to_str().unwrap(), "--lookahead", "0"]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let checked = e.run(&["check"]);
    assert_eq!(checked.status.code(), Some(6), "{}", stderr(&checked));
    assert!(
        stderr(&checked).contains(
            "segments 000000010000000000000005 .. 000000010000000000000005 of timeline 1 are missing"
        ),
        "{}",
        stderr(&checked)
    );
    let object = e.p("repo/wal/00000001/000000010000000000000004");
    let mut raw = std::fs::read(&object).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    std::fs::write(&object, raw).unwrap();
    let quick = e.run(&["check"]);
    assert!(
        !stderr(&quick).contains("000000010000000000000004:"),
        "{}",
        stderr(&quick)
    );
    let deep = e.run(&["check", "--read-data"]);
    assert_eq!(deep.status.code(), Some(6));
    assert!(
        stderr(&deep).contains("WAL archive: 000000010000000000000004: ")
            && stderr(&deep).contains("authentication failed"),
        "{}",
        stderr(&deep)
    );

    // Pruning snapshots never touches the WAL archive.
    let pruned = e.run(&["prune", "--keep-last", "1"]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    let repo = e.repo().await;
    let st = wal::status(&repo, Some(&e.p("pg_wal"))).await.unwrap();
    assert_eq!(
        st.timelines[0].segments, 2,
        "only what was pushed into the new repository"
    );
    assert_eq!(st.backlog, Some(4), "the .ready files of the fake pg_wal");
}

/// `lifeboat-restore`, built next to this crate's binary by `cargo test --workspace`.
fn restore_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_lifeboat-backup")).with_file_name("lifeboat-restore");
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace` (the restored server's restore_command runs it)",
        p.display()
    );
    p
}

/// Polls `sql` on `pg` until it prints `want`.
fn wait_for(pg: &ScratchPostgres, sql: &str, want: &str, what: &str) {
    let t0 = Instant::now();
    loop {
        let got = pg.psql("postgres", sql).unwrap_or_default();
        if got.trim() == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{what}: {sql} gave {got:?}\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn point_in_time_recovery_to_a_time_and_to_the_end_of_the_archive() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    let restore = restore_bin();
    let e = Env::new();
    let pg = e.archiving_server();
    pg.psql("postgres", "CREATE TABLE marks (tag text PRIMARY KEY)")
        .unwrap();
    let base = e.run(&["run", "--pg-base", &format!("pg={}", pg.url("postgres"))]);
    assert!(base.status.success(), "base backup: {}", stderr(&base));
    give_to_postgres(e.dir.path()).unwrap();
    pg.psql("postgres", "INSERT INTO marks VALUES ('before')")
        .unwrap();
    let target = pg
        .psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO marks VALUES ('after')")
        .unwrap();
    let archived: u64 = pg
        .psql("postgres", "SELECT archived_count FROM pg_stat_archiver")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    pg.psql("postgres", "SELECT pg_switch_wal()").unwrap();
    wait_for(
        &pg,
        &format!("SELECT archived_count > {archived} FROM pg_stat_archiver"),
        "t",
        "the segment with both marks is archived",
    );

    // WAL retention: what is older than the base backup's start goes (a dry run first), the
    // rest stays, and the restores below prove nothing they need went with it.
    let dry = json(&e.run(&["--json", "prune", "--keep-last", "1", "--dry-run"]));
    let would = dry["wal"]["removed"].as_u64().unwrap();
    assert!(would >= 1, "the segment before the base backup: {dry}");
    let before = json(&e.run(&["--json", "wal", "status"]));
    let real = json(&e.run(&["--json", "prune", "--keep-last", "1"]));
    assert_eq!(real["wal"]["removed"].as_u64(), Some(would), "{real}");
    let after = json(&e.run(&["--json", "wal", "status"]));
    assert_eq!(
        after["timelines"][0]["segments"].as_u64().unwrap() + would,
        before["timelines"][0]["segments"].as_u64().unwrap()
    );
    assert_eq!(
        after["timelines"][0]["oldest"], real["wal"]["kept_from"],
        "{after}"
    );

    let pitr = |to: &Path, extra: &[&str]| {
        let mut args = vec![
            "--config".to_string(),
            e.p("c.toml").display().to_string(),
            "pitr".into(),
            "pg".into(),
            "--to-pgdata".into(),
            to.join("data").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(&restore)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let marks = |dir: &Path| {
        let restored = ScratchPostgres::adopt(dir).unwrap();
        wait_for(
            &restored,
            "SELECT pg_is_in_recovery()",
            "f",
            "recovery ends and the server is promoted",
        );
        assert_eq!(
            restored
                .psql("postgres", "SHOW archive_mode")
                .unwrap()
                .trim(),
            "off"
        );
        restored
            .psql(
                "postgres",
                "SELECT string_agg(tag, ',' ORDER BY tag) FROM marks",
            )
            .unwrap()
            .trim()
            .to_string()
    };

    let at_t = tempfile::tempdir().unwrap();
    let plan = pitr(at_t.path(), &["--time", target.trim(), "--dry-run"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(
        !at_t.path().join("data").exists(),
        "--dry-run touches nothing"
    );
    let r = pitr(at_t.path(), &["--time", target.trim()]);
    assert!(r.status.success(), "pitr --time: {}", stderr(&r));
    assert_eq!(
        marks(at_t.path()),
        "before",
        "committed before T: there; after T: not"
    );

    let latest = tempfile::tempdir().unwrap();
    let r = pitr(latest.path(), &[]);
    assert!(r.status.success(), "pitr latest: {}", stderr(&r));
    let again = pitr(latest.path(), &[]);
    assert_eq!(
        again.status.code(),
        Some(7),
        "a data directory that is not empty is refused: {}",
        stderr(&again)
    );
    assert_eq!(marks(latest.path()), "after,before");
}

#[tokio::test]
async fn a_push_killed_at_any_point_leaves_an_archive_that_check_passes_and_a_retry_completes() {
    let e = Env::new();
    let segs = fake_pg_wal(&e.p("pg_wal"), 6);
    // Bigger segments of distinct, incompressible content: a kill lands mid-seal or mid-put.
    for (i, s) in segs.iter().enumerate() {
        random_file(s, i as u64 + 1, 4 << 20);
    }
    for delay_ms in [0u64, 5, 20, 60, 150] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"))
            .arg("--config")
            .arg(e.p("c.toml"))
            .args(["--quiet", "wal", "push"])
            .arg(&segs[0])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_CACHE_DIR", e.p("cache"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let checked = e.run(&["check", "--read-data"]);
        assert!(
            checked.status.success(),
            "after a kill at {delay_ms} ms: {}",
            stderr(&checked)
        );
    }
    // PostgreSQL retries every file it was not told is archived: all of them go through.
    for s in &segs {
        let r = e.run(&["wal", "push", s.to_str().unwrap(), "--lookahead", "0"]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    let repo = e.repo().await;
    for s in &segs {
        let name = WalName::parse(s.file_name().unwrap().to_str().unwrap()).unwrap();
        let out = e.p("fetched");
        wal::fetch(&repo, &name, &out).await.unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(s).unwrap(),
            "{name}"
        );
    }
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
}
