//! `wal stream` end to end against real PostgreSQL servers and the S3 test server: markers
//! committed every second under pgbench load survive `kill -9` of the primary up to seconds
//! before it, a restored server streams on its new timeline, S3 down for 30 s loses nothing,
//! a streamer killed mid-load leaves no gap beside `archive_command`, in synchronous mode
//! every acknowledged commit is in the repository, and streaming from a standby follows its
//! promotion.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use backup_core::engines::postgres::scratch::{
    MD5_ROLE, PASSWORD_ROLE, ScratchPostgres, give_to_postgres, server_bin_dir,
};
use backup_core::engines::postgres::wal::parse_lsn;

/// Markers committed more than this long before the primary died must be restored.
const RPO_BOUND: Duration = Duration::from_secs(5);

fn need_postgres() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
}

/// A `wal stream` process with its status file.
struct Streamer {
    child: Child,
    status: PathBuf,
    log: PathBuf,
}

impl Streamer {
    fn start(e: &Env, name: &str, url: &str, extra: &[&str]) -> Streamer {
        let status = e.p(&format!("{name}.json"));
        let log = e.p(&format!("{name}.log"));
        let s = status.display().to_string();
        let mut args = vec![
            "wal",
            "stream",
            "--url",
            url,
            "--status-file",
            &s,
            "--piece-seconds",
            "1",
        ];
        args.extend_from_slice(extra);
        let child = e.spawn(&args, &log);
        let st = Streamer { child, status, log };
        st.wait(
            "connected",
            |s| s["connected"] == true,
            Duration::from_secs(30),
        );
        st
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read_to_string(&self.status)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if ok(&s) {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "streamer not {what} after {timeout:?}: {s}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until WAL up to `lsn` is durable in the repository.
    fn wait_durable(&self, lsn: u64) {
        self.wait(
            &format!("durable up to {lsn:X}"),
            |s| s["durable_lsn"].as_u64().is_some_and(|d| d >= lsn),
            Duration::from_secs(60),
        );
    }

    /// SIGTERM, and the exit must be clean.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let st = self.child.wait().unwrap();
        let log = self.log();
        assert!(st.success(), "wal stream exited {st}: {log}");
        log
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn flush_lsn(pg: &ScratchPostgres) -> u64 {
    parse_lsn(
        pg.psql("postgres", "SELECT pg_current_wal_flush_lsn()")
            .unwrap()
            .trim(),
    )
    .unwrap()
}

fn markers_in(pg: &ScratchPostgres) -> BTreeSet<u32> {
    pg.psql("postgres", "SELECT n FROM markers")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Commits marker `n` and returns when the commit was acknowledged.
fn commit_marker(pg: &ScratchPostgres, n: u32) -> Instant {
    pg.psql("postgres", &format!("INSERT INTO markers VALUES ({n})"))
        .unwrap();
    Instant::now()
}

/// A server with pgbench tables, a markers table, a streamer and a base backup taken while
/// it streams (so the archive holds every byte from the backup on).
fn streamed_server(e: &Env, extra_conf: &str) -> (ScratchPostgres, Streamer) {
    need_postgres();
    let pg = ScratchPostgres::start_with(extra_conf).unwrap();
    assert!(
        pgbench(&pg, &["-i", "-s", "2", "-q"])
            .status()
            .unwrap()
            .success()
    );
    pg.psql("postgres", "CREATE TABLE markers (n int PRIMARY KEY)")
        .unwrap();
    let s = Streamer::start(e, "stream", &pg.url("postgres"), &[]);
    e.base_backup(&pg, &[]);
    (pg, s)
}

#[tokio::test]
async fn streamed_wal_alone_restores_every_marker_older_than_5_s_after_kill_9_s3_and_a_restored_server_streams_on_its_new_timeline()
 {
    let e = Env::s3(None).await;
    let (mut pg, s) = streamed_server(&e, "");
    let mut load = pgbench(&pg, &["-c", "2", "-T", "60", "-n"])
        .spawn()
        .unwrap();
    let mut markers = Vec::new();
    let t0 = Instant::now();
    for n in 1..=12u32 {
        markers.push((n, commit_marker(&pg, n)));
        let next = t0 + Duration::from_secs(n as u64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    pg.kill9().unwrap();
    let killed = Instant::now();
    let _ = load.kill();
    let _ = load.wait();
    // What was received before the server died is made durable; then nothing more comes.
    s.wait(
        "drained",
        |st| st["connected"] == false && st["durable_lsn"] == st["received_lsn"],
        Duration::from_secs(60),
    );
    let log = s.stop();

    let dir = tempfile::tempdir().unwrap();
    let (restored, report) = e.pitr_started(dir.path(), &[]);
    let got = markers_in(&restored);
    let mut first_missing = None;
    for (n, at) in &markers {
        let age = killed - *at;
        if !got.contains(n) {
            first_missing.get_or_insert(age);
        }
        assert!(
            age <= RPO_BOUND || got.contains(n),
            "marker {n}, committed {age:?} before the kill, is missing ({report})\n{log}"
        );
    }
    match first_missing {
        Some(age) => eprintln!(
            "achieved RPO: markers committed {age:?} before kill -9 and later were lost ({} of {} restored)",
            got.len(),
            markers.len()
        ),
        None => eprintln!(
            "achieved RPO: every marker restored, the last one committed {:?} before kill -9",
            killed - markers.last().unwrap().1
        ),
    }
    assert!(
        got.len() >= markers.len() - RPO_BOUND.as_secs() as usize,
        "{got:?}"
    );

    // The restored server is on timeline 2: streaming from it follows the new timeline.
    let s2 = Streamer::start(&e, "stream2", &restored.url("postgres"), &[]);
    restored
        .psql("postgres", "INSERT INTO markers VALUES (1000)")
        .unwrap();
    s2.wait_durable(flush_lsn(&restored));
    assert_eq!(s2.status()["timeline"], 2, "{}", s2.log());
    s2.stop();
    drop(restored);
    let again = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(again.path(), &[]);
    let got2 = markers_in(&restored);
    assert!(got2.contains(&1000), "the new timeline's marker: {got2:?}");
    assert!(got2.is_superset(&got));
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
}

#[tokio::test]
async fn s3_down_for_30_s_under_load_loses_nothing_shows_the_lag_and_catches_up() {
    let e = Env::s3(None).await;
    let (pg, s) = streamed_server(&e, "");
    let mut load = pgbench(&pg, &["-c", "2", "-T", "120", "-n", "-R", "300"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    e.proxy().go_down();
    let down = Instant::now();
    let mut worst_lag = 0.0f64;
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        worst_lag = worst_lag.max(s.status()["lag_seconds"].as_f64().unwrap_or(0.0));
    }
    let during = s.status();
    e.proxy().come_back();
    assert!(worst_lag >= 10.0, "lag visible while S3 is down: {during}");
    assert!(during["store_errors"].as_u64().unwrap() > 0, "{during}");
    assert!(during["lag_bytes"].as_u64().unwrap() > 0, "{during}");
    let _ = load.kill();
    let _ = load.wait();
    let history = pg
        .psql("postgres", "SELECT count(*) FROM pgbench_history")
        .unwrap();
    pg.psql("postgres", "INSERT INTO markers VALUES (1)")
        .unwrap();
    s.wait_durable(flush_lsn(&pg));
    s.wait(
        "caught up",
        |st| st["lag_seconds"].as_f64() == Some(0.0),
        Duration::from_secs(30),
    );
    s.stop();

    let dir = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(dir.path(), &[]);
    assert!(markers_in(&restored).contains(&1));
    let got = restored
        .psql("postgres", "SELECT count(*) FROM pgbench_history")
        .unwrap();
    assert_eq!(got.trim(), history.trim(), "every transaction is restored");
    assert!(history.trim().parse::<u64>().unwrap() > 1000);
}

#[tokio::test]
async fn a_streamer_killed_again_and_again_mid_load_leaves_no_gap_beside_archive_command_md5() {
    need_postgres();
    let e = Env::new();
    let pg = e.archiving_server_with("archive_timeout = '5s'\n");
    assert!(
        pgbench(&pg, &["-i", "-s", "2", "-q"])
            .status()
            .unwrap()
            .success()
    );
    pg.psql_each(
        "postgres",
        &[
            "CREATE TABLE markers (n int PRIMARY KEY)",
            "SET password_encryption = 'md5'",
            &format!("CREATE ROLE {MD5_ROLE} LOGIN REPLICATION PASSWORD 'md5pw'"),
        ],
    )
    .unwrap();
    let url = format!(
        "postgresql://{MD5_ROLE}:md5pw@127.0.0.1:{}/postgres",
        pg.port()
    );
    let s1 = Streamer::start(&e, "s1", &url, &[]);
    e.base_backup(&pg, &[]);
    let mut load = pgbench(&pg, &["-c", "2", "-T", "60", "-n"])
        .spawn()
        .unwrap();
    // Killed at points spread over its cycle (receiving, uploading a piece, writing a whole
    // segment, deleting pieces), each time restarted on the same slot.
    let mut s = s1;
    for (i, ms) in [300u64, 700, 1100, 1600, 2300, 3100]
        .into_iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(ms));
        s.kill9();
        s = Streamer::start(&e, &format!("k{i}"), &url, &[]);
    }
    s.kill9();
    let s2 = Streamer::start(&e, "s2", &url, &[]);
    std::thread::sleep(Duration::from_secs(5));
    let _ = load.kill();
    let _ = load.wait();
    let history = pg
        .psql("postgres", "SELECT count(*) FROM pgbench_history")
        .unwrap();
    pg.psql("postgres", "INSERT INTO markers VALUES (7)")
        .unwrap();
    s2.wait_durable(flush_lsn(&pg));
    let s2_status = s2.status.clone();
    let log = s2.stop();
    assert!(!log.contains("different content"), "{log}");
    give_to_postgres(e.dir.path()).unwrap();

    let checked = e.run(&["--json", "check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let prom = e.p("wal.prom");
    let out = e.run(&[
        "--json",
        "wal",
        "status",
        "--stream-status",
        s2_status.to_str().unwrap(),
        "--prometheus",
        prom.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st = json(&out);
    for tl in st["clusters"][0]["timelines"].as_array().unwrap() {
        assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{st}");
    }
    assert_eq!(st["stream"]["lag_seconds"], 0.0, "{st}");
    assert!(st["stream"]["pieces"].as_u64().unwrap() > 0, "{st}");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    backup_core::scratch::promtool::check_metrics(&metrics).unwrap();
    assert!(
        metrics.contains("lifeboat_wal_lag_seconds{cluster=")
            && metrics.contains("lifeboat_wal_stream_status_age_seconds"),
        "{metrics}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(dir.path(), &[]);
    assert!(markers_in(&restored).contains(&7));
    let got = restored
        .psql("postgres", "SELECT count(*) FROM pgbench_history")
        .unwrap();
    assert_eq!(got.trim(), history.trim());
}

#[tokio::test]
async fn in_synchronous_mode_every_acknowledged_commit_is_in_the_repository_scram() {
    need_postgres();
    let e = Env::new();
    let mut pg = ScratchPostgres::start_with(
        "synchronous_commit = on\nsynchronous_standby_names = 'lifeboat'\n",
    )
    .unwrap();
    // Setup commits wait for no standby.
    pg.psql_each(
        "postgres",
        &[
            "SET synchronous_commit = local",
            "CREATE TABLE markers (n int PRIMARY KEY)",
            &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN REPLICATION PASSWORD 'right'"),
        ],
    )
    .unwrap();
    let url = format!(
        "postgresql://{PASSWORD_ROLE}:right@127.0.0.1:{}/postgres",
        pg.port()
    );
    let s = Streamer::start(&e, "sync", &url, &["--synchronous"]);
    e.base_backup(&pg, &[]);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'lifeboat'"
        )
        .unwrap()
        .trim(),
        "sync",
        "the streamer is the synchronous standby"
    );
    let t0 = Instant::now();
    let mut last = 0;
    for n in 1..=20u32 {
        commit_marker(&pg, n);
        last = n;
    }
    let per_commit = t0.elapsed() / 20;
    // The moment the last commit is acknowledged, the primary dies.
    pg.kill9().unwrap();
    eprintln!(
        "synchronous commit through the repository: {per_commit:?} per marker (psql included)"
    );
    s.wait(
        "drained",
        |st| st["connected"] == false,
        Duration::from_secs(30),
    );
    s.stop();
    give_to_postgres(e.dir.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(dir.path(), &[]);
    let got = markers_in(&restored);
    assert_eq!(got, (1..=last).collect(), "every acknowledged commit");
}

#[tokio::test]
async fn streaming_from_a_standby_follows_its_promotion_onto_the_new_timeline() {
    need_postgres();
    let e = Env::new();
    let primary = ScratchPostgres::start().unwrap();
    primary
        .psql("postgres", "CREATE TABLE markers (n int PRIMARY KEY)")
        .unwrap();
    let standby = primary.standby().unwrap();
    let s = Streamer::start(&e, "standby", &standby.url("postgres"), &[]);
    e.base_backup(&primary, &[]);
    primary
        .psql("postgres", "INSERT INTO markers VALUES (1)")
        .unwrap();
    wait_for(
        &standby,
        "SELECT count(*) FROM markers",
        "1",
        "the standby replays",
    );
    standby.psql("postgres", "SELECT pg_promote()").unwrap();
    wait_for(
        &standby,
        "SELECT pg_is_in_recovery()",
        "f",
        "the standby is promoted",
    );
    standby
        .psql("postgres", "INSERT INTO markers VALUES (2)")
        .unwrap();
    s.wait(
        "on timeline 2",
        |st| st["timeline"] == 2,
        Duration::from_secs(30),
    );
    s.wait_durable(flush_lsn(&standby));
    let log = s.stop();
    assert!(log.contains("following timeline 2"), "{log}");
    give_to_postgres(e.dir.path()).unwrap();
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let dir = tempfile::tempdir().unwrap();
    let (restored, report) = e.pitr_started(dir.path(), &[]);
    assert_eq!(markers_in(&restored), BTreeSet::from([1, 2]), "{report}");
}

#[test]
fn wrong_password_and_tls_modes_fail_with_a_hint() {
    need_postgres();
    let e = Env::new();
    let pg = ScratchPostgres::start().unwrap();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN REPLICATION PASSWORD 'right'"),
    )
    .unwrap();
    let url = format!(
        "postgresql://{PASSWORD_ROLE}:wrong@127.0.0.1:{}/postgres",
        pg.port()
    );
    let out = e.run(&["wal", "stream", "--url", &url]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("28P01") && err.contains("hint:"), "{err}");
    let out = e.run(&["wal", "stream", "--url", &format!("{url}?sslmode=require")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sslmode=require"));
}
