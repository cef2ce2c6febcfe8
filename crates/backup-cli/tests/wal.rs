//! `lifeboat-backup wal push` as a real PostgreSQL server's archive_command, and the push
//! contract: durable before exit 0, identical re-push succeeds, a different one is refused and
//! overwrites nothing, each cluster's WAL kept apart, a file that is not the segment its name
//! says refused, ready segments pushed ahead and acknowledged, an S3 outage costing nothing.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::engines::postgres::scratch::server_bin_dir;
use backup_core::engines::postgres::wal::{self, ClusterId, WalName};

/// The cluster of a scratch server.
fn cluster_of(pg: &backup_core::engines::postgres::scratch::ScratchPostgres) -> ClusterId {
    ClusterId::parse(
        &pg.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_real_server_archives_into_the_repository_and_the_archive_refuses_a_different_file() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    let e = Env::new();
    let pg = e.archiving_server();
    let cluster = cluster_of(&pg);
    let mut last = String::new();
    for i in 0..3 {
        pg.psql(
            "postgres",
            &format!("CREATE TABLE t{i} AS SELECT generate_series(1, 50000) AS n"),
        )
        .unwrap();
        last = switch_and_archive(&pg);
    }
    let failed = pg
        .psql("postgres", "SELECT failed_count FROM pg_stat_archiver")
        .unwrap();
    assert_eq!(failed.trim(), "0", "archive_command failed:\n{}", pg.log());
    let st = e.status();
    assert_eq!(st["clusters"].as_array().unwrap().len(), 1, "{st}");
    let c = &st["clusters"][0];
    assert_eq!(c["cluster"], cluster.to_string());
    let tl = &c["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert!(tl["segments"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(tl["newest"], last.as_str(), "{st}");
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{st}");
    assert!(
        e.p(&format!("repo/wal/{cluster}/00000001/{last}")).exists(),
        "kept under the cluster's system identifier"
    );

    // What PostgreSQL archived comes back byte for byte (the server's own copy is still in
    // pg_wal: nothing checkpointed since).
    let repo = e.repo().await;
    let name = WalName::parse(&last).unwrap();
    let fetched = e.p("fetched");
    let data = wal::fetch(&repo, cluster, &name, &fetched).await.unwrap();
    let original = pg.data_dir().join("pg_wal").join(&last);
    assert_eq!(data.len(), 16 << 20);
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&original).unwrap());

    // An identical re-push succeeds; a different file under that name is refused (exit 6)
    // and the archived one stays as it was.
    let again = e.p(&format!("again/{last}"));
    std::fs::create_dir_all(again.parent().unwrap()).unwrap();
    std::fs::copy(&original, &again).unwrap();
    let push = |lookahead: &str| {
        e.run(&[
            "--json",
            "wal",
            "push",
            again.to_str().unwrap(),
            "--lookahead",
            lookahead,
        ])
    };
    let same = json(&push("0"));
    assert_eq!(same["already_archived"], true, "{same}");
    let mut bytes = std::fs::read(&again).unwrap();
    bytes[100_000] ^= 0xff;
    std::fs::write(&again, &bytes).unwrap();
    let different = push("0");
    assert_eq!(different.status.code(), Some(6), "{}", stderr(&different));
    assert!(
        stderr(&different).contains("different content"),
        "{}",
        stderr(&different)
    );
    let after = e.p("after");
    wal::fetch(&repo, cluster, &name, &after).await.unwrap();
    assert!(std::fs::read(&after).unwrap() == std::fs::read(&original).unwrap());
    let missing = wal::fetch(
        &repo,
        cluster,
        &WalName::parse("00000001000000FF000000FF").unwrap(),
        &after,
    )
    .await;
    assert!(
        matches!(missing, Err(backup_core::Error::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn ready_segments_are_pushed_ahead_and_later_calls_answer_from_the_acknowledgement() {
    let e = Env::new();
    let cluster = ClusterId(4242);
    let segs = fake_pg_wal(&e.p("pg_wal"), cluster, 4);
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
        stdout(&second).contains("archived ahead by an earlier call"),
        "{}",
        stdout(&second)
    );
    // A file changed since it was pushed ahead is not taken for the acknowledged one.
    let mut changed = std::fs::read(&segs[2]).unwrap();
    changed[5000] ^= 1;
    std::fs::write(&segs[2], changed).unwrap();
    let refused = e.run(&["wal", "push", segs[2].to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
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
    let seg6 = fake_pg_wal(&e.p("later"), cluster, 6).pop().unwrap();
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
    let object = e.p(&format!(
        "repo/wal/{cluster}/00000001/000000010000000000000004"
    ));
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
        stderr(&deep).contains("000000010000000000000004: ")
            && stderr(&deep).contains("authentication failed"),
        "{}",
        stderr(&deep)
    );

    // Pruning snapshots never touches the WAL of a cluster without a base backup.
    let pruned = e.run(&["prune", "--keep-last", "1"]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    let repo = e.repo().await;
    let st = wal::status(&repo, Some(&e.p("pg_wal"))).await.unwrap();
    assert_eq!(
        st.clusters[0].timelines[0].segments, 2,
        "only what was pushed into the new repository"
    );
    let backlog = st.backlog.unwrap();
    assert_eq!(backlog.ready, 4, "the .ready files of the fake pg_wal");
    assert_eq!(backlog.bytes, 4 << 20);
    assert_eq!(backlog.oldest.unwrap().as_str(), "000000010000000000000001");
}

#[tokio::test]
async fn each_cluster_keeps_its_own_wal_and_a_file_that_is_not_its_name_is_refused() {
    let e = Env::new();
    let (a, b) = (ClusterId(111), ClusterId(222));
    let segs_a = fake_pg_wal(&e.p("a/pg_wal"), a, 2);
    let segs_b = fake_pg_wal(&e.p("b/pg_wal"), b, 2);
    // Same names, different clusters: both archived, neither refused.
    for s in segs_a.iter().chain(&segs_b) {
        let r = e.run(&["wal", "push", s.to_str().unwrap(), "--lookahead", "0"]);
        assert!(r.status.success(), "{}: {}", s.display(), stderr(&r));
    }
    let st = e.status();
    let clusters: Vec<&str> = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["111", "222"], "{st}");
    let repo = e.repo().await;
    let name = WalName::parse("000000010000000000000002").unwrap();
    let got = wal::fetch(&repo, b, &name, &e.p("b2")).await.unwrap();
    assert!(
        got == std::fs::read(&segs_b[1]).unwrap(),
        "cluster b's own segment"
    );

    // A segment under another segment's name, a truncated one, and a file that is not WAL:
    // refused (exit 6), nothing archived under that name.
    let renamed = e.p("a/pg_wal/000000010000000000000007");
    std::fs::copy(&segs_a[0], &renamed).unwrap();
    let truncated = e.p("a/pg_wal/000000010000000000000008");
    let whole = fake_pg_wal(&e.p("whole"), a, 8).pop().unwrap();
    std::fs::write(&truncated, &std::fs::read(&whole).unwrap()[..4096]).unwrap();
    let garbage = e.p("a/pg_wal/000000010000000000000009");
    random_file(&garbage, 9, 1 << 20);
    for (f, why) in [
        (
            &renamed,
            "not at the start of segment 000000010000000000000007",
        ),
        (&truncated, "4096 bytes"),
        (&garbage, "does not start with a WAL segment header"),
    ] {
        let r = e.run(&["wal", "push", f.to_str().unwrap(), "--lookahead", "0"]);
        assert_eq!(r.status.code(), Some(6), "{}", stderr(&r));
        assert!(stderr(&r).contains(why), "{why}: {}", stderr(&r));
        assert!(stderr(&r).contains("hint: "), "{}", stderr(&r));
    }
    assert_eq!(
        std::fs::read_dir(e.p(&format!("repo/wal/{a}/00000001")))
            .unwrap()
            .count(),
        2,
        "nothing archived for the refused files"
    );

    // A history file: the data directory's pg_control says whose it is; outside one, the
    // command asks for --cluster.
    let hist = e.p("loose/00000002.history");
    std::fs::create_dir_all(hist.parent().unwrap()).unwrap();
    std::fs::write(&hist, "1\t0/1000000\tno recovery target specified\n").unwrap();
    let r = e.run(&["wal", "push", hist.to_str().unwrap(), "--lookahead", "0"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("--cluster"), "{}", stderr(&r));
    std::fs::create_dir_all(e.p("a/global")).unwrap();
    std::fs::write(e.p("a/global/pg_control"), 111u64.to_le_bytes()).unwrap();
    let in_datadir = e.p("a/pg_wal/00000002.history");
    std::fs::copy(&hist, &in_datadir).unwrap();
    let r = e.run(&[
        "wal",
        "push",
        in_datadir.to_str().unwrap(),
        "--lookahead",
        "0",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        e.p(&format!("repo/wal/{a}/00000002/00000002.history"))
            .exists()
    );
    let r = e.run(&["wal", "push", hist.to_str().unwrap(), "--cluster", "222"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        e.p(&format!("repo/wal/{b}/00000002/00000002.history"))
            .exists()
    );
}

#[tokio::test]
async fn a_push_killed_at_any_point_leaves_an_archive_that_check_passes_and_a_retry_completes() {
    let e = Env::new();
    let cluster = ClusterId(77);
    let segs = fake_pg_wal(&e.p("pg_wal"), cluster, 6);
    // Incompressible segment bodies behind the header: a kill lands mid-seal or mid-put.
    for (i, s) in segs.iter().enumerate() {
        let mut data = std::fs::read(s).unwrap();
        let noise = e.p("noise");
        random_file(&noise, i as u64 + 1, data.len() - 64);
        data[64..].copy_from_slice(&std::fs::read(&noise).unwrap());
        std::fs::write(s, data).unwrap();
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
        wal::fetch(&repo, cluster, &name, &out).await.unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(s).unwrap(),
            "{name}"
        );
    }
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
}

#[tokio::test]
async fn s3_down_while_archiving_loses_nothing_and_the_backlog_shows_how_far_behind() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    let e = Env::s3(None).await;
    let pg = e.archiving_server();
    pg.psql("postgres", "CREATE TABLE t (n int)").unwrap();
    switch_and_archive(&pg);
    e.proxy().go_down();
    let archived = |pg: &backup_core::engines::postgres::scratch::ScratchPostgres| -> (u64, u64) {
        let row = pg
            .psql(
                "postgres",
                "SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver",
            )
            .unwrap();
        let f: Vec<u64> = row.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (f[0], f[1])
    };
    let (ok_before, _) = archived(&pg);
    for i in 0..3 {
        pg.psql(
            "postgres",
            &format!("INSERT INTO t SELECT generate_series(1, 20000) + {i}"),
        )
        .unwrap();
        pg.psql("postgres", "SELECT pg_switch_wal()").unwrap();
    }
    // The archiver fails (S3 is down) and keeps every segment.
    let t0 = Instant::now();
    while archived(&pg).1 == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no failed push:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        archived(&pg).0,
        ok_before,
        "nothing archived while S3 is down"
    );
    let prom = e.p("wal.prom");
    let pg_wal = pg.data_dir().join("pg_wal");
    let status = || {
        e.run(&[
            "--json",
            "wal",
            "status",
            "--pg-wal",
            pg_wal.to_str().unwrap(),
            "--prometheus",
            prom.to_str().unwrap(),
        ])
    };
    let down = status();
    assert_eq!(
        down.status.code(),
        Some(1),
        "status cannot reach S3 either: {}",
        stderr(&down)
    );
    e.proxy().come_back();
    let up = json(&status());
    assert!(up["backlog"]["ready"].as_u64().unwrap() >= 3, "{up}");
    let text = std::fs::read_to_string(&prom).unwrap();
    backup_core::scratch::promtool::check_metrics(&text).unwrap();
    let missing = backup_core::scratch::promtool::deployed_names_missing("lifeboat_wal_", &text);
    assert!(
        missing.is_empty(),
        "deploy/ queries {missing:?}, not in\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("lifeboat_wal_backlog_segments{")
                && l.split(' ').next_back().unwrap().parse::<f64>().unwrap() >= 3.0),
        "{text}"
    );
    // Back up: a new segment wakes the archiver, and everything kept is archived.
    let last = switch_and_archive(&pg);
    let st = e.status();
    let tl = &st["clusters"][0]["timelines"][0];
    assert_eq!(tl["newest"], last.as_str(), "{st}");
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{st}");
    let checked = e.run(&["check", "--read-data"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
}
