//! Redis against real redis-server processes: round trip of every type, redis-cli parity,
//! ACL, failures in transit, and the BGSAVE fallback.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backup_core::Error;
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::restore::{ApplyOptions, RestoreOptions, apply, plan};
use backup_core::config::{RedisConfig, RedisModeConfig};
use backup_core::engines::redis::resp::{RedisConn, Reply};
use backup_core::engines::redis::restore::RedisRestoreOptions;
use backup_core::engines::redis::scratch::{ScratchRedis, ScratchRedisOptions, seed_fixture};
use backup_core::repository::Repository;
use backup_core::scratch::find_program;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A started redis-server; a machine without one fails the test (it never skips).
async fn server(opts: ScratchRedisOptions) -> ScratchRedis {
    assert!(
        find_program("redis-server", &[]).is_some(),
        "redis-server not found (apt-get install redis-server)"
    );
    ScratchRedis::start(opts)
        .await
        .expect("scratch redis starts")
}

async fn seeded() -> ScratchRedis {
    let s = server(ScratchRedisOptions::default()).await;
    let mut c = s.connect_as(None, None).await.unwrap();
    seed_fixture(&mut c).await.unwrap();
    s
}

fn text(r: &Reply) -> String {
    match r {
        Reply::Bulk(Some(b)) => format!("{:?}", String::from_utf8_lossy(b)),
        Reply::Simple(s) => s.clone(),
        Reply::Int(i) => i.to_string(),
        Reply::Array(Some(v)) => format!("[{}]", v.iter().map(text).collect::<Vec<_>>().join(",")),
        other => format!("{other:?}"),
    }
}

fn sorted(r: &Reply) -> String {
    match r {
        Reply::Array(Some(v)) => {
            let mut items: Vec<String> = v.iter().map(text).collect();
            items.sort();
            items.join(",")
        }
        other => text(other),
    }
}

/// Every key of every database: type, value, TTL (ms).
async fn dataset(c: &mut RedisConn) -> BTreeMap<(u8, Vec<u8>), (String, String, i64)> {
    let mut out = BTreeMap::new();
    for db in 0..16u8 {
        c.ok(&[b"SELECT", db.to_string().as_bytes()]).await.unwrap();
        let mut cursor = b"0".to_vec();
        loop {
            let Reply::Array(Some(r)) = c.ok(&[b"SCAN", &cursor, b"COUNT", b"1000"]).await.unwrap()
            else {
                panic!()
            };
            let Reply::Bulk(Some(next)) = &r[0] else {
                panic!()
            };
            let Reply::Array(Some(keys)) = &r[1] else {
                panic!()
            };
            for k in keys {
                let Reply::Bulk(Some(key)) = k else { panic!() };
                let ty = c.ok(&[b"TYPE", key]).await.unwrap().text().unwrap();
                let value = match ty.as_str() {
                    "string" => text(&c.ok(&[b"GET", key]).await.unwrap()),
                    "list" => text(&c.ok(&[b"LRANGE", key, b"0", b"-1"]).await.unwrap()),
                    "set" => sorted(&c.ok(&[b"SMEMBERS", key]).await.unwrap()),
                    "zset" => text(
                        &c.ok(&[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"])
                            .await
                            .unwrap(),
                    ),
                    "hash" => sorted(&c.ok(&[b"HGETALL", key]).await.unwrap()),
                    "stream" => format!(
                        "{} groups {} pending {}",
                        text(&c.ok(&[b"XRANGE", key, b"-", b"+"]).await.unwrap()),
                        text(&c.ok(&[b"XINFO", b"GROUPS", key]).await.unwrap()),
                        // The summary form: no idle times, which differ by when we look.
                        text(&c.ok(&[b"XPENDING", key, b"billing"]).await.unwrap())
                    ),
                    other => panic!("unexpected type {other}"),
                };
                let Reply::Int(ttl) = c.ok(&[b"PTTL", key]).await.unwrap() else {
                    panic!()
                };
                out.insert((db, key.clone()), (ty, value, ttl));
            }
            if next == b"0" {
                break;
            }
            cursor = next.clone();
        }
    }
    c.ok(&[b"SELECT", b"0"]).await.unwrap();
    out
}

fn assert_same(
    a: &BTreeMap<(u8, Vec<u8>), (String, String, i64)>,
    b: &BTreeMap<(u8, Vec<u8>), (String, String, i64)>,
) {
    assert_eq!(a.len(), b.len(), "same number of keys");
    for (k, (ty, v, ttl)) in a {
        let (ty2, v2, ttl2) = b.get(k).unwrap_or_else(|| panic!("key {k:?} missing"));
        assert_eq!((ty, v), (ty2, v2), "key {k:?}");
        // The two reads are a backup, a restore and a server start apart (1–2 s); a lost
        // TTL (-1) or a reset one is off by an hour.
        assert!((ttl - ttl2).abs() <= 5000, "key {k:?}: ttl {ttl} vs {ttl2}");
    }
}

async fn export(repo: &Repository, item: &str, to: &Path) {
    let snap = repo.find_snapshot("latest").await.unwrap();
    let p = plan(
        &snap,
        &RestoreOptions {
            only: vec![item.into()],
            to: Some(to.to_path_buf()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    apply(repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
}

fn check_rdb(path: &Path) {
    let out = Command::new("redis-check-rdb").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "redis-check-rdb: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn round_trip_of_every_type_with_facts_and_no_dump_on_the_server() {
    let src = seeded().await;
    let t = new_repo().await;
    let before = dataset(&mut src.connect_as(None, None).await.unwrap()).await;
    assert!(before.len() > 2000);
    let source = RedisConfig::from_url(&src.url()).source("cache").unwrap();
    backup(&t.repo, vec![Box::new(source)], &BackupOptions::default())
        .await
        .unwrap();
    assert!(
        !src.dir().join("dump.rdb").exists(),
        "the server wrote no dump.rdb for our backup"
    );
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let facts = &snap.item("cache").unwrap().facts;
    assert_eq!(facts["keyspace"]["db0"]["keys"], 2015);
    assert_eq!(facts["keyspace"]["db1"]["keys"], 3);
    assert_eq!(facts["keyspace"]["db5"]["keys"], 1);
    assert_eq!(facts["rdb_checksum_verified"], true);
    assert!(facts["rdb_version"].as_u64().unwrap() >= 9);
    assert_eq!(facts["aof_enabled"], false);

    let out = t.dir.path().join("out");
    export(&t.repo, "cache", &out).await;
    let ours = out.join("cache");
    check_rdb(&ours);
    // redis-cli --rdb for the same data set: same structure, both valid.
    let theirs = t.dir.path().join("redis-cli.rdb");
    let cli = Command::new("redis-cli")
        .args(["-p", &src.port().to_string(), "--rdb"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    check_rdb(&theirs);
    let (a, b) = (
        std::fs::metadata(&ours).unwrap().len(),
        std::fs::metadata(&theirs).unwrap().len(),
    );
    assert!(
        a.abs_diff(b) <= 16,
        "ours {a} bytes, redis-cli's {b}: only aux fields may differ"
    );

    let copy = server(ScratchRedisOptions {
        rdb: Some(ours.clone()),
        ..Default::default()
    })
    .await;
    let after = dataset(&mut copy.connect_as(None, None).await.unwrap()).await;
    assert_same(&before, &after);

    // --to-scratch: loads it and checks the recorded key counts.
    let p = plan(
        &snap,
        &RestoreOptions {
            redis: RedisRestoreOptions {
                scratch: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = apply(&t.repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
    assert!(
        r.items[0]
            .sink
            .note
            .as_deref()
            .unwrap()
            .contains("3 database(s) checked"),
        "{:?}",
        r.items[0].sink.note
    );

    // --to-redis-dir refuses to replace an existing dump without --force.
    let data = t.dir.path().join("redis-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("dump.rdb"), "old").unwrap();
    let ropts = |force| RestoreOptions {
        force,
        redis: RedisRestoreOptions {
            dir: Some(data.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = plan(&snap, &ropts(false)).await.unwrap();
    assert!(matches!(
        apply(&t.repo, &snap, &p, &ApplyOptions::default()).await,
        Err(Error::TargetNotEmpty { .. })
    ));
    assert_eq!(std::fs::read(data.join("dump.rdb")).unwrap(), b"old");
    let p = plan(&snap, &ropts(true)).await.unwrap();
    let r = apply(&t.repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
    assert!(
        r.items[0]
            .sink
            .note
            .as_deref()
            .unwrap()
            .contains("dbfilename")
    );
    assert_eq!(
        std::fs::read(data.join("dump.rdb")).unwrap(),
        std::fs::read(&ours).unwrap()
    );
}

#[tokio::test]
async fn acl_user_limited_to_replication_works_and_others_get_noperm() {
    let src = seeded().await;
    let mut admin = src.connect_as(None, None).await.unwrap();
    admin
        .ok(&[
            b"ACL",
            b"SETUSER",
            b"backup",
            b"on",
            b">pw",
            b"-@all",
            b"+replconf",
            b"+sync",
            b"+psync",
        ])
        .await
        .unwrap();
    admin
        .ok(&[b"ACL", b"SETUSER", b"app", b"on", b">pw", b"+@read", b"~*"])
        .await
        .unwrap();
    let t = new_repo().await;
    let ok = RedisConfig::from_url(&src.url_as(Some("backup"), Some("pw")))
        .source("cache")
        .unwrap();
    backup(&t.repo, vec![Box::new(ok)], &BackupOptions::default())
        .await
        .expect("+replconf +sync is enough");
    // The documented form: the user in the URL, its password from password_file.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let mut cfg = RedisConfig::from_url(&src.url_as(Some("backup"), None));
    cfg.password_file = Some(pw);
    backup(
        &t.repo,
        vec![Box::new(cfg.source("cache").unwrap())],
        &BackupOptions::default(),
    )
    .await
    .expect("AUTH backup <password from the file>");
    let facts = &t.repo.find_snapshot("latest").await.unwrap().items[0].facts;
    assert!(
        facts["info"].as_str().unwrap().contains("NOPERM"),
        "INFO facts are best effort: {facts:?}"
    );
    let denied = RedisConfig::from_url(&src.url_as(Some("app"), Some("pw")))
        .source("cache")
        .unwrap();
    let e = backup(&t.repo, vec![Box::new(denied)], &BackupOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("NOPERM"),
        "Redis's own message is shown: {e}"
    );
    let wrong = RedisConfig::from_url(&src.url_as(Some("backup"), Some("nope")))
        .source("cache")
        .unwrap();
    let e = backup(&t.repo, vec![Box::new(wrong)], &BackupOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("WRONGPASS"), "{e}");
    assert!(!e.to_string().contains("nope"), "password not shown: {e}");
    assert_eq!(t.repo.snapshots().await.unwrap().len(), 2);
}

/// Forwards a connection to `to`, flipping one byte of the server's reply at `flip_at`.
async fn corrupting_proxy(to: u16, flip_at: usize) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (client, _) = l.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(("127.0.0.1", to))
            .await
            .unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
        let mut seen = 0usize;
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if (seen..seen + n).contains(&flip_at) {
                buf[flip_at - seen] ^= 0x20;
            }
            seen += n;
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    port
}

#[tokio::test]
async fn corruption_truncation_and_silence_fail_without_a_snapshot() {
    let src = seeded().await;
    let t = new_repo().await;
    // A flipped byte deep inside the RDB payload.
    let port = corrupting_proxy(src.port(), 20_000).await;
    let s = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}"))
        .source("cache")
        .unwrap();
    let e = backup(&t.repo, vec![Box::new(s)], &BackupOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");

    // A server that accepts the handshake and then says nothing.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf).await;
        let _ = c.write_all(b"+OK\r\n").await;
        let _ = c.read(&mut buf).await;
        let _ = c.write_all(b"+OK\r\n").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut cfg = RedisConfig::from_url(&format!("redis://127.0.0.1:{silent}"));
    cfg.timeout_secs = Some(1);
    let e = backup(
        &t.repo,
        vec![Box::new(cfg.source("cache").unwrap())],
        &BackupOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("sent nothing for 1s")
            || e.to_string().contains("no reply within 1s"),
        "{e}"
    );

    // The server killed mid-transfer.
    let mut big = server(ScratchRedisOptions {
        args: vec!["--enable-debug-command".into(), "yes".into()],
        ..Default::default()
    })
    .await;
    let mut c = big.connect_as(None, None).await.unwrap();
    c.ok(&[b"DEBUG", b"POPULATE", b"1500000", b"key", b"200"])
        .await
        .unwrap();
    let repo = t.repo.clone();
    let url = big.url();
    let run = tokio::spawn(async move {
        let s = RedisConfig::from_url(&url).source("big").unwrap();
        backup(&repo, vec![Box::new(s)], &BackupOptions::default()).await
    });
    // Kill it once the transfer is under way (the fork writing the RDB to the socket).
    let t0 = std::time::Instant::now();
    loop {
        let info = c.ok(&[b"INFO", b"persistence"]).await.unwrap();
        if text(&info).contains("rdb_bgsave_in_progress:1")
            || t0.elapsed() > Duration::from_secs(20)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    big.kill();
    let e = run.await.unwrap().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("truncated after"), "{msg}");
    let arrived: u64 = msg
        .split("truncated after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        arrived > 64 << 10,
        "the byte count is what arrived, not the held-back end mark: {msg}"
    );
    assert!(
        t.repo.snapshots().await.unwrap().is_empty(),
        "no snapshot after any of these"
    );
}

#[tokio::test]
async fn bgsave_fallback_when_replication_is_disabled() {
    let args = [
        "--rename-command",
        "SYNC",
        "",
        "--rename-command",
        "PSYNC",
        "",
    ]
    .map(String::from)
    .to_vec();
    let src = server(ScratchRedisOptions {
        args,
        ..Default::default()
    })
    .await;
    seed_fixture(&mut src.connect_as(None, None).await.unwrap())
        .await
        .unwrap();
    let before = dataset(&mut src.connect_as(None, None).await.unwrap()).await;
    let t = new_repo().await;
    let e = backup(
        &t.repo,
        vec![Box::new(
            RedisConfig::from_url(&src.url()).source("cache").unwrap(),
        )],
        &BackupOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("unknown command"),
        "{e}"
    );
    let mut cfg = RedisConfig::from_url(&src.url());
    cfg.mode = RedisModeConfig::Bgsave;
    cfg.rdb_path = Some(src.dir().join("dump.rdb"));
    backup(
        &t.repo,
        vec![Box::new(cfg.source("cache").unwrap())],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    let out = t.dir.path().join("out");
    export(&t.repo, "cache", &out).await;
    let copy = server(ScratchRedisOptions {
        rdb: Some(out.join("cache")),
        ..Default::default()
    })
    .await;
    assert_same(
        &before,
        &dataset(&mut copy.connect_as(None, None).await.unwrap()).await,
    );
}
