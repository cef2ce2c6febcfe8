//! The S3 store against a real S3-compatible server (ministack): conformance, round trips,
//! faults in transit, and an outage in the middle of a backup.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::commands::gc::{GcOptions, collect};
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::scratch::s3::ScratchS3;
use backup_core::store::{S3Options, S3Store, Store, conformance};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A started ministack; a machine that cannot run one fails the test (it never skips).
fn server() -> ScratchS3 {
    ScratchS3::start().unwrap_or_else(|e| panic!("ministack starts: {e}"))
}

async fn store(endpoint: &str, bucket: &str, prefix: &str) -> S3Store {
    let mut o = S3Options::from_url(&format!("s3://{bucket}/{prefix}")).unwrap();
    o.endpoint = Some(endpoint.to_string());
    o.path_style = true;
    o.access_key_id = Some("test".into());
    o.secret_access_key = Some("test".into());
    S3Store::new(o).await.unwrap()
}

async fn bucket(s: &ScratchS3, name: &str) {
    let admin = store(&s.endpoint(), name, "").await;
    admin.create_bucket(false).await.unwrap();
}

#[tokio::test]
async fn s3_store_passes_the_conformance_suite() {
    let s = server();
    bucket(&s, "conf").await;
    for prefix in ["", "some/prefix"] {
        let st = store(&s.endpoint(), "conf", prefix).await;
        conformance::run(&st).await;
        conformance::run_concurrent(Arc::new(st)).await;
    }
}

#[tokio::test]
async fn listing_pages_past_a_thousand_objects() {
    let s = server();
    bucket(&s, "many").await;
    let st = store(&s.endpoint(), "many", "p").await;
    let puts = (0..1105).map(|i| {
        let st = st.clone();
        async move {
            st.put(
                &format!("k/{i:05}"),
                vec![1],
                backup_core::store::PutMode::CreateOnly,
            )
            .await
            .unwrap()
        }
    });
    futures::future::join_all(puts).await;
    let l = st.list("k/").await.unwrap();
    assert_eq!(l.len(), 1105);
    assert_eq!(l[0].key, "k/00000");
    assert_eq!(l[1104].key, "k/01104");
}

async fn s3_repo(st: impl Store + 'static) -> Repository {
    let store: Arc<dyn Store> = Arc::new(st);
    Repository::init(
        store,
        &passphrase("p"),
        InitOptions {
            kdf: FAST_KDF,
            cache: CacheOptions {
                disabled: true,
                dir: None,
            },
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn backup_and_restore_round_trip_through_s3() {
    let s = server();
    bucket(&s, "roundtrip").await;
    let repo = s3_repo(store(&s.endpoint(), "roundtrip", "repo").await).await;
    let data = random_bytes(71, 20 << 20);
    backup_bytes(&repo, "db", data.clone()).await;
    let again = backup_bytes(&repo, "db", data.clone()).await;
    assert_eq!(again.chunks_new, 0);
    // A cold reader (no cache) restores it.
    let cold: Arc<dyn Store> = Arc::new(store(&s.endpoint(), "roundtrip", "repo").await);
    let cold = Repository::open(
        cold,
        &passphrase("p"),
        CacheOptions {
            disabled: true,
            dir: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(cold.snapshots().await.unwrap().len(), 2);
    assert!(restore_bytes(&cold, "db").await.unwrap() == data);
}

/// A TCP proxy in front of the server: `mode` 0 pipes, 1 answers 503 to every other new
/// connection and drops every third, 2 refuses everything (the server "went away").
struct Proxy {
    port: u16,
    mode: Arc<AtomicUsize>,
    faults: Arc<AtomicUsize>,
}

async fn proxy(to: u16) -> Proxy {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mode = Arc::new(AtomicUsize::new(0));
    let faults = Arc::new(AtomicUsize::new(0));
    let (m, f) = (mode.clone(), faults.clone());
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            n += 1;
            match m.load(Ordering::SeqCst) {
                2 => {
                    f.fetch_add(1, Ordering::SeqCst);
                    drop(c);
                    continue;
                }
                1 if n.is_multiple_of(3) => {
                    f.fetch_add(1, Ordering::SeqCst);
                    drop(c);
                    continue;
                }
                1 if n.is_multiple_of(2) => {
                    f.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf).await;
                        let _ = c
                            .write_all(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 95\r\nConnection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>\n\n\n")
                            .await;
                    });
                    continue;
                }
                _ => {}
            }
            let mode = m.clone();
            tokio::spawn(async move {
                let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let (mut cr, mut cw) = c.into_split();
                let (mut sr, mut sw) = s.into_split();
                let pipe = async {
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                };
                tokio::pin!(pipe);
                let started = std::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = &mut pipe => break,
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {
                            // Outage: cut live connections too. Fault mode: cut long-lived
                            // connections so that new ones meet the faults.
                            let m = mode.load(Ordering::SeqCst);
                            if m == 2 || (m == 1 && started.elapsed() > Duration::from_millis(300)) {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Proxy { port, mode, faults }
}

#[tokio::test]
async fn backup_succeeds_through_503s_and_dropped_connections_and_counts_retries() {
    let s = server();
    bucket(&s, "flaky").await;
    let p = proxy(s.port()).await;
    let st = store(&format!("http://127.0.0.1:{}", p.port), "flaky", "r").await;
    let probe = st.clone();
    let repo = s3_repo(st).await;
    p.mode.store(1, Ordering::SeqCst);
    let data = random_bytes(72, 12 << 20);
    let r = backup(
        &repo,
        vec![bytes_source("db", data.clone())],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    p.mode.store(0, Ordering::SeqCst);
    assert!(p.faults.load(Ordering::SeqCst) > 0, "faults were injected");
    assert!(
        r.store_retries > 0,
        "retries are counted and reported: {r:?}"
    );
    assert_eq!(
        r.store_retries,
        probe.retries(),
        "the report carries the store's count"
    );
    assert!(restore_bytes(&repo, "db").await.unwrap() == data);
}

#[tokio::test]
async fn an_outage_mid_backup_leaves_no_snapshot_and_the_rerun_uploads_only_the_rest() {
    let s = server();
    bucket(&s, "outage").await;
    let p = proxy(s.port()).await;
    let mut o = S3Options::from_url("s3://outage/r").unwrap();
    o.endpoint = Some(format!("http://127.0.0.1:{}", p.port));
    o.path_style = true;
    o.access_key_id = Some("test".into());
    o.secret_access_key = Some("test".into());
    o.max_attempts = 2;
    let repo = s3_repo(S3Store::new(o).await.unwrap()).await;
    let data = random_bytes(73, 24 << 20);
    // The server goes away once a few chunks are stored.
    let direct = store(&s.endpoint(), "outage", "r").await;
    let cut = tokio::spawn({
        let mode = p.mode.clone();
        async move {
            loop {
                if direct.list("chunks/").await.unwrap().len() >= 4 {
                    mode.store(2, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let e = backup(
        &repo,
        vec![bytes_source("db", data.clone())],
        &BackupOptions::default(),
    )
    .await
    .unwrap_err();
    cut.await.unwrap();
    let msg = e.to_string();
    assert!(msg.contains("s3://outage/r"), "names bucket and key: {msg}");
    p.mode.store(0, Ordering::SeqCst);
    assert!(
        repo.snapshot_ids().await.unwrap().is_empty(),
        "no snapshot after the outage"
    );
    let stored = store(&s.endpoint(), "outage", "r")
        .await
        .list("chunks/")
        .await
        .unwrap()
        .len();
    let r = backup(
        &repo,
        vec![bytes_source("db", data.clone())],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.chunks_new + stored,
        r.items[0].chunks,
        "the rerun uploads only the missing chunks"
    );
    assert!(restore_bytes(&repo, "db").await.unwrap() == data);
}

async fn locked_store(endpoint: &str, bucket: &str, days: u32) -> S3Store {
    let mut o = S3Options::from_url(&format!("s3://{bucket}/repo")).unwrap();
    o.endpoint = Some(endpoint.to_string());
    o.path_style = true;
    o.access_key_id = Some("test".into());
    o.secret_access_key = Some("test".into());
    o.object_lock = Some(backup_core::store::s3::ObjectLock {
        compliance: false,
        days,
    });
    S3Store::new(o).await.unwrap()
}

#[tokio::test]
async fn object_lock_protects_every_object_and_extends_reused_chunks() {
    let s = server();
    // A bucket without Object Lock is refused clearly at init.
    bucket(&s, "unlocked").await;
    let unlocked: Arc<dyn Store> = Arc::new(locked_store(&s.endpoint(), "unlocked", 1).await);
    let e = Repository::init(
        unlocked,
        &passphrase("p"),
        InitOptions {
            kdf: FAST_KDF,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("does not have Object Lock enabled"),
        "{e}"
    );

    store(&s.endpoint(), "locked", "")
        .await
        .create_bucket(true)
        .await
        .unwrap();
    let repo = s3_repo(locked_store(&s.endpoint(), "locked", 1).await).await;
    let data = random_bytes(74, 6 << 20);
    backup_bytes(&repo, "db", data.clone()).await;
    let snap = repo.find_snapshot("latest").await.unwrap();
    let chunk = snap.items[0].chunks[0].object_key();
    let until = repo
        .store()
        .retention_until(&chunk)
        .await
        .unwrap()
        .expect("chunks carry retention");
    let day = chrono::Utc::now() + chrono::Duration::days(1);
    assert!(
        (until - day).num_minutes().abs() < 5,
        "locked for a day: {until}"
    );
    let ok = check(&repo, &CheckOptions::default()).await.unwrap();
    assert!(ok.ok(), "{:?}", ok.problems);

    // The same data backed up with a longer lock: the reused chunks' retention is extended.
    let longer: Arc<dyn Store> = Arc::new(locked_store(&s.endpoint(), "locked", 3).await);
    let repo3 = Repository::open(
        longer.clone(),
        &passphrase("p"),
        CacheOptions {
            disabled: true,
            dir: None,
        },
    )
    .await
    .unwrap();
    // Before the extension, check with the 3-day policy reports the short locks.
    let short = check(&repo3, &CheckOptions::default()).await.unwrap();
    assert!(
        !short.problems.is_empty() && short.problems[0].message.contains("short of"),
        "{:?}",
        short.problems
    );
    let again = backup_bytes(&repo3, "db", data.clone()).await;
    assert_eq!(again.chunks_new, 0);
    let until3 = longer.retention_until(&chunk).await.unwrap().unwrap();
    assert!(
        (until3 - (chrono::Utc::now() + chrono::Duration::days(3)))
            .num_minutes()
            .abs()
            < 5,
        "extended: {until3}"
    );
    let ok = check(&repo3, &CheckOptions::default()).await.unwrap();
    assert!(ok.ok(), "{:?}", ok.problems);

    // Locked snapshots cannot be forgotten yet: skipped and reported, not an error.
    let f = repo3
        .forget(&repo3.snapshot_ids().await.unwrap())
        .await
        .unwrap();
    assert_eq!((f.forgotten.len(), f.retained.len()), (0, 2));
    // Orphans of a failed run are locked too: GC reports them as retained and goes on.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("payload");
    std::fs::write(&src, random_bytes(75, 3 << 20)).unwrap();
    let failing = backup_core::engines::command::CommandSource::new(
        "dump",
        format!("cat {}; exit 1", src.display()),
    );
    assert!(
        backup(&repo3, vec![Box::new(failing)], &BackupOptions::default())
            .await
            .is_err()
    );
    let r = collect(
        &repo3,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.chunks_deleted, 0, "{r:?}");
    assert!(
        !r.skipped_retained.is_empty(),
        "locked orphans are reported as retained: {r:?}"
    );
    assert_eq!(
        r.skipped_retained.len(),
        r.chunks_total - r.chunks_referenced
    );
    assert!(restore_after_forget_still_has_objects(&longer, &chunk).await);
}

async fn restore_after_forget_still_has_objects(store: &Arc<dyn Store>, key: &str) -> bool {
    store.head(key).await.is_ok()
}

/// Every kind of source through S3 in one snapshot, restored from a cold machine.
#[tokio::test]
async fn volume_command_postgres_and_redis_round_trip_through_s3() {
    use backup_core::commands::restore::{ApplyOptions, RestoreOptions, apply, plan};
    use backup_core::config::{PostgresConfig, RedisConfig};
    use backup_core::engines::command::CommandSource;
    use backup_core::engines::postgres::restore::PgRestoreOptions;
    use backup_core::engines::postgres::scratch::{ScratchPostgres, server_bin_dir};
    use backup_core::engines::redis::restore::RedisRestoreOptions;
    use backup_core::engines::redis::scratch::{ScratchRedis, ScratchRedisOptions, seed_fixture};
    use backup_core::engines::volume::{VolumeOptions, VolumeSource};
    use backup_core::source::Source;

    let s = server();
    let have_pg = server_bin_dir().is_some();
    let have_redis = backup_core::scratch::find_program("redis-server", &[]).is_some();
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            have_pg && have_redis,
            "PostgreSQL and redis-server are installed under CI"
        );
    }
    bucket(&s, "everything").await;
    let repo = s3_repo(store(&s.endpoint(), "everything", "prod").await).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("sub/file.txt"), "volume data").unwrap();
    std::fs::write(vol.join("big.bin"), random_bytes(76, 5 << 20)).unwrap();
    let mut sources: Vec<Box<dyn Source>> = vec![
        Box::new(VolumeSource::new("files", &vol, VolumeOptions::default())),
        Box::new(CommandSource::new("etcd", "printf etcd-snapshot-bytes")),
    ];
    let pg = if have_pg {
        let pg = ScratchPostgres::start().unwrap();
        pg.psql("postgres", "CREATE DATABASE app").unwrap();
        pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g").unwrap();
        sources.extend(
            PostgresConfig::from_url(&pg.url("app"))
                .sources("db")
                .await
                .unwrap(),
        );
        Some(pg)
    } else {
        None
    };
    let redis = if have_redis {
        let r = ScratchRedis::start(ScratchRedisOptions::default())
            .await
            .unwrap();
        seed_fixture(&mut r.connect_as(None, None).await.unwrap())
            .await
            .unwrap();
        sources.push(Box::new(
            RedisConfig::from_url(&r.url()).source("cache").unwrap(),
        ));
        Some(r)
    } else {
        None
    };
    backup(&repo, sources, &BackupOptions::default())
        .await
        .unwrap();

    let cold: Arc<dyn Store> = Arc::new(store(&s.endpoint(), "everything", "prod").await);
    let cold = Repository::open(
        cold,
        &passphrase("p"),
        CacheOptions {
            disabled: true,
            dir: None,
        },
    )
    .await
    .unwrap();
    let snap = cold.find_snapshot("latest").await.unwrap();
    let out = dir.path().join("out");
    let mut opts = RestoreOptions {
        to: Some(out.clone()),
        only: vec!["files".into(), "etcd".into()],
        ..Default::default()
    };
    let p = plan(&snap, &opts).await.unwrap();
    apply(&cold, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("files/sub/file.txt")).unwrap(),
        "volume data"
    );
    assert!(
        std::fs::read(out.join("files/big.bin")).unwrap()
            == std::fs::read(vol.join("big.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("etcd")).unwrap(),
        "etcd-snapshot-bytes"
    );
    if let Some(pg) = &pg {
        opts = RestoreOptions {
            only: vec!["db".into()],
            postgres: PgRestoreOptions {
                url: Some(pg.url("restored")),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan(&snap, &opts).await.unwrap();
        let r = apply(&cold, &snap, &p, &ApplyOptions::default())
            .await
            .unwrap();
        assert_eq!(r.items[0].sink.verified_tables, Some(1));
    }
    if redis.is_some() {
        opts = RestoreOptions {
            only: vec!["cache".into()],
            redis: RedisRestoreOptions {
                scratch: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan(&snap, &opts).await.unwrap();
        let r = apply(&cold, &snap, &p, &ApplyOptions::default())
            .await
            .unwrap();
        assert!(r.items[0].sink.note.as_deref().unwrap().contains("checked"));
    }
}

/// Answers one S3 request with 200 and returns the request's head (lower-cased).
async fn capture_one_request() -> (u16, tokio::task::JoinHandle<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let head = tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "request head incomplete");
            got.extend_from_slice(&buf[..n]);
        }
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    });
    (port, head)
}

#[tokio::test]
async fn uploads_are_unsigned_but_checksummed_unless_signing_is_asked_for() {
    use sha2::Digest;
    let body = random_bytes(3, 100_000);
    for sign in [false, true] {
        let (port, head) = capture_one_request().await;
        let mut o = S3Options::from_url("s3://b/p").unwrap();
        o.endpoint = Some(format!("http://127.0.0.1:{port}"));
        o.path_style = true;
        o.access_key_id = Some("test".into());
        o.secret_access_key = Some("test".into());
        o.max_attempts = 1;
        o.sign_payload = sign;
        let st = S3Store::new(o).await.unwrap();
        st.put(
            "locks/x",
            body.clone(),
            backup_core::store::PutMode::Overwrite,
        )
        .await
        .unwrap();
        let head = head.await.unwrap();
        let payload = head
            .lines()
            .find_map(|l| l.strip_prefix("x-amz-content-sha256:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        if sign {
            assert_eq!(payload, hex::encode(sha2::Sha256::digest(&body)), "{head}");
        } else {
            assert_eq!(payload, "unsigned-payload", "{head}");
            assert!(
                head.contains("x-amz-checksum-crc32:"),
                "an unsigned upload still carries a checksum: {head}"
            );
        }
    }
}

/// A wrapper forwards every `Store` method: an S3 store with Object Lock, wrapped in the
/// fault-injection store, still writes locked objects, reports its retention to GC and check,
/// and its retries.
#[tokio::test]
async fn a_wrapped_locked_store_keeps_its_object_lock() {
    let s = server();
    store(&s.endpoint(), "wrapped", "")
        .await
        .create_bucket(true)
        .await
        .unwrap();
    let inner = locked_store(&s.endpoint(), "wrapped", 2).await;
    let wrapped = backup_core::store::FaultyStore::new(inner);
    assert_eq!(wrapped.retention_days(), Some(2));
    let repo = s3_repo(wrapped).await;
    let r = backup_bytes(&repo, "db", random_bytes(75, 3 << 20)).await;
    let key = r.snapshot.object_key();
    let until = repo
        .store()
        .retention_until(&key)
        .await
        .unwrap()
        .expect("the snapshot is locked through the wrapper");
    assert!(
        until > chrono::Utc::now() + chrono::Duration::days(1),
        "{until}"
    );
    let forgotten = repo.forget(&[r.snapshot]).await.unwrap();
    assert_eq!(forgotten.retained, vec![r.snapshot], "the lock holds");
}
