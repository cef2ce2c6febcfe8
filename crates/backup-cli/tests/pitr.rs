//! Point-in-time recovery end to end, with real PostgreSQL servers archiving through the
//! built binary and restored servers fetching through `lifeboat-restore`: restores to a time
//! and to the end of the archive (after `kill -9` under pgbench load, local and S3), timelines
//! after a promotion, a missing segment refused before anything is written, and retention
//! that keeps every kept base backup's window.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use backup_core::engines::postgres::scratch::{ScratchPostgres, server_bin_dir};
use backup_core::engines::postgres::wal::parse_lsn;

fn need_postgres() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
}

/// The marks a restored server holds, sorted and comma-separated.
fn marks(pg: &ScratchPostgres) -> String {
    pg.psql(
        "postgres",
        "SELECT string_agg(tag, ',' ORDER BY tag) FROM marks",
    )
    .unwrap()
    .trim()
    .to_string()
}

fn assert_promoted_copy(pg: &ScratchPostgres, archive_mode: &str) {
    assert_eq!(
        pg.psql("postgres", "SELECT pg_is_in_recovery()")
            .unwrap()
            .trim(),
        "f",
        "recovery ended and the server was promoted"
    );
    assert_eq!(
        pg.psql("postgres", "SHOW archive_mode").unwrap().trim(),
        archive_mode
    );
}

#[tokio::test]
async fn point_in_time_recovery_to_a_time_and_to_the_end_and_a_missing_segment_is_refused() {
    need_postgres();
    let e = Env::new();
    let pg = e.archiving_server();
    pg.psql("postgres", "CREATE TABLE marks (tag text PRIMARY KEY)")
        .unwrap();
    e.base_backup(&pg, &[]);
    pg.psql("postgres", "INSERT INTO marks VALUES ('before')")
        .unwrap();
    let target = server_now(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO marks VALUES ('after')")
        .unwrap();
    switch_and_archive(&pg);

    // WAL retention: what is older than the base backup's start goes (a dry run first), the
    // rest stays, and the restores below prove nothing they need went with it.
    let dry = json(&e.run(&["--json", "prune", "--keep-last", "1", "--dry-run"]));
    let would = dry["wal"]["removed"].as_u64().unwrap();
    assert!(would >= 1, "the segment before the base backup: {dry}");
    let before = e.status();
    let real = json(&e.run(&["--json", "prune", "--keep-last", "1"]));
    assert_eq!(real["wal"]["removed"].as_u64(), Some(would), "{real}");
    let after = e.status();
    let segs = |st: &serde_json::Value| {
        st["clusters"][0]["timelines"][0]["segments"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(segs(&after) + would, segs(&before));
    assert_eq!(
        after["clusters"][0]["timelines"][0]["oldest"], real["wal"]["clusters"][0]["kept_from"],
        "{after}"
    );

    let at_t = tempfile::tempdir().unwrap();
    let plan = e.pitr(at_t.path(), &["--time", &target, "--dry-run"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(stdout(&plan).contains("timeline 1"), "{}", stdout(&plan));
    assert!(
        !at_t.path().join("data").exists(),
        "--dry-run touches nothing"
    );
    let (restored, report) = e.pitr_started(at_t.path(), &["--time", &target]);
    assert_promoted_copy(&restored, "off");
    assert_eq!(
        marks(&restored),
        "before",
        "committed before T: there; after T: not"
    );
    let stopped = report["recovery"]["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.starts_with("recovery stopping before commit"),
        "{report}"
    );
    drop(restored);

    let latest = tempfile::tempdir().unwrap();
    let (restored, report) = e.pitr_started(latest.path(), &[]);
    assert_promoted_copy(&restored, "off");
    assert_eq!(marks(&restored), "after,before");
    assert_eq!(report["recovery"]["new_timeline"], 2, "{report}");
    assert!(
        !latest
            .path()
            .join("data/pg_wal/.lifeboat-prefetch")
            .exists(),
        "the prefetch spool is gone once recovery is over"
    );
    let again = e.pitr(latest.path(), &[]);
    assert_eq!(
        again.status.code(),
        Some(7),
        "a data directory that is not empty is refused: {}",
        stderr(&again)
    );
    drop(restored);

    // A segment deleted from the archive: check names the gap and the base backup it breaks,
    // and a restore across it is refused before the data directory is created.
    for _ in 0..2 {
        pg.psql("postgres", "INSERT INTO marks SELECT md5(random()::text)")
            .unwrap();
        switch_and_archive(&pg);
    }
    let st = e.status();
    let tl = &st["clusters"][0]["timelines"][0];
    let cluster = st["clusters"][0]["cluster"].as_str().unwrap().to_string();
    let oldest = tl["oldest"].as_str().unwrap();
    let victim = format!(
        "{}{:08X}",
        &oldest[..16],
        u32::from_str_radix(&oldest[16..], 16).unwrap() + 1
    );
    std::fs::remove_file(e.p(&format!("repo/wal/{cluster}/00000001/{victim}"))).unwrap();
    let checked = e.run(&["check"]);
    assert_eq!(checked.status.code(), Some(6), "{}", stderr(&checked));
    let err = stderr(&checked);
    assert!(
        err.contains(&format!(
            "segments {victim} .. {victim} of timeline 1 are missing"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("stops at {victim}")), "{err}");
    let gap = tempfile::tempdir().unwrap();
    let refused = e.pitr(gap.path(), &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!("lacks {victim}")),
        "{}",
        stderr(&refused)
    );
    assert!(!gap.path().join("data").exists(), "nothing written");
}

/// A marker committed on `pg`: its number, and the WAL position before and after the commit.
struct Marker {
    n: u32,
    lsn_before: u64,
    lsn_after: u64,
}

fn commit_marker(pg: &ScratchPostgres, n: u32) -> Marker {
    // Three statements, each its own transaction: the position before the insert, the
    // insert, the position after its commit.
    let text = pg
        .psql_each(
            "postgres",
            &[
                "SELECT pg_current_wal_insert_lsn()",
                &format!("INSERT INTO markers VALUES ({n})"),
                "SELECT pg_current_wal_insert_lsn()",
            ],
        )
        .unwrap();
    let lsns: Vec<u64> = text.lines().filter_map(|l| parse_lsn(l.trim())).collect();
    Marker {
        n,
        lsn_before: lsns[0],
        lsn_after: lsns[1],
    }
}

/// Load, markers, `kill -9`, then a restore to the end of the archive holding every marker
/// committed before the last archived point, and one to a time T holding exactly those
/// committed before T.
async fn kill_9_under_load_then_restore(e: &Env) {
    need_postgres();
    let mut pg = e.archiving_server_with("archive_timeout = '1s'\n");
    let init = pgbench(&pg, &["-i", "-s", "4", "-q"]).status().unwrap();
    assert!(init.success(), "pgbench -i");
    pg.psql("postgres", "CREATE TABLE markers (n int PRIMARY KEY)")
        .unwrap();
    e.base_backup(&pg, &[]);
    let mut load: Child = pgbench(&pg, &["-c", "2", "-T", "30", "-n"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut markers = Vec::new();
    let mut target = None;
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(8) {
        n += 1;
        markers.push(commit_marker(&pg, n));
        if target.is_none() && t0.elapsed() > Duration::from_secs(3) {
            // T lies between this marker's commit and the next one's.
            target = Some((server_now(&pg), n));
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        load.try_wait().unwrap().is_none(),
        "pgbench ended early: {:?}",
        load.wait_with_output().map(|o| stderr(&o))
    );
    pg.kill9().unwrap();
    let _ = load.kill();
    let _ = load.wait();
    let (target, last_before_t) = target.expect("markers for 8 s");
    assert!(last_before_t >= 5, "only {last_before_t} markers before T");

    let st = e.status();
    let tl = &st["clusters"][0]["timelines"][0];
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{st}");
    let newest = tl["newest"].as_str().unwrap();
    let seg_no = u64::from_str_radix(&newest[8..16], 16).unwrap() * 256
        + u64::from_str_radix(&newest[16..], 16).unwrap();
    let archive_end = (seg_no + 1) << 24;
    assert!(
        markers.iter().any(|m| m.lsn_after <= archive_end),
        "some markers were archived before the kill (archive ends at segment {newest})"
    );

    let latest = tempfile::tempdir().unwrap();
    let (restored, report) = e.pitr_started(latest.path(), &[]);
    let got: BTreeSet<u32> = restored
        .psql("postgres", "SELECT n FROM markers")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    for m in &markers {
        if m.lsn_after <= archive_end {
            assert!(
                got.contains(&m.n),
                "marker {} ({:X}) committed before the archive's end {archive_end:X} is missing ({report})\n{st}\n{}",
                m.n,
                m.lsn_after,
                restored.log_of(Path::new(report["recovery"]["log"].as_str().unwrap()))
            );
        }
        if m.lsn_before > archive_end {
            assert!(!got.contains(&m.n), "marker {} was never archived", m.n);
        }
    }
    let accounts = restored
        .psql("postgres", "SELECT count(*) FROM pgbench_accounts")
        .unwrap();
    assert_eq!(accounts.trim(), "400000", "pgbench's table is whole");
    drop(restored);

    let at_t = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(at_t.path(), &["--time", &target]);
    let got: Vec<u32> = restored
        .psql("postgres", "SELECT n FROM markers ORDER BY n")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(
        got,
        (1..=last_before_t).collect::<Vec<_>>(),
        "exactly the markers before T"
    );
}

#[tokio::test]
async fn kill_9_under_pgbench_then_restore_to_the_end_and_to_a_time_local() {
    kill_9_under_load_then_restore(&Env::new()).await;
}

#[tokio::test]
async fn kill_9_under_pgbench_then_restore_to_the_end_and_to_a_time_s3() {
    let e = Env::s3(None).await;
    kill_9_under_load_then_restore(&e).await;
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
}

#[tokio::test]
async fn a_promoted_restore_archives_on_a_new_timeline_and_restores_follow_either() {
    need_postgres();
    let e = Env::new();
    let old = e.archiving_server();
    old.psql("postgres", "CREATE TABLE marks (tag text PRIMARY KEY)")
        .unwrap();
    e.base_backup(&old, &["--tag", "first"]);
    old.psql("postgres", "INSERT INTO marks VALUES ('a')")
        .unwrap();
    switch_and_archive(&old);

    // The incident: restore to the end, as the new primary (archiving on), which promotes
    // onto timeline 2 and archives into the same repository.
    let primary_dir = tempfile::tempdir().unwrap();
    let (primary, report) = e.pitr_started(primary_dir.path(), &["--keep-archiving"]);
    assert_eq!(report["recovery"]["new_timeline"], 2, "{report}");
    assert_promoted_copy(&primary, "on");
    primary
        .psql("postgres", "INSERT INTO marks VALUES ('b')")
        .unwrap();
    switch_and_archive(&primary);
    let t2 = server_now(&primary);
    std::thread::sleep(Duration::from_millis(1100));
    primary
        .psql("postgres", "INSERT INTO marks VALUES ('b-late')")
        .unwrap();
    switch_and_archive(&primary);

    // Meanwhile the old primary lives on, on timeline 1, and even takes a base backup.
    old.psql("postgres", "INSERT INTO marks VALUES ('old')")
        .unwrap();
    switch_and_archive(&old);
    e.base_backup(&old, &["--tag", "stale"]);
    old.psql("postgres", "INSERT INTO marks VALUES ('old-late')")
        .unwrap();
    switch_and_archive(&old);

    let st = e.status();
    let c = &st["clusters"][0];
    assert_eq!(c["newest_timeline"], 2, "{st}");
    let t2s = c["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 2)
        .unwrap();
    assert_eq!(t2s["branched_from"][0], 1, "{st}");
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));

    // A time on timeline 2 (the default, the newest): the first base backup, replayed along
    // timeline 1 up to the branch, then timeline 2.
    let on2 = tempfile::tempdir().unwrap();
    let plan = json(&e.restore(&[
        "--json",
        "pitr",
        "pg",
        "--to-pgdata",
        on2.path().join("data").to_str().unwrap(),
        "--time",
        &t2,
        "--dry-run",
    ]));
    assert_eq!(plan["timeline"], 2, "{plan}");
    assert!(
        plan["path"].as_str().unwrap().starts_with("1 until "),
        "{plan}"
    );
    let (restored, _) = e.pitr_started(on2.path(), &["--time", &t2]);
    assert_eq!(marks(&restored), "a,b");
    drop(restored);

    // Timeline 1 to its end: the stale base backup, with the old primary's later commits.
    let on1 = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(on1.path(), &["--timeline", "1"]);
    assert_eq!(marks(&restored), "a,old,old-late");
    drop(restored);

    // Timeline 2 from the stale base backup (taken on 1 after 2 branched off) cannot work:
    // refused before anything is written. So is a timeline the archive does not know.
    for (args, why) in [
        (
            &["--timeline", "2", "--tag", "stale"][..],
            "branched off timeline 1 at",
        ),
        (&["--timeline", "3"][..], "no history file for timeline 3"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = e.pitr(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        assert!(
            !dir.path().join("data").exists(),
            "nothing written for {args:?}"
        );
    }
    drop(primary);
}

#[tokio::test]
async fn retention_keeps_every_kept_base_backups_window_and_the_pitr_window() {
    need_postgres();
    let e = Env::new();
    let pg = e.archiving_server();
    pg.psql("postgres", "CREATE TABLE marks (tag text PRIMARY KEY)")
        .unwrap();
    e.base_backup(&pg, &["--tag", "first"]);
    pg.psql("postgres", "INSERT INTO marks VALUES ('1')")
        .unwrap();
    switch_and_archive(&pg);
    std::thread::sleep(Duration::from_millis(1500));
    e.base_backup(&pg, &["--tag", "second"]);
    pg.psql("postgres", "INSERT INTO marks VALUES ('2')")
        .unwrap();
    switch_and_archive(&pg);

    // A window of an hour needs the first base backup (nothing older covers its start):
    // keep-last 1 alone would drop it, the window keeps it and all WAL after it.
    let both = json(&e.run(&["--json", "prune", "--keep-last", "2", "--dry-run"]));
    let kept = json(&e.run(&["--json", "prune", "--keep-last", "1", "--keep-pitr", "1h"]));
    assert_eq!(kept["forgotten"], 0, "{kept}");
    assert_eq!(
        kept["wal"]["clusters"][0]["kept_from"], both["wal"]["clusters"][0]["kept_from"],
        "WAL is kept from the first base backup's start: {kept}"
    );
    let from_first = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(from_first.path(), &["--tag", "first"]);
    assert_eq!(
        marks(&restored),
        "1,2",
        "the first base backup's whole window"
    );
    drop(restored);

    // A window of a second is covered by the second base backup: the first goes, and the WAL
    // only it needed.
    let pruned = json(&e.run(&["--json", "prune", "--keep-last", "1", "--keep-pitr", "1s"]));
    assert_eq!(pruned["forgotten"], 1, "{pruned}");
    assert!(pruned["wal"]["removed"].as_u64().unwrap() >= 1, "{pruned}");
    let reasons = pruned["plan"].to_string();
    assert!(reasons.contains("pitr window"), "{reasons}");
    let none = e.pitr(tempfile::tempdir().unwrap().path(), &["--tag", "first"]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    let from_second = tempfile::tempdir().unwrap();
    let (restored, _) = e.pitr_started(from_second.path(), &[]);
    assert_eq!(marks(&restored), "1,2");
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
}

#[tokio::test]
async fn wal_objects_carry_object_lock_and_prune_leaves_them() {
    need_postgres();
    let e = Env::s3(Some(1)).await;
    let pg = e.archiving_server();
    pg.psql("postgres", "CREATE TABLE t (n int)").unwrap();
    switch_and_archive(&pg);
    e.base_backup(&pg, &[]);
    switch_and_archive(&pg);
    let repo = e.repo().await;
    let st = backup_core::engines::postgres::wal::status(&repo, None)
        .await
        .unwrap();
    let c = &st.clusters[0];
    let oldest = c.timelines[0].oldest.clone().unwrap();
    let key = backup_core::engines::postgres::wal::object_key(c.cluster, &oldest);
    let until = repo.store().retention_until(&key).await.unwrap();
    assert!(until.is_some(), "{key} has no retention");
    let pruned = json(&e.run(&["--json", "prune", "--keep-last", "1"]));
    assert!(pruned["wal"]["retained"].as_u64().unwrap() >= 1, "{pruned}");
    assert_eq!(pruned["wal"]["removed"], 0, "{pruned}");
    assert!(
        repo.store().head(&key).await.is_ok(),
        "a locked WAL object stays"
    );
}
