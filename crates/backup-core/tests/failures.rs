//! Bad input and broken storage: clear errors naming the object, and nothing lost or faked.

mod common;

use std::sync::Arc;

use backup_core::Error;
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::engines::command::CommandSource;
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::secret::Secret;
use backup_core::store::{Fault, FaultyStore, LocalStore, Store};
use common::*;
use zeroize::Zeroizing;

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(d: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                out.push(e.path().display().to_string());
                walk(&e.path(), out);
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

async fn open(t: &TestRepo, secret: &Secret) -> backup_core::Result<Repository> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
    Repository::open(
        store,
        secret,
        CacheOptions {
            dir: None,
            disabled: true,
        },
    )
    .await
}

#[tokio::test]
async fn wrong_passphrase_or_key_file_is_a_clear_error_and_writes_nothing() {
    let t = new_repo().await;
    backup_bytes(&t.repo, "x", b"data".to_vec()).await;
    let before = listing(&t.path());
    let e = open(&t, &passphrase("wrong")).await.unwrap_err();
    assert!(matches!(e, Error::WrongKey { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 3);
    assert!(
        e.to_string().contains(&t.path().display().to_string()),
        "names the repository: {e}"
    );
    let kf = Secret::KeyFile(Zeroizing::new(vec![7u8; 64]));
    assert!(matches!(open(&t, &kf).await, Err(Error::WrongKey { .. })));
    assert_eq!(listing(&t.path()), before, "a failed open writes nothing");
    open(&t, &passphrase("test"))
        .await
        .expect("the right passphrase still opens it");
}

#[tokio::test]
async fn missing_repository_and_double_init() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("nothing")));
    let e = Repository::open(store.clone(), &passphrase("x"), CacheOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RepositoryNotFound { .. }));
    assert_eq!(e.exit_code(), 5);
    let opts = InitOptions {
        kdf: FAST_KDF,
        ..Default::default()
    };
    Repository::init(store.clone(), &passphrase("x"), opts.clone())
        .await
        .unwrap();
    let e = Repository::init(store, &passphrase("y"), opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RepositoryExists { .. }));
}

async fn read_all(repo: &Repository) -> backup_core::commands::check::CheckReport {
    let opts = CheckOptions {
        read_data: true,
        ..Default::default()
    };
    check(repo, &opts).await.unwrap()
}

fn chunk_path(t: &TestRepo, id: &backup_core::ChunkId) -> std::path::PathBuf {
    t.path().join(id.object_key())
}

#[tokio::test]
async fn corrupt_missing_and_swapped_chunks_are_named_by_restore_and_check() {
    let t = new_repo().await;
    let data = random_bytes(3, 6 << 20);
    backup_bytes(&t.repo, "db", data.clone()).await;
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let chunks = snap.item("db").unwrap().chunks.clone();
    assert!(
        chunks.len() >= 3,
        "need several chunks, got {}",
        chunks.len()
    );
    let clean = read_all(&t.repo).await;
    assert!(clean.ok(), "{:?}", clean.problems);
    assert_eq!(clean.chunks_read, clean.chunks);

    // 1. A flipped byte.
    let p0 = chunk_path(&t, &chunks[0]);
    let good0 = std::fs::read(&p0).unwrap();
    let mut bad = good0.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&p0, &bad).unwrap();
    let e = restore_bytes(&t.repo, "db").await.unwrap_err();
    match &e {
        Error::ChunkCorrupt {
            snapshot,
            item,
            chunk,
            ..
        } => {
            assert_eq!(
                (snapshot, item.as_str(), chunk),
                (&snap.id, "db", &chunks[0])
            );
        }
        other => panic!("expected ChunkCorrupt, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&chunks[0].to_hex()) && msg.contains("db") && msg.contains(&snap.id.to_hex()),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 6);
    let light = check(&t.repo, &CheckOptions::default()).await.unwrap();
    assert!(light.ok(), "presence check cannot see a flipped byte");
    let r = read_all(&t.repo).await;
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].chunk, Some(chunks[0]));
    assert_eq!(r.problems[0].item.as_deref(), Some("db"));
    std::fs::write(&p0, &good0).unwrap();

    // 2. A chunk object replaced by another chunk's object.
    let p1 = chunk_path(&t, &chunks[1]);
    let good1 = std::fs::read(&p1).unwrap();
    std::fs::write(&p1, std::fs::read(chunk_path(&t, &chunks[2])).unwrap()).unwrap();
    let e = restore_bytes(&t.repo, "db").await.unwrap_err();
    assert!(
        matches!(&e, Error::ChunkCorrupt { chunk, .. } if *chunk == chunks[1]),
        "{e:?}"
    );
    let r = read_all(&t.repo).await;
    assert_eq!(
        r.problems.iter().map(|p| p.chunk).collect::<Vec<_>>(),
        [Some(chunks[1])]
    );
    std::fs::write(&p1, &good1).unwrap();

    // 3. A missing chunk.
    std::fs::remove_file(&p1).unwrap();
    let e = restore_bytes(&t.repo, "db").await.unwrap_err();
    assert!(
        matches!(&e, Error::ChunkMissing { chunk, item, .. } if *chunk == chunks[1] && item == "db"),
        "{e:?}"
    );
    let r = check(&t.repo, &CheckOptions::default()).await.unwrap();
    assert_eq!(r.problems.len(), 1);
    assert!(
        r.problems[0].message.contains("missing"),
        "{}",
        r.problems[0].message
    );
    std::fs::write(&p1, &good1).unwrap();
    assert!(
        restore_bytes(&t.repo, "db").await.unwrap() == data,
        "repaired repository restores"
    );
}

#[tokio::test]
async fn truncated_manifest_is_reported_with_its_snapshot() {
    let t = new_repo().await;
    backup_bytes(&t.repo, "x", b"hello".to_vec()).await;
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let p = t.path().join(snap.id.object_key());
    let raw = std::fs::read(&p).unwrap();
    std::fs::write(&p, &raw[..raw.len() - 10]).unwrap();
    let r = read_all(&t.repo).await;
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].snapshot, Some(snap.id));
    // A cold reader (no cache) restoring it fails naming the snapshot.
    let cold = open(&t, &passphrase("test")).await.unwrap();
    let e = cold.find_snapshot(&snap.id.to_hex()).await.unwrap_err();
    assert!(
        matches!(&e, Error::SnapshotCorrupt { snapshot, .. } if *snapshot == snap.id),
        "{e:?}"
    );
    assert_eq!(e.exit_code(), 6);
}

#[tokio::test]
async fn failing_command_leaves_no_snapshot_and_the_rerun_reuses_chunks() {
    let t = new_repo().await;
    let file = t.dir.path().join("payload");
    std::fs::write(&file, random_bytes(5, 12 << 20)).unwrap();
    // The whole payload is streamed, then the command fails: like a dump dying at the end.
    let cmd = format!(
        "cat {} && echo 'dump: lost connection' >&2 && exit 3",
        file.display()
    );
    let e = backup(
        &t.repo,
        vec![Box::new(CommandSource::new("dump", cmd))],
        &BackupOptions::default(),
    )
    .await
    .unwrap_err();
    match &e {
        Error::SourceFailed { item, detail } => {
            assert_eq!(item, "dump");
            assert!(
                detail.contains("status 3") && detail.contains("lost connection"),
                "{detail}"
            );
        }
        other => panic!("expected SourceFailed, got {other:?}"),
    }
    assert!(
        t.repo.snapshots().await.unwrap().is_empty(),
        "a failed backup leaves no snapshot"
    );
    let orphans = t.chunk_files();
    assert!(orphans > 0, "chunks were stored before the failure");

    let ok = format!("cat {}", file.display());
    let report = backup(
        &t.repo,
        vec![Box::new(CommandSource::new("dump", ok))],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.chunks_new, 0,
        "the rerun reuses every chunk stored by the failed run"
    );
    assert_eq!(t.chunk_files(), orphans);
    assert!(restore_bytes(&t.repo, "dump").await.unwrap() == std::fs::read(&file).unwrap());
}

/// Chunks are written batched (durable at the snapshot's flush), so a machine that crashed
/// during a run may leave one damaged under its name. The next run must not trust it.
#[tokio::test]
async fn a_damaged_orphan_chunk_is_replaced_not_reused() {
    let t = new_repo().await;
    let data = random_bytes(6, 6 << 20);
    let first = backup_bytes(&t.repo, "x", data.clone()).await;
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let ids = snap.item("x").unwrap().chunks.clone();
    assert!(ids.len() > 2, "{} chunks", ids.len());
    t.repo.forget(&[first.snapshot]).await.unwrap();
    // As a crash leaves it: the right name, the wrong length and bytes.
    let damaged = chunk_path(&t, &ids[1]);
    std::fs::write(&damaged, b"torn").unwrap();
    let second = backup_bytes(&t.repo, "x", data.clone()).await;
    assert_eq!(
        second.chunks_new, 1,
        "the sound orphans are reused, the damaged one is written again"
    );
    assert!(std::fs::metadata(&damaged).unwrap().len() > 4);
    assert_eq!(restore_bytes(&t.repo, "x").await.unwrap(), data);
    assert!(read_all(&t.repo).await.problems.is_empty());
}

#[tokio::test]
async fn storage_that_goes_away_mid_backup_leaves_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(LocalStore::new(dir.path().join("repo"))));
    let repo = init_uncached(faulty.clone()).await;
    let data = random_bytes(11, 24 << 20);
    faulty.inject(Fault::FailPutsAfter(faulty.puts() + 5));
    let e = backup(
        &repo,
        vec![bytes_source("big", data.clone())],
        &BackupOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Store { .. }), "{e:?}");
    assert!(e.to_string().contains("chunks/"), "names the object: {e}");
    assert!(
        repo.snapshot_ids().await.unwrap().is_empty(),
        "no snapshot after a store failure"
    );

    faulty.heal();
    let puts_before = faulty.puts();
    let report = backup(
        &repo,
        vec![bytes_source("big", data.clone())],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    let total = report.items[0].chunks;
    assert!(
        report.chunks_new < total,
        "rerun uploads only what is missing ({} of {total})",
        report.chunks_new
    );
    assert_eq!(
        faulty.puts() - puts_before,
        report.chunks_new + 2,
        "new chunks, the run marker and the snapshot"
    );
    assert!(restore_bytes(&repo, "big").await.unwrap() == data);
}

#[tokio::test]
async fn key_slots_can_be_added_and_removed_but_never_the_last() {
    let t = new_repo().await;
    backup_bytes(&t.repo, "x", b"payload".to_vec()).await;
    let kf = Secret::KeyFile(Zeroizing::new(vec![9u8; 64]));
    let added = t
        .repo
        .add_key(&kf, FAST_KDF, Some("ops laptop".into()))
        .await
        .unwrap();
    let by_file = open(&t, &kf).await.unwrap();
    assert_eq!(restore_bytes(&by_file, "x").await.unwrap(), b"payload");
    assert_eq!(t.repo.key_slots().await.unwrap().len(), 2);
    let first = t.repo.slot();
    t.repo.remove_key(&first.to_hex()).await.unwrap();
    assert!(
        matches!(
            open(&t, &passphrase("test")).await,
            Err(Error::WrongKey { .. })
        ),
        "removed slot no longer opens"
    );
    let e = by_file.remove_key(&added.id.to_hex()).await.unwrap_err();
    assert!(e.to_string().contains("last key slot"), "{e}");
    assert_eq!(
        restore_bytes(&by_file, "x").await.unwrap(),
        b"payload",
        "data untouched by slot changes"
    );
}
