//! Forget and garbage collection: space comes back, and a concurrent backup never loses a chunk.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backup_core::commands::backup::{BackupOptions, CommitHook, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::commands::gc::{GcOptions, collect};
use backup_core::store::PutMode;
use common::*;
use tokio::sync::Notify;

#[tokio::test]
async fn forget_and_prune_reclaim_space_and_leave_a_sound_repository() {
    let t = new_repo().await;
    backup_bytes(&t.repo, "db", random_bytes(11, 4 << 20)).await;
    backup_bytes(&t.repo, "db", random_bytes(21, 4 << 20)).await;
    let keep = random_bytes(31, 4 << 20);
    let last = backup_bytes(&t.repo, "db", keep.clone()).await;
    let before = t.chunk_files();
    let old: Vec<_> = t
        .repo
        .snapshot_ids()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| *i != last.snapshot)
        .collect();
    t.repo.forget(&old).await.unwrap();

    let dry = collect(
        &t.repo,
        &GcOptions {
            dry_run: true,
            ..now_gc()
        },
    )
    .await
    .unwrap();
    assert_eq!(t.chunk_files(), before, "dry run deletes nothing");
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert!(r.deferred.is_none());
    assert_eq!(
        (r.chunks_deleted, r.bytes_deleted, r.packs_deleted),
        (dry.chunks_deleted, dry.bytes_deleted, dry.packs_deleted),
        "dry run reports what apply does"
    );
    assert_eq!(t.chunk_files(), before - r.chunks_deleted);
    // A stream's last chunk may be small, and then it is packed.
    assert_eq!(r.chunks_referenced, t.chunk_files());
    assert!(r.chunks_referenced <= last.items[0].chunks);
    assert_eq!(t.pack_files(), t.index_files());
    assert!(
        r.bytes_deleted + r.pack_bytes_deleted > 7 << 20,
        "two 4 MiB random streams reclaimed: {r:?}"
    );
    let c = check(
        &t.repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(c.ok() && c.unreferenced_chunks == 0, "{:?}", c.problems);
    assert!(restore_bytes(&t.repo, "db").await.unwrap() == keep);
}

#[tokio::test]
async fn orphans_wait_for_the_grace_period() {
    let t = new_repo().await;
    let d = random_bytes(4, 3 << 20);
    let s = backup_bytes(&t.repo, "x", d).await;
    t.repo.forget(&[s.snapshot]).await.unwrap();
    let graceful = GcOptions {
        grace: Duration::from_secs(3600),
        ..Default::default()
    };
    // What a run killed mid-put leaves: a temp file beside the chunks.
    let abandoned = t.path().join("chunks/00/.tmp-00000000000000aa");
    std::fs::create_dir_all(abandoned.parent().unwrap()).unwrap();
    std::fs::write(&abandoned, vec![7u8; 1000]).unwrap();
    let r = collect(&t.repo, &graceful).await.unwrap();
    assert_eq!(
        (r.chunks_deleted, r.chunks_in_grace, r.incomplete_removed),
        (0, s.items[0].chunks, 0),
        "young orphans and temp files are kept"
    );
    // Age them past the grace period.
    let old = filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 7200, 0);
    for e in walk(&t.path().join("chunks")) {
        filetime::set_file_mtime(&e, old).unwrap();
    }
    let dry = collect(
        &t.repo,
        &GcOptions {
            dry_run: true,
            ..graceful.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!((dry.incomplete_removed, dry.incomplete_bytes), (1, 1000));
    assert!(abandoned.exists(), "a dry run removes nothing");
    let r = collect(&t.repo, &graceful).await.unwrap();
    assert_eq!(r.chunks_deleted, s.items[0].chunks);
    assert_eq!((r.incomplete_removed, r.incomplete_bytes), (1, 1000));
    assert!(!abandoned.exists());
    assert_eq!(t.chunk_files(), 0);
}

/// A backup paused after every chunk was found already stored and before its snapshot is
/// written; meanwhile the snapshot that named those chunks is forgotten and GC runs (twice,
/// with no grace). The backup's snapshot must restore intact.
#[tokio::test]
async fn prune_during_a_paused_backup_never_deletes_its_chunks() {
    let t = new_repo().await;
    let data = random_bytes(5, 6 << 20);
    let first = backup_bytes(&t.repo, "db", data.clone()).await;

    let reached = Arc::new(Notify::new());
    let resume = Arc::new(Notify::new());
    let (r2, s2) = (reached.clone(), resume.clone());
    let hook = CommitHook(Arc::new(move || {
        let (r, s) = (r2.clone(), s2.clone());
        Box::pin(async move {
            r.notify_one();
            s.notified().await;
        })
    }));
    let repo = t.repo.clone();
    let d2 = data.clone();
    let paused = tokio::spawn(async move {
        let opts = BackupOptions {
            before_commit: Some(hook),
            ..Default::default()
        };
        backup(&repo, vec![bytes_source("db", d2)], &opts).await
    });
    reached.notified().await;

    t.repo.forget(&[first.snapshot]).await.unwrap();
    for _ in 0..2 {
        let r = collect(&t.repo, &now_gc()).await.unwrap();
        assert!(
            r.deferred.is_some(),
            "GC must defer while a backup runs: {r:?}"
        );
        assert_eq!(r.chunks_deleted, 0);
    }
    resume.notify_one();
    let report = paused.await.unwrap().unwrap();
    assert_eq!(
        report.chunks_new, 0,
        "the paused backup relied on the existing chunks"
    );
    assert!(
        restore_bytes(&t.repo, "db").await.unwrap() == data,
        "its snapshot restores intact"
    );
    // Now nothing runs: GC proceeds, and still keeps everything the live snapshot names.
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert!(r.deferred.is_none());
    assert_eq!(r.chunks_deleted, 0);
    let c = check(
        &t.repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(c.ok(), "{:?}", c.problems);
}

#[tokio::test]
async fn a_backup_waits_for_a_running_gc_and_stale_markers_are_ignored() {
    let t = new_repo().await;
    let store = t.repo.store().clone();
    store
        .put("markers/gc-test", Vec::new(), PutMode::CreateOnly)
        .await
        .unwrap();
    let repo = t.repo.clone();
    let run = tokio::spawn(async move {
        backup(
            &repo,
            vec![bytes_source("x", b"data".to_vec())],
            &BackupOptions::default(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!run.is_finished(), "the backup waits while GC runs");
    store.delete("markers/gc-test").await.unwrap();
    run.await.unwrap().unwrap();

    // A dead backup's marker (not refreshed for longer than stale_after) does not block GC.
    store
        .put("markers/run-dead", Vec::new(), PutMode::CreateOnly)
        .await
        .unwrap();
    let old = filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 7200, 0);
    filetime::set_file_mtime(t.path().join("markers/run-dead"), old).unwrap();
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert!(r.deferred.is_none(), "{r:?}");
    assert_eq!(r.stale_markers_removed, 1);
    assert!(
        store.list("markers/").await.unwrap().is_empty(),
        "no markers left behind"
    );
}

/// With `--grace 0s`, a temp file of a put still in flight (a starting backup's marker) is not
/// swept: temp files go only once an hour old, whatever the grace.
#[tokio::test]
async fn a_young_temp_file_survives_a_prune_at_grace_zero() {
    let t = new_repo().await;
    let inflight = t.path().join("markers/.tmp-00000000000000bb");
    std::fs::create_dir_all(inflight.parent().unwrap()).unwrap();
    std::fs::write(&inflight, b"").unwrap();
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert_eq!(r.incomplete_removed, 0, "{r:?}");
    assert!(inflight.exists());
    let old = filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 3700, 0);
    filetime::set_file_mtime(&inflight, old).unwrap();
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert_eq!(r.incomplete_removed, 1, "{r:?}");
}

/// A second GC defers while another one's marker is live (one could take the other's
/// half-written repack for garbage), and goes ahead once that marker is stale.
#[tokio::test]
async fn a_second_gc_defers_to_a_live_one() {
    let t = new_repo().await;
    let s = backup_bytes(&t.repo, "x", random_bytes(6, 3 << 20)).await;
    t.repo.forget(&[s.snapshot]).await.unwrap();
    let before = t.chunk_files();
    t.repo
        .store()
        .put(
            "markers/gc-00000000000000aa",
            Vec::new(),
            PutMode::CreateOnly,
        )
        .await
        .unwrap();
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert!(
        r.deferred
            .as_deref()
            .is_some_and(|d| d.contains("another garbage collection")),
        "{r:?}"
    );
    assert_eq!(t.chunk_files(), before);
    let r = collect(
        &t.repo,
        &GcOptions {
            stale_after: Duration::ZERO,
            ..now_gc()
        },
    )
    .await
    .unwrap();
    assert!(
        r.deferred.is_none() && r.stale_markers_removed == 1,
        "{r:?}"
    );
    assert!(t.chunk_files() < before);
}
